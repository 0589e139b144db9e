"""The production loop on real components (issue 26): the `inspect` flow in Prefect's test harness with the tiny
kit, the intake from a real local S3 server, `readl review` as a real server process driven by headless Chromium
(Playwright) and raw HTTP for the security checks, a server killed mid-write. The README's own blocks run the loop
end to end in tests/integration/test_readme.py (`test_production_loop_blocks...`)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from store_fill import fill  # a store filled without a model
from support import PARAMS, free_port, stop, wait_http

from readl.production.review import MAX_BODY
from readl.production.store import Store

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
REVIEWERS = {"alice": "alice-token-1", "bob": "bob-token-2"}


class Review:
    """`readl review` on a free port over ``home`` (restartable: same session secret)."""

    def __init__(self, home: Path, logs: Path) -> None:
        self.home, self.logs, self.port, self.proc = home, logs, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        self.reviewers = dict(REVIEWERS)

    def start(self) -> Review:
        env = {
            **os.environ,
            "READL_REVIEWERS": ",".join(f"{k}:{v}" for k, v in self.reviewers.items()),
            "READL_REVIEW_SECRET": "test-secret-0123456789",
        }
        cmd = [str(BIN / "readl"), "review", "--port", str(self.port), "--home", str(self.home)]
        self.logs.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logs, "a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        wait_http(f"{self.url}/healthz", self.proc, 60, self.logs)
        return self

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop(self.proc)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def signed_in(base: str, name: str = "alice") -> httpx.Client:
    """An HTTP client signed in as ``name``; its ``X-CSRF-Token`` header set."""
    c = httpx.Client(base_url=base, timeout=30)
    r = c.post(
        "/login",
        json={"reviewer": name, "token": REVIEWERS[name]},
        headers={"X-CSRF-Token": _csrf(c.get("/login").text)},
    )
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = _csrf(c.get("/").text)
    return c


@pytest.fixture
def filled(tmp_path, sample_dir):
    home = tmp_path / "home"
    store = Store(f"sqlite:///{home / 'production.db'}")
    hashes = fill(store, home, sample_dir, [0.2 + 0.03 * i for i in range(12)])
    return home, store, hashes


@pytest.fixture
def review(filled, tmp_path):
    server = Review(filled[0], tmp_path / "review.log").start()
    yield server
    server.stop()


def _verdict(image: str, request_id: str | None = None, verdict: str = "ok") -> dict:
    return {"image": image, "verdict": verdict, "request_id": request_id or uuid.uuid4().hex}


@pytest.mark.slow
def test_the_inspect_flow_stores_records_skips_known_content_and_reports_unreadable(
    tiny_dir, sample_dir, tmp_path, monkeypatch
):
    from prefect.testing.utilities import prefect_test_harness

    sys.path.insert(0, str(REPO))
    from flows.inspect_images import inspect

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    intake = tmp_path / "intake"
    intake.mkdir()
    files = sorted((sample_dir / "mpdd_derived/metal_plate/test/images").glob("*.png"))[:4]
    for f in files:
        shutil.copy(f, intake / f.name)
    (intake / "broken.png").write_bytes(files[0].read_bytes()[:200])  # truncated: reported, not skipped
    with prefect_test_harness():
        first = inspect(str(intake), model="tiny", shards=2)
        shutil.copy(files[0], intake / "renamed-copy.png")  # same content, new name: already inspected
        second = inspect(str(intake), model="tiny", shards=2)
    assert (first["new"], first["skipped"], len(first["shards"])) == (5, 0, 2)
    assert sum(s["images"] for s in first["shards"]) == 4 and sum(s["errors"] for s in first["shards"]) == 1
    assert all(s["images_per_s"] > 0 for s in first["shards"])
    assert (second["new"], second["skipped"]) == (0, 6)
    store = Store(f"sqlite:///{tmp_path / 'data/production/production.db'}")
    assert store.counts() == {"inspected": 5, "unreadable": 1, "verdicts": 0, "waiting": 4}
    item = store.claim_next("alice").inspection
    assert item.model_version == "tiny + no adapter" and 0 <= item.score <= 1
    assert item.record["tokens"] and Path(item.overlay_path).is_file() and Path(item.image_path).is_file()
    assert item.margin == pytest.approx(abs(item.record["decision_score"] - item.threshold))
    assert hashlib.sha256(Path(item.image_path).read_bytes()).hexdigest() == item.image_hash


def test_the_intake_reads_an_s3_prefix(s3_server, sample_dir, tmp_path, monkeypatch):
    from readl.production.intake import collect

    monkeypatch.setenv("READL_S3_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    client = s3_server.client()
    client.create_bucket(Bucket="intake")
    files = sorted((sample_dir / "mpdd_derived/metal_plate/test/images").glob("*.png"))[:3]
    for f in files:
        client.put_object(Bucket="intake", Key=f"line-1/{f.name}", Body=f.read_bytes())
    client.put_object(Bucket="intake", Key="line-1/z-again.png", Body=files[0].read_bytes())
    client.put_object(Bucket="intake", Key="line-1/notes.txt", Body=b"not an image")
    client.put_object(Bucket="intake", Key="line-2/other.png", Body=files[1].read_bytes())
    known = {hashlib.sha256(files[2].read_bytes()).hexdigest()}
    pending, skipped = collect("s3://intake/line-1/", known, tmp_path / "images")
    assert [p.origin for p in pending] == [f"s3://intake/line-1/{f.name}" for f in files[:2]]
    assert skipped == 2  # the known content, and the same bytes under another key
    assert all(p.path.read_bytes() == f.read_bytes() for p, f in zip(pending, files))


def test_unauthenticated_and_csrf_less_posts_are_refused(review, filled):
    _, store, hashes = filled
    anonymous = httpx.Client(base_url=review.url)
    token = _csrf(anonymous.get("/login").text)  # a valid CSRF token: the refusal is for the missing sign-in
    r = anonymous.post("/api/verdict", json=_verdict(hashes[0]), headers={"X-CSRF-Token": token})
    assert r.status_code == 401
    assert anonymous.get("/api/next").status_code == 401 and anonymous.get(f"/images/{hashes[0]}").status_code == 401
    bad = anonymous.post("/login", json={"reviewer": "alice", "token": "guess"}, headers={"X-CSRF-Token": token})
    assert bad.status_code == 401
    alice = signed_in(review.url)
    for headers in ({"X-CSRF-Token": ""}, {"X-CSRF-Token": "forged"}):
        assert alice.post("/api/verdict", json=_verdict(hashes[0]), headers=headers).status_code == 403
    assert anonymous.post("/login", json={"reviewer": "alice", "token": REVIEWERS["alice"]}).status_code == 403
    assert store.counts()["verdicts"] == 0
    assert alice.post("/api/verdict", json=_verdict(hashes[0])).status_code == 201  # the same POST, with its token


def test_only_intake_images_are_served(review, filled, tmp_path):
    home, store, hashes = filled
    (home / "secret.txt").write_text("not for reviewers")
    outside = tmp_path / "outside.png"  # a row whose stored path left the production folder (a tampered database)
    outside.write_bytes(b"not for reviewers")
    row = store.inspection(hashes[1])
    with store.session() as s, s.begin():
        s.get(type(row), hashes[1]).image_path = str(outside)
    alice = signed_in(review.url)
    assert alice.get(f"/images/{hashes[0]}").content == Path(next((home / "images").glob(f"{hashes[0]}*"))).read_bytes()
    cookie = "; ".join(f"{k}={v}" for k, v in alice.cookies.items())
    for path in (
        "/images/../production.db",
        "/images/..%2Fproduction.db",
        "/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/overlays/..%2f..%2fsecret.txt",
        f"/images/{hashes[0]}%2f..%2f..%2fsecret.txt",
        "/images/" + "0" * 64,
        f"/images/{hashes[1]}",
    ):
        conn = http.client.HTTPConnection("127.0.0.1", review.port, timeout=10)  # sends the path as written
        conn.request("GET", path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 404, (path, resp.status)
        assert b"SQLite format" not in body and b"not for reviewers" not in body


def test_a_50_mb_body_is_refused(review, filled):
    _, store, hashes = filled
    alice = signed_in(review.url)
    cookie = "; ".join(f"{k}={v}" for k, v in alice.cookies.items())
    with socket.create_connection(("127.0.0.1", review.port), timeout=10) as s:  # declared length
        head = (
            f"POST /api/verdict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nCookie: {cookie}\r\n"
            f"X-CSRF-Token: {alice.headers['X-CSRF-Token']}\r\nContent-Length: {50 * 2**20}\r\n\r\n"
        )
        s.sendall(head.encode() + b"{" + b" " * 2**16)
        assert s.recv(4096).split(b"\r\n")[0] == b"HTTP/1.1 413 Request Entity Too Large"

    with socket.create_connection(("127.0.0.1", review.port), timeout=10) as s:  # no declared length: counted
        head = head.replace(f"Content-Length: {50 * 2**20}", "Transfer-Encoding: chunked")
        s.sendall(head.encode())
        chunk = b"%x\r\n%s\r\n" % (2**20, b" " * 2**20)
        try:
            for _ in range(50):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while the client was still sending
        assert s.recv(4096).split(b"\r\n")[0] == b"HTTP/1.1 413 Request Entity Too Large"
    valid = _verdict(hashes[0]) | {"note": "x" * (MAX_BODY + 1)}  # a well-formed verdict, only too long
    assert alice.post("/api/verdict", json=valid).status_code == 413
    assert store.counts()["verdicts"] == 0 and alice.get("/healthz").status_code == 200
    assert alice.post("/api/verdict", json=_verdict(hashes[0])).status_code == 201  # the server is fine


def test_sessions_end_when_a_token_changes_and_foreign_hosts_are_refused(review, filled):
    _, _, hashes = filled
    alice, bob = signed_in(review.url), signed_in(review.url, "bob")
    assert alice.get("/api/next").status_code == 200
    assert httpx.get(f"{review.url}/healthz", headers={"Host": "rebound.example"}).status_code == 400
    review.stop()
    review.reviewers["alice"] = "a-new-token"  # alice's token leaked: replaced, the server restarted
    review.start()
    alice = httpx.Client(base_url=review.url, cookies=alice.cookies, headers=alice.headers)
    bob = httpx.Client(base_url=review.url, cookies=bob.cookies, headers=bob.headers)
    assert (
        alice.get("/api/next").status_code == 401
        and alice.post("/api/verdict", json=_verdict(hashes[0])).status_code == 401
    )
    assert bob.get("/api/next").status_code == 200  # same secret, same token: still signed in


def test_guessing_a_token_is_throttled(review):
    c = httpx.Client(base_url=review.url)
    token = _csrf(c.get("/login").text)
    guess = lambda t: c.post("/login", json={"reviewer": "bob", "token": t}, headers={"X-CSRF-Token": token})
    assert [guess(f"guess-{i}").status_code for i in range(5)] == [401] * 5
    refused = guess(REVIEWERS["bob"])  # even the right token, until the window has passed
    assert refused.status_code == 429 and "try again in" in refused.json()["detail"]
    assert signed_in(review.url, "alice").get("/api/next").status_code == 200  # other reviewers unaffected


def test_no_verdict_is_lost_or_doubled_when_the_server_is_killed_mid_write(review, filled):
    """Four verdicts are answered, then eight are POSTed at once and the server is SIGKILLed as they go out (any
    of them may be committed, answered, or neither). After a restart the page's retries (same request ids) store
    the missing ones: every answered verdict was already there, and each image has exactly one."""
    _, store, hashes = filled
    alice = signed_in(review.url)
    ids = {h: uuid.uuid4().hex for h in hashes}
    acked: list[str] = []

    def post(h: str) -> None:
        try:
            if alice.post("/api/verdict", json=_verdict(h, ids[h])).status_code == 201:
                acked.append(h)
        except httpx.TransportError:
            pass  # killed before it answered

    for h in hashes[:4]:
        post(h)
    burst = [threading.Thread(target=post, args=(h,)) for h in hashes[4:]]
    for t in burst:
        t.start()
    review.kill()
    for t in burst:
        t.join(30)
    assert set(hashes[:4]) <= set(acked)
    stored = {v.image_hash for _, v in store.reviewed()}
    assert set(acked) <= stored, "an acknowledged verdict was lost"
    review.start()
    again = httpx.Client(base_url=review.url, cookies=alice.cookies, headers=alice.headers, timeout=30)
    for h in hashes:  # the page's retry, same request id
        r = again.post("/api/verdict", json=_verdict(h, ids[h]))
        assert r.status_code == (200 if h in stored else 201), (h, r.status_code)
    assert sorted(v.image_hash for _, v in store.reviewed()) == sorted(hashes)


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def sign_in(page, base: str, name: str) -> None:
    page.goto(f"{base}/")
    page.fill("#reviewer", name)
    page.fill("#token", REVIEWERS[name])
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-image], #done:visible")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_two_reviewers_in_two_browsers_store_every_verdict_exactly_once(review, filled, tmp_path):
    from playwright.sync_api import sync_playwright

    _, store, hashes = filled
    with sync_playwright() as p:
        browser = _browser(p)
        pages = {name: browser.new_context().new_page() for name in REVIEWERS}
        for name, page in pages.items():
            sign_in(page, review.url, name)
        shown = {name: page.get_attribute("body", "data-image") for name, page in pages.items()}
        assert shown["alice"] != shown["bob"], "two reviewers are never shown the same image"
        rounds = 0
        while any(pages[n].is_hidden("#done") for n in pages):
            active = [n for n in pages if pages[n].is_hidden("#done")]
            for i, n in enumerate(active):  # both press before either waits: concurrent POSTs
                pages[n].keyboard.press("o" if (rounds + i) % 2 else "n")
            for n in active:
                pages[n].wait_for_function(
                    "([before]) => document.body.dataset.image !== before || "
                    "getComputedStyle(document.getElementById('done')).display !== 'none'",
                    arg=[shown[n]],
                )
                shown[n] = pages[n].get_attribute("body", "data-image")
            rounds += 1
            assert rounds < 40
        pages["alice"].goto(f"{review.url}/summary")
        pages["alice"].screenshot(path=str(tmp_path / "summary.png"), full_page=True)
        browser.close()
    verdicts = [v for _, v in store.reviewed()]
    assert sorted(v.image_hash for v in verdicts) == sorted(hashes), "each image exactly once"
    assert {v.reviewer for v in verdicts} == {"alice", "bob"}
    assert {v.verdict for v in verdicts} == {"ok", "ng"}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_a_held_key_decides_one_image(review, filled):
    """Keyboard auto-repeat (a key held down) must not decide the images that load while it is down."""
    from playwright.sync_api import sync_playwright

    _, store, _ = filled
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        sign_in(page, review.url, "alice")
        first = page.get_attribute("body", "data-image")
        for _ in range(6):  # the first keydown, then five auto-repeats
            page.keyboard.down("n")
        page.keyboard.up("n")
        page.wait_for_function("(before) => document.body.dataset.image !== before", arg=first)
        page.wait_for_timeout(500)
        browser.close()
    assert [v.image_hash for _, v in store.reviewed()] == [first]
