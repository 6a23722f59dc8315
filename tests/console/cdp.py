"""Headless Chromium over the Chrome DevTools Protocol, for the console's browser tests.

Why this and not Selenium or Playwright: both fetch a browser build or a driver binary of their
own at install time, which this project's machines cannot download; Debian's `chromium`
(scripts/ensure-chromium) already speaks CDP, and CDP over one websocket needs nothing beyond
the standard library and `websocket-client` (pinned in scripts/ensure-sdk). It is also what
tests want to observe: every request the page makes, every dialog, console message, uncaught
exception and CSP report, not only what is on the screen.

    from cdp import Browser, now_ms

    with Browser() as b:
        p = b.new_page()
        p.navigate("http://127.0.0.1:8080/console/")
        p.type_into("#key", "sk-herd-...")
        p.click("#connect")
        p.wait_for("document.querySelector('#status').textContent === 'connected'")
        assert not p.exceptions and not p.dialogs, (p.exceptions, p.dialogs)
        p.screenshot("/tmp/console.png", full_page=True)

Everything is synchronous and single-threaded: a Page reads its websocket only while a call
waits for its answer (or in pump/wait_for/wait_event), and handles the events that arrive
meanwhile (recording them, dismissing dialogs). A page that opens a dialog while no call is
reading stays blocked until the next one; that is harmless, since the test is not looking then.
"""

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import websocket  # websocket-client

__all__ = ["Browser", "Page", "CDPError", "JSError", "now_ms"]


def now_ms():
    """Now, in epoch milliseconds as a float: the same clock and unit as the page's
    `performance.timeOrigin + performance.now()` (see Page.now_ms), so a test can say how long
    after its own action something happened in the page."""
    return time.time() * 1000


class CDPError(Exception):
    """A CDP command answered with an error (or the browser went away mid-call)."""

    def __init__(self, method, error):
        self.method = method
        self.error = error
        msg = error.get("message", error) if isinstance(error, dict) else error
        data = error.get("data") if isinstance(error, dict) else None
        super().__init__(f"{method}: {msg}" + (f" ({data})" if data else ""))


class JSError(Exception):
    """A JavaScript expression given to Page.evaluate threw (or its promise rejected)."""

    def __init__(self, expr, text):
        self.expr = expr
        self.text = text
        super().__init__(f"{text}\n  in: {_short(expr)}")


def _short(s, n=300):
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


class _Connection:
    """One CDP websocket: numbered commands, answers matched by id, events handed to on_event.

    No reader thread: reads happen only inside call()/read(), so events are handled in order on
    the caller's thread and a test never races a background reader.
    """

    def __init__(self, url, on_event=None, timeout=30):
        # suppress_origin: Chromium refuses websocket upgrades carrying an Origin it was not
        # told to allow (--remote-allow-origins); without an Origin header it accepts.
        self.ws = websocket.create_connection(url, suppress_origin=True, timeout=timeout)
        self.on_event = on_event or (lambda method, params: None)
        self.timeout = timeout
        self._next = 0
        self._ignored = set()  # ids of posted commands whose answers nobody waits for

    def post(self, method, params=None):
        """Sends a command without waiting; its answer is dropped when it comes. For commands
        sent from inside an event handler (dismissing a dialog while Runtime.evaluate waits)."""
        self._next += 1
        self._ignored.add(self._next)
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params or {}}))
        return self._next

    def call(self, method, params=None, timeout=None):
        self._next += 1
        mid = self._next
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"CDP {method}: no answer in {timeout or self.timeout} s")
            msg = self.read(left)
            if msg is not None and msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError(method, msg["error"])
                return msg.get("result", {})

    def read(self, timeout):
        """Reads one message within timeout seconds and dispatches it if it is an event.
        Returns the message, or None when nothing came in time."""
        # select() first: a websocket-client recv() that times out mid-frame would lose the
        # frame. websocket-client reads frames exactly (no read-ahead buffer on a plain
        # socket), so a readable socket means at least the start of a frame; the rest of a
        # frame Chromium has started sending arrives promptly.
        r, _, _ = select.select([self.ws.sock], [], [], max(0.0, timeout))
        if not r:
            return None
        self.ws.settimeout(max(self.timeout, 5))
        raw = self.ws.recv()
        if not raw:
            return None
        msg = json.loads(raw)
        if "method" in msg and "id" not in msg:
            self.on_event(msg["method"], msg.get("params", {}))
        elif msg.get("id") in self._ignored:
            self._ignored.discard(msg["id"])
        return msg

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


class Page:
    """One browser tab, driven over its own websocket.

    Records, as they arrive:
      requests         every request URL the page asked for (Network.requestWillBeSent), in order
      failed_requests  (url, errorText) for requests that failed (Network.loadingFailed)
      dialogs          {"type", "message", "url"} for alert/confirm/prompt/beforeunload; each is
                       answered at once (dismissed, unless accept_dialogs) so the page never hangs
      console          {"type", "text", "args"} for every console.* call
      exceptions       the text of every uncaught exception or unhandled rejection
      log              Log.entryAdded entries ({"source", "level", "text", "url", ...}): where
                       Chromium reports CSP violations, failed loads and deprecations
      events           every event as (method, params), for anything the above leave out
    """

    def __init__(self, browser, target_id, ws_url, timeout=30):
        self.browser = browser
        self.target_id = target_id
        self.timeout = timeout
        self.requests = []
        self.failed_requests = []
        self.dialogs = []
        self.console = []
        self.exceptions = []
        self.log = []
        self.events = []
        self.accept_dialogs = False  # True: confirm() returns true, prompt() gets prompt_text
        self.prompt_text = ""
        self._loads = 0
        self._request_urls = {}
        self._conn = _Connection(ws_url, self._on_event, timeout)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")

    # -- the protocol ------------------------------------------------------------------------

    def send(self, method, timeout=None, **params):
        """Sends one CDP command and returns its result, recording the events that arrive while
        waiting. Raises CDPError if Chromium answers with an error, TimeoutError if it does not
        answer within timeout (default: the page's, 30 s)."""
        return self._conn.call(method, params, timeout)

    def pump(self, timeout=0.0):
        """Handles the events that arrive within timeout seconds (0: only those already here).
        Call it to let recorded lists catch up, or to answer a dialog opened by a timer."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._conn.read(max(0.0, left)) is None and left <= 0:
                return

    def wait_event(self, method, predicate=None, timeout=20, since=0):
        """Waits for an event named method (whose params satisfy predicate, if given) among
        those recorded from index `since` on; returns its params. Pass since=len(page.events)
        taken before the action to ignore earlier ones."""
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.events):
                m, p = self.events[i]
                i += 1
                if m == method and (predicate is None or predicate(p)):
                    return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event in {timeout} s")
            self._conn.read(left)

    def _on_event(self, method, params):
        self.events.append((method, params))
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            self.requests.append(url)
            self._request_urls[params["requestId"]] = url
        elif method == "Network.loadingFailed":
            url = self._request_urls.get(params["requestId"], "?")
            self.failed_requests.append((url, params.get("errorText", "")))
        elif method == "Page.loadEventFired":
            self._loads += 1
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(
                {"type": params.get("type"), "message": params.get("message"), "url": params.get("url")}
            )
            # Posted, not awaited: we may be inside Runtime.evaluate, which answers only once
            # the dialog is closed.
            answer = {"accept": self.accept_dialogs}
            if self.accept_dialogs and params.get("type") == "prompt":
                answer["promptText"] = self.prompt_text
            self._conn.post("Page.handleJavaScriptDialog", answer)
        elif method == "Runtime.consoleAPICalled":
            args = params.get("args", [])
            text = " ".join(_remote_text(a) for a in args)
            self.console.append({"type": params.get("type"), "text": text, "args": args})
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(_exception_text(params["exceptionDetails"]))
        elif method == "Log.entryAdded":
            self.log.append(params["entry"])

    # -- what a test does ----------------------------------------------------------------------

    def navigate(self, url, timeout=30):
        """Loads url and waits for its load event (scripts run, images loaded). Raises CDPError
        if the load failed outright (e.g. connection refused). A same-document navigation
        (only the #fragment changes) has no load event and returns at once."""
        self.pump()
        loads = self._loads
        r = self.send("Page.navigate", url=url, timeout=timeout)
        if r.get("errorText"):
            raise CDPError("Page.navigate", {"message": f"{url}: {r['errorText']}"})
        if "loaderId" not in r:
            return
        deadline = time.monotonic() + timeout
        while self._loads == loads:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{url}: no load event in {timeout} s")
            self._conn.read(left)

    def evaluate(self, expr, timeout=None):
        """Evaluates a JavaScript expression in the page and returns its value as JSON (a
        promise is awaited first; undefined and DOM nodes come back as None or {}). Runs as a
        user gesture, so what needs one (focus, clipboard, popups) behaves as after a click.
        Raises JSError with the exception's text if it threw or the promise rejected."""
        r = self.send(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expr,
            returnByValue=True,
            awaitPromise=True,
            userGesture=True,
        )
        if "exceptionDetails" in r:
            raise JSError(expr, _exception_text(r["exceptionDetails"]))
        return r.get("result", {}).get("value")

    def wait_for(self, expr, timeout=20, interval=0.05):
        """Polls a JavaScript expression until it is truthy and returns that value. An
        expression that throws counts as not yet (the element may not exist yet). On timeout
        raises TimeoutError naming the expression and its last value or error, which is
        usually what the test needs to see."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.evaluate(expr)
                if last:
                    return last
            except JSError as e:
                last = f"threw {e.text}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not true after {timeout} s: {_short(expr)}; last: {_short(repr(last))}")
            self.pump(min(interval, left))  # events are handled while waiting

    def click(self, selector):
        """Clicks the first element matching a CSS selector (element.click(): the page's own
        click handlers run, no coordinates involved). Raises JSError if nothing matches."""
        self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) throw new Error('no element matches ' + {json.dumps(selector)});"
            f" el.click(); return true; }})()"
        )

    def type_into(self, selector, text, replace=True):
        """Types text into an input or textarea as a person would: focuses it, clears it
        (unless replace=False, which appends at the end) and inserts the text with
        Input.insertText, so the page sees real `beforeinput`/`input` events. Ends with a
        `change` event, as leaving the field would. Raises JSError if nothing matches."""
        sel = json.dumps(selector)
        self.evaluate(
            f"(() => {{ const el = document.querySelector({sel});"
            f" if (!el) throw new Error('no element matches ' + {sel});"
            f" el.focus(); if ({'true' if replace else 'false'}) el.value = '';"
            f" const n = el.value.length; el.setSelectionRange?.(n, n); return true; }})()"
        )
        if text:
            self.send("Input.insertText", text=text)
        self.evaluate(
            f"document.querySelector({sel}).dispatchEvent(new Event('change', {{bubbles: true}}))"
        )

    def press(self, key):
        """Presses and releases a key in the focused element: "Enter", "Tab", "Escape",
        "Backspace", or one character. Enter in a form's input submits it, as typing would."""
        codes = {"Enter": 13, "Tab": 9, "Escape": 27, "Backspace": 8}
        ev = {"key": key, "code": key if key in codes else "", "windowsVirtualKeyCode": codes.get(key, 0)}
        text = {"Enter": "\r"}.get(key, key if len(key) == 1 else "")
        self.send("Input.dispatchKeyEvent", type="keyDown" if text else "rawKeyDown", text=text, **ev)
        self.send("Input.dispatchKeyEvent", type="keyUp", **ev)

    def screenshot(self, path, full_page=False):
        """Saves a PNG of the viewport (1280x900 by default), or of the whole page with
        full_page=True, and returns path. The file tool can show it to whoever reads the test."""
        params = {"format": "png"}
        if full_page:
            m = self.send("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m["contentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def now_ms(self):
        """The page's clock in epoch milliseconds (performance.timeOrigin + performance.now()),
        comparable with now_ms() here: same machine, same clock."""
        return self.evaluate("performance.timeOrigin + performance.now()")

    def text(self, selector):
        """The textContent of the first element matching selector, or None if none does."""
        return self.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent ?? null")

    def close(self):
        """Closes the tab and its websocket."""
        try:
            self.browser._call("Target.closeTarget", targetId=self.target_id)
        except Exception:
            pass
        self._conn.close()


def _remote_text(obj):
    """A console argument as DevTools would print it: strings bare, objects from their preview
    ({a: 1}, [1, 2]) since console arguments come by reference, not by value."""
    if "value" in obj:
        v = obj["value"]
        return v if isinstance(v, str) else json.dumps(v)
    pre = obj.get("preview")
    if pre and pre.get("properties") is not None and obj.get("subtype") not in ("error", "node"):
        more = ", …" if pre.get("overflow") else ""
        if pre.get("subtype") == "array":
            return "[" + ", ".join(p.get("value", "") for p in pre["properties"]) + more + "]"
        return "{" + ", ".join(f"{p['name']}: {p.get('value', '')}" for p in pre["properties"]) + more + "}"
    return obj.get("description") or obj.get("unserializableValue") or obj.get("type", "")


def _exception_text(d):
    ex = d.get("exception") or {}
    return ex.get("description") or ex.get("value") or d.get("text", "exception")


class Browser:
    """A headless Chromium of its own: a fresh profile in a temp dir, a free DevTools port.

    window_size is the window's outer size: headless Chromium keeps 87 px of it for browser
    chrome it does not draw, so 1280x900 gives the page (innerWidth x innerHeight, and the
    viewport screenshot) 1280x813.

    Used as a context manager; leaving it kills Chromium's whole process group (the browser
    and its zygote, GPU and renderer children) and removes the profile, even when the test
    failed. Flags: --no-sandbox because the tests run as root, where Chromium's sandbox
    refuses to start; --remote-debugging-port=0 so parallel tests never collide (the port
    chosen is read back from DevToolsActivePort in the profile).
    """

    def __init__(self, chromium=None, args=(), window_size=(1280, 900), startup_timeout=30, timeout=30):
        self.chromium = chromium or os.environ.get("HERD_CHROMIUM") or shutil.which("chromium")
        if not self.chromium:
            raise RuntimeError("chromium is not on the PATH: run scripts/ensure-chromium")
        self.args = list(args)
        self.window_size = window_size
        self.startup_timeout = startup_timeout
        self.timeout = timeout
        self.proc = None
        self.profile = None
        self.port = None
        self.pages = []
        self._conn = None
        self.startup_s = None  # how long Chromium took to open its DevTools port

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        self.profile = tempfile.mkdtemp(prefix="herd-chromium-")
        w, h = self.window_size
        cmd = [
            self.chromium,
            "--headless",
            "--no-sandbox",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            f"--window-size={w},{h}",
            *self.args,
            "about:blank",
        ]
        self._stderr = open(os.path.join(self.profile, "chromium-stderr.log"), "wb")
        t0 = time.monotonic()
        # A session of its own, so close() can kill the whole group.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True
        )
        try:
            self.port = self._wait_port(t0 + self.startup_timeout)
            self.startup_s = time.monotonic() - t0
            version = self._get("/json/version")
            self.version = version.get("Browser")
            self._conn = _Connection(version["webSocketDebuggerUrl"], timeout=self.timeout)
        except BaseException:
            tail = self.stderr_tail()
            self.close()
            raise RuntimeError(f"chromium did not start: {' '.join(cmd)}\n{tail}") from None

    def _wait_port(self, deadline):
        path = os.path.join(self.profile, "DevToolsActivePort")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            try:
                with open(path) as f:
                    content = f.read()
                # Written as "port\n/devtools/browser/<id>"; wait until the first line is whole.
                if "\n" in content:
                    return int(content.split("\n", 1)[0])
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        raise TimeoutError("no DevToolsActivePort")

    def _get(self, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.load(r)

    def _call(self, method, **params):
        return self._conn.call(method, params)

    def new_page(self, isolated=False):
        """Opens a new tab on about:blank and returns its Page. A new tab has its own
        sessionStorage; cookies and localStorage are shared with the other tabs unless
        isolated=True, which puts the tab in a browser context of its own (like a fresh
        incognito window)."""
        params = {"url": "about:blank"}
        if isolated:
            params["browserContextId"] = self._call("Target.createBrowserContext")["browserContextId"]
        target = self._call("Target.createTarget", **params)["targetId"]
        url = f"ws://127.0.0.1:{self.port}/devtools/page/{target}"
        for t in self._get("/json/list"):
            if t.get("id") == target and t.get("webSocketDebuggerUrl"):
                url = t["webSocketDebuggerUrl"]
        page = Page(self, target, url, self.timeout)
        self.pages.append(page)
        return page

    def stderr_tail(self, lines=30):
        """The last lines Chromium wrote to stderr (it is chatty; useful when it fails)."""
        try:
            with open(os.path.join(self.profile, "chromium-stderr.log"), "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def close(self):
        """Closes the websockets, asks Chromium to quit, kills its process group whatever it
        answers, and removes the profile. Safe to call twice."""
        for p in self.pages:
            p._conn.close()
        self.pages = []
        if self._conn:
            try:
                self._conn.post("Browser.close")
            except Exception:
                pass
            self._conn.close()
            self._conn = None
        if self.proc:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            try:
                # `chromium` is Debian's wrapper script, and the browser's zygotes, GPU, network
                # and renderer processes can outlive it: kill the group. (The zygotes linger as
                # zombies for up to a second until init reaps them; they no longer run.)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if getattr(self, "_stderr", None):
            self._stderr.close()
            self._stderr = None
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None
