"""readl fetch and readl.storage against a real local S3 server (rclone serve s3)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from readl import storage
from readl.data import fetch as F
from readl.data.sources import read_source

VISA_BUCKET, VISA_KEY = "amazon-visual-anomaly", "VisA_20220922.tar"


@pytest.fixture(autouse=True)
def no_user_aws_config(tmp_path, monkeypatch):
    """Credentials only from what a test sets; never from the developer's ~/.aws."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "READL_S3_ENDPOINT_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.asarray(
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((64, 48), Image.Resampling.BICUBIC)
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def visa_tar() -> bytes:
    """A VisA-shaped archive (split_csv + one object) of constructed images, as published
    (object folders and split_csv at the top level)."""
    m = np.zeros((48, 64), dtype=np.uint8)
    m[10:20, 10:30] = 1  # VisA masks hold class indices
    members = {
        "candle/Data/Images/Normal/0000.JPG": jpeg_bytes(0),
        "candle/Data/Images/Normal/0001.JPG": jpeg_bytes(1),
        "candle/Data/Images/Anomaly/000.JPG": jpeg_bytes(2),
        "candle/Data/Masks/Anomaly/000.png": png_bytes(m),
        "split_csv/1cls.csv": (
            b"object,split,label,image,mask\n"
            b"candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
            b"candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
            b"candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,"
            b"candle/Data/Masks/Anomaly/000.png\n"
        ),
    }
    return tar_bytes(members)


@pytest.fixture(scope="module")
def public_bucket(public_s3_server, visa_tar):
    client = public_s3_server.client()
    client.create_bucket(Bucket=VISA_BUCKET)
    client.put_object(Bucket=VISA_BUCKET, Key=VISA_KEY, Body=visa_tar)
    return public_s3_server


def leftovers(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))


def test_visa_from_public_s3_resumes_verifies_and_extracts(public_bucket, visa_tar, tmp_path, monkeypatch):
    monkeypatch.setenv("READL_S3_ENDPOINT_URL", public_bucket.endpoint)  # the default s3:// URL
    dest = tmp_path / "raw"
    part = dest / ".fetch" / f"{VISA_KEY}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(visa_tar[:3000])  # an interrupted earlier download (of this URL)
    part.with_name(part.name + ".url").write_text(
        "sha256:" + hashlib.sha256(F.SOURCES["visa"].url.encode()).hexdigest()
    )
    seen = []
    sha = hashlib.sha256(visa_tar).hexdigest()
    res = F.fetch("visa", dest, sha256=sha, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (3000, len(visa_tar))  # resumed from the .part file, not restarted
    assert seen[-1] == (len(visa_tar), len(visa_tar))
    assert res.path == dest / "visa" and res.sha256 == sha and res.verified
    records = list(read_source("visa", res.path))
    assert [r.label for r in records] == [0, 0, 1] and records[2].mask_path.is_file()
    assert not (dest / ".fetch").exists()  # archive removed after extraction
    with pytest.raises(FileExistsError, match="--force"):
        F.fetch("visa", dest, sha256=sha)


def test_checksum_mismatch_keeps_nothing(public_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("READL_S3_ENDPOINT_URL", public_bucket.endpoint)
    dest = tmp_path / "raw"
    with pytest.raises(F.ChecksumError, match="does not match"):
        F.fetch("visa", dest, sha256="0" * 64)
    assert leftovers(dest) == []  # no archive, no .part, no (half-)extracted folder
    with pytest.raises(F.ChecksumError):  # the table's checksum is the real VisA's
        F.fetch("visa", dest)
    assert not (dest / "visa").exists()


def test_https_range_resume_and_unknown_checksum(public_bucket, tmp_path):
    # plain HTTP GET on the anonymous server = a public https download; one top-level folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Toy-main/data/a.jpg", jpeg_bytes(5))
        zf.writestr("Toy-main/label/a.json", "{}")
    data = buf.getvalue()
    public_bucket.client().put_object(Bucket=VISA_BUCKET, Key="toy.zip", Body=data)
    url = f"{public_bucket.endpoint}/{VISA_BUCKET}/toy.zip"
    dest = tmp_path / "raw"
    (dest / ".fetch").mkdir(parents=True)
    (dest / ".fetch" / "toy.zip.part").write_bytes(data[:100])
    (dest / ".fetch" / "toy.zip.part.url").write_text("sha256:" + hashlib.sha256(url.encode()).hexdigest())
    seen = []
    res = F.fetch("toyset", dest, url=url, progress=lambda d, t: seen.append(d))
    assert seen[0] == 100
    assert not res.verified and res.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(leftovers(dest)) == [
        "toyset",
        "toyset/data",
        "toyset/data/a.jpg",
        "toyset/label",
        "toyset/label/a.json",
    ]  # unwrapped


def test_signed_s3_and_storage_errors(s3_server, tmp_path, monkeypatch):
    client = s3_server.client()
    client.create_bucket(Bucket="private")
    client.put_object(Bucket="private", Key="a.tar", Body=tar_bytes({"x/y.txt": b"hi"}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    res = F.fetch(
        "privset", tmp_path / "raw", url="s3://private/a.tar", endpoint_url=s3_server.endpoint, unsigned=False
    )
    assert (res.path / "y.txt").read_text() == "hi"

    c = storage.s3_client(s3_server.endpoint, max_attempts=1)
    assert storage.object_size(c, "private", "a.tar") > 0
    with pytest.raises(storage.StorageError, match="object not found: s3://private/nope"):
        storage.object_size(c, "private", "nope")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    bad = storage.s3_client(s3_server.endpoint, max_attempts=1)
    with pytest.raises(storage.StorageError, match="access denied"):
        storage.object_size(bad, "private", "a.tar")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = storage.s3_client(f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=1)
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint"):
        storage.object_size(dead, "private", "a.tar")


def test_endpoint_resolution(monkeypatch):
    assert storage.resolve_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-env")
    assert storage.resolve_endpoint() == "http://aws-env"
    monkeypatch.setenv("READL_S3_ENDPOINT_URL", "http://readl-env")
    assert storage.resolve_endpoint() == "http://readl-env"
    assert storage.resolve_endpoint("http://arg") == "http://arg"
    assert storage.parse_s3_url("s3://b/k/x.tar") == ("b", "k/x.tar")
    with pytest.raises(ValueError):
        storage.parse_s3_url("https://b/k")


@pytest.mark.parametrize("name", ["goodsad", "vision", "pr_real", "real_iad", "wfdd", "dtd", "mvtec_3d", "mvtec_ad2"])
def test_manual_sources_explain_where_and_layout(name, tmp_path):
    with pytest.raises(F.ManualDownloadRequired) as err:
        F.fetch(name, tmp_path / "raw")
    msg = str(err.value)
    assert f"{tmp_path / 'raw' / name}/" in msg and F.SOURCES[name].page in msg
    assert f"layout: {F.SOURCES[name].layout}" in msg
    assert not (tmp_path / "raw").exists()


def test_unknown_and_bundled_names(tmp_path):
    with pytest.raises(KeyError, match="known: .*visa"):
        F.fetch("nope", tmp_path)
    with pytest.raises(F.ManualDownloadRequired, match="dvc pull data.dvc"):
        F.fetch("hazelnut_toy", tmp_path)


def test_zip_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", "x")
    (tmp_path / "into").mkdir()
    with pytest.raises(F.FetchError, match="outside"):
        F.extract(archive, tmp_path / "into")
    assert not (tmp_path / "evil.txt").exists()


def test_cli_fetch(public_bucket, visa_tar, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from readl.cli import app

    dest = tmp_path / "raw"
    result = CliRunner().invoke(app, ["fetch", "goodsad", "--dest", str(dest)])
    assert result.exit_code == 2 and "github.com/jianzhang96/GoodsAD" in result.output
    url = f"s3://{VISA_BUCKET}/{VISA_KEY}"
    result = CliRunner().invoke(
        app,
        ["fetch", "mini", "--dest", str(dest), "--url", url, "--endpoint-url", public_bucket.endpoint, "--unsigned"],
    )
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(visa_tar).hexdigest() in result.output  # unknown checksum: printed
    assert (dest / "mini" / "split_csv" / "1cls.csv").is_file()


def test_lost_connection_is_retried_resuming(public_bucket, visa_tar, tmp_path, monkeypatch):
    real = F._download_s3
    calls = []

    def flaky(url, part, progress, endpoint_url, unsigned):
        calls.append(part.stat().st_size if part.exists() else 0)
        if len(calls) == 1:  # the first connection drops after 1000 bytes
            part.write_bytes(visa_tar[:1000])
            raise F._Interrupted("connection lost (simulated)")
        return real(url, part, progress, endpoint_url, unsigned)

    monkeypatch.setattr(F, "_download_s3", flaky)
    monkeypatch.setattr(F.time, "sleep", lambda s: None)
    out = F.download(
        f"s3://{VISA_BUCKET}/{VISA_KEY}", tmp_path / "v.tar", endpoint_url=public_bucket.endpoint, unsigned=True
    )
    assert calls == [0, 1000] and out.read_bytes() == visa_tar


def test_same_archive_name_from_another_url_is_not_reused(public_bucket, tmp_path):
    one, two = tar_bytes({"a.txt": b"one"}), tar_bytes({"a.txt": b"two"})
    client = public_bucket.client()
    client.put_object(Bucket=VISA_BUCKET, Key="v1/data.tar", Body=one)
    client.put_object(Bucket=VISA_BUCKET, Key="v2/data.tar", Body=two)
    url1, url2 = (f"{public_bucket.endpoint}/{VISA_BUCKET}/{v}/data.tar" for v in ("v1", "v2"))
    dest = tmp_path / "raw"
    first = F.fetch("one", dest, url=url1, keep_archive=True)
    assert (first.path / "a.txt").read_text() == "one"
    second = F.fetch("two", dest, url=url2, keep_archive=True)  # same file name, other URL
    assert (second.path / "a.txt").read_text() == "two"
    assert second.sha256 == hashlib.sha256(two).hexdigest()
    # same URL, but the kept archive was changed on disk: downloaded again, not reused
    (dest / ".fetch" / "data.tar").write_bytes(one)
    third = F.fetch("three", dest, url=url2)
    assert (third.path / "a.txt").read_text() == "two"
    # an interrupted download of another URL is not resumed either
    (dest / ".fetch").mkdir()
    (dest / ".fetch" / "data.tar.part").write_bytes(one[:700])
    (dest / ".fetch" / "data.tar.part.url").write_text(url1)
    fourth = F.fetch("four", dest, url=url2)
    assert (fourth.path / "a.txt").read_text() == "two"
    assert not (dest / ".fetch").exists()


def test_archive_that_fails_to_extract_is_not_reused(public_bucket, tmp_path):
    client = public_bucket.client()
    client.put_object(Bucket=VISA_BUCKET, Key="broken.zip", Body=b"PK\x03\x04 not really a zip")
    url = f"{public_bucket.endpoint}/{VISA_BUCKET}/broken.zip"
    dest = tmp_path / "raw"
    with pytest.raises(F.FetchError):
        F.fetch("broken", dest, url=url, keep_archive=True)
    assert leftovers(dest) == []  # the bad archive is gone: a rerun downloads again


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "/abs", "..", ".", ""])
def test_source_name_cannot_escape_dest(name, public_bucket, tmp_path):
    dest = tmp_path / "a" / "b" / "raw"
    url = f"{public_bucket.endpoint}/{VISA_BUCKET}/{VISA_KEY}"
    with pytest.raises(F.FetchError, match="plain folder name"):
        F.fetch(name, dest, url=url)
    assert leftovers(tmp_path) == []
