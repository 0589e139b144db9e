"""DVC with an S3 remote on a real local S3 server, in a throw-away repository (not the project's)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_push_and_pull_through_s3_remote(s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="readl-test")
    repo = tmp_path / "repo"
    data = repo / "data" / "raw"
    (data / "grid").mkdir(parents=True)
    for i in range(3):
        (data / "grid" / f"{i:03d}.bin").write_bytes(os.urandom(2000 + i))
    (data / "SOURCES.md").write_text("constructed test files\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    env.update(
        DVC_NO_ANALYTICS="1",
        HOME=str(tmp_path / "home"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        GIT_CONFIG_NOSYSTEM="1",
    )
    run(["git", "init", "-q"], repo, env)
    run([DVC, "init", "-q"], repo, env)
    run([DVC, "add", "-q", "data/raw"], repo, env)
    # what the README documents: the remote in .dvc/config, endpoint and keys in config.local
    run([DVC, "remote", "add", "s3", "s3://readl-test/raw"], repo, env)
    for key, value in (
        ("endpointurl", s3_server.endpoint),
        ("access_key_id", s3_server.access_key),
        ("secret_access_key", s3_server.secret_key),
    ):
        run([DVC, "remote", "modify", "--local", "s3", key, value], repo, env)
    assert s3_server.secret_key not in (repo / ".dvc" / "config").read_text()
    run([DVC, "push", "-q", "-r", "s3"], repo, env)
    stored = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="readl-test", Prefix="raw/")["Contents"]]
    assert len(stored) == 5 and all(k.startswith("raw/files/md5/") for k in stored)  # 4 + .dir

    before = tmp_path / "before"
    shutil.copytree(data, before)
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    run([DVC, "pull", "-q", "-r", "s3"], repo, env)
    cmp = filecmp.dircmp(before, data)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert not filecmp.dircmp(before / "grid", data / "grid").diff_files
    assert filecmp.cmpfiles(before / "grid", data / "grid", ["000.bin", "001.bin", "002.bin"], shallow=False)[0] == [
        "000.bin",
        "001.bin",
        "002.bin",
    ]


def test_project_declares_optional_s3_remote():
    from dvc.config import Config

    cfg = Config(dvc_dir=REPO / ".dvc", validate=False).load_one("repo")
    assert cfg["remote"]["s3"]["url"] == "s3://readl-data/raw"
    assert cfg["core"]["remote"] == "bundled"  # the in-repo sample stays the default
    assert "endpointurl" not in cfg["remote"]["s3"]  # set per machine in .dvc/config.local
