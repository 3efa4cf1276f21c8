"""Drive headless Chromium over the DevTools protocol (CDP), for browser tests.

CDP is JSON over a WebSocket, so the ``websockets`` sync client (already a
test dependency) speaks it; no chromedriver or Selenium is needed. Every wait
is bounded: the browser start, each command and each awaited event.

    with Browser.launch() as browser:
        page = browser.new_page("http://127.0.0.1:8000/")
        page.evaluate("chat.ready")         # awaits a promise, returns by value
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from websockets.sync.client import connect

__all__ = ["Browser", "BrowserError", "Page", "find_chromium"]

#: the flags the project agreed on: no sandbox (containers), no network chatter
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(Exception):
    """The browser did not start, a command failed, or a wait timed out."""


def find_chromium() -> str | None:
    """The path of a Chromium-family browser, or ``None``."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless browser process with a fresh profile, and its CDP socket."""

    def __init__(self, proc: subprocess.Popen, profile: str, url: str, timeout: float,
                 pump: threading.Thread) -> None:
        self.proc = proc
        self.pump = pump
        self.profile = profile
        self.timeout = timeout
        # Entered as a context manager (websockets >= 17.1 warns otherwise), left in close().
        self._exits = contextlib.ExitStack()
        self.ws = self._exits.enter_context(
            connect(url, max_size=None, open_timeout=timeout, close_timeout=1))
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    @classmethod
    def launch(cls, timeout: float = 15.0) -> Browser:
        binary = find_chromium()
        if binary is None:
            raise BrowserError("no chromium binary on PATH")
        profile = tempfile.mkdtemp(prefix="evws-chromium-")
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # stderr must keep draining, or Chromium blocks on it
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)
            proc.stderr.close()  # EOF: Chromium and its helpers are gone
            lines.put(None)

        pump = threading.Thread(target=drain, daemon=True)
        pump.start()
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise BrowserError(f"no DevTools URL within {timeout} s: {''.join(seen)[-2000:]}") from None
                if line is None:
                    raise BrowserError(f"chromium exited ({proc.wait()}): {''.join(seen)[-2000:]}")
                seen.append(line)
                if line.startswith("DevTools listening on "):
                    return cls(proc, profile, line.split(" on ", 1)[1].strip(), timeout, pump)
        except BaseException:
            _stop(proc, profile, pump)
            raise

    # -- CDP messages ------------------------------------------------------------

    def call(self, method: str, params: dict | None = None,
             session: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send one command and wait for its result (events meanwhile are kept)."""
        self._next_id += 1
        msg_id = self._next_id
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str, session: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """Wait for the CDP event ``method`` (from ``session``), also one already received."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event.get("params", {})
            reply = self._receive(deadline, method)
            if "method" in reply:
                self._events.append(reply)

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"timed out waiting for {what}")
        try:
            return json.loads(self.ws.recv(timeout=remaining))
        except TimeoutError:
            raise BrowserError(f"timed out waiting for {what}") from None

    # -- pages -------------------------------------------------------------------

    def new_page(self, url: str) -> Page:
        """Open a tab, attach to it and load ``url`` (until its load event)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self.call("Page.enable", session=session)
        result = self.call("Page.navigate", {"url": url}, session=session)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return page

    def close(self) -> None:
        try:
            self._exits.close()
        finally:
            _stop(self.proc, self.profile, self.pump)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab, reached through its flattened CDP session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """Evaluate JavaScript (awaiting a returned promise); return the value as JSON."""
        result = self.browser.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True,
        }, session=self.session, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result["result"].get("value")


def _stop(proc: subprocess.Popen, profile: str, pump: threading.Thread) -> None:
    """Stop Chromium; return once its stderr reached EOF (its helpers hold it too) and is closed."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    pump.join(timeout=5)
    shutil.rmtree(profile, ignore_errors=True)
