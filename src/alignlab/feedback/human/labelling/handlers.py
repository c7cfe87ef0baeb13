"""The labelling app's request handlers: the page and its assets, and the JSON API over a `LabelStore`."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from alignlab.feedback.human.labelling.answers import answer_from_display
from alignlab.feedback.human.labelling.items import LabelItem
from alignlab.feedback.human.labelling.page import APP_CSS, APP_JS, INDEX_HTML
from alignlab.feedback.human.labelling.store import (
    LabelConflict,
    Labeller,
    LabelStore,
    UnknownItem,
)

MAX_BODY_BYTES = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


async def index(request: Request) -> Response:
    return Response(INDEX_HTML, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def script(request: Request) -> Response:
    return Response(APP_JS, media_type="text/javascript; charset=utf-8", headers=SECURITY_HEADERS)


async def style(request: Request) -> Response:
    return Response(APP_CSS, media_type="text/css; charset=utf-8", headers=SECURITY_HEADERS)


class LabellingApi:
    """The JSON API (/api/next, /api/label, /api/undo) for the labeller the middleware resolved.

    The store blocks on SQLite, so its calls run in a worker thread, off the event loop.
    """

    def __init__(self, store: LabelStore):
        self.store = store

    async def next_item(self, request: Request) -> Response:
        labeller = _labeller_of(request)
        payload = await run_in_threadpool(self._next_payload, labeller)
        return _json({"labeller": labeller.name, **payload})

    async def label(self, request: Request) -> Response:
        data = await _json_body(request)
        if isinstance(data, Response):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("item_id"), str):
            return _json({"error": "the body must be an object with a string 'item_id'"}, 400)
        return await run_in_threadpool(self._submit, _labeller_of(request), data)

    async def undo(self, request: Request) -> Response:
        data = await _json_body(request)  # JSON only, like /api/label: keeps other sites' forms out
        if isinstance(data, Response):
            return data
        return await run_in_threadpool(self._undo, _labeller_of(request))

    def _next_payload(self, labeller: Labeller) -> dict:
        item = self.store.next_item(labeller)
        return {"item": self._item_view(labeller, item) if item else None,
                "progress": self.store.progress(labeller).as_dict()}

    def _submit(self, labeller: Labeller, data: dict) -> Response:
        """Validate and store one answer."""
        item = self.store.item(data["item_id"])
        if item is None:
            return _json({"error": f"no item with id {data['item_id']!r}"}, 404)
        shown = self.store.shown_order(labeller, item)
        try:
            answer = answer_from_display(data, shown)
            status = self.store.submit(labeller, item.id, answer, shown)
        except LabelConflict:
            return _json({"error": "you already answered this item differently; the first answer is kept",
                          "status": "conflict", **self._next_payload(labeller)}, 409)
        except UnknownItem:
            return _json({"error": f"no item with id {data['item_id']!r}"}, 404)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"status": status, **self._next_payload(labeller)}, 201 if status == "created" else 200)

    def _undo(self, labeller: Labeller) -> Response:
        item_id = self.store.undo_last(labeller)
        if item_id is None:
            return _json({"error": "nothing to undo", "status": "nothing", **self._next_payload(labeller)}, 409)
        # the undone item itself comes next (not the queue's pick), so it can be answered again
        return _json({"status": "undone", "item": self._item_view(labeller, self.store.item(item_id)),
                      "progress": self.store.progress(labeller).as_dict()})

    def _item_view(self, labeller: Labeller, item: LabelItem) -> dict:
        shown = self.store.shown_order(labeller, item)
        return {"id": item.id, "kind": item.kind, "prompt": item.prompt,
                "responses": [item.responses[i] for i in shown]}


def _labeller_of(request: Request) -> Labeller:
    return request.state.labeller  # set by the token middleware before any route runs


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


def _json(payload: dict, status: int = 200) -> Response:
    return JSONResponse(payload, status_code=status, headers=SECURITY_HEADERS)
