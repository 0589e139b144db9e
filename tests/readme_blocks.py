"""The README's command blocks, run verbatim: parse the blocks marked ``<!-- readme-test: NAME -->`` (the line
before a ```bash fence, at any indent), make a fresh project copy, run a block with bash in its own process group
(servers it starts in the background are stopped after, with the group), substitute a port number only.

Used by tests/integration/test_readme.py, tests/integration/test_readme_prefect.py and
tests/integration/test_pipeline_e2e.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support import free_port  # noqa: F401  (re-exported: the README tests import it from here)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_MARKED = re.compile(r"^([ \t]*)<!-- readme-test: ([\w-]+) -->\n\1```bash\n(.*?)\n\1```$", re.M | re.S)
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

# The suite runs the default pipeline with fewer steps and images (`make repro` keeps the defaults); each
# replacement must hit params.yaml exactly once, so a changed default fails here rather than going unnoticed.
FEWER = {
    '  max_steps: 1200            # optimizer steps (600 inverted 2 of 3 seeds; README "One result per commit")': (
        "  max_steps: 40              # optimizer steps"
    ),
    "  max_steps: 30              # optimizer steps": "  max_steps: 4               # optimizer steps",
    "per_image: 3, seed: 0": "per_image: 2, seed: 0",
    "published_splits: [train, val]}": "published_splits: [train, val], normal: 6, anomalous: 6}",
    # 40 cosine-decayed steps teach the tiny kit no format (calibrate then finds no reasoning token): constant lr
    "  lr_scheduler_type: cosine   # decays": "  lr_scheduler_type: constant # decays",
    "root: mvtec_ad, normal: 40,": "root: mvtec_ad, normal: 6,",
}


def readme_blocks(readme: Path = REPO / "README.md") -> dict[str, str]:
    """``{NAME: the block's text, dedented}`` for every marked block.

    Raises:
        AssertionError: two blocks share a name.
    """
    found = _MARKED.findall(readme.read_text())
    names = [name for _, name, _ in found]
    assert len(names) == len(set(names)), f"README.md: duplicate readme-test names {names}"
    return {
        name: textwrap.dedent(
            "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in body.split("\n"))
        )
        + "\n"
        for indent, name, body in found
    }


def with_port(block: str, readme_port: int, port: int) -> str:
    """The block with the README's port number replaced by ``port`` (the only substitution allowed)."""
    assert re.search(rf"\b{readme_port}\b", block), f"port {readme_port} not in the block:\n{block}"
    return re.sub(rf"\b{readme_port}\b", str(port), block)


def fewer_steps(params: str) -> str:
    for old, new in FEWER.items():
        assert params.count(old) == 1, old
        params = params.replace(old, new)
    return params


def user_env(work: Path, **extra: str) -> dict[str, str]:
    """The environment of a user in ``work`` with the venv activated (its bin first on PATH, its code = ``src``)."""
    own = ("MLFLOW_", "PREFECT_", "AWS_", "READL_DVC", "READL_GIT")  # the user's settings: the blocks set them
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env.update(
        PATH=f"{work / '.venv' / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(work / "src"),
        READL_DEVICE="cpu",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        DVC_NO_ANALYTICS="1",
        **GIT_ID,
        **extra,
    )
    return env


def fresh_copy(dst: Path, params=None) -> Path:
    """The repository's files (tracked and untracked, not ignored) committed in a new git repository at ``dst``,
    data not pulled, ``params`` (a function of params.yaml's text) applied before the commit, and ``.venv`` = this
    venv (pyproject.toml and constraints.txt dated before it, so ``make`` finds the install up to date)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    if params is not None:
        (dst / "params.yaml").write_text(params((dst / "params.yaml").read_text()))
    env = {**os.environ, **GIT_ID}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True, capture_output=True)
    link_venv(dst)
    return dst


def link_venv(work: Path) -> None:
    (work / ".venv").symlink_to(BIN.parent)
    for f in ("pyproject.toml", "constraints.txt"):
        os.utime(work / f, (0, 0))


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    pgid: int

    def check(self, what: str) -> Ran:
        assert self.returncode == 0, (
            f"README block {what} failed ({self.returncode}):\n{self.stdout[-3000:]}\n{self.stderr[-4000:]}"
        )
        return self


def run_block(block: str, cwd: Path, env: dict, timeout: float, logs: Path, stop: bool = True) -> Ran:
    """``bash -euo pipefail -c BLOCK`` in ``cwd``; output to files under ``logs`` (servers the block leaves in
    the background keep them open). ``stop``: stop the block's process group afterwards (see :func:`stop_group`)."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout", logs / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, stdout=o, stderr=e, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = 124
        finally:
            if stop or proc.poll() is None:
                stop_group(proc.pid)
    return Ran(rc, out.read_text(), err.read_text(), proc.pid)


def group_members(pgid: int) -> list:
    import psutil

    members = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                members.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return members


def stop_group(pgid: int, timeout: float = 20) -> None:
    """SIGTERM the process group ``pgid`` (a block's shell and what it left running), SIGKILL what remains."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.3)
        if not group_members(pgid):
            return


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


_REPRODUCED: dict[str, tuple[Path, Ran]] = {}


def reproduced_copy(tmp_path_factory) -> tuple[Path, Ran]:
    """A fresh copy (params.yaml with :data:`FEWER` steps) after the README's ``repro`` block (``make repro``),
    once per test session (tests/integration/test_pipeline_e2e.py and tests/integration/test_readme.py share it)."""
    if "copy" not in _REPRODUCED:
        work = fresh_copy(tmp_path_factory.mktemp("readme") / "readl", fewer_steps)
        assert not (work / "data/raw").exists()
        ran = run_block(readme_blocks()["repro"], work, user_env(work), 1800, work.parent / "logs-repro").check("repro")
        _REPRODUCED["copy"] = (work, ran)
    return _REPRODUCED["copy"]
