"""The evws echo server of the TLS workload (benchmarks/run.py).

examples/echo_server.py is the evws server of every other echo workload; it
has no TLS options, so this script is the same server (plain module-level
listeners, no payload limit, permessage-deflate accepted) with a certificate.

    python3 benchmarks/peers/evws_echo.py --port 8765 [--tls-cert PEM --tls-key PEM]
"""

import argparse
import signal
import sys

import evws


def echo(connection, message):
    connection.send(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--no-compression", action="store_true")
    args = parser.parse_args()
    server = evws.Server(max_payload_size=None, ssl_cert_file=args.tls_cert, ssl_key_file=args.tls_key,
                         compression=None if args.no_compression else "deflate")

    def on_accept(sock, peer_host, peer_port):
        def established(cv):
            try:
                connection = cv.recv()
            except evws.WebSocketError:
                sock.close()   # a port probe, or a failed TLS handshake
                return
            connection.on("each_message", echo)

        server.establish(sock).cb(established)

    listener = server.listen("127.0.0.1", args.port, on_accept)
    print(f"evws {evws.__version__} echo on 127.0.0.1:{listener.port}, tls: {bool(args.tls_cert)}",
          file=sys.stderr, flush=True)
    loop = evws.get_loop()
    loop.signal(signal.SIGTERM, lambda signum: loop.stop())
    loop.run()


if __name__ == "__main__":
    main()
