/*
 * fanout_client: N WebSocket clients that only receive, for benchmarks/fanout_redis.py.
 *
 * Why C: 1,000 clients receiving 1,000 messages/s each is a million frames
 * per second; a Python client would be the bottleneck long before the server.
 * One thread on epoll: connect N sockets spread round-robin over the given
 * ports, handshake, then parse unmasked frames. Each text payload carries
 * "t=<CLOCK_MONOTONIC ns>;" written by the publisher (same clock across
 * processes on Linux), so publish-to-receive latency is now - t.
 *
 * -S speaks Socket.IO (Engine.IO 4) over the WebSocket instead: it answers
 * the open packet with a masked "40" (connect to the default namespace),
 * answers pings ("2" -> "3") and counts only event packets ("42...").
 *
 * Usage: fanout_client -p PORT[,PORT...] -n N -d SECONDS [-P PATH] [-S]
 * Prints "READY" once every connection is open (and, with -S, connected to
 * the namespace), then after SECONDS one JSON line: received, p50/p99 in ms.
 * Measurement starts at READY. Loopback only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd, open, nsp;   /* nsp: Socket.IO namespace connected */
    unsigned char *in;
    size_t len, cap;
} Conn;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int sio = 0, ready_count = 0, nconn = 0, measuring = 0;
static long received = 0;
static double *lat = NULL;
static long nlat = 0, caplat = 0;

static void send_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) { if (errno == EAGAIN || errno == EINTR) continue; return; }
        p += k; n -= (size_t)k;
    }
}

static void send_masked_text(int fd, const char *text) {
    unsigned char buf[256];
    size_t n = strlen(text);
    buf[0] = 0x81; buf[1] = 0x80 | (unsigned char)n;
    unsigned char key[4] = {1, 2, 3, 4};
    memcpy(buf + 2, key, 4);
    for (size_t i = 0; i < n; i++) buf[6 + i] = (unsigned char)text[i] ^ key[i & 3];
    send_all(fd, buf, 6 + n);
}

static void record(const unsigned char *p, size_t n) {
    const unsigned char *t = memmem(p, n, "t=", 2);
    if (!measuring) return;
    received++;
    if (!t) return;
    int64_t sent = strtoll((const char *)t + 2, NULL, 10);
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 20;
        lat = realloc(lat, caplat * sizeof(double));
    }
    lat[nlat++] = (now_ns() - sent) / 1e6;
}

static void on_message(Conn *c, const unsigned char *p, size_t n) {
    if (!sio) { record(p, n); return; }
    if (n >= 1 && p[0] == '0' && !c->nsp) { send_masked_text(c->fd, "40"); return; }
    if (n >= 2 && p[0] == '4' && p[1] == '0' && !c->nsp) { c->nsp = 1; ready_count++; return; }
    if (n == 1 && p[0] == '2') { send_masked_text(c->fd, "3"); return; }
    if (n >= 2 && p[0] == '4' && p[1] == '2') record(p, n);
}

static void parse(Conn *c) {
    size_t off = 0;
    if (!c->open) {
        unsigned char *end = memmem(c->in, c->len, "\r\n\r\n", 4);
        if (!end) return;
        if (memcmp(c->in, "HTTP/1.1 101", 12) != 0) { fprintf(stderr, "handshake refused\n"); exit(2); }
        c->open = 1;
        if (!sio) ready_count++;
        off = (size_t)(end - c->in) + 4;
    }
    for (;;) {
        size_t avail = c->len - off;
        if (avail < 2) break;
        unsigned char *h = c->in + off;
        uint64_t plen = h[1] & 0x7f;
        size_t hl = 2;
        if (plen == 126) { if (avail < 4) break; plen = ((uint64_t)h[2] << 8) | h[3]; hl = 4; }
        else if (plen == 127) {
            if (avail < 10) break;
            plen = 0; for (int i = 0; i < 8; i++) plen = (plen << 8) | h[2 + i];
            hl = 10;
        }
        if (avail < hl + plen) break;
        int opcode = h[0] & 0x0f;
        if (opcode == 1 || opcode == 2) on_message(c, h + hl, (size_t)plen);
        off += hl + (size_t)plen;
    }
    if (off) { memmove(c->in, c->in + off, c->len - off); c->len -= off; }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int ports[16], nports = 0;
    double duration = 5;
    const char *path = "/";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-p") && i + 1 < argc) {
            char *s = argv[++i];
            for (char *tok = strtok(s, ","); tok && nports < 16; tok = strtok(NULL, ","))
                ports[nports++] = atoi(tok);
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) nconn = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-d") && i + 1 < argc) duration = atof(argv[++i]);
        else if (!strcmp(argv[i], "-P") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "-S")) sio = 1;
        else { fprintf(stderr, "usage: fanout_client -p PORT[,PORT] -n N -d S [-P PATH] [-S]\n"); return 2; }
    }
    if (!nports || nconn <= 0) { fprintf(stderr, "need -p and -n\n"); return 2; }
    int ep = epoll_create1(0);
    Conn *conns = calloc((size_t)nconn, sizeof(Conn));
    char req[512];
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET; a.sin_port = htons((uint16_t)ports[i % nports]);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int n = snprintf(req, sizeof req,
            "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            path, ports[i % nports]);
        send_all(fd, (unsigned char *)req, (size_t)n);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns[i].fd = fd;
        conns[i].cap = 1 << 16;
        conns[i].in = malloc(conns[i].cap);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    struct epoll_event evs[256];
    double start = 0, deadline = now_s() + 30;  /* 30 s to get every connection ready */
    for (;;) {
        double t = now_s();
        if (!measuring && ready_count == nconn) {
            measuring = 1; start = t; deadline = t + duration;
            printf("READY\n"); fflush(stdout);
        }
        if (t >= deadline) break;
        int k = epoll_wait(ep, evs, 256, 50);
        for (int e = 0; e < k; e++) {
            Conn *c = evs[e].data.ptr;
            for (;;) {
                if (c->cap - c->len < 65536) { c->cap *= 2; c->in = realloc(c->in, c->cap); }
                ssize_t r = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
                if (r > 0) { c->len += (size_t)r; continue; }
                if (r == 0) { fprintf(stderr, "server closed a connection\n"); return 1; }
                break;
            }
            parse(c);
        }
    }
    if (!measuring) { fprintf(stderr, "only %d of %d connections ready\n", ready_count, nconn); return 1; }
    double elapsed = now_s() - start;
    double p50 = 0, p99 = 0;
    if (nlat) {
        qsort(lat, (size_t)nlat, sizeof(double), cmp);
        p50 = lat[(long)(nlat * 0.50)];
        p99 = lat[(long)(nlat * 0.99)];
    }
    printf("{\"received\": %ld, \"seconds\": %.3f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}\n",
           received, elapsed, p50, p99);
    return 0;
}
