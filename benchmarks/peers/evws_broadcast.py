"""The evws server of the fan-out workload (benchmarks/run.py).

Every message a client sends goes to every connected client, the sender
included. With ``evws.broadcast.broadcast(conns, message)`` available (the
library's helper, one frame built for all) it uses that; otherwise it loops
over ``server.connections`` calling ``conn.send``. It prints which one it
uses at startup (run.py shows it in the fan-out table's header).

    python3 benchmarks/peers/evws_broadcast.py --port 8765
"""

import argparse
import importlib
import os
import signal
import sys

import evws


def _find_helper():  # type: ignore[no-untyped-def]
    """evws.broadcast.broadcast, or None with the reason (printed at startup)."""
    try:
        # The module, not the function evws/__init__.py exports under the same name.
        module = importlib.import_module("evws.broadcast")
    except ImportError:
        return None, "no evws.broadcast"
    # An editable install can serve evws.broadcast from another checkout than the evws
    # package in use; mixing two trees measures neither, so only a module beside
    # evws/__init__.py counts.
    if os.path.dirname(module.__file__) != os.path.dirname(evws.__file__):
        return None, f"evws.broadcast comes from another tree ({module.__file__})"
    return module.broadcast, ""


_helper, _why_not = _find_helper()

server = evws.Server(max_payload_size=None)


def send_all(connection, message):
    for conn in server.connections:
        conn.send(message)


def send_helper(connection, message):
    _helper(server.connections, message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    handler = send_helper if _helper is not None else send_all

    def on_accept(sock, peer_host, peer_port):
        def established(cv):
            try:
                connection = cv.recv()
            except evws.WebSocketError:
                sock.close()
                return
            connection.on("each_message", handler)

        server.establish(sock).cb(established)

    listener = server.listen("127.0.0.1", args.port, on_accept)
    how = ("evws.broadcast.broadcast()" if _helper is not None
           else f"loop over server.connections ({_why_not})")
    print(f"evws {evws.__version__} broadcast on 127.0.0.1:{listener.port}, using: {how}",
          file=sys.stderr, flush=True)
    loop = evws.get_loop()
    loop.signal(signal.SIGTERM, lambda signum: loop.stop())
    loop.run()


if __name__ == "__main__":
    main()
