"""A second real process for tests/test_hub_processes.py: its own loop, server and Hub.

``python3 tests/hub_worker.py REDIS_URL ROOM`` listens on a free loopback
port, prints ``PORT <n>`` once its Hub is connected to Redis, makes every
connection a member of ROOM and publishes every message it receives to
ROOM. SIGTERM stops it cleanly (exit 0).
"""

from __future__ import annotations

import signal
import sys

import evws


def main() -> int:
    url, room = sys.argv[1], sys.argv[2]
    loop = evws.get_loop()
    hub = evws.Hub(evws.RedisBroker(url, loop=loop, backoff_initial=0.02, backoff_max=0.2),
                   loop=loop)
    server = evws.Server(loop=loop, ping_interval=None)

    def accepted(sock, host, port):  # type: ignore[no-untyped-def]
        def established(cv: evws.CondVar) -> None:
            try:
                conn = cv.recv_all()[0]
            except Exception:
                return  # a probe or a failed handshake
            hub.join(conn, room)
            conn.on("each_message", lambda c, m: hub.publish(room, m))
        server.establish(sock).cb(established)

    listener = server.listen("127.0.0.1", 0, accepted)

    def announce(h: evws.Hub) -> None:
        print(f"PORT {listener.port}", flush=True)
        hub.remove_listener("healthy", announce)
    hub.on("healthy", announce)

    def stop(signum: int) -> None:
        hub.close()
        server.shutdown(timeout=2).cb(lambda cv: loop.stop())
    loop.signal(signal.SIGTERM, stop)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
