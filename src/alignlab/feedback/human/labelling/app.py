"""The labelling web app (a small Starlette ASGI app over a `LabelStore`), and a way to run it.

Access: every request needs a labeller's token, or it gets 401 (the page, its script and style,
the JSON API, unknown paths alike). A token is accepted in an ``Authorization: Bearer TOKEN``
header (for scripts) or in the ``alignlab_label_token`` cookie, which ``GET /login?token=TOKEN``
sets (HttpOnly, SameSite=Strict) before redirecting to the page: that link is what a labeller is
given. Tokens are never logged (the access log is off, as the login URL carries one).

Routes:
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

import json
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

from alignlab.feedback.human.labelling.answers import answer_from_display
from alignlab.feedback.human.labelling.page import APP_CSS, APP_JS, INDEX_HTML
from alignlab.feedback.human.labelling.store import (
    LabelConflict,
    Labeller,
    LabelStore,
    UnknownItem,
)

COOKIE = "alignlab_label_token"
MAX_BODY_BYTES = 64 * 1024
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


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
    headers = {**_SECURITY_HEADERS, "WWW-Authenticate": "Bearer"}
    if path.startswith("/api/"):
        return JSONResponse({"error": reason}, status_code=401, headers=headers)
    text = f"401: {reason}. Open the login link you were given (/login?token=...)."
    return PlainTextResponse(text, status_code=401, headers=headers)


def create_app(store: LabelStore) -> Starlette:
    """The ASGI app serving `store` (items, labellers and labels live there)."""

    def labeller_of(request: Request) -> Labeller:
        return request.state.labeller

    async def login(request: Request) -> Response:
        token = request.query_params["token"]  # already checked by the middleware
        response = RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(COOKIE, token, max_age=30 * 24 * 3600, httponly=True, samesite="strict", path="/")
        return response

    async def index(request: Request) -> Response:
        return Response(INDEX_HTML, media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)

    async def script(request: Request) -> Response:
        return Response(APP_JS, media_type="text/javascript; charset=utf-8", headers=_SECURITY_HEADERS)

    async def style(request: Request) -> Response:
        return Response(APP_CSS, media_type="text/css; charset=utf-8", headers=_SECURITY_HEADERS)

    def next_payload(labeller: Labeller) -> dict:
        item = store.next_item(labeller)
        return {"item": _item_view(store, labeller, item) if item else None,
                "progress": store.progress(labeller).as_dict()}

    async def next_item(request: Request) -> Response:
        labeller = labeller_of(request)
        payload = await run_in_threadpool(next_payload, labeller)
        return _json({"labeller": labeller.name, **payload})

    async def label(request: Request) -> Response:
        data = await _json_body(request)
        if isinstance(data, Response):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("item_id"), str):
            return _json({"error": "the body must be an object with a string 'item_id'"}, 400)
        return await run_in_threadpool(_submit, store, labeller_of(request), data, next_payload)

    def undo_payload(labeller: Labeller) -> Response:
        item_id = store.undo_last(labeller)
        if item_id is None:
            return _json({"error": "nothing to undo", "status": "nothing", **next_payload(labeller)}, 409)
        # the undone item itself comes next (not the queue's pick), so it can be answered again
        return _json({"status": "undone", "item": _item_view(store, labeller, store.item(item_id)),
                      "progress": store.progress(labeller).as_dict()})

    async def undo(request: Request) -> Response:
        data = await _json_body(request)  # JSON only, like /api/label: keeps other sites' forms out
        if isinstance(data, Response):
            return data
        return await run_in_threadpool(undo_payload, labeller_of(request))

    routes = [
        Route("/login", login, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/app.js", script, methods=["GET"]),
        Route("/app.css", style, methods=["GET"]),
        Route("/api/next", next_item, methods=["GET"]),
        Route("/api/label", label, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_RequireToken, store=store)
    return app


async def _json_body(request: Request):
    """The request's JSON body, or the error Response saying why there is none."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return _json({"error": "send the body as JSON (Content-Type: application/json)"}, 415)
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        return _json({"error": "request body too large"}, 413)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _json({"error": "request body too large"}, 413)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _json({"error": "the body is not valid JSON"}, 400)


def _submit(store: LabelStore, labeller: Labeller, data: dict, next_payload) -> Response:
    """Validate and store one answer (runs in a worker thread: the store blocks on SQLite)."""
    item = store.item(data["item_id"])
    if item is None:
        return _json({"error": f"no item with id {data['item_id']!r}"}, 404)
    shown = store.shown_order(labeller, item)
    try:
        answer = answer_from_display(data, shown)
        status = store.submit(labeller, item.id, answer, shown)
    except LabelConflict:
        return _json({"error": "you already answered this item differently; the first answer is kept",
                      "status": "conflict", **next_payload(labeller)}, 409)
    except UnknownItem:
        return _json({"error": f"no item with id {data['item_id']!r}"}, 404)
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"status": status, **next_payload(labeller)}, 201 if status == "created" else 200)


def _item_view(store: LabelStore, labeller: Labeller, item) -> dict:
    shown = store.shown_order(labeller, item)
    return {"id": item.id, "kind": item.kind, "prompt": item.prompt,
            "responses": [item.responses[i] for i in shown]}


def _json(payload: dict, status: int = 200) -> Response:
    return JSONResponse(payload, status_code=status, headers=_SECURITY_HEADERS)


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
