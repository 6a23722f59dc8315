"""The console's browser test: Debian's Chromium, headless, driven over the DevTools protocol
against a real gateway, brain and hand (tests/console.rs starts them and answers this script's
requests on stdin: `CTL restart` stops the gateway, appends a turn while it is down and starts
it again on the same port).

Everything a person would do is done on the page (typing, clicking Allow, sending a message);
the API is used only to set up objects, to send a few events the page must show, and to read
the log back for comparison. Prints one JSON summary line at the end; any failed check raises.

Environment: HERD_URL, HERD_KEY (tenant acme), HERD_RIVAL_KEY (tenant rival), HERD_RIVAL_SESSION,
HERD_ARTIFACTS (where screenshots go), HERD_LISTENER (a URL nothing on the page may request).
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Browser  # noqa: E402
from event_types import TYPES  # noqa: E402

URL = os.environ["HERD_URL"]
KEY = os.environ["HERD_KEY"]
RIVAL_KEY = os.environ["HERD_RIVAL_KEY"]
RIVAL_SESSION = os.environ["HERD_RIVAL_SESSION"]
ARTIFACTS = os.environ["HERD_ARTIFACTS"]
checks = []


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    checks.append(name)
    print(f"ok: {name}", file=sys.stderr, flush=True)


def call(method, path, body=None, key=KEY):
    req = urllib.request.Request(URL + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {key}",
                                          "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def get_raw(path, key=KEY):
    req = urllib.request.Request(URL + path, headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


def ctl(command):
    """Asks the Rust side to do something this script cannot (restart the gateway)."""
    print(f"CTL {command}", flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise AssertionError(f"the test harness answered {answer!r} to {command}")


# A listener nothing may ever reach: hostile content names it as an image, a stylesheet, a link.
hits = []


class Listener(BaseHTTPRequestHandler):
    def do_GET(self):
        hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


listener = HTTPServer(("127.0.0.1", 0), Listener)
threading.Thread(target=listener.serve_forever, daemon=True).start()
BAIT = f"http://127.0.0.1:{listener.server_address[1]}"

HOSTILE = (
    "<script>alert('script')</script> <img src=x onerror=\"alert('img')\"> "
    f"[click me](javascript:alert('link')) <style>body{{display:none}} #timeline{{color:red}}</style> "
    f"<link rel=stylesheet href={BAIT}/css> ![bait]({BAIT}/img.png) "
    f"<iframe src={BAIT}/frame></iframe> <a href=\"javascript:alert('a')\">a</a> "
    "<svg onload=alert('svg')></svg> {{7*7}}"
)

# ---- objects, made through the API ---------------------------------------------------------
s, agent = call("POST", "/v1/agents", {
    "name": "console", "model": "claude-sonnet-4-6",
    "tools": [{"type": "agent_toolset_20260401",
               "default_config": {"permission_policy": {"type": "always_ask"}}},
              {"type": "custom", "name": "lookup", "description": "asks the person",
               "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]})
check("agent created", s == 200, agent)
s, env = call("POST", "/v1/environments", {"name": "console"})
check("environment created", s == 200, env)
s, session = call("POST", "/v1/sessions", {"agent": agent["id"], "environment_id": env["id"],
                                          "title": "Console walkthrough"})
check("session created", s == 200, session)
SID = session["id"]


def events_of(sid=SID):
    """Every event of the session (herd's own types included), from the list API."""
    types = "&".join(f"types[]={t}" for t in TYPES)
    out, page = [], None
    while True:
        s, r = call("GET", f"/v1/sessions/{sid}/events?limit=1000&{types}" + (f"&page={page}" if page else ""))
        assert s == 200, r
        out += r["data"]
        page = r["next_page"]
        if not page:
            return out


IDLES = "document.querySelectorAll('#timeline [data-type=\"session.status_idle\"]').length"

with Browser() as browser:
    page = browser.new_page()
    page.navigate(URL + "/console")
    page.wait_for("window.herdConsole && herdConsole.view === 'login'")
    check("the page asks for a key", page.evaluate("!!document.querySelector('#key')"))
    check("the key is not in the URL", KEY not in page.evaluate("location.href"))
    page.type_into("#key", KEY)
    page.click("#login button[type=submit]")
    page.wait_for(f"herdConsole.view === 'list' && (herdConsole.listed || []).includes('{SID}')")
    check("the key went to sessionStorage, not localStorage",
          page.evaluate("localStorage.length === 0 && !!sessionStorage.getItem('herd.console.key')"))
    check("the list shows acme's session with its title",
          "Console walkthrough" in page.text("#sessions"))
    check("the list never shows the rival's session",
          RIVAL_SESSION not in page.text("#sessions")
          and "rival secret plans" not in page.text("#sessions"))
    page.type_into("#search", "walkthrough")
    page.wait_for(f"document.querySelectorAll('#sessions tr.row').length === 1")
    page.type_into("#search", "no-such-session-title")
    page.wait_for("document.querySelectorAll('#sessions tr.row').length === 0")
    check("search filters the list on the server", True)
    page.evaluate("(s => { s.value = ''; s.dispatchEvent(new Event('input')); })(document.querySelector('#search'))")
    page.wait_for(f"(herdConsole.listed || []).includes('{SID}')")

    # ---- the timeline, live -------------------------------------------------------------------
    page.evaluate(f"location.hash = '#/sessions/{SID}'")
    page.wait_for("herdConsole.view === 'timeline' && herdConsole.state === 'live'")
    s, _ = call("POST", f"/v1/sessions/{SID}/events",
                {"events": [{"type": "user.message", "content": [{"type": "text", "text": "approve this"}]}]})
    check("a message sent through the API", s == 200)
    page.wait_for("!!document.querySelector('.ask button.allow')", timeout=30)
    shown_input = page.text(".ask .approve-input")
    check("the page shows exactly the input being approved",
          json.loads(shown_input) == {"command": "echo console-allowed"}, shown_input)
    page.screenshot(os.path.join(ARTIFACTS, "console-confirmation.png"))
    page.click(".ask button.allow")
    page.wait_for("[...document.querySelectorAll('.ev.agent')].some(e => e.textContent.includes('done: console-allowed'))", timeout=30)
    check("allowed from the page, the call ran and the turn finished", True)

    # A message typed on the page is answered.
    page.type_into("#message", "hello from the page")
    page.click("#send")
    page.wait_for("[...document.querySelectorAll('.ev.agent')].some(e => e.textContent.includes('hello back from the model'))", timeout=30)
    check("a message sent from the page is answered", True)
    page.wait_for("document.querySelector('#session-status').textContent === 'idle'", timeout=30)

    # A custom tool answered from the page.
    call("POST", f"/v1/sessions/{SID}/events",
         {"events": [{"type": "user.message", "content": [{"type": "text", "text": "lookup please"}]}]})
    page.wait_for("!!document.querySelector('.ask .answer-send')", timeout=30)
    page.type_into(".ask .answer", "forty-two")
    page.click(".ask .answer-send")
    page.wait_for("[...document.querySelectorAll('.ev.agent')].some(e => e.textContent.includes('the person said forty-two'))", timeout=30)
    check("a custom tool answered from the page", True)

    # A large output: its head and tail in the event, the whole from the object store.
    call("POST", f"/v1/sessions/{SID}/events",
         {"events": [{"type": "user.message", "content": [{"type": "text", "text": "big output please"}]}]})
    page.wait_for("!!document.querySelector('.ask button.allow')", timeout=30)
    page.click(".ask button.allow")
    page.wait_for("!!document.querySelector('button.whole-output')", timeout=30)
    page.click("button.whole-output")
    try:
        whole = page.wait_for("[...document.querySelectorAll('pre')].map(p => p.textContent).find(t => t.length >= 100000)", timeout=30)
    except TimeoutError:
        raise AssertionError("no whole output shown: " + page.evaluate("(document.querySelector('button.whole-output') || document.querySelector('.whole-output-box') || document.body).closest('.ev').textContent.slice(-1500)"))
    check("a large output's whole object is fetched and shown",
          whole.count("herd big output line") >= 4700, (len(whole), whole[:200]))
    big_call = [e for e in events_of() if e["type"] == "agent.tool_use"][-1]["id"]
    s, ctype, body = get_raw(f"/v1/sessions/{SID}/tool_outputs/{big_call}")
    check("the output route sends the whole as text", s == 200 and ctype.startswith("text/plain")
          and body.decode() == whole, (s, ctype, len(body)))
    s, _, body = get_raw(f"/v1/sessions/{SID}/tool_outputs/{big_call}", key=RIVAL_KEY)
    check("another tenant cannot fetch that output", s == 404 and b"herd big" not in body, s)
    s, _, _ = get_raw(f"/v1/sessions/{SID}/tool_outputs/..%2F..%2Fetc")
    check("a call id that is not one is refused", s == 404, s)
    s, _, _ = get_raw(f"/v1/sessions/{SID}/tool_outputs/toolu_never_made")
    check("a call without a stored output is not found", s == 404, s)
    page.wait_for("document.querySelector('#session-status').textContent === 'idle'", timeout=30)

    # What is approved is what is read: a right-to-left override is written out.
    call("POST", f"/v1/sessions/{SID}/events",
         {"events": [{"type": "user.message", "content": [{"type": "text", "text": "bidi please"}]}]})
    page.wait_for("!!document.querySelector('.ask button.allow')", timeout=30)
    shown = page.text(".ask .approve-input")
    check("an invisible direction override is shown as \\u{202e}", "safe\\u{202e}gpj.exe" in shown, shown)
    idles = page.evaluate(IDLES)
    page.click(".ask button.deny")
    page.wait_for(f"{IDLES} > {idles}", timeout=30)
    check("a denied call ends its turn", "denied" in page.text("#timeline"))

    # ---- hostile content: a message, a model answer and a tool output ---------------------------
    before = len(page.requests)
    call("POST", f"/v1/sessions/{SID}/events",
         {"events": [{"type": "user.message", "content": [{"type": "text", "text": "hostile " + HOSTILE}]}]})
    page.wait_for("!!document.querySelector('.ask button.allow')", timeout=30)
    page.click(".ask button.allow")
    page.wait_for("[...document.querySelectorAll('.ev.agent')].some(e => e.textContent.includes('hostile answer'))", timeout=30)
    page.wait_for("document.querySelector('#session-status').textContent === 'idle'", timeout=30)
    time.sleep(0.5)
    page.pump(0.2)
    timeline = page.text("#timeline")
    check("no script ran: no dialog opened", not page.dialogs, page.dialogs)
    check("nothing was requested from the bait listener", not hits, hits)
    foreign = [u for u in page.requests if not u.startswith(URL)]
    check("the page requested nothing off its origin", not foreign, foreign)
    check("the hostile text is shown literally (message, answer and tool output)",
          timeline.count("<script>alert('script')</script>") >= 3, timeline[-3000:])
    check("no element came from the content",
          page.evaluate("""document.querySelectorAll('#timeline script, #timeline img, #timeline iframe, #timeline style, #timeline link, #timeline svg').length""") == 0)
    check("no javascript: link exists",
          page.evaluate("[...document.querySelectorAll('a')].every(a => !a.href.startsWith('javascript:'))"))
    check("the page was not restyled",
          page.evaluate("getComputedStyle(document.body).display !== 'none' && getComputedStyle(document.querySelector('#timeline')).color !== 'rgb(255, 0, 0)'"))
    check("the page's script threw nothing", not page.exceptions, page.exceptions)

    # Text built to make a regular expression backtrack for minutes renders at once.
    pathological = "x " + "`" * 15000 + "a" * 15000 + "\n" + "[" * 40000 + "\n" + "> " * 20000 + "x"
    t0 = time.time()
    s, r = call("POST", f"/v1/sessions/{SID}/events",
                {"events": [{"type": "user.message", "content": [{"type": "text", "text": pathological}]}]})
    check("a pathological message is taken", s == 200, (s, r))
    page.wait_for("[...document.querySelectorAll('.ev[data-type=\"user.message\"]')].some(e => e.textContent.includes('aaaaaaaaaa'))", timeout=20)
    check("pathological Markdown renders without freezing the tab", time.time() - t0 < 20)
    page.wait_for("document.querySelector('#session-status').textContent === 'idle'", timeout=30)

    # ---- a gateway restart mid-session ----------------------------------------------------------
    connections = page.evaluate("herdConsole.connections")
    ctl(f"restart {SID}")
    page.wait_for(f"herdConsole.connections > {connections} && herdConsole.state === 'live'", timeout=40)
    page.wait_for("[...document.querySelectorAll('.ev.agent')].some(e => e.textContent.includes('answered while the gateway was down'))", timeout=30)
    check("the page reconnected after the restart and shows what happened meanwhile", True)
    page.wait_for("document.querySelector('#session-status').textContent === 'idle'", timeout=30)
    time.sleep(0.3)
    logged = events_of()
    seqs = page.evaluate("[...document.querySelectorAll('#timeline [data-seq]')].map(e => Number(e.dataset.seq))")
    check("every event of the log is on the page exactly once, in order",
          seqs == [e["sequence"] for e in logged],
          f"page {seqs} log {[e['sequence'] for e in logged]}")
    types = page.evaluate("[...document.querySelectorAll('#timeline [data-seq]')].map(e => e.dataset.type)")
    check("with their types", types == [e["type"] for e in logged])
    check("sandbox lifecycle, spans and usage are shown",
          {"sandbox.provisioned", "span.model_request_end", "session.usage"} <= set(types), types)
    check("the waterfall drew the spans",
          page.evaluate("document.querySelectorAll('#waterfall .wf-bar').length") >= 4)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(os.path.join(ARTIFACTS, "console-timeline.png"))
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.screenshot(os.path.join(ARTIFACTS, "console-timeline-end.png"))

    # ---- the list, and another tenant -----------------------------------------------------------
    # Pages: 55 newer sessions push this one to the second page of 50.
    for i in range(55):
        s, _ = call("POST", "/v1/sessions", {"agent": agent["id"], "environment_id": env["id"],
                                             "title": f"bulk session {i}"})
        assert s == 200
    page.evaluate("location.hash = '#/'")
    page.wait_for("herdConsole.view === 'list' && (herdConsole.listed || []).length === 50")
    check("the first page holds 50 sessions, newest first, without this one",
          SID not in page.evaluate("herdConsole.listed") and "bulk session 54" in page.text("#sessions"))
    page.screenshot(os.path.join(ARTIFACTS, "console-list.png"))
    page.click("#next")
    page.wait_for(f"(herdConsole.listed || []).includes('{SID}')")
    check("the second page holds the rest", len(page.evaluate("herdConsole.listed")) == 6)
    page.click("#prev")
    page.wait_for("(herdConsole.listed || []).length === 50")

    rival = browser.new_page()
    rival.navigate(URL + "/console")
    rival.wait_for("herdConsole.view === 'login'")
    rival.type_into("#key", RIVAL_KEY)
    rival.click("#login button[type=submit]")
    rival.wait_for(f"herdConsole.view === 'list' && (herdConsole.listed || []).includes('{RIVAL_SESSION}')")
    check("the rival's key lists only the rival's session",
          rival.evaluate("herdConsole.listed") == [RIVAL_SESSION]
          and "Console walkthrough" not in rival.text("#sessions"))
    rival.evaluate(f"location.hash = '#/sessions/{SID}'")
    rival.wait_for("herdConsole.view === 'missing'")
    check("the rival's key cannot open acme's timeline",
          "not found" in rival.text("#timeline-error").lower()
          and "approve" not in rival.evaluate("document.body.textContent"))
    check("no dialog on either page", not page.dialogs and not rival.dialogs)

print(json.dumps({"session": SID, "checks": checks}))
