"""The inputs of ``readl register``, checked before anything is written to the registry.

A version created from a half-valid input is worse than no version: ``readl register`` reads every input
first and stops with an error naming the file and the stage that writes it. Checked:

- ``metrics.json`` (``readl evaluate``): a JSON object with the macro averages ``image`` / ``pixel``, the
  count ``n_malformed`` and, per evaluation dataset under ``datasets``, the same three (the fields the
  version tags, the promotion gate and the CLI's table read: :data:`METRIC_FIELDS`); the gate's
  ``primary_metric`` must be present (its value may be ``null``: the gate then refuses). Every such value is
  ``null`` or a finite number in [0, 1] (never NaN or 5.0), and each top-level average equals the macro mean of the
  datasets' values (``null`` ones skipped), as ``readl evaluate`` writes it: a hand-edited number never registers.
- ``thresholds.json`` (``readl calibrate``): numeric ``tau_t.value`` and ``tau_i.value``.
- ``train_run.json`` (``readl train``), when present: a JSON object with a string ``run_id``.
- the adapter folder (``readl train``), when it holds ``adapter_config.json``: that file is JSON and the
  weights (``adapter_model.safetensors`` or ``adapter_model.bin``) are beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "METRIC_FIELDS",
    "ADAPTER_WEIGHTS",
    "read_json_input",
    "check_metrics",
    "check_thresholds",
    "check_train_run",
    "check_adapter",
]

# metrics.json fields read by register / promote / the CLI table: section -> keys (numbers or null)
METRIC_FIELDS: dict[str, tuple[str, ...]] = {
    "image": ("AUROC", "AUPR", "ACC"),
    "pixel": ("AUROC", "AUPR", "AUPRO", "ACC"),
}
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_json_input(path: Path, stage: str):
    """Parse the JSON file ``path`` written by ``readl <stage>``.

    Raises:
        FileNotFoundError: the file is missing (run the stage).
        ValueError: it is not valid JSON (names the file and the stage to re-run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `readl {stage}` (dvc repro {stage}) first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-run `readl {stage}` (dvc repro {stage})") from exc


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _section_problems(d, where: str) -> list[str]:
    if not isinstance(d, Mapping):
        return [f"{where} (not an object)"]
    out = []
    for section, keys in METRIC_FIELDS.items():
        sub = d.get(section)
        if not isinstance(sub, Mapping):
            out.append(f"{where}{section}")
            continue
        out += [f"{where}{section}.{k}" for k in keys if k not in sub or not _is_number(sub[k])]
    if not isinstance(d.get("n_malformed"), int) or isinstance(d.get("n_malformed"), bool):
        out.append(f"{where}n_malformed")
    return out


def check_metrics(path: Path, primary_metric: str) -> dict:
    """Read and check ``metrics.json`` (module docstring).

    Args:
        path: the metrics file.
        primary_metric: the gate's dotted key (``register.primary_metric``), e.g. ``image.AUROC``.

    Returns:
        The parsed metrics.

    Raises:
        FileNotFoundError / ValueError: missing, not JSON, or lacking fields (all named in the message).
    """
    metrics = read_json_input(path, "evaluate")
    problems = _section_problems(metrics, "") if isinstance(metrics, Mapping) else ["(not a JSON object)"]
    if isinstance(metrics, Mapping):
        datasets = metrics.get("datasets")
        if not isinstance(datasets, Mapping) or not datasets:
            problems.append("datasets (one entry per evaluation dataset)")
        else:
            for name, d in datasets.items():
                problems += _section_problems(d, f"datasets.{name}.")
        if not _present(metrics, primary_metric):
            problems.append(f"{primary_metric} (register.primary_metric)")
        if not problems:
            problems += _value_problems(metrics, datasets)
    if problems:
        raise ValueError(
            f"{path}: not a complete metrics file of `readl evaluate`: missing, non-numeric or wrong "
            f"{', '.join(dict.fromkeys(problems))}; re-run `readl evaluate` (dvc repro evaluate)"
        )
    return dict(metrics)


def _value_problems(metrics: Mapping, datasets: Mapping) -> list[str]:
    """Values outside [0, 1] or non-finite, and top-level averages that are not the mean over the datasets."""
    out = []
    for where, d in [("", metrics), *((f"datasets.{n}.", v) for n, v in datasets.items())]:
        for section, keys in METRIC_FIELDS.items():
            for k in keys:
                v = d[section][k]
                if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                    out.append(f"{where}{section}.{k} = {v!r} (not in [0, 1])")
    if out:
        return out
    for section, keys in METRIC_FIELDS.items():
        for k in keys:
            vals = [v[section][k] for v in datasets.values() if v[section][k] is not None]
            mean, top = (sum(vals) / len(vals) if vals else None), metrics[section][k]
            if (mean is None) != (top is None) or (mean is not None and abs(mean - top) > 1e-6):
                out.append(f"{section}.{k} = {top!r} (the mean over datasets is {mean!r})")
    return out


def _present(d: Mapping, dotted: str) -> bool:
    """True when the dotted key exists (its value may be null) and is a number or null."""
    node = d
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return _is_number(node)


def check_thresholds(path: Path) -> dict:
    """Read and check ``thresholds.json``: numeric ``tau_t.value`` and ``tau_i.value``.

    Raises:
        FileNotFoundError / ValueError: missing, not JSON, or lacking a value (named in the message).
    """
    from readl.localization.thresholds import read_thresholds_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: not found; run `readl calibrate` (dvc repro calibrate) first")
    data = read_thresholds_file(path)
    missing = [
        f"{k}.value"
        for k in ("tau_t", "tau_i")
        if not isinstance(data.get(k), Mapping) or not _is_number(data[k].get("value")) or data[k].get("value") is None
    ]
    if missing:
        raise ValueError(
            f"{path}: thresholds lack numeric {', '.join(missing)}; re-run `readl calibrate` (dvc repro calibrate)"
        )
    return dict(data)


def check_train_run(path: Path) -> str | None:
    """The training ``run_id`` of ``train_run.json``; None when the file is absent (training skipped).

    Raises:
        ValueError: the file is not JSON or has no string ``run_id``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    data = read_json_input(path, "train")
    run_id = data.get("run_id") if isinstance(data, Mapping) else None
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"{path}: expected JSON with a 'run_id'; re-run `readl train` (dvc repro train)")
    return run_id


def check_adapter(folder: Path | None) -> Path | None:
    """The PEFT adapter folder when it holds ``adapter_config.json`` (else None: the base model alone).

    Raises:
        ValueError: the config is not JSON, or the weights file is missing (names the folder).
    """
    if folder is None or not (Path(folder) / "adapter_config.json").is_file():
        return None
    folder = Path(folder)
    config = read_json_input(folder / "adapter_config.json", "train")
    if not isinstance(config, Mapping):
        raise ValueError(f"{folder / 'adapter_config.json'}: not a JSON object; re-run `readl train`")
    if not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        raise ValueError(
            f"{folder}: adapter_config.json without weights ({' or '.join(ADAPTER_WEIGHTS)}); the "
            f"adapter is incomplete: re-run `readl train` (dvc repro train)"
        )
    return folder
