"""The labelling page: one HTML shell, a stylesheet and a script (served from memory).

The HTML holds no data. The script fetches items as JSON and puts every prompt and response into
the page with `textContent` only (never as HTML), so untrusted text cannot inject elements or
scripts; the Content-Security-Policy sent with the page (scripts and styles from this server
only, no inline code) is a second line of defence.

Keyboard:
    pair       1 or a: A is better · 2 or b: B is better · t: tie · s: skip
    ranking    press the numbers of the responses from best to worst (1-9; or click them); the last
               one is placed for you · Backspace: take back the last pick · Enter: submit · s: skip
    any time   u: undo your last answer (it is deleted and its item shown again)

Answer buttons lose focus once used, so a stray Enter or Space cannot answer the next item, and a
held key's repeats are ignored.
"""

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>alignlab labelling</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header>
  <strong>alignlab labelling</strong>
  <span id="labeller"></span>
  <span id="progress-text">loading…</span>
  <progress id="progress-bar" value="0" max="1"></progress>
</header>
<main>
  <section id="message" role="status" aria-live="polite"></section>
  <section id="task" hidden>
    <h2>Prompt</h2>
    <div id="prompt" class="text"></div>
    <h2 id="question"></h2>
    <div id="responses"></div>
    <div id="pair-controls" class="controls" hidden>
      <button id="choose-a" type="button">A is better <kbd>1</kbd>/<kbd>a</kbd></button>
      <button id="choose-b" type="button">B is better <kbd>2</kbd>/<kbd>b</kbd></button>
      <button id="choose-tie" type="button">Tie <kbd>t</kbd></button>
      <button id="skip-pair" type="button">Skip <kbd>s</kbd></button>
    </div>
    <div id="ranking-controls" class="controls" hidden>
      <p>Your ranking (best first): <span id="ranking-order">none yet</span></p>
      <button id="rank-undo" type="button">Take back last pick <kbd>Backspace</kbd></button>
      <button id="rank-submit" type="button" disabled>Submit ranking <kbd>Enter</kbd></button>
      <button id="skip-ranking" type="button">Skip <kbd>s</kbd></button>
    </div>
  </section>
  <section id="done" hidden><h2>All done: no items are left for you. Thank you!</h2></section>
  <div class="controls">
    <button id="undo" type="button" disabled>Undo last answer <kbd>u</kbd></button>
  </div>
  <footer id="help">Pairs: <kbd>1</kbd>/<kbd>a</kbd> A · <kbd>2</kbd>/<kbd>b</kbd> B · <kbd>t</kbd> tie ·
  <kbd>s</kbd> skip. Rankings: press the response numbers best first (or click them),
  <kbd>Backspace</kbd> take back a pick, <kbd>Enter</kbd> submit, <kbd>s</kbd> skip.
  <kbd>u</kbd> undoes your last answer.</footer>
</main>
</body>
</html>
"""

APP_CSS = """
/* `hidden` must win over every display rule below (e.g. .controls{display:flex}) */
[hidden] { display: none !important; }
body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { display: flex; flex-wrap: wrap; gap: .4em 1em; align-items: center; padding: .6em 1em;
         background: #223; color: #eee; }
/* a floor on its width and a header that wraps: on narrow screens the bar moves to its own line
   instead of being squeezed to nothing by the texts beside it */
header progress { flex: 1 1 8em; min-width: 8em; max-width: 20em; }
main { max-width: 80em; margin: 0 auto; padding: 1em; }
h2 { font-size: 1em; margin: 1em 0 .4em; color: #555; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; background: #fff; border: 1px solid #ccc;
        border-radius: 6px; padding: .8em; }
.message-role { font-weight: bold; display: block; color: #555; }
#responses { display: grid; grid-template-columns: repeat(auto-fit, minmax(18em, 1fr)); gap: 1em; }
.response { cursor: pointer; }
.response .tag { font-weight: bold; display: block; margin-bottom: .4em; }
.response.ranked { border-color: #2a7; background: #efe; }
.response .rank { float: right; color: #2a7; font-weight: bold; }
.controls { margin: 1em 0; display: flex; gap: .6em; flex-wrap: wrap; align-items: center; }
.controls p { margin: 0 1em 0 0; }
button { font-size: 1em; padding: .5em 1em; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 .3em; font-size: .85em; background: #fff; color: #222; }
#message:empty { display: none; }
#message { padding: .6em; margin-bottom: 1em; background: #fee; border: 1px solid #c88; border-radius: 6px; }
#help { margin-top: 2em; color: #666; font-size: .9em; }
"""

APP_JS = r"""
"use strict";
// Every text from the server goes in with textContent: prompts and responses are untrusted.
const state = { item: null, ranking: [], busy: false };
const byId = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fillText(container, value) {
  container.replaceChildren();
  if (typeof value === "string") { container.textContent = value; return; }
  for (const message of value) {  // a conversation: role and content of each message
    const block = el("div", "message");
    block.append(el("span", "message-role", String(message.role)),
                 el("span", "message-content", String(message.content)));
    container.append(block);
  }
}

function say(text) { byId("message").textContent = text || ""; }

async function api(path, body) {
  const options = { credentials: "same-origin", headers: { "Accept": "application/json" } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = {};
  try { data = await response.json(); } catch (e) { data = {}; }
  if (response.status === 401) throw new Error("Not signed in: open the login link you were given (/login?token=...).");
  return { status: response.status, data: data };
}

// done counts real answers only; skips are shown apart and do not fill the bar.
function showProgress(progress) {
  if (!progress) return;
  byId("undo").disabled = progress.done + progress.skipped === 0;
  const skipped = progress.skipped ? ` (${progress.skipped} skipped)` : "";
  byId("progress-text").textContent = `${progress.done} / ${progress.total} done${skipped}`;
  const bar = byId("progress-bar");
  bar.max = Math.max(progress.total, 1);
  bar.value = progress.done;
}

function showItem(item) {
  state.item = item;
  state.ranking = [];
  document.body.dataset.itemId = item ? item.id : "";
  byId("task").hidden = !item;
  byId("done").hidden = !!item;
  if (!item) return;
  const pair = item.kind === "pair";
  fillText(byId("prompt"), item.prompt);
  byId("question").textContent = pair ? "Which response is better?" : "Rank the responses, best first";
  const list = byId("responses");
  list.replaceChildren();
  item.responses.forEach((response, position) => {
    const card = el("div", "response text");
    card.dataset.position = String(position);
    const tag = el("span", "tag", pair ? (position === 0 ? "A" : "B") : String(position + 1));
    const body = el("div", "response-body");
    fillText(body, response);
    card.append(tag, body);
    card.addEventListener("click", () => { if (!pair) addToRanking(position); });
    list.append(card);
  });
  byId("pair-controls").hidden = !pair;
  byId("ranking-controls").hidden = pair;
  showRanking();
}

function showRanking() {
  const item = state.item;
  if (!item || item.kind === "pair") return;
  const names = state.ranking.map((p) => String(p + 1));
  byId("ranking-order").textContent = names.length ? names.join(" > ") : "none yet";
  byId("rank-submit").disabled = state.ranking.length !== item.responses.length;
  for (const card of byId("responses").children) {
    const place = state.ranking.indexOf(Number(card.dataset.position));
    card.classList.toggle("ranked", place >= 0);
    let badge = card.querySelector(".rank");
    if (place >= 0) {
      if (!badge) { badge = el("span", "rank"); card.prepend(badge); }
      badge.textContent = `#${place + 1}`;
    } else if (badge) { badge.remove(); }
  }
}

function addToRanking(position) {
  const item = state.item;
  if (!item || position >= item.responses.length || state.ranking.includes(position)) return;
  state.ranking.push(position);
  if (state.ranking.length === item.responses.length - 1) {  // the last one is implied
    for (let p = 0; p < item.responses.length; p++) if (!state.ranking.includes(p)) state.ranking.push(p);
  }
  showRanking();
}

// Send an answer (or an undo); the reply holds the progress and the item to show next.
// `expected` maps the error statuses that still carry an item to the message to show.
async function send(path, body, expected) {
  if (state.busy) return;
  state.busy = true;
  dropFocus();
  try {
    const { status, data } = await api(path, body);
    if (status >= 400 && !(status in expected)) { say(data.error || `Error ${status}`); return; }
    say(expected[status] || "");
    showProgress(data.progress);
    if ("item" in data) showItem(data.item); else await loadNext();
  } catch (error) {
    say(error.message);
  } finally {
    state.busy = false;
  }
}

// A button keeps focus after a click, and Enter or Space on it would answer the next item
// unseen: once an answer is sent, no button keeps focus.
function dropFocus() {
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
}

function submit(answer) {
  if (!state.item) return;
  const conflict = "You had already answered this item differently; your first answer is kept.";
  return send("/api/label", Object.assign({ item_id: state.item.id }, answer), { 409: conflict });
}

function undoLast() { return send("/api/undo", {}, { 409: "Nothing to undo." }); }

async function loadNext() {
  const { status, data } = await api("/api/next");
  if (status >= 400) { say(data.error || `Error ${status}`); return; }
  byId("labeller").textContent = data.labeller ? `labeller: ${data.labeller}` : "";
  showProgress(data.progress);
  showItem(data.item);
}

function onKey(event) {
  // a held key repeats: only a fresh press counts, so holding "1" cannot answer item after item
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || state.busy) return;
  const key = event.key.toLowerCase();
  if (key === "u") { event.preventDefault(); undoLast(); return; }  // also on the "all done" page
  if (!state.item) return;
  if (state.item.kind === "pair") {
    const choice = { "1": "A", "a": "A", "2": "B", "b": "B", "t": "tie", "s": "skip" }[key];
    if (choice) { event.preventDefault(); submit({ choice: choice }); }
    return;
  }
  if (/^[1-9]$/.test(key)) { event.preventDefault(); addToRanking(Number(key) - 1); }
  else if (key === "backspace") { event.preventDefault(); undoRanking(); }
  else if (key === "enter") { event.preventDefault(); submitRanking(); }
  else if (key === "s") { event.preventDefault(); submit({ choice: "skip" }); }
}

function undoRanking() {
  const item = state.item;
  // Undo the implied last place together with the one that completed it.
  if (state.ranking.length === item.responses.length) state.ranking.pop();
  state.ranking.pop();
  showRanking();
}

function submitRanking() {
  if (state.item && state.ranking.length === state.item.responses.length) submit({ ranking: state.ranking.slice() });
}

function wire() {
  byId("choose-a").addEventListener("click", () => submit({ choice: "A" }));
  byId("choose-b").addEventListener("click", () => submit({ choice: "B" }));
  byId("choose-tie").addEventListener("click", () => submit({ choice: "tie" }));
  byId("skip-pair").addEventListener("click", () => submit({ choice: "skip" }));
  byId("skip-ranking").addEventListener("click", () => submit({ choice: "skip" }));
  byId("rank-undo").addEventListener("click", undoRanking);
  byId("rank-submit").addEventListener("click", submitRanking);
  byId("undo").addEventListener("click", undoLast);
  document.addEventListener("keydown", onKey);
  loadNext().catch((error) => say(error.message));
}

wire();
"""
