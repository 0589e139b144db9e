"""Load on `readl serve`: N concurrent requests, what comes back, and whether work outlives its request.

Starts `readl serve` on 127.0.0.1 (a free port) in a project with a registered model (after `make repro`), sends
each round of N concurrent one-image requests (default 20, then 100), and prints per round the count of answers by
class (2xx / 4xx / 5xx / none: a request the client gave up on after the server's timeout + 60 s), p50 / p95 / max
latency, and the server's CPU time in the 10 s after the round's last answer (work still running for requests
already answered; one batch of the tiny model is about 1-2 CPU-seconds here). Bounded: at most 200 requests a
round, one image each, the server stopped at the end (also on Ctrl-C).

    .venv/bin/python benchmarks/serve_load.py                      # in the project folder, after `make repro`
    .venv/bin/python benchmarks/serve_load.py --rounds 20 100 --timeout 60
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAX_REQUESTS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, wait: float) -> tuple[str, float]:
    """One request: (status class "2xx" / "4xx" / "5xx" / "none", seconds)."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=wait) as resp:
            resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return "none", time.perf_counter() - t0
    return f"{code // 100}xx", time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process ``pid`` and its children (the server's workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, nargs="+", default=[20, 100], help="concurrent requests per round")
    ap.add_argument("--model", default="models:/readl@champion")
    ap.add_argument("--image", type=Path, default=Path("data/raw/mvtec_ad/grid/test/broken/000.png"))
    ap.add_argument("--timeout", type=int, default=60, help="the server's request timeout, seconds")
    args = ap.parse_args()
    if max(args.rounds) > MAX_REQUESTS:
        raise SystemExit(f"at most {MAX_REQUESTS} requests a round")
    port = free_port()
    venv_bin = Path(sys.executable).parent  # `mlflow models serve` runs uvicorn from PATH: the venv's
    env = {
        **os.environ,
        "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(args.timeout),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tempfile.NamedTemporaryFile(prefix="serve_load-", suffix=".log", delete=False)  # noqa: SIM115 - the server's output
    server = subprocess.Popen(
        [str(venv_bin / "readl"), "serve", "-m", args.model, "-p", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    body = json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(args.image.read_bytes()).decode()]]}}
    ).encode()
    rows = []
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"readl serve did not come up on {base} (exit {server.poll()}); its output is in {log.name}"
                    ) from None
                time.sleep(1)
        post(f"{base}/invocations", body, args.timeout + 60)  # warm: the first request loads lazily-built parts
        for n in args.rounds:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n) as pool:
                results = list(pool.map(lambda _: post(f"{base}/invocations", body, args.timeout + 60), range(n)))
            wall = time.perf_counter() - t0
            before = cpu_seconds(server.pid)
            time.sleep(10)
            after = cpu_seconds(server.pid) - before
            lat = sorted(s for _, s in results)
            count = {c: sum(r == c for r, _ in results) for c in ("2xx", "4xx", "5xx", "none")}
            rows.append(
                [
                    n,
                    *count.values(),
                    f"{statistics.median(lat):.1f}",
                    f"{lat[int(0.95 * (n - 1))]:.1f}",
                    f"{lat[-1]:.1f}",
                    f"{wall:.1f}",
                    f"{count['2xx'] / wall:.2f}",
                    f"{after:.1f}",
                ]
            )
            print(json.dumps(dict(zip(HEADERS, rows[-1]))), flush=True)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()
    from tabulate import tabulate

    print(tabulate(rows, headers=HEADERS))


HEADERS = [
    "concurrent",
    "2xx",
    "4xx",
    "5xx",
    "no answer",
    "p50 s",
    "p95 s",
    "max s",
    "round s",
    "answers/s",
    "server CPU s in the 10 s after",
]

if __name__ == "__main__":
    main()
