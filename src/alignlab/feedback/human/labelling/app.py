"""The labelling web app (a small Starlette ASGI app over a `LabelStore`), and a way to run it.

Access: every request needs a labeller's token, or it gets 401 (the page, its script and style,
the JSON API, unknown paths alike). A token is accepted in an ``Authorization: Bearer TOKEN``
header (for scripts) or in the ``alignlab_label_token`` cookie, which ``GET /login?token=TOKEN``
sets (HttpOnly, SameSite=Strict) before redirecting to the page: that link is what a labeller is
given. Tokens are never logged (the access log is off, as the login URL carries one).

Routes (login here, with the access checks; the others in `handlers`):
    GET  /login?token=T   set the cookie, redirect to /          (401 for a wrong token)
    GET  /                the page;  GET /app.js, /app.css: its script and style
    GET  /api/next        {"labeller", "item": ITEM | null, "progress": {"done", "skipped", "total"}}
                          (done: answers other than skips; skipped: skips)
    POST /api/label       body: see `answers`; reply {"status": "created" | "duplicate", "item":
                          the next ITEM | null, "progress"} (201 / 200); 409 (with the next item)
                          for a different answer to an item already answered: the first answer is
                          kept; 400 for a body that does not fit the item; 404 for an unknown
                          item; 415 unless the body is JSON (which also keeps other sites' forms out)
    POST /api/undo        body: {} (JSON, as for /api/label); deletes this labeller's own last
                          answer and replies {"status": "undone", "item": that ITEM (to answer
                          again), "progress"}; 409 (with the next item) when there is none to undo

ITEM is {"id", "kind": "pair" | "ranking", "prompt", "responses"}, the responses in the order
this labeller sees them (shuffled per labeller, see `answers`).
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from alignlab.feedback.human.labelling.handlers import SECURITY_HEADERS, LabellingApi, index, script, style
from alignlab.feedback.human.labelling.store import LabelStore

COOKIE = "alignlab_label_token"


class _RequireToken:
    """ASGI middleware: resolve the token to a labeller, or answer 401 before any route runs."""

    def __init__(self, app, store: LabelStore):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        token = request.query_params.get("token") if scope["path"] == "/login" else _token_of(request)
        labeller = await run_in_threadpool(self.store.labeller_for_token, token)
        if labeller is None:
            response = _unauthorised(scope["path"], given=bool(token))
            return await response(scope, receive, send)
        scope.setdefault("state", {})["labeller"] = labeller
        await self.app(scope, receive, send)


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def _unauthorised(path: str, given: bool) -> Response:
    reason = "invalid or revoked token" if given else "a labeller token is required"
    headers = {**SECURITY_HEADERS, "WWW-Authenticate": "Bearer"}
    if path.startswith("/api/"):
        return JSONResponse({"error": reason}, status_code=401, headers=headers)
    text = f"401: {reason}. Open the login link you were given (/login?token=...)."
    return PlainTextResponse(text, status_code=401, headers=headers)


async def _login(request: Request) -> Response:
    token = request.query_params["token"]  # already checked by the middleware
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, token, max_age=30 * 24 * 3600, httponly=True, samesite="strict", path="/")
    return response


def create_app(store: LabelStore) -> Starlette:
    """The ASGI app serving `store` (items, labellers and labels live there)."""
    api = LabellingApi(store)
    routes = [
        Route("/login", _login, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/app.js", script, methods=["GET"]),
        Route("/app.css", style, methods=["GET"]),
        Route("/api/next", api.next_item, methods=["GET"]),
        Route("/api/label", api.label, methods=["POST"]),
        Route("/api/undo", api.undo, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_RequireToken, store=store)
    return app


# --- running it ---------------------------------------------------------------------------------


def _server(store: LabelStore, log_level: str):
    import uvicorn

    # No access log: the login URL carries a token. No lifespan: the app needs no start-up work.
    config = uvicorn.Config(create_app(store), log_level=log_level, access_log=False, lifespan="off")
    return uvicorn.Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on such sockets, and without it every
    # response waits ~40 ms for the client's delayed ACK (Nagle's algorithm).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(store: LabelStore, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C)."""
    sock = _bind(host, port)
    try:
        _server(store, log_level).run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def running_server(store: LabelStore, host: str = "127.0.0.1", port: int = 0,
                   log_level: str = "warning") -> Iterator[str]:
    """Serve in a background thread; yields the base URL (port 0 picks a free port)."""
    sock = _bind(host, port)
    server = _server(store, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="alignlab-labelling")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the labelling server failed to start")
            thread.join(0.01)
        bound_host, bound_port = sock.getsockname()[:2]
        yield f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
