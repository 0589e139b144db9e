"""``readl review``: the inspectors' web page (FastAPI + Jinja2 templates, served by uvicorn).

A reviewer signs in, gets the queue's next image (:meth:`readl.production.store.Store.claim_next`: the most
uncertain first, or the newest) with its ReAL overlay (toggle), the reasoning with the ReAL-selected tokens
highlighted (opacity by their weight w, paper Eq. 4), P(Yes) and the decision, and answers OK or NG (buttons, or
the keys ``o`` / ``n``; ``m`` toggles the map) with an optional defect type and note; the next image loads
without a page reload. ``/summary``: counts and the agreement of decisions with verdicts per model version
(:mod:`.agreement`), with its plot over time.

Safe by default:

* binds 127.0.0.1 unless ``--host`` says otherwise;
* reviewers sign in with a token each, from ``$READL_REVIEWERS`` (``alice:TOKEN,bob:sha256:HEX``: a token, or the
  sha256 hex of it so the environment need not hold it); the session is a signed cookie (``SameSite=Strict``,
  ``HttpOnly``, :data:`SESSION_S`; key ``$READL_REVIEW_SECRET``, else random per start, which signs everybody out
  on a restart) that carries a fingerprint of the reviewer's token: changing a token signs its sessions out;
* on 127.0.0.1 only requests whose ``Host`` is 127.0.0.1 or localhost are answered (a DNS-rebinding page cannot
  reach the server);
* sign-in attempts are throttled per reviewer name (:data:`LOGIN_FAILURES`);
* every POST carries the session's CSRF token in ``X-CSRF-Token`` (403 without it), sign-in included;
* images are served by content hash only, and only those the intake stored (no path ever reaches the file
  system from a URL); request bodies over :data:`MAX_BODY` bytes are refused (413) before they are read whole;
* a verdict is acknowledged after it is committed (:mod:`.store`); the page retries an unanswered POST with the
  same ``request_id``, which stores it once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.middleware.sessions import SessionMiddleware

from readl.production.store import Store, VerdictConflict

__all__ = ["MAX_BODY", "create_app", "parse_reviewers"]

MAX_BODY = 64 * 1024
"""Largest request body accepted, bytes (a verdict is well under 1 KiB)."""

SESSION_S = 8 * 3600
"""Seconds a sign-in lasts (a shift)."""

LOGIN_FAILURES, LOGIN_WINDOW_S = 5, 900
"""Failed sign-ins for one reviewer name within the window, seconds, after which sign-in is refused (429) until
the oldest failure leaves the window: guessing a token online is bounded to 5 tries per 15 minutes."""

_HASH = re.compile(r"^[0-9a-f]{64}$")
_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


def parse_reviewers(value: str | None) -> dict[str, str]:
    """``"alice:TOKEN,bob:sha256:HEX"`` -> ``{"alice": "sha256:<hex of TOKEN>", "bob": "sha256:HEX"}``.

    Raises:
        ValueError: empty, or an entry without ``name:token`` (the message shows the expected form).
    """
    out: dict[str, str] = {}
    for entry in (value or "").split(","):
        name, sep, token = entry.strip().partition(":")
        if not entry.strip():
            continue
        if not sep or not name or not token:
            raise ValueError(f"READL_REVIEWERS entry {entry.strip()!r}: expected name:token or name:sha256:HEX")
        if token.startswith("sha256:"):
            if not re.fullmatch(r"[0-9a-fA-F]{64}", token[7:]):
                raise ValueError(f"READL_REVIEWERS entry for {name!r}: sha256: must be followed by 64 hex digits")
            out[name] = token.lower()
        else:
            out[name] = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    if not out:
        raise ValueError("no reviewers: set READL_REVIEWERS=alice:TOKEN[,bob:TOKEN] (or name:sha256:HEX of the token)")
    return out


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by its Content-Length or while it streams."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, "request body too large")
            return message

        return await self.app(scope, bounded, send)


class VerdictIn(BaseModel):
    image: str = Field(pattern=r"^[0-9a-f]{64}$")
    verdict: str = Field(pattern=r"^(ok|ng)$")
    defect_type: str | None = Field(None, max_length=100)
    note: str | None = Field(None, max_length=2000)
    request_id: str = Field(pattern=r"^[A-Za-z0-9-]{8,64}$")


class SignIn(BaseModel):
    reviewer: str = Field(max_length=100)
    token: str = Field(max_length=500)


def create_app(
    store: Store, home: Path, reviewers: dict[str, str], secret: str | None = None, host: str = "127.0.0.1"
) -> FastAPI:
    """The review application (module docstring).

    Args:
        store: the production database.
        home: the production folder; only files under it are ever served.
        reviewers: :func:`parse_reviewers`'s mapping.
        secret: session signing key (default ``$READL_REVIEW_SECRET``, else random).
        host: the address served; on a loopback address only loopback ``Host`` headers are answered.
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="readl review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret or os.environ.get("READL_REVIEW_SECRET") or secrets.token_hex(32),
        session_cookie="readl_review",
        max_age=SESSION_S,
        same_site="strict",
        https_only=False,  # behind a TLS proxy the browser sees https; plain http on 127.0.0.1 needs this off
    )
    if host in ("127.0.0.1", "localhost", "::1"):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]"])
    app.add_middleware(_BodyLimit, limit=MAX_BODY)
    root = home.resolve()
    failures: dict[str, list[float]] = {}  # reviewer name -> monotonic times of recent failed sign-ins
    failures_lock = threading.Lock()

    def csrf_token(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return request.session["csrf"]

    def fingerprint(name: str) -> str:  # changes when the reviewer's token does
        return hashlib.sha256(f"readl-review|{name}|{reviewers[name]}".encode()).hexdigest()[:32]

    def signed_in(request: Request) -> str | None:
        name = request.session.get("reviewer")
        if name in reviewers and hmac.compare_digest(request.session.get("key", ""), fingerprint(name)):
            return name
        return None

    def reviewer(request: Request) -> str:
        name = signed_in(request)
        if name is None:
            raise HTTPException(401, "sign in first")
        return name

    def csrf(request: Request) -> None:
        sent, kept = request.headers.get("x-csrf-token", "").encode(), request.session.get("csrf", "").encode()
        if not kept or not hmac.compare_digest(sent, kept):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")

    def served(image_hash: str, column: str) -> FileResponse:
        if not _HASH.match(image_hash):
            raise HTTPException(404, "no such image")
        row = store.inspection(image_hash)
        path = getattr(row, column, None) if row is not None else None
        if not path:
            raise HTTPException(404, "no such image")
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(root) or not resolved.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(resolved, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return _TEMPLATES.TemplateResponse(request, "login.html", {"csrf": csrf_token(request)})

    @app.post("/login", dependencies=[Depends(csrf)])
    def login(request: Request, body: SignIn):
        now = time.monotonic()
        with failures_lock:
            recent = [t for t in failures.pop(body.reviewer, []) if now - t < LOGIN_WINDOW_S]
            if recent:  # names without a recent failure hold no memory
                failures[body.reviewer] = recent
            if len(recent) >= LOGIN_FAILURES:
                wait = int(LOGIN_WINDOW_S - (now - recent[0])) + 1
                raise HTTPException(429, f"too many failed sign-ins for {body.reviewer}: try again in {wait} s")
        want = reviewers.get(body.reviewer)
        got = "sha256:" + hashlib.sha256(body.token.encode()).hexdigest()
        if want is None or not hmac.compare_digest(want, got):
            with failures_lock:
                failures.setdefault(body.reviewer, []).append(now)
            raise HTTPException(401, "unknown reviewer or wrong token")
        request.session.clear()
        request.session.update(reviewer=body.reviewer, key=fingerprint(body.reviewer), csrf=secrets.token_urlsafe(32))
        return {"reviewer": body.reviewer}

    @app.post("/logout", dependencies=[Depends(csrf)])
    def logout(request: Request):
        request.session.clear()
        return {"signed_out": True}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        if signed_in(request) is None:
            return RedirectResponse("/login", 303)
        ctx = {"csrf": csrf_token(request), "reviewer": request.session["reviewer"]}
        return _TEMPLATES.TemplateResponse(request, "review.html", ctx)

    @app.get("/api/next")
    def next_image(order: str = "uncertainty", who: str = Depends(reviewer)):
        if order not in ("uncertainty", "newest"):
            raise HTTPException(400, "order: uncertainty or newest")
        item = store.claim_next(who, order)
        if item is None:
            return {"done": True, **store.counts()}
        i, r = item.inspection, item.inspection.record
        return {
            "done": False,
            "image": i.image_hash,
            "name": Path(i.origin).name,
            "waiting": item.waiting,
            "score": i.score,
            "decision": i.decision,
            "threshold": i.threshold,
            "answer": r.get("answer"),
            "basis": r.get("decision_basis") or "",
            "model_version": i.model_version,
            "tokens": r.get("tokens") or [r.get("reasoning") or ""],
            "selected": {str(t["index"]): t["w"] for t in r.get("selected_tokens", [])},
        }

    @app.post("/api/verdict", dependencies=[Depends(csrf)])
    def verdict(body: VerdictIn, who: str = Depends(reviewer)):
        try:
            row, created = store.add_verdict(
                body.image, who, body.verdict, body.request_id, body.defect_type, body.note
            )
        except KeyError:
            raise HTTPException(404, "no such inspected image") from None
        except VerdictConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse({"stored": row.id, "created": created}, 201 if created else 200)

    @app.get("/images/{image_hash}")
    def image(image_hash: str, _: str = Depends(reviewer)):
        return served(image_hash, "image_path")

    @app.get("/overlays/{image_hash}")
    def overlay(image_hash: str, _: str = Depends(reviewer)):
        return served(image_hash, "overlay_path")

    @app.get("/summary", response_class=HTMLResponse)
    def summary(request: Request, _: str = Depends(reviewer)):
        from readl.production.agreement import agreement, verdict_frame

        table = agreement(verdict_frame(store.reviewed()))
        ctx = {"csrf": csrf_token(request), "counts": store.counts(), "rows": table.to_dict("records")}
        return _TEMPLATES.TemplateResponse(request, "summary.html", ctx)

    @app.get("/summary/agreement.png")
    def summary_plot(_: str = Depends(reviewer)):
        from readl.production.agreement import agreement_plot, verdict_frame

        return Response(agreement_plot(verdict_frame(store.reviewed())), media_type="image/png")

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app
