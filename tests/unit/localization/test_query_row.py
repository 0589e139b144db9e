"""Query-row convention of the per-token maps (``localization.query_row``): the row that PRODUCED token r
(query at position r - 1, the default) or r's OWN row (query at position r), in inference and training."""

from __future__ import annotations

import numpy as np
import pytest

from readl.config import LocalizationConfig
from readl.model.inference import GenerationSettings, Predictor

TEXT = "<think>A crack near the top edge.</think><answer>Yes</answer>"


@pytest.fixture(scope="module")
def encoded(tiny, sample_images):
    model, processor = tiny
    pred = Predictor(model, processor, generation=GenerationSettings(max_new_tokens=4))
    inputs = pred.encode(sample_images[:1])
    ids = pred.tokenizer.encode(TEXT, add_special_tokens=False)
    return inputs, ids


def _predictor(tiny, query_row):
    model, processor = tiny
    return Predictor(model, processor, generation=GenerationSettings(max_new_tokens=4), query_row=query_row)


def test_config_default_is_the_producing_row():
    assert LocalizationConfig().query_row == "producing"
    assert LocalizationConfig(query_row="own").query_row == "own"
    with pytest.raises(ValueError):
        LocalizationConfig(query_row="next")


def test_inference_own_row_is_the_producing_row_shifted_by_one(tiny, encoded):
    inputs, ids = encoded
    prod = _predictor(tiny, "producing").capture(inputs, [ids])[0]
    own = _predictor(tiny, "own").capture(inputs, [ids])[0]
    t = len(ids)
    assert prod.image_attn.shape == own.image_attn.shape == (t, 15, 15)
    # token r's own row (query at r) is the row that produced token r + 1
    np.testing.assert_allclose(own.image_attn[:-1], prod.image_attn[1:], atol=1e-6)
    np.testing.assert_allclose(own.anomaly_attn[:-1], prod.anomaly_attn[1:], atol=1e-6)
    assert np.abs(own.image_attn - prod.image_attn).max() > 1e-4  # the two conventions differ
    assert own.p_yes == pytest.approx(prod.p_yes, abs=1e-7)  # the score does not depend on it
    with pytest.raises(ValueError, match="query_row"):
        _predictor(tiny, "next")


def test_the_prediction_cache_is_keyed_by_the_convention(tiny):
    from readl.evaluation.predictions import fingerprint

    prod, own = (fingerprint(_predictor(tiny, q), "tiny", None) for q in ("producing", "own"))
    assert prod != own and prod["query_row"] == "producing" and "score_rule" in prod


def test_training_capture_follows_the_same_convention(tiny, sample_images, encoded):
    from PIL import Image

    from readl.training.trainer import capture_completion_attention

    model, processor = tiny
    _, ids = encoded
    image = sample_images[0].resize((420, 420), Image.BICUBIC)  # what Predictor.encode feeds the model

    def run(query_row):
        pred = _predictor(tiny, query_row)
        inputs = pred.encode([image])
        cap = pred.capture(inputs, [ids])[0]
        train = capture_completion_attention(
            model,
            processor.image_processor,
            processor.tokenizer,
            [image],
            [inputs["input_ids"][0].tolist()],
            [ids],
            image_token_id=model.config.image_token_id,
            query_row=query_row,
        )[0]
        return cap, train

    (p_cap, (p_img, p_anom)), (o_cap, (o_img, o_anom)) = run("producing"), run("own")
    np.testing.assert_allclose(o_img[:-1], p_img[1:], atol=1e-6)
    np.testing.assert_allclose(o_anom[:-1], p_anom[1:], atol=1e-6)
    assert np.abs(o_img - p_img).max() > 1e-4
    # the training pass gives the inference pass's rows for the same image and completion, in each convention
    np.testing.assert_allclose(p_img, p_cap.image_attn, atol=1e-5)
    np.testing.assert_allclose(o_img, o_cap.image_attn, atol=1e-5)
