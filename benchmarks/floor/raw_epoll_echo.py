"""The Python floor of 1 x 16 B: raw epoll, one recv and one send per message, no WebSocket library.

Answers the handshake, then echoes unmasked each masked frame of <= 125 bytes (the 1 x 16 B load only).
    python3 benchmarks/floor/raw_epoll_echo.py --port 8765
"""
import base64
import hashlib
import select
import socket
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
port = int(sys.argv[sys.argv.index("--port") + 1])
lsock = socket.create_server(("127.0.0.1", port), backlog=1024)
ep, conns = select.epoll(), {}
ep.register(lsock.fileno(), select.EPOLLIN)
while True:
    for fd, _ in ep.poll():
        if fd == lsock.fileno():
            s = lsock.accept()[0]
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns[s.fileno()] = [s, False]
            ep.register(s.fileno(), select.EPOLLIN)
            continue
        s, opened = conns[fd]
        data = s.recv(65536)
        if not data:
            ep.unregister(fd)
            s.close()
            del conns[fd]
        elif not opened:   # the request fits one read on loopback; the key is all that is needed from it
            key = data.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
            s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Accept: " + base64.b64encode(hashlib.sha1(key + GUID).digest()) + b"\r\n\r\n")
            conns[fd][1] = True
        else:              # one masked frame: 2-byte header, 4-byte key, payload
            n, mask = data[1] & 127, data[2:6]
            s.send(bytes((data[0], n)) + bytes(b ^ mask[i & 3] for i, b in enumerate(data[6:6 + n])))
