"""The labelling page in a real headless browser (Debian's chromium driven by playwright).

Nothing is downloaded: playwright drives the system's /usr/bin/chromium, which scripts/test.sh
installs. A labeller opens their login link, sees the first pair (whose untrusted text must stay
text), answers with the keyboard (A, tie, skip), ranks a 4-way item with keys and a click, and
the labels land in the database mapped back to the file's response order.
"""

from __future__ import annotations

import shutil
import sqlite3
import ssl
from pathlib import Path

import httpx
import pytest

from alignlab.data.readers import write_jsonl
from alignlab.feedback.labelling import LabelStore, load_label_items
from alignlab.feedback.labelling.app import running_server

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
]


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
    expect(progress).to_have_text("0 / 4 done")
    expect(page.locator("#prompt")).to_have_text(XSS_PROMPT)
    first = shown_texts(page)
    assert sorted(first) == sorted([XSS_RESPONSE, "a plain answer"])
    assert page.locator("img").count() == 0 and page.locator("#prompt b, #prompt script").count() == 0
    assert page.title() == "alignlab labelling" and dialogs == []
    expect(page.locator("#labeller")).to_have_text("labeller: alice")

    page.keyboard.press("1")  # A is better
    expect(progress).to_have_text("1 / 4 done")
    expect(page.locator("#prompt")).to_have_text("second question")
    page.keyboard.press("t")  # tie
    expect(progress).to_have_text("2 / 4 done")
    expect(page.locator("#prompt")).to_have_text("third question")
    page.keyboard.press("s")  # skip
    expect(progress).to_have_text("3 / 4 done (1 skipped)")

    # the 4-way ranking: keys 2 then 4, undo, a click on 3, key 4; the last place is implied
    expect(page.locator("#prompt")).to_have_text("userrank these")
    expect(page.locator("#ranking-controls")).to_be_visible()
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
    expect(progress).to_have_text("4 / 4 done (1 skipped)")
    expect(page.locator("#done")).to_be_visible()
    assert dialogs == [] and page.title() == "alignlab labelling"

    labels = stored(store)
    assert labels[XSS_PROMPT] == ("ranked", (first[0], first[1]))  # A = what was shown first
    assert labels["second question"] == ("tie", None)
    assert labels["third question"] == ("skip", None)
    assert labels["rank these"] == ("ranked", (shown[1], shown[2], shown[3], shown[0]))
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone() == (4,)
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
