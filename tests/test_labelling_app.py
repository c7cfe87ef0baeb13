"""The human labelling app through its HTTP API: uvicorn on loopback in a thread, httpx clients.

Covers access (401 everywhere without a valid token), the labelling flow (pairs, ties, skips,
K-way rankings, shuffled display order mapped back), idempotent resubmission and 409 conflicts,
undo of a labeller's own last answer (also from several tabs at once),
20 concurrent labellers, a kill of the server mid-stream, the exports loading with alignlab's
readers, and an exported file training the DPO stage.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from alignlab.data.errors import DataError
from alignlab.data.formats import load_preferences
from alignlab.data.readers import read_records, write_jsonl
from alignlab.feedback.human.labelling.answers import Answer, answer_from_display, display_order
from alignlab.feedback.human.labelling.export import export_preferences, export_rankings
from alignlab.feedback.human.labelling.items import load_label_items
from alignlab.feedback.human.labelling.store import LabelStore
from alignlab.feedback.human.labelling.tokens import hash_token
from alignlab.feedback.human.labelling.app import COOKIE, running_server
from alignlab.feedback.human.labelling.cli import label_app

XSS = "<img src=x onerror=alert(1)>"


# --- helpers ----------------------------------------------------------------------------------


def pair_records(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"question {i}", "responses": [f"first answer {i}", f"second answer {i}"]}
            for i in range(start, start + n)]


def ranking_records(n: int, k: int = 3) -> list[dict]:
    return [{"prompt": f"rank these {i}", "responses": [f"option {j} of {i}" for j in range(k)]} for i in range(n)]


def make_store(tmp_path: Path, records: list[dict], labellers=("alice",)) -> tuple[LabelStore, dict[str, str]]:
    data = write_jsonl(tmp_path / "items.jsonl", records)
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_items(load_label_items(data))
    return store, {name: store.add_labeller(name) for name in labellers}


# One TLS context for every client: httpx would otherwise load the CA bundle for each (~30 ms),
# although these plain-HTTP loopback clients never use it.
_TLS = ssl.create_default_context()


def client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30.0, verify=_TLS)


def answer_body(item: dict, rng: random.Random) -> dict:
    """A random but valid answer for an item as the API shows it."""
    if item["kind"] == "pair":
        return {"item_id": item["id"], "choice": rng.choice(["A", "B", "tie", "skip"])}
    if rng.random() < 0.1:
        return {"item_id": item["id"], "choice": "skip"}
    return {"item_id": item["id"], "ranking": rng.sample(range(len(item["responses"])), len(item["responses"]))}


def db_rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def served(tmp_path):
    """A store with 4 pairs, 2 three-way rankings and labellers alice and bob, served on loopback."""
    store, tokens = make_store(tmp_path, pair_records(4) + ranking_records(2), ("alice", "bob"))
    with store, running_server(store) as url:
        yield store, tokens, url


# --- access -----------------------------------------------------------------------------------

ENDPOINTS = ["/", "/app.js", "/app.css", "/api/next", "/login", "/no-such-page"]


def test_every_endpoint_refuses_a_missing_or_wrong_token(served):
    store, tokens, url = served
    store.add_labeller("carol")
    store.revoke("carol")
    wrong = ["not-a-token", tokens["alice"] + "x", ""]
    with client(url) as anonymous:
        for path in ENDPOINTS:
            assert anonymous.get(path).status_code == 401, path
            assert anonymous.get(path, headers={"Authorization": "Bearer nope-nope-nope-nope"}).status_code == 401
    with client(url) as wrong_cookie:
        wrong_cookie.cookies.set(COOKIE, "nope-nope-nope-nope")
        for path in ENDPOINTS:
            assert wrong_cookie.get(path).status_code == 401, path
    with client(url) as anonymous:
        for bad in wrong:
            assert anonymous.get("/login", params={"token": bad}).status_code == 401
        response = anonymous.post("/api/label", json={"item_id": "x", "choice": "A"})
        assert response.status_code == 401 and response.json() == {"error": "a labeller token is required"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert store.count_labels() == 0
    with client(url, tokens["alice"]) as alice:
        for path in ["/", "/app.js", "/app.css", "/api/next"]:
            assert alice.get(path).status_code == 200, path
        assert alice.get("/no-such-page").status_code == 404  # past the token check: an honest 404


def test_revoked_token_stops_working_at_once(served):
    store, tokens, url = served
    with client(url, tokens["bob"]) as bob:
        assert bob.get("/api/next").status_code == 200
        store.revoke("bob")
        assert bob.get("/api/next").status_code == 401
        new_token = store.rotate_token("bob")
        assert bob.get("/api/next").status_code == 401
    with client(url, new_token) as bob_again:
        assert bob_again.get("/api/next").json()["labeller"] == "bob"


def test_login_link_sets_a_strict_httponly_cookie_that_the_page_and_api_accept(served):
    _, tokens, url = served
    with client(url) as browser:
        response = browser.get("/login", params={"token": tokens["alice"]}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert browser.get("/").status_code == 200  # the cookie jar now carries the token
        assert browser.get("/api/next").json()["labeller"] == "alice"


# --- labelling flow ---------------------------------------------------------------------------


def test_a_labeller_works_through_pairs_ties_skips_and_rankings(tmp_path):
    store, tokens = make_store(tmp_path, pair_records(12) + ranking_records(2))
    plan = iter(["tie", "skip"] + ["A", "B"] * 5)
    shown_best_first = {}  # item id -> the texts in the order this labeller ranked them
    with store, running_server(store) as url, client(url, tokens["alice"]) as alice:
        state = alice.get("/api/next").json()
        assert state["progress"] == {"done": 0, "skipped": 0, "total": 14}
        done = skipped = 0
        while state["item"] is not None:
            item, shown = state["item"], state["item"]["responses"]
            if item["kind"] == "pair":
                body = {"item_id": item["id"], "choice": next(plan)}
                if body["choice"] in ("A", "B"):
                    shown_best_first[item["id"]] = shown if body["choice"] == "A" else shown[::-1]
            else:
                assert len(shown) == 3
                body = {"item_id": item["id"], "ranking": [2, 0, 1]}
                shown_best_first[item["id"]] = [shown[2], shown[0], shown[1]]
            response = alice.post("/api/label", json=body)
            assert response.status_code == 201, response.text
            state = response.json()
            skipped += body.get("choice") == "skip"
            done += body.get("choice") != "skip"
            assert state["progress"] == {"done": done, "skipped": skipped, "total": 14}  # a skip is not done
        assert state["progress"] == {"done": 13, "skipped": 1, "total": 14}
        assert alice.get("/api/next").json()["item"] is None
        records = {r.item.id: r for r in store.labels()}
    assert sorted(r.answer.outcome for r in records.values()) == ["ranked"] * 12 + ["skip", "tie"]
    assert len(shown_best_first) == 12
    for item_id, texts in shown_best_first.items():  # the shuffle is undone when storing
        record = records[item_id]
        assert [record.item.responses[i] for i in record.answer.ranking] == texts
    orders = {r.shown_order for r in records.values() if r.item.kind == "pair"}
    assert orders == {(0, 1), (1, 0)}  # both orders were shown (chance of not: 2 in 4096)


def test_display_answers_map_back_to_file_indices():
    assert answer_from_display({"choice": "A"}, [1, 0]) == Answer("ranked", (1, 0))
    assert answer_from_display({"choice": "B"}, [1, 0]) == Answer("ranked", (0, 1))
    assert answer_from_display({"choice": "tie"}, [1, 0]) == Answer("tie")
    assert answer_from_display({"ranking": [2, 0, 1]}, [1, 2, 0]) == Answer("ranked", (0, 1, 2))
    assert answer_from_display({"choice": "skip"}, [2, 0, 1]) == Answer("skip")
    assert display_order("salt", 1, "item", 5) == display_order("salt", 1, "item", 5)
    assert sorted(display_order("salt", 1, "item", 5)) == list(range(5))


def test_next_item_prefers_fewer_labels_and_never_repeats_one(tmp_path):
    store, tokens = make_store(tmp_path, pair_records(3), ("alice", "bob", "carol"))
    with store, running_server(store) as url:
        with client(url, tokens["alice"]) as alice, client(url, tokens["bob"]) as bob, \
                client(url, tokens["carol"]) as carol:
            first = alice.get("/api/next").json()["item"]["id"]
            alice.post("/api/label", json={"item_id": first, "choice": "A"})
            second = bob.get("/api/next").json()["item"]["id"]
            assert second != first  # the unlabelled items come before the labelled one
            bob.post("/api/label", json={"item_id": second, "choice": "skip"})  # a skip is no label
            assert carol.get("/api/next").json()["item"]["id"] == second
            assert bob.get("/api/next").json()["item"]["id"] not in (first, second)  # bob skipped second
            answered = {first}
            item = alice.get("/api/next").json()["item"]
            while item is not None:
                assert item["id"] not in answered  # never one alice already answered
                answered.add(item["id"])
                item = alice.post("/api/label", json={"item_id": item["id"], "choice": "B"}).json()["item"]
            assert answered == {first, second, *[i.id for i in load_label_items(tmp_path / "items.jsonl")]}
            assert alice.get("/api/next").json()["progress"] == {"done": 3, "skipped": 0, "total": 3}


def test_display_order_is_shuffled_per_labeller_and_stable_across_reloads(tmp_path):
    names = [f"labeller{i}" for i in range(12)]
    store, tokens = make_store(tmp_path, pair_records(1), names)
    with store, running_server(store) as url:
        orders = set()
        for name in names:
            with client(url, tokens[name]) as c:
                first = c.get("/api/next").json()["item"]["responses"]
                assert c.get("/api/next").json()["item"]["responses"] == first  # a reload shows the same
                orders.add(tuple(first))
        assert len(orders) == 2  # both orders occur among 12 labellers (chance of not: 2 / 4096)


def test_resubmission_is_idempotent_and_a_changed_answer_is_409(served):
    store, tokens, url = served
    with client(url, tokens["alice"]) as alice:
        item_id = alice.get("/api/next").json()["item"]["id"]
        body = {"item_id": item_id, "choice": "B"}
        assert alice.post("/api/label", json=body).status_code == 201
        again = alice.post("/api/label", json=body)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        changed = alice.post("/api/label", json={"item_id": item_id, "choice": "A"})
        assert changed.status_code == 409 and "first answer is kept" in changed.json()["error"]
        assert changed.json()["item"]["id"] != item_id  # the page can move on
    rows = db_rows(store.path, "SELECT item_id, outcome FROM labels")
    assert len(rows) == 1 and rows[0] == (item_id, "ranked")
    assert store.labels()[0].answer.ranking is not None


def test_undo_deletes_only_the_labellers_own_last_answer_and_shows_its_item_again(served):
    store, tokens, url = served
    with client(url, tokens["alice"]) as alice, client(url, tokens["bob"]) as bob:
        assert alice.post("/api/undo", json={}).status_code == 409  # nothing to undo yet
        first = alice.get("/api/next").json()["item"]
        second = alice.post("/api/label", json={"item_id": first["id"], "choice": "A"}).json()["item"]
        alice.post("/api/label", json={"item_id": second["id"], "choice": "skip"})
        bob.post("/api/label", json={"item_id": second["id"], "choice": "B"})  # bob's last answer
        assert alice.post("/api/undo", content=b"{}").status_code == 415  # JSON only, like /api/label

        undone = alice.post("/api/undo", json={})
        assert undone.status_code == 200 and undone.json()["status"] == "undone"
        assert undone.json()["item"] == second  # the skipped item is shown again, as it was
        assert undone.json()["progress"] == {"done": 1, "skipped": 0, "total": 6}
        assert alice.get("/api/next").json()["item"]["id"] != first["id"]  # still answered

        undone = alice.post("/api/undo", json={}).json()  # then the one before
        assert undone["item"]["id"] == first["id"]
        assert undone["progress"] == {"done": 0, "skipped": 0, "total": 6}
        # a different answer is now welcome (no 409): the undone one is gone, not kept
        assert alice.post("/api/label", json={"item_id": first["id"], "choice": "B"}).status_code == 201
    assert {(r.labeller, r.item.id) for r in store.labels()} == {("alice", first["id"]), ("bob", second["id"])}
    # the count that picks the next item went down with the undone A and up with the new B
    assert sorted(db_rows(store.path, "SELECT id, n_labels FROM items WHERE n_labels > 0")) == \
        sorted([(first["id"], 1), (second["id"], 1)])
    out = store.path.parent / "prefs.jsonl"
    assert export_preferences(store, out) == 2
    mine = [row for row, _ in read_records(out) if row["labeller"] == "alice"]
    assert [row["chosen"] for row in mine] == [first["responses"][1]]  # B as shown; the undone A is gone


def test_concurrent_undos_each_take_back_a_different_answer_of_their_own_labeller(served):
    store, tokens, url = served
    rng = random.Random(3)
    with client(url, tokens["alice"]) as alice:
        item = alice.get("/api/next").json()["item"]
        while item is not None:  # alice answers all 6 items
            item = alice.post("/api/label", json=answer_body(item, rng)).json()["item"]
    start, undone, bob_answered = threading.Barrier(7), [], []

    def undo() -> None:  # alice, from six tabs at once
        with client(url, tokens["alice"]) as tab:
            start.wait()
            response = tab.post("/api/undo", json={})
            assert response.status_code == 200, response.text
            undone.append(response.json()["item"]["id"])

    def bob_labels() -> None:  # meanwhile bob answers everything (his answers must all stay)
        with client(url, tokens["bob"]) as bob:
            start.wait()
            item = bob.get("/api/next").json()["item"]
            while item is not None:
                bob_answered.append(item["id"])
                item = bob.post("/api/label", json=answer_body(item, rng)).json()["item"]

    threads = [threading.Thread(target=undo) for _ in range(6)] + [threading.Thread(target=bob_labels)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every_item = sorted(row[0] for row in db_rows(store.path, "SELECT id FROM items"))
    assert sorted(undone) == every_item  # each undo took back a different answer
    assert sorted(bob_answered) == every_item
    with client(url, tokens["alice"]) as alice:
        assert alice.post("/api/undo", json={}).status_code == 409  # nothing of alice's is left
    assert [r.labeller for r in store.labels()] == ["bob"] * 6
    # the per-item label counts (which pick the next item) match the labels that are left
    assert db_rows(store.path, "SELECT id, n_labels FROM items ORDER BY id") == db_rows(
        store.path, """SELECT i.id, COUNT(l.id) FROM items i LEFT JOIN labels l
                       ON l.item_id = i.id AND l.outcome != 'skip' GROUP BY i.id ORDER BY i.id""")


def test_the_same_answer_sent_many_times_at_once_is_stored_once(served):
    store, tokens, url = served
    with client(url, tokens["bob"]) as bob:
        item_id = bob.get("/api/next").json()["item"]["id"]
    statuses = []

    def send():
        with client(url, tokens["bob"]) as c:
            statuses.append(c.post("/api/label", json={"item_id": item_id, "choice": "tie"}).status_code)

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 9 + [201]
    assert db_rows(store.path, "SELECT COUNT(*) FROM labels") == [(1,)]


def test_bad_requests_are_refused_with_a_reason_and_store_nothing(served):
    store, tokens, url = served
    with client(url, tokens["alice"]) as alice:
        pair = alice.get("/api/next").json()["item"]
        ranking_id = next(i.id for i in load_label_items(store.path.parent / "items.jsonl") if i.kind == "ranking")
        cases = [
            (dict(content=b'{"item_id": "x"}', headers={"Content-Type": "text/plain"}), 415),
            (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400),
            (dict(json=["a list"]), 400),
            (dict(json={"item_id": pair["id"], "choice": "C"}), 400),
            (dict(json={"item_id": pair["id"], "choice": "A", "ranking": [0, 1]}), 400),
            (dict(json={"item_id": ranking_id, "choice": "tie"}), 400),
            (dict(json={"item_id": ranking_id, "ranking": [0, 0, 1]}), 400),
            (dict(json={"item_id": ranking_id, "ranking": [0, 1]}), 400),
            (dict(json={"item_id": "no-such-item", "choice": "A"}), 404),
            (dict(content=b"x" * 70_000, headers={"Content-Type": "application/json"}), 413),
        ]
        for kwargs, status in cases:
            response = alice.post("/api/label", **kwargs)
            assert response.status_code == status, (kwargs, response.text)
            assert response.json()["error"]
    assert store.count_labels() == 0


def test_untrusted_text_is_sent_as_data_never_as_markup(tmp_path):
    records = [{"prompt": "<script>alert('p')</script>", "responses": [XSS, "<b>bold</b> & fine"]}]
    store, tokens = make_store(tmp_path, records)
    with store, running_server(store) as url, client(url, tokens["alice"]) as alice:
        api = alice.get("/api/next")
        assert api.headers["content-type"].startswith("application/json")
        assert XSS in api.json()["item"]["responses"]  # exactly as given, to be shown as text
        page = alice.get("/")
        assert XSS not in page.text and "alert" not in page.text  # the page holds no data
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp  # no inline script can run
        assert page.headers["x-content-type-options"] == "nosniff"
        script = alice.get("/app.js").text
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script
        assert "textContent" in script


# --- many labellers at once -------------------------------------------------------------------


def test_twenty_concurrent_labellers_store_exactly_4000_labels(tmp_path):
    names = [f"labeller{i:02d}" for i in range(20)]
    store, tokens = make_store(tmp_path, pair_records(200) + ranking_records(10, k=4), names)
    errors: list[str] = []
    submitted: dict[str, list[str]] = {}

    def label(name: str, seed: int) -> None:
        rng = random.Random(seed)
        ids = []
        try:
            with client(url, tokens[name]) as c:
                item = c.get("/api/next").json()["item"]
                for _ in range(200):
                    response = c.post("/api/label", json=answer_body(item, rng))
                    if response.status_code != 201:
                        errors.append(f"{name}: {response.status_code} {response.text}")
                        return
                    ids.append(item["id"])
                    item = response.json()["item"]
        except Exception as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(f"{name}: {exc!r}")
        submitted[name] = ids

    with store, running_server(store) as url:
        threads = [threading.Thread(target=label, args=(name, i)) for i, name in enumerate(names)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        assert not errors, errors[:3]
        assert all(len(set(ids)) == 200 for ids in submitted.values())  # nobody saw an item twice
        rows = db_rows(store.path, "SELECT item_id, labeller_id FROM labels")
        assert len(rows) == 4000 and len(set(rows)) == 4000
        per_labeller = db_rows(store.path, "SELECT COUNT(*) FROM labels GROUP BY labeller_id")
        assert sorted(n for (n,) in per_labeller) == [200] * 20
        # the per-item counter kept in the same transactions agrees with the labels themselves
        mismatched = db_rows(store.path, """SELECT i.id FROM items i WHERE i.n_labels !=
            (SELECT COUNT(*) FROM labels l WHERE l.item_id = i.id AND l.outcome != 'skip')""")
        assert mismatched == []
        assert db_rows(store.path, "PRAGMA integrity_check") == [("ok",)]
    print(f"4000 labels from 20 labellers in {elapsed:.1f} s")


# --- kill -------------------------------------------------------------------------------------


def _serve_until_killed(db_path: str, conn) -> None:
    """Child process: serve `db_path` and report the URL; it ends only by SIGKILL."""
    store = LabelStore(db_path)
    with running_server(store) as url:
        conn.send(url)
        while True:
            time.sleep(1)


def test_acknowledged_labels_survive_a_kill_of_the_server(tmp_path):
    store, tokens = make_store(tmp_path, pair_records(300))
    store.close()
    ctx = multiprocessing.get_context("fork")  # the child needs nothing imported again: fast
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve_until_killed, args=(str(tmp_path / "labels.sqlite"), child), daemon=True)
    process.start()
    try:
        url = parent.recv() if parent.poll(30) else pytest.fail("the server did not start")
        acknowledged = []
        with client(url, tokens["alice"]) as alice:
            item = alice.get("/api/next").json()["item"]
            while len(acknowledged) < 60:
                response = alice.post("/api/label", json={"item_id": item["id"], "choice": "A"})
                assert response.status_code == 201
                acknowledged.append(item["id"])
                item = response.json()["item"]
                if len(acknowledged) == 50:
                    # kill while another client's requests are in flight
                    sender = threading.Thread(target=_flood, args=(url, tokens["alice"]), daemon=True)
                    sender.start()
                    time.sleep(0.05)
                    os.kill(process.pid, signal.SIGKILL)
                    break
    finally:
        process.join(10)
    assert process.exitcode == -signal.SIGKILL
    assert db_rows(tmp_path / "labels.sqlite", "PRAGMA integrity_check") == [("ok",)]
    with LabelStore(tmp_path / "labels.sqlite") as reopened:
        stored = [r.item.id for r in reopened.labels()]
        assert set(acknowledged) <= set(stored) and len(stored) == len(set(stored))
        alice = reopened.labeller_for_token(tokens["alice"])
        assert reopened.progress(alice).done == len(stored)
        reopened.submit(alice, reopened.next_item(alice).id, Answer("tie"))  # still writable


def _flood(url: str, token: str) -> None:
    try:
        with client(url, token) as c:
            item = c.get("/api/next").json()["item"]
            while item is not None:
                item = c.post("/api/label", json={"item_id": item["id"], "choice": "B"}).json()["item"]
    except (httpx.HTTPError, ValueError):
        pass  # the server was killed under it, as intended


# --- data, tokens, CLI ------------------------------------------------------------------------


@pytest.mark.parametrize("record, field, message", [
    ({"prompt": "p", "responses": ["only one"]}, "responses", "at least 2"),
    ({"prompt": "p", "responses": ["same", "same"]}, "responses", "identical"),
    ({"prompt": "p", "responses": ["ok", ""]}, "responses", "empty response"),
    ({"responses": ["a", "b"]}, "prompt", "missing field"),
    ({"prompt": 3, "responses": ["a", "b"]}, "prompt", "must be a string"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing field"),
    ({"prompt": "p"}, "responses", "missing field"),
    ({"prompt": "p", "responses": ["a", "b"], "id": 1.5}, "id", "string or an integer"),
    ({"prompt": "question 0", "responses": ["first answer 0", "second answer 0"]}, "responses", "duplicate item"),
])
def test_bad_items_are_reported_with_file_line_and_field(tmp_path, record, field, message):
    path = write_jsonl(tmp_path / "items.jsonl", pair_records(2) + [record])
    with pytest.raises(DataError) as caught:
        load_label_items(path)
    assert caught.value.source.line == 3 and caught.value.field == field
    assert str(caught.value).startswith(f"{path}: line 3: field '{field}': ") and message in str(caught.value)


def test_items_accept_unlabelled_pairs_conversations_and_ids(tmp_path):
    convo = [{"role": "user", "content": "hi"}]
    records = [
        {"prompt": "p", "chosen": "yes", "rejected": "no", "label": 7},  # names (and label) ignored
        {"prompt": convo, "responses": [[{"role": "assistant", "content": t}] for t in ("a", "b")]},
        {"id": "fixed-7", "prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [9]},
    ]
    items = load_label_items(write_jsonl(tmp_path / "items.jsonl", records))
    assert [i.kind for i in items] == ["pair", "pair", "ranking"]
    assert items[0].responses == ("yes", "no") and items[2].id == "fixed-7"
    again = load_label_items(tmp_path / "items.jsonl")
    assert [i.id for i in again] == [i.id for i in items]  # content ids are stable
    store = LabelStore(tmp_path / "db.sqlite")
    assert store.add_items(items) == 3 and store.add_items(items) == 0
    changed = write_jsonl(tmp_path / "changed.jsonl", [{"id": "fixed-7", "prompt": "p", "responses": ["x", "y"]}])
    with pytest.raises(DataError, match="changed.jsonl: line 1: field 'id': item 'fixed-7' is already in"):
        store.add_items(load_label_items(changed))
    store.close()


def test_tokens_are_stored_only_as_hashes_and_can_come_from_a_file(tmp_path):
    store, tokens = make_store(tmp_path, pair_records(2), ("alice",))
    token_file = tmp_path / "tokens.txt"
    token_file.write_text("# name token\nbob  bobs-secret-token-123\n\ncarol carols-secret-token-45\n")
    assert store.add_labellers_from_file(token_file) == ["bob", "carol"]
    assert store.add_labellers_from_file(token_file) == []  # the same file again changes nothing
    assert store.labeller_for_token("bobs-secret-token-123").name == "bob"
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("labels.sqlite*"))
    for secret in (tokens["alice"], "bobs-secret-token-123"):
        assert secret.encode() not in raw and hash_token(secret).encode() in raw
    bad = tmp_path / "bad.txt"
    bad.write_text("dave dave-token-long-enough\nerin short\n")
    with LabelStore(tmp_path / "labels.sqlite") as again:
        with pytest.raises(DataError, match=r"bad.txt: line 2: field 'token'"):
            again.add_labellers_from_file(bad)
    with LabelStore(tmp_path / "labels.sqlite") as again:
        assert "dave" not in [p.name for p in again.labellers()]  # the file is taken whole or not at all


def test_cli_adds_tokens_once_lists_labellers_and_exports(tmp_path):
    runner = CliRunner()
    db = tmp_path / "job.sqlite"
    added = runner.invoke(label_app, ["tokens", str(db), "--add", "alice", "--add", "bob"])
    assert added.exit_code == 0, added.output
    tokens = dict(line.split("\t") for line in added.output.strip().splitlines())
    assert set(tokens) == {"alice", "bob"} and all(len(t) >= 40 for t in tokens.values())
    listed = runner.invoke(label_app, ["tokens", str(db), "--list"])
    assert "alice\tactive\t0 answered" in listed.output and tokens["alice"] not in listed.output
    again = runner.invoke(label_app, ["tokens", str(db), "--add", "alice"])
    assert again.exit_code == 1 and "already exists" in again.output
    not_a_db = write_jsonl(tmp_path / "items.jsonl", pair_records(2))
    mistaken = runner.invoke(label_app, ["tokens", str(not_a_db), "--add", "carol"])
    assert mistaken.exit_code == 1 and "not a usable labelling database" in mistaken.output

    data = write_jsonl(tmp_path / "items.jsonl", pair_records(2))
    with LabelStore(db) as store:
        store.add_items(load_label_items(data))
        alice = store.labeller_for_token(tokens["alice"])
        for item in load_label_items(data):
            store.submit(alice, item.id, Answer("ranked", (1, 0)))
    out = tmp_path / "prefs.jsonl"
    exported = runner.invoke(label_app, ["export", str(db), "--out", str(out)])
    assert exported.exit_code == 0 and "wrote 2 rows" in exported.output
    assert [e.chosen for e in load_preferences(out)] == ["second answer 0", "second answer 1"]
    wrong = runner.invoke(label_app, ["export", str(db), "--out", str(out), "--ties", "maybe"])
    assert wrong.exit_code == 1 and "ties must be" in wrong.output


def test_cli_serve_refuses_bad_data_before_serving(tmp_path):
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "p", "responses": "ab"}\n')
    result = CliRunner().invoke(label_app, ["serve", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: line 2: field 'responses'" in result.output
    assert not (tmp_path / "items.labels.sqlite").exists()


# --- export -----------------------------------------------------------------------------------


def labelled_store(tmp_path: Path) -> LabelStore:
    """Three labellers on two pairs and one 3-way ranking, with agreement, a split and a tie."""
    store, tokens = make_store(tmp_path, pair_records(2) + ranking_records(1), ("ann", "ben", "cat"))
    p0, p1, r0 = load_label_items(tmp_path / "items.jsonl")
    ann, ben, cat = (store.labeller_for_token(tokens[name]) for name in ("ann", "ben", "cat"))
    store.submit(ann, p0.id, Answer("ranked", (0, 1)))
    store.submit(ben, p0.id, Answer("ranked", (0, 1)))
    store.submit(cat, p0.id, Answer("ranked", (1, 0)))
    store.submit(ann, p1.id, Answer("tie"))
    store.submit(ben, p1.id, Answer("skip"))
    store.submit(ann, r0.id, Answer("ranked", (2, 0, 1)))
    store.submit(ben, r0.id, Answer("skip"))
    return store


def test_preference_export_per_label_loads_with_load_preferences(tmp_path):
    with labelled_store(tmp_path) as store:
        out = tmp_path / "prefs.jsonl"
        assert export_preferences(store, out) == 3 + 3  # p0: three labels; r0: 3 pairs; tie, skips dropped
        examples = load_preferences(out)
        assert [(e.chosen, e.rejected) for e in examples[:3]] == [
            ("first answer 0", "second answer 0"), ("first answer 0", "second answer 0"),
            ("second answer 0", "first answer 0")]
        assert [(e.chosen, e.rejected) for e in examples[3:]] == [
            ("option 2 of 0", "option 0 of 0"), ("option 2 of 0", "option 1 of 0"), ("option 0 of 0", "option 1 of 0")]
        assert all(e.label == 1.0 for e in examples)
        rows = [r for r, _ in read_records(out)]
        assert {r["labeller"] for r in rows} == {"ann", "ben", "cat"} and "label" not in rows[0]

        assert export_preferences(store, out, ties="soft") == 7
        tie = [e for e in load_preferences(out) if e.label == 0.5]
        assert len(tie) == 1 and {tie[0].chosen, tie[0].rejected} == {"first answer 1", "second answer 1"}


def test_preference_export_aggregated_gives_soft_majority_labels(tmp_path):
    with labelled_store(tmp_path) as store:
        out = tmp_path / "mean.jsonl"
        assert export_preferences(store, out, aggregate="mean") == 1 + 3  # the lone tie is dropped
        first = load_preferences(out)[0]
        assert (first.chosen, first.rejected) == ("first answer 0", "second answer 0")
        assert first.label == pytest.approx(2 / 3)
        assert export_preferences(store, out, aggregate="mean", ties="soft") == 5
        rows = [r for r, _ in read_records(out)]
        assert [r["n_labels"] for r in rows] == [3, 1, 1, 1, 1] and rows[1]["label"] == 0.5


def test_ranking_export_keeps_file_order_and_loads_as_all_pairs(tmp_path):
    with labelled_store(tmp_path) as store:
        out = tmp_path / "ranks.jsonl"
        assert export_rankings(store, out) == 4  # three pair choices and one ranking; tie, skips left out
        rows = [r for r, _ in read_records(out)]
        assert rows[-1]["responses"] == ["option 0 of 0", "option 1 of 0", "option 2 of 0"]
        assert rows[-1]["ranking"] == [2, 0, 1]
        assert len(load_preferences(out)) == 3 + 3


def test_nothing_to_export_is_a_clear_error(tmp_path):
    store, _ = make_store(tmp_path, pair_records(2))
    with store, pytest.raises(ValueError, match="no labels to export"):
        export_preferences(store, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_labels_from_the_app_train_the_dpo_stage(tmp_path, tiny_model_dir):
    from alignlab.stages.offline.dpo import DPOConfig, run

    store, tokens = make_store(tmp_path, pair_records(16) + ranking_records(2))
    with store, running_server(store) as url, client(url, tokens["alice"]) as alice:
        rng = random.Random(0)
        item = alice.get("/api/next").json()["item"]
        while item is not None:
            body = ({"item_id": item["id"], "choice": rng.choice("AB")} if item["kind"] == "pair"
                    else {"item_id": item["id"], "ranking": [0, 1, 2]})
            item = alice.post("/api/label", json=body).json()["item"]
        data = tmp_path / "prefs.jsonl"
        assert export_preferences(store, data) == 16 + 2 * 3
    out = tmp_path / "dpo"
    cfg = DPOConfig(model=str(tiny_model_dir), data=str(data), eval_fraction=0.0, max_length=64,
                    max_prompt_length=32, train={"max_steps": 2, "batch_size": 4, "save_every": None})
    metrics = run(cfg, out)
    assert metrics["steps"] == 2 and metrics["train_pairs"] == 22
    assert (out / "model" / "config.json").is_file()
    assert any((out / "model").glob("*.safetensors"))
