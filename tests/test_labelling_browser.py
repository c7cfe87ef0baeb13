"""The labelling page in a real headless browser (Debian's chromium driven by playwright).

Nothing is downloaded: playwright drives the system's /usr/bin/chromium, which scripts/test.sh
installs. A labeller opens their login link, sees the first pair (whose untrusted text must stay
text), answers with a click and the keyboard (A, tie, skip; stray Enter/Space store nothing),
ranks a 4-way item with keys and a click, undoes answers (key and button) and answers again, and
the labels land in the database mapped back to the file's response order. Only the controls of
the item's kind are visible, and the progress bar stays visible on narrow phones.
"""

from __future__ import annotations

import shutil
import sqlite3
import ssl
from pathlib import Path

import httpx
import pytest

from alignlab.data.readers import read_records, write_jsonl
from alignlab.feedback.human.labelling.export import export_rankings
from alignlab.feedback.human.labelling.items import load_label_items
from alignlab.feedback.human.labelling.store import LabelStore
from alignlab.feedback.human.labelling.app import running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS_RESPONSE = "<img src=x onerror=alert(1)>"
XSS_PROMPT = "<script>document.title = 'pwned'</script><b>bold?</b>"
ITEMS = [
    {"prompt": XSS_PROMPT, "responses": [XSS_RESPONSE, "a plain answer"]},
    {"prompt": "second question", "responses": ["yes", "no"]},
    {"prompt": "third question", "responses": ["maybe", "never"]},
    {"prompt": [{"role": "user", "content": "rank these"}],
     "responses": [[{"role": "assistant", "content": f"option {i}"}] for i in range(4)]},
    {"prompt": "fifth question", "responses": ["up", "down"]},  # a pair after the ranking
]
PAIR_CONTROLS = ["#choose-a", "#choose-b", "#choose-tie", "#skip-pair"]
RANKING_CONTROLS = ["#ranking-order", "#rank-undo", "#rank-submit", "#skip-ranking"]


def _missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        return (f"{CHROMIUM} is missing: run scripts/test.sh, which installs Debian's chromium "
                "(apt-get install -y chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: run scripts/test.sh (it installs alignlab[dev])"
    return None


@pytest.fixture(scope="module")
def browser_or_reason():
    """One headless chromium for the module, or the reason there is none (each test then fails)."""
    reason = _missing()
    if reason is not None:
        yield reason
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def require(browser_or_reason):
    """The browser; inside the test, so that a missing one is a FAILED test, never a skip."""
    if isinstance(browser_or_reason, str):
        pytest.fail(browser_or_reason)
    return browser_or_reason


@pytest.fixture
def served(tmp_path):
    data = write_jsonl(tmp_path / "items.jsonl", ITEMS)
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_items(load_label_items(data))
    token = store.add_labeller("alice")
    with store, running_server(store) as url:
        yield store, token, url


def shown_texts(page, conversation: bool = False) -> list[str]:
    """The responses' texts (a conversation's message contents) in the order the page shows them."""
    selector = "#responses .response-body" + (" .message-content" if conversation else "")
    return page.locator(selector).all_text_contents()


def stored(store: LabelStore) -> dict[str, tuple[str, tuple | None]]:
    """item prompt (text or first message) -> (outcome, responses' texts best first)."""
    out = {}
    for record in store.labels():
        item = record.item
        key = item.prompt if isinstance(item.prompt, str) else item.prompt[0]["content"]
        texts = [r if isinstance(r, str) else r[0]["content"] for r in item.responses]
        ranked = None if record.answer.ranking is None else tuple(texts[i] for i in record.answer.ranking)
        out[key] = (record.answer.outcome, ranked)
    return out


def assert_controls_of(page, kind: str) -> None:
    """Only the controls of this kind of item are visible (what is seen, not the attributes)."""
    pair = [page.locator(s).is_visible() for s in PAIR_CONTROLS]
    ranking = [page.locator(s).is_visible() for s in RANKING_CONTROLS]
    assert (pair, ranking) == ([kind == "pair"] * 4, [kind == "ranking"] * 4), kind


def test_a_labeller_answers_with_the_keyboard_and_the_labels_land_in_the_database(browser_or_reason, served):
    page = require(browser_or_reason).new_page()
    from playwright.sync_api import expect

    store, token, url = served
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.set_default_timeout(10_000)
    page.goto(f"{url}/login?token={token}")
    assert page.url == f"{url}/"  # the login link set the cookie and moved on to the page

    # the first pair: untrusted text is shown as text, nothing is injected or run
    progress = page.locator("#progress-text")
    expect(progress).to_have_text("0 / 5 done")
    expect(page.locator("#prompt")).to_have_text(XSS_PROMPT)
    first = shown_texts(page)
    assert sorted(first) == sorted([XSS_RESPONSE, "a plain answer"])
    assert page.locator("img").count() == 0 and page.locator("#prompt b, #prompt script").count() == 0
    assert page.title() == "alignlab labelling" and dialogs == []
    expect(page.locator("#labeller")).to_have_text("labeller: alice")

    assert_controls_of(page, "pair")
    expect(page.locator("#undo")).to_be_disabled()  # nothing to undo yet

    page.locator("#choose-a").click()  # A is better, by mouse: the button must not keep focus
    expect(progress).to_have_text("1 / 5 done")
    expect(page.locator("#prompt")).to_have_text("second question")
    page.keyboard.press("Enter")  # stray keys: neither may answer this item
    page.keyboard.press(" ")
    page.keyboard.down("t")  # tie, with the key held down
    expect(progress).to_have_text("2 / 5 done")
    assert stored(store)["second question"] == ("tie", None)  # not "A" from a stray key
    expect(page.locator("#prompt")).to_have_text("third question")
    page.keyboard.down("t")  # the held key repeats (repeat=true): it must not answer this item
    page.keyboard.up("t")
    page.keyboard.press("s")  # skip: not counted as done
    expect(progress).to_have_text("2 / 5 done (1 skipped)")

    # the 4-way ranking: keys 2 then 4, take back, a click on 3, key 4; the last place is implied
    expect(page.locator("#prompt")).to_have_text("userrank these")
    assert_controls_of(page, "ranking")
    shown = shown_texts(page, conversation=True)
    assert sorted(shown) == [f"option {i}" for i in range(4)]
    order = page.locator("#ranking-order")
    page.keyboard.press("2")
    page.keyboard.press("4")
    expect(order).to_have_text("2 > 4")
    page.keyboard.press("Backspace")
    expect(order).to_have_text("2")
    page.locator('#responses .response[data-position="2"]').click()
    page.keyboard.press("4")
    expect(order).to_have_text("2 > 3 > 4 > 1")
    expect(page.locator("#rank-submit")).to_be_enabled()
    page.keyboard.press("Enter")
    expect(progress).to_have_text("3 / 5 done (1 skipped)")
    expect(page.locator("#prompt")).to_have_text("fifth question")
    assert_controls_of(page, "pair")

    # undo with the key: the ranking is deleted and shown again, then ranked differently
    page.keyboard.press("u")
    expect(progress).to_have_text("2 / 5 done (1 skipped)")
    expect(page.locator("#prompt")).to_have_text("userrank these")
    expect(order).to_have_text("none yet")
    assert "rank these" not in stored(store)
    for key in ("1", "2", "3", "Enter"):
        page.keyboard.press(key)
    expect(progress).to_have_text("3 / 5 done (1 skipped)")

    # the last pair, then undo with the button on the "all done" page, and answer again
    page.keyboard.press("2")
    expect(page.locator("#done")).to_be_visible()
    page.locator("#undo").click()
    # the "all done" page keeps the last prompt's text: wait for the undo's own effects, or a key
    # pressed while its request is in flight is (rightly) ignored and the test reads a stale page
    expect(page.locator("#done")).to_be_hidden()
    expect(progress).to_have_text("3 / 5 done (1 skipped)")
    expect(page.locator("#prompt")).to_have_text("fifth question")
    assert "fifth question" not in stored(store)
    fifth = shown_texts(page)
    page.keyboard.press("Enter")  # the undo button must not keep focus either
    page.keyboard.press("1")
    expect(progress).to_have_text("4 / 5 done (1 skipped)")
    expect(page.locator("#done")).to_be_visible()
    assert dialogs == [] and page.title() == "alignlab labelling"

    labels = stored(store)
    assert labels[XSS_PROMPT] == ("ranked", (first[0], first[1]))  # A = what was shown first
    assert labels["second question"] == ("tie", None)
    assert labels["third question"] == ("skip", None)
    assert labels["rank these"] == ("ranked", tuple(shown))  # the second ranking, not the undone one
    assert labels["fifth question"] == ("ranked", tuple(fifth))  # "1" after the undone "2"
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone() == (5,)
    out = store.path.parent / "ranks.jsonl"
    assert export_rankings(store, out) == 3  # pairs A and "1", the ranking; tie and skip left out
    exported = {row["prompt"][0]["content"] if isinstance(row["prompt"], list) else row["prompt"]:
                [row["responses"][i] for i in row["ranking"]] for row, _ in read_records(out)}
    assert exported["fifth question"] == fifth  # the undone answers are not exported
    assert [r[0]["content"] for r in exported["rank these"]] == shown
    page.close()


def test_the_progress_bar_stays_visible_on_narrow_phones(browser_or_reason, served):
    from playwright.sync_api import expect

    _, token, url = served
    page = require(browser_or_reason).new_page(viewport={"width": 375, "height": 667})
    page.goto(f"{url}/login?token={token}")
    expect(page.locator("#progress-text")).to_have_text("0 / 5 done")  # the header's texts are in
    bar = page.locator("#progress-bar")
    for width in (375, 320):
        page.set_viewport_size({"width": width, "height": 667})
        box = bar.bounding_box()
        assert bar.is_visible() and box is not None and box["width"] > 0, width
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, box)  # on screen
    page.close()


def test_the_page_without_a_token_is_refused(browser_or_reason, served):
    page = require(browser_or_reason).new_page()
    _, token, url = served
    response = page.goto(f"{url}/")
    assert response.status == 401 and "login link" in page.locator("body").inner_text()
    response = page.goto(f"{url}/login?token={token[:-1]}")
    assert response.status == 401
    page.close()
    with httpx.Client(verify=ssl.create_default_context()) as client:
        assert client.get(f"{url}/app.js").status_code == 401
