"""examples/autobahn_client.py against a stand-in for ``wstest -m fuzzingserver``.

The real run (scripts/autobahn_client.sh) needs wstest and minutes; this
checks in a second that the script speaks the fuzzingserver's URL protocol
(getCaseCount, runCase?case=N&agent=..., updateReports) and echoes each
message with its opcode, compressed or not.
"""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import parse_qs

import evws
from tests.conftest import TIMEOUT, run_until
from tests.servers import ROOT

CASES = {
    1: ["text one", b"\x00binary\xff"],
    2: ["é" * 5000, b"z" * 300000],
}


def test_autobahn_client_runs_every_case_and_updates_reports(loop):
    server = evws.Server(loop=loop, max_payload_size=None)
    log: list = []
    echoes: dict[int, list] = {1: [], 2: []}

    def on_accept(sock, host, port):
        def established(cv):
            conn = cv.recv()
            path, _, query = conn.request.resource_name.partition("?")
            params = parse_qs(query)
            log.append((path, params, conn.protocol.deflate is not None))
            if path == "/getCaseCount":
                conn.send(str(len(CASES)))
                conn.close()
            elif path == "/runCase":
                number = int(params["case"][0])
                for message in CASES[number]:
                    conn.send(message)

                @conn.on("each_message")
                def echoed(conn, message):
                    echoes[number].append((message.opcode, message.body))
                    if len(echoes[number]) == len(CASES[number]):
                        conn.close()
            else:
                conn.close()
        server.establish(sock).cb(established)

    listener = evws.tcp_server("127.0.0.1", 0, on_accept, loop=loop)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "autobahn_client.py"),
         f"ws://127.0.0.1:{listener.port}", "--agent", "probe", "--case-timeout", str(TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        run_until(loop, lambda: proc.poll() is not None, timeout=3 * TIMEOUT)
    finally:
        proc.kill()
        output = proc.communicate()[0].decode()
        listener.close()
    assert proc.returncode == 0, output
    assert [(path, params) for path, params, _ in log] == [
        ("/getCaseCount", {}),
        ("/runCase", {"case": ["1"], "agent": ["probe"]}),
        ("/runCase", {"case": ["2"], "agent": ["probe"]}),
        ("/updateReports", {"agent": ["probe"]}),
    ]
    assert all(deflate for _, _, deflate in log)   # compression offered and taken
    for number, messages in CASES.items():
        assert echoes[number] == [
            (1, m.encode()) if isinstance(m, str) else (2, m) for m in messages]
