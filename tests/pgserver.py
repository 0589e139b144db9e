"""A throwaway PostgreSQL server for the tests (Debian's postgresql package: initdb + pg_ctl), on a free port of
127.0.0.1 with trust authentication, data in a fresh /tmp folder; run as the ``postgres`` user when the tests
run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from support import free_port


def pg_binaries() -> tuple[str, str] | None:
    """``(initdb, pg_ctl)``, on PATH or under /usr/lib/postgresql/*/bin; None when not installed."""
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        return None
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    return (initdb, pg_ctl) if os.path.exists(pg_ctl) else None


class PgServer:
    def __init__(self) -> None:
        self.bins = pg_binaries()
        self.base = Path(tempfile.mkdtemp(prefix="readl-pg-", dir="/tmp"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")  # KeyError: no postgres user
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.base.chmod(0o755)

    def start(self) -> PgServer:
        initdb, pg_ctl = self.bins
        data = self.base / "data"
        run = lambda *a: subprocess.run([*self.prefix, *a], check=True, capture_output=True, timeout=120)
        run(initdb, "-D", str(data), "-A", "trust", "-U", "readl", "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.base / "log"), "-w", "start")
        return self

    def database(self) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=readl dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://readl@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.bins[1], "-D", str(self.base / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.base, ignore_errors=True)
