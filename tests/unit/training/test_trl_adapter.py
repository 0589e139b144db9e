"""readl.training.trl_adapter: the one module that overrides TRL's private GRPOTrainer methods.

Pins the TRL release the overrides were written against, and the private methods' signatures: after a TRL
upgrade these fail first, saying what to re-check (issue 13, item 5).
"""

from __future__ import annotations

import inspect

import trl
from trl import GRPOTrainer

from readl.training.trainer import CGROTrainer
from readl.training.trl_adapter import PRIVATE_OVERRIDES, TRL_VERSION, GRPOAdapter


def test_trl_is_the_version_the_adapter_was_written_against():
    assert trl.__version__ == TRL_VERSION, (
        f"TRL is {trl.__version__}, readl.training.trl_adapter was written against TRL {TRL_VERSION}: re-read "
        f"GRPOTrainer.{', .'.join(PRIVATE_OVERRIDES)} and _generate_and_score_completions (the extra_fields merge "
        f"into the rows before _calculate_rewards) in the new release, adapt GRPOAdapter, then update TRL_VERSION"
    )


def test_the_overridden_private_methods_still_exist_with_the_same_parameters():
    for name, params in PRIVATE_OVERRIDES.items():
        method = getattr(GRPOTrainer, name, None)
        assert method is not None, f"TRL {trl.__version__} has no GRPOTrainer.{name}: adapt readl.training.trl_adapter"
        got = tuple(p for p in inspect.signature(method).parameters if p != "self")
        assert got == params, f"GRPOTrainer.{name}{got} != the {params} GRPOAdapter overrides: adapt trl_adapter"


def test_only_the_adapter_overrides_trl_private_methods():
    """CGROTrainer uses the adapter's public hooks; no other readl class redefines a private GRPOTrainer method."""
    private = {n for n, _ in inspect.getmembers(GRPOTrainer, inspect.isfunction) if n.startswith("_") and not n.startswith("__")}
    assert set(PRIVATE_OVERRIDES) <= private
    assert private & set(vars(GRPOAdapter)) == set(PRIVATE_OVERRIDES)
    assert not private & set(vars(CGROTrainer)), sorted(private & set(vars(CGROTrainer)))
