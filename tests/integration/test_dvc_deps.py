"""dvc.yaml lists every readl source file a stage runs: a code change re-runs exactly the stages it affects.

For each stage whose ``cmd`` is ``python -m readl.stages.<stage> ...``, the files are derived from the code: the
stage module, then every readl module imported from there, transitively (all imports of a module, function-local
ones included, but not ``if TYPE_CHECKING:`` blocks), plus the ``__init__.py`` of every package on the way. A dep
folder covers the files below it. The CLI (readl/cli.py) is never among them: a help-text edit re-runs nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _module_name(file: Path) -> str:
    parts = file.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(nodes: list[ast.stmt], module: str, is_package: bool) -> set[str]:
    """Names of the readl modules imported anywhere in ``nodes`` (``from a import b``: ``a`` and ``a.b``)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for n in nodes:
        visit(n)
    return {m for m in found if m == "readl" or m.startswith("readl.")}


def _files_of(names: set[str]) -> set[Path]:
    """The files of ``names`` and of everything they import, transitively (with parent ``__init__.py``)."""
    seen: set[Path] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then a/b/c
            f = _module_file(".".join(parts[:i]))
            if f is None or f in seen:
                continue
            seen.add(f)
            todo.extend(_imports(ast.parse(f.read_text()).body, _module_name(f), f.name == "__init__.py"))
    return seen


def stage_sources(cmd: str) -> set[Path]:
    """The readl source files the command ``python -m readl.stages.<stage> ...`` runs (module docstring)."""
    python, flag, module = cmd.split()[:3]
    assert (python, flag) == ("python", "-m") and module.startswith("readl.stages."), cmd
    return _files_of({module})


def _covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


READL_STAGES = sorted(name for name, s in STAGES.items() if str(s.get("cmd", "")).startswith("python -m readl."))


def test_every_readl_stage_is_checked():
    assert {"curate", "train", "calibrate", "evaluate", "register"} <= set(READL_STAGES)


def _deps(spec: dict) -> list[str]:
    return [str(d) if not isinstance(d, dict) else next(iter(d)) for d in spec.get("deps", [])]


def dep_problems(cmd: str, deps: list[str]) -> tuple[list[str], list[str]]:
    """``(missing, extra)``: files the command runs that no dep covers, and src deps covering a file it does not
    run (a folder dep must be run entirely: else editing an unused file would re-run the stage)."""
    files = stage_sources(cmd)
    missing = sorted(f.relative_to(REPO).as_posix() for f in files if not _covered(f, deps))
    extra = []
    for d in (d for d in deps if d.startswith("src/")):
        path = REPO / d
        covered = [path] if path.is_file() else sorted(path.rglob("*.py"))
        if not covered or any(f not in files for f in covered):
            extra.append(d)
    return missing, extra


@pytest.mark.parametrize("stage", READL_STAGES)
def test_stage_deps_are_exactly_the_code_it_runs(stage):
    spec = STAGES[stage]
    assert SRC / "readl" / "cli.py" not in stage_sources(spec["cmd"])
    missing, extra = dep_problems(spec["cmd"], _deps(spec))
    assert not missing, f"dvc.yaml stage {stage!r} runs these files but does not depend on them: {missing}"
    assert not extra, f"dvc.yaml stage {stage!r} depends on code it never runs (drop or narrow them): {extra}"


def test_an_extra_or_missing_dependency_is_caught():
    """The check above fails both ways: a dep the stage never imports, and a file it runs without a dep."""
    spec = STAGES["train"]
    deps = _deps(spec)
    assert dep_problems(spec["cmd"], deps + ["src/readl/registry/gate.py"])[1] == ["src/readl/registry/gate.py"]
    assert dep_problems(spec["cmd"], deps + ["src/readl/model"])[1] == ["src/readl/model"]  # inference.py unused
    assert dep_problems(spec["cmd"], [d for d in deps if d != "src/readl/training/trainer.py"])[0] == [
        "src/readl/training/trainer.py"
    ]


@pytest.mark.parametrize("stage", ["warmup", "train"])
def test_training_never_imports_the_registry_or_evaluation(stage):
    """Editing the promotion gate, a report or the metrics must not invalidate a trained model (a GPU run)."""
    files = {f.relative_to(SRC).as_posix() for f in stage_sources(STAGES[stage]["cmd"])}
    assert not [f for f in files if f.startswith(("readl/registry/", "readl/evaluation/", "readl/predictor"))]
    assert "readl/tracking.py" in files  # the MLflow connection is a base service below both


def test_editing_the_gate_or_a_report_does_not_retrain(tmp_path):
    """Real ``dvc status`` on a copy of the repository's pipeline (src, dvc.yaml, params.yaml; every data dep and
    output a placeholder, recorded by ``dvc commit``): editing a CLI help text re-runs nothing; editing
    ``registry/gate.py`` and ``evaluation/report.py`` leaves warmup and train up to date (on the real recipe: no 7B
    retraining), and re-runs what uses them."""
    import json
    import shutil
    import subprocess
    import sys

    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(SRC, root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    for spec in STAGES.values():
        for entry in [*spec.get("deps", []), *spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
            path = root / (entry if isinstance(entry, str) else next(iter(entry)))
            if path.exists():
                continue
            if path.suffix:  # a file output or data dep: a placeholder
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
            else:
                path.mkdir(parents=True)
                (path / "placeholder").write_text("x")
    run = lambda *args: subprocess.run([dvc, *args], cwd=root, check=True, capture_output=True, text=True).stdout  # noqa: E731
    run("init", "--no-scm", "-q")
    run("config", "core.analytics", "false")
    run("commit", "--force", "-q")
    assert json.loads(run("status", "--json") or "{}") == {}
    cli = root / "src/readl/cli.py"  # a help-text edit of the training commands: nothing re-runs
    cli.write_text(cli.read_text().replace("Supervised cold start", "The supervised cold start", 1))
    assert json.loads(run("status", "--json") or "{}") == {}
    for rel in ("src/readl/registry/gate.py", "src/readl/evaluation/report.py"):
        with open(root / rel, "a") as fh:
            fh.write("\n# an edit\n")
    changed = set(json.loads(run("status", "--json") or "{}"))
    assert changed == {"calibrate", "evaluate", "register"}, changed
