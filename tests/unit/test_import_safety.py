"""Importing readl changes no process-wide state (issue 13, item 3).

A fresh interpreter first imports every third-party module that readl imports at module level (their own
import-time effects, e.g. MLflow's warning filters, are not readl's), snapshots transformers' attention and
mask registries, AutoProcessor's registry, ``warnings.filters`` and ``os.environ``, then imports EVERY readl
module and compares. Registration happens only when asked: :func:`readl.localization.attention.enable_capture`
(or ``register_capture``), :func:`readl.model.processor.register_auto_processor`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = r"""
import ast, importlib, json, os, pkgutil, sys, warnings
from pathlib import Path

import readl

modules = sorted(m.name for m in pkgutil.walk_packages(readl.__path__, "readl."))
third_party = set()
for name in modules:
    spec = importlib.util.find_spec(name)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:  # module-level imports only
        if isinstance(node, ast.Import):
            third_party.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            third_party.add(node.module)
for name in sorted(n for n in third_party if n.split(".")[0] != "readl"):
    importlib.import_module(name)

from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING


def snapshot():
    return {
        "attention": sorted(ALL_ATTENTION_FUNCTIONS.keys()),
        "mask": sorted(ALL_MASK_ATTENTION_FUNCTIONS.keys()),
        "auto_processor": sorted(f"{k.__name__}->{v.__name__}" for k, v in PROCESSOR_MAPPING._extra_content.items()),
        "warnings": [repr(f) for f in warnings.filters],
        "environ": dict(os.environ),
    }


before = snapshot()
for name in sorted(set(modules) | set(sys.argv[1:])):
    importlib.import_module(name)
after = snapshot()
print(json.dumps({"modules": len(modules), "before": before, "after": after}))
"""


def _probe(*extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, *extra], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_readl_module_registers_and_sets_nothing():
    res = _probe("readl.cli", "readl.localization.attention", "readl.model.inference")
    assert res["modules"] > 50  # every module was walked, not an empty package
    before, after = res["before"], res["after"]
    assert after["attention"] == before["attention"], "an import registered a transformers attention function"
    assert after["mask"] == before["mask"], "an import registered a transformers attention mask function"
    assert after["auto_processor"] == before["auto_processor"], "an import registered an AutoProcessor class"
    assert after["warnings"] == before["warnings"], "an import changed warnings.filters"
    changed = {
        k for k in set(before["environ"]) | set(after["environ"]) if before["environ"].get(k) != after["environ"].get(k)
    }
    assert not changed, f"an import changed os.environ: {sorted(changed)}"


def test_registration_happens_when_asked_and_is_idempotent():
    code = (
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as A\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING as P\n"
        "from readl.localization.attention import CAPTURE_IMPLEMENTATION as C, register_capture\n"
        "from readl.model.processor import register_auto_processor\n"
        "assert C not in A.keys()\n"
        "register_capture(); register_capture()\n"
        "assert C in A.keys()\n"
        "n = len(P._extra_content)\n"
        "register_auto_processor(); register_auto_processor()\n"
        "assert len(P._extra_content) == n + 4, P._extra_content\n"  # Qwen2.5-VL + Qwen2-VL, Qwen3-VL, InternVL
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_numpy_only_modules_import_without_torch():
    """The result/settings types and the numerical core import without torch or transformers (issue 13, item 3)."""
    modules = [
        "readl.model.types",
        "readl.config",
        "readl.training.rewards",
        "readl.localization.thresholds",
        "readl.localization.anomaly_map",
        "readl.evaluation.calibration",
        "readl.evaluation.evaluate",
    ]
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
