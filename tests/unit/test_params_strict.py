"""params.yaml values that are accepted but nonsensical are errors at load, naming the key (issue: `"12"` and
`true` as integers, NaN / inf in learning rates and gates, a bogus cron or time zone, alpha -5)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from readl.config import Params, load_params


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"model": {"max_new_tokens": "12"}}, "max_new_tokens"),
        ({"model": {"max_new_tokens": True}}, "max_new_tokens"),
        ({"warmup": {"max_steps": "600"}}, "max_steps"),
        ({"train": {"learning_rate": float("nan")}}, "learning_rate"),
        ({"register": {"min_improvement": float("inf")}}, "min_improvement"),
        ({"register": {"max_drop": {"image.AUROC": float("nan")}}}, "max_drop"),
        ({"localization": {"alpha": -5}}, "alpha"),
        ({"localization": {"alpha": float("nan")}}, "alpha"),
        ({"register": {"schedule": {"cron": "every monday"}}}, "cron"),
        ({"register": {"schedule": {"timezone": "Mars/Olympus"}}}, "timezone"),
        ({"localisation": {"alpha": 2.0}}, "localisation"),
        ({"localization": {"layers": [-1]}}, "layers"),  # a negative index would silently mean nothing
        ({"localization": {"layers": []}}, "layers"),  # no layer: no map at all
        ({"localization": {"layers": [3, 3]}}, "layers"),
        (
            {"curate": {"eval": [{"name": "..", "layout": "mvtec", "root": "mvtec_ad"}]}},
            "folder name",
        ),  # out of its split
    ],
)
def test_nonsensical_params_are_refused_naming_the_key(raw, key):
    with pytest.raises(ValidationError, match=key):
        Params.model_validate(raw)


def test_the_repository_params_and_real_numbers_still_load(tmp_path):
    assert load_params("params.yaml").model.max_new_tokens > 0
    ok = Params.model_validate(
        {
            "train": {"learning_rate": 1},
            "localization": {"binarize": 0.9, "alpha": 0},
            "register": {"schedule": {"cron": "*/15 2-4 * JAN-MAR mon", "timezone": "Europe/Berlin"}},
        }
    )
    assert ok.train.learning_rate == 1.0 and ok.localization.binarize == 0.9
    yaml_11 = Params.model_validate({"train": {"learning_rate": "1e-5"}})  # PyYAML reads `1e-5` as a string
    assert yaml_11.train.learning_rate == 1e-5
    with pytest.raises(ValidationError, match="max_steps"):
        Params.model_validate({"train": {"max_steps": "1e3"}})  # an integer field takes no string at all
