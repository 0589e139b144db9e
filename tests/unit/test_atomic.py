"""Atomic writes: outputs get the permissions of a normal write (process umask), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from readl.atomic import atomic_dir, atomic_write, write_json, write_text


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_outputs_respect_the_umask(tmp_path, umask):
    from readl.evaluation.predictions import save_prediction
    from readl.model.inference import Prediction
    from readl.model.prompting import parse_completion

    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert _mode(write_json(tmp_path / "metrics.json", {"a": 1})) == file_mode
    assert _mode(write_text(tmp_path / "report.md", "x")) == file_mode
    png = atomic_write(tmp_path / "g.png", lambda p: p.write_bytes(b"\x89PNG"))  # writer re-opens the temp file
    assert _mode(png) == file_mode
    c = "<think>x</think><answer>Yes</answer>"
    pred = Prediction(
        completion=c,
        parsed=parse_completion(c),
        score=0.5,
        tokens=["x"],
        image_attn=np.zeros((1, 2, 2), np.float32),
        anomaly_attn=np.zeros((2, 2), np.float32),
        image_size=(2, 2),
    )
    assert _mode(save_prediction(tmp_path / "cache" / "p.npz", pred)) == file_mode
    assert _mode(tmp_path / "cache") == dir_mode

    with atomic_dir(tmp_path / "gallery") as d:
        (d / "index.html").write_text("x")
    assert _mode(tmp_path / "gallery") == dir_mode and _mode(tmp_path / "gallery/index.html") == file_mode

    def replace_dir(dest: Path) -> Path:  # how `readl train` / `readl warmup` write models/adapter, models/warmup
        with atomic_dir(dest) as tmp:
            (tmp / "adapter_config.json").write_text("{}")  # like PEFT's save_pretrained
        return dest

    adapter = replace_dir(tmp_path / "models" / "adapter")
    assert _mode(adapter) == dir_mode and _mode(adapter / "adapter_config.json") == file_mode
    adapter = replace_dir(adapter)  # replacing an existing folder
    assert _mode(adapter) == dir_mode
    assert sorted(p.name for p in adapter.parent.iterdir()) == ["adapter"]  # no temp folders left


def test_weights_written_0600_by_safetensors_come_out_with_the_umask(tmp_path, umask):
    """safetensors' ``save_file`` (PEFT's and transformers' ``save_pretrained``) creates its file 0600 whatever the
    umask: a worker or server running as another user could not read the adapter. ``atomic_dir`` gives every file
    and folder in it the mode of a plain ``open`` / ``mkdir`` before it moves into place (executable bits kept)."""
    import torch
    from safetensors.torch import save_file

    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    with atomic_dir(tmp_path / "adapter") as d:
        save_file({"w": torch.zeros(2)}, str(d / "adapter_model.safetensors"))
        (d / "sub").mkdir(mode=0o700)
        (d / "sub" / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(d / "sub" / "run.sh", 0o700)
    out = tmp_path / "adapter"
    assert _mode(out / "adapter_model.safetensors") == file_mode
    assert _mode(out / "sub") == dir_mode
    assert _mode(out / "sub" / "run.sh") == 0o777 & ~umask
