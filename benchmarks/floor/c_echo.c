/*
 * The C floor of 1 x 16 B: epoll, one recv and one send per message, no
 * WebSocket library. It answers the handshake without checking it (the key
 * wsbench sends is fixed, so is the accept value) and echoes each masked
 * frame of <= 125 bytes unmasked: enough for the 1 x 16 B load, nothing more.
 *   cc -O2 -o c_echo benchmarks/floor/c_echo.c && ./c_echo --port 8765
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

int main(int argc, char **argv)
{
    int port = argc > 2 ? atoi(argv[2]) : 8765, one = 1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0) {
        perror("c_echo");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = ls}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
    static char opened[65536];
    unsigned char buf[65536], out[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int s = accept(ls, NULL, NULL);
                if (s < 0 || s >= 65536)
                    continue;
                setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                opened[s] = 0;
                struct epoll_event ce = {.events = EPOLLIN, .data.fd = s};
                epoll_ctl(ep, EPOLL_CTL_ADD, s, &ce);
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r <= 0) {
                close(fd);   /* also leaves the epoll set */
            } else if (!opened[fd]) {
                send(fd, RESPONSE, sizeof RESPONSE - 1, MSG_NOSIGNAL);
                opened[fd] = 1;
            } else if (r >= 6) {
                size_t len = buf[1] & 127;
                out[0] = buf[0];
                out[1] = (unsigned char)len;
                for (size_t j = 0; j < len && 6 + j < (size_t)r; j++)
                    out[2 + j] = buf[6 + j] ^ buf[2 + (j & 3)];
                send(fd, out, 2 + len, MSG_NOSIGNAL);
            }
        }
    }
}
