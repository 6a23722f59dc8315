"""The console's benchmark, run by `herd bench console` (which starts a private nats-server and
gateway, writes the sessions and passes them here): in headless Chromium,

* first paint of a long session's timeline: from the page's navigation start to the moment
  the last of its events is in the DOM, vs a plain HTTP client reading the same stream replay
  (every frame of the same session) in the same run;
* append → on the page: a `user.message` POSTed to the gateway until the page shows it, vs a
  plain HTTP SSE client on the same session seeing the same event, both open at once.

Environment: HERD_URL, HERD_KEY, HERD_SESSION (the long one), HERD_EVENTS (its event count),
HERD_LIVE_SESSION, HERD_SAMPLES, HERD_REPEATS. Prints progress on stderr and one JSON line
(times in milliseconds) on stdout.
"""

import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Browser, now_ms  # noqa: E402
from event_types import TYPES  # noqa: E402

URL = os.environ["HERD_URL"]
KEY = os.environ["HERD_KEY"]
SID = os.environ["HERD_SESSION"]
N = int(os.environ["HERD_EVENTS"])
LIVE = os.environ["HERD_LIVE_SESSION"]
SAMPLES = int(os.environ.get("HERD_SAMPLES", "50"))
REPEATS = int(os.environ.get("HERD_REPEATS", "5"))


def stream(sid, last_event_id=None):
    headers = {"authorization": f"Bearer {KEY}", "accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    # The console asks for every type, herd's own included: so does this client.
    types = "&".join(f"types[]={t}" for t in TYPES)
    req = urllib.request.Request(f"{URL}/v1/sessions/{sid}/events/stream?{types}", headers=headers)
    return urllib.request.urlopen(req, timeout=60)


def frames(resp):
    """(id, event) for each frame of an open SSE response, as it arrives."""
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            fid = None
            for line in block.split(b"\n"):
                if line.startswith(b"id: "):
                    fid = int(line[4:])
            if fid is not None:
                yield fid


def log(msg):
    print(msg, file=sys.stderr, flush=True)


out = {"first_paint_ms": [], "raw_replay_ms": [], "append_to_page_ms": [], "append_to_sse_ms": []}

# Raw: a plain HTTP client reads the whole replay of the same session.
log(f"raw stream replay of {N} events ×{REPEATS}…")
for _ in range(REPEATS + 1):
    t0 = now_ms()
    resp = stream(SID, 0)
    got = 0
    for _fid in frames(resp):
        got += 1
        if got >= N:
            break
    resp.close()
    out["raw_replay_ms"].append(now_ms() - t0)
out["raw_replay_ms"] = out["raw_replay_ms"][1:]  # the first warms the gateway's caches

with Browser() as browser:
    page = browser.new_page()
    page.navigate(URL + "/console")
    page.evaluate(f"sessionStorage.setItem('herd.console.key', {json.dumps(KEY)})")
    log(f"first paint of the {N}-event timeline ×{REPEATS}…")
    for r in range(REPEATS + 1):
        # A fresh document each time (a hash change alone would keep the old one).
        page.navigate("about:blank")
        page.navigate(f"{URL}/console#/sessions/{SID}")
        page.wait_for(f"window.herdConsole && herdConsole.rendered >= {N}", timeout=120)
        # The flush that put the last event in the DOM, measured from navigation start.
        t = page.evaluate("herdConsole.flushes[herdConsole.flushes.length - 1].t - performance.timeOrigin")
        page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        drawn = page.evaluate("document.querySelectorAll('#timeline [data-seq]').length")
        assert min(N, 300) <= drawn <= 600, f"{drawn} cards drawn of {N} events"
        assert page.evaluate("document.querySelector('#earlier').hidden") == (drawn == N)
        if r:
            out["first_paint_ms"].append(t)
            out.setdefault("flushes", []).append(page.evaluate("herdConsole.flushes.length"))
            out.setdefault("opened_ms", []).append(page.evaluate("herdConsole.opened - performance.timeOrigin"))
            out.setdefault("first_flush_ms", []).append(page.evaluate("herdConsole.flushes[0].t - performance.timeOrigin"))
            out.setdefault("stream_opened_ms", []).append(page.evaluate("herdConsole.streamOpened - performance.timeOrigin"))
            out.setdefault("first_chunk_ms", []).append(page.evaluate("herdConsole.firstChunk - performance.timeOrigin"))
    if drawn < N:
        # The earlier events are drawn on demand, in order, before the rest.
        page.click("#earlier")
        seqs = page.evaluate("[...document.querySelectorAll('#timeline [data-seq]')].map(e => Number(e.dataset.seq))")
        assert len(seqs) == min(N, drawn + 300) and seqs == sorted(seqs), (len(seqs), seqs[:5])
    out["assets_transferred"] = page.evaluate(
        "performance.getEntriesByType('resource').filter(e => e.name.includes('/console/'))"
        ".reduce((a, e) => a + (e.transferSize || e.encodedBodySize || 0), 0)")

    log(f"append → page vs append → SSE client ×{SAMPLES}…")
    page.navigate(f"{URL}/console#/sessions/{LIVE}")
    page.wait_for("herdConsole.state === 'live'", timeout=30)
    seen = {}
    raw = stream(LIVE)

    def read_raw():
        try:
            for fid in frames(raw):
                seen[fid] = now_ms()
        except (AttributeError, OSError, ValueError):
            pass  # closed at the end

    threading.Thread(target=read_raw, daemon=True).start()
    time.sleep(0.3)
    for i in range(SAMPLES + 5):
        body = json.dumps({"events": [{"type": "system.message", "content": [
            {"type": "text", "text": f"tick {i}: **markdown** with `code` and a [link](https://example.com)"}]}]}).encode()
        req = urllib.request.Request(f"{URL}/v1/sessions/{LIVE}/events", data=body, method="POST",
                                     headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
        t0 = now_ms()
        with urllib.request.urlopen(req, timeout=30) as r:
            seq = json.loads(r.read())["data"][0]["sequence"]
        at = page.wait_for(f"herdConsole.renderedAt[{seq}]", timeout=30, interval=0.002)
        deadline = time.time() + 10
        while seq not in seen and time.time() < deadline:
            time.sleep(0.001)
        if i >= 5:
            out["append_to_page_ms"].append(at - t0)
            out["append_to_sse_ms"].append(seen.get(seq, float("nan")) - t0)
    raw.close()
    out["browser"] = browser.version
    out["exceptions"] = len(page.exceptions)

print(json.dumps(out))
