"""examples/chat.py driven by two headless Chromium pages (DevTools protocol).

In one process, and across two workers with the room on Redis (the pages
prove they are on different workers: each shows its worker's pid). Skipped
when no Chromium is installed (Debian: ``apt-get install chromium``), the
Redis test also when redis-server or hiredis is missing.
Chromium offers permessage-deflate: the test passes whether or not evws
accepts it, and reports which it was.
"""

from __future__ import annotations

import pytest

from tests.browser import Browser, find_chromium
from tests.conftest import run_until
from tests.processes import Baseline, descendants
from tests.redis_server import serve
from tests.servers import example_server

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="headless Chromium not installed (apt-get install chromium)")

MESSAGE_TIMEOUT = 10.0

# Runs in a page: resolves with what chat.received holds once it has `count` messages.
WAIT_FOR = """new Promise((resolve, reject) => {{
  const deadline = Date.now() + {ms};
  (function poll() {{
    if (chat.received.length >= {count}) resolve(chat.received);
    else if (Date.now() > deadline) reject(new Error("only " + chat.received.length + " messages"));
    else setTimeout(poll, 10);
  }})();
}})"""

BINARY = list(range(256)) + [0, 255, 128]
# Over 64 KiB (a 64-bit length on the wire), not ASCII only, with a pattern that
# would show a lost or reordered fragment.
BIG = "".join(f"{i:05d}é" for i in range(12000))


def wait_for(page, count):
    return page.evaluate(WAIT_FOR.format(ms=int(MESSAGE_TIMEOUT * 1000), count=count),
                         timeout=MESSAGE_TIMEOUT + 2)


def test_two_pages_chat_text_binary_and_big():
    assert len(BIG.encode()) > 65536
    with example_server("chat.py") as port, Browser.launch(timeout=15) as browser:
        url = f"http://127.0.0.1:{port}/"
        alice = browser.new_page(url)
        bob = browser.new_page(url)
        extensions = [alice.evaluate("chat.ready"), bob.evaluate("chat.ready")]
        # One process: both pages were welcomed by it.
        assert alice.evaluate("chat.worker") == bob.evaluate("chat.worker") > 0

        alice.evaluate("chat.send('hello from alice'); true")
        alice.evaluate(f"chat.send(new Uint8Array({BINARY}).buffer); true")
        alice.evaluate(f"chat.send({BIG!r}); true")
        got_by_bob = wait_for(bob, 3)
        bob.evaluate("chat.send('hi alice'); true")
        got_by_alice = wait_for(alice, 4)

    expected = [
        {"type": "text", "data": "hello from alice"},
        {"type": "binary", "data": BINARY},
        {"type": "text", "data": BIG},
    ]
    assert got_by_bob[:3] == expected
    assert got_by_alice == expected + [{"type": "text", "data": "hi alice"}]
    # Whatever evws agreed to (permessage-deflate or nothing), both pages agree.
    assert extensions[0] == extensions[1]
    assert extensions[0] == "" or extensions[0].startswith("permessage-deflate")


# -- across workers, through Redis ---------------------------------------------------

#: pages reconnected at most this often to land on the other worker (odds 2**-40 to fail)
MAX_RECONNECTS = 40


@pytest.fixture
def redis():
    yield from serve()


def test_two_pages_on_two_workers_chat_through_redis(loop, redis):
    baseline = Baseline()
    helpers: set[int] = set()
    with example_server("chat.py", "--workers", "2", "--redis", redis.url) as port, \
            Browser.launch(timeout=15) as browser:
        url = f"http://127.0.0.1:{port}/"
        alice = browser.new_page(url)
        bob = browser.new_page(url)
        alice.evaluate("chat.ready")
        bob.evaluate("chat.ready")
        # Each page shows the pid of its worker ("you are on worker PID"); the kernel
        # spreads connections by a hash, so reconnect bob until it is on the other one.
        for _ in range(MAX_RECONNECTS):
            if bob.evaluate("chat.worker") != alice.evaluate("chat.worker"):
                break
            bob.evaluate("chat.connect()")
        workers = {alice.evaluate("chat.worker"), bob.evaluate("chat.worker")}
        assert len(workers) == 2, f"{MAX_RECONNECTS} reconnects, always on worker {workers}"
        assert all(isinstance(pid, int) and pid > 0 for pid in workers)
        # Plain rooms are at most once: talk once both workers are subscribed.
        run_until(loop, lambda: redis.numsub("evws:room:chat") == 2, timeout=MESSAGE_TIMEOUT)

        alice.evaluate("chat.send('hello from alice'); true")
        alice.evaluate(f"chat.send(new Uint8Array({BINARY}).buffer); true")
        got_by_bob = wait_for(bob, 2)
        bob.evaluate("chat.send('hi alice, from the other worker'); true")
        got_by_alice = wait_for(alice, 3)
        got_by_bob = wait_for(bob, 3)
        helpers = descendants(browser.proc.pid)

    expected = [
        {"type": "text", "data": "hello from alice"},
        {"type": "binary", "data": BINARY},
        {"type": "text", "data": "hi alice, from the other worker"},
    ]
    assert got_by_alice == expected  # each message once, the sender's own included
    assert got_by_bob == expected
    baseline.check(workers | helpers)
