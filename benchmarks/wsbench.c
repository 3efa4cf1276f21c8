/*
 * wsbench: a small WebSocket load generator for benchmarks/run.py.
 *
 * Why C: a Python client would need about as much CPU per round trip as the
 * Python server it measures, so the client would be the bottleneck. This one
 * is a single thread on epoll with raw non-blocking sockets; its own work per
 * round trip (build one masked frame, parse one unmasked frame, one memcmp)
 * is small next to the kernel's loopback cost, which every client pays.
 *
 * Modes (one JSON line on stdout in each):
 *   rt:     C connections, each a closed loop: send one S-byte message masked
 *           with a fresh key, wait for the whole echo (fragments reassembled,
 *           ping/pong skipped), compare it byte for byte, repeat. Only round
 *           trips that complete inside the D-second window after W seconds of
 *           warm-up count. Reports round trips/s, p50/p99 latency, and the CPU
 *           (cores) of this process and of the server pid (-P) in the window.
 *           -S speaks TLS (wss://, OpenSSL, certificate not verified: loopback
 *           only), -z offers permessage-deflate (zlib, context takeover both
 *           ways, the default parameters) and sends compressible text; a
 *           server that does not accept it is a connection failure.
 *   idle:   open N connections (at most K handshakes in flight), send one 16-B
 *           message on each, check every echo, wait 0.5 s, and report the
 *           server's RSS growth per connection.
 *   churn:  C slots, each a loop of: open TCP, handshake, one 16-B echo,
 *           closing handshake (our masked close 1000, the server's close
 *           frame), close the socket, start again. Reports completed cycles
 *           (handshakes) per second in the window and the cycle's latency.
 *   many:   open N connections (K handshakes in flight), then each sends one
 *           16-B message every I seconds (-i, default 1), spread evenly over
 *           the interval, for W + D seconds; every echo is checked. Reports
 *           server CPU (cores) and RSS (after opening and at the end), echo
 *           latency, and how many sends were skipped because the previous
 *           echo of that connection was still missing ("late").
 *   fanout: open N connections; the server is a broadcast server (every
 *           message it receives goes to every client, the sender included).
 *           Connection 0 publishes S-byte binary messages that carry a
 *           sequence number and a send timestamp, keeping at most Q (-q,
 *           default 8) broadcasts outstanding (not yet received by every
 *           client). Every client checks it gets every message, in order,
 *           intact. Reports deliveries/s (messages received, all clients
 *           together) and publish-to-receive latency p50/p99. Before the
 *           first counted message, probe broadcasts are sent until every
 *           client has received one, so a server that registers a client a
 *           little after its handshake does not make it miss messages.
 *
 * Usage: wsbench -p PORT [-m rt|idle|churn|many|fanout] [-c C|-n N] [-s S]
 *                [-d D] [-w W] [-t] [-S] [-z] [-k K] [-i I] [-q Q]
 *                [-P SERVER_PID] [-T TIMEOUT]
 *        wsbench -V     prints the features compiled in ({"tls":0|1,"deflate":0|1})
 * Build: cc -O2 wsbench.c -lssl -lcrypto -lz, or with -DNO_TLS / -DNO_ZLIB
 * (and without the matching library) where the headers are missing.
 * Loopback only: it always connects to 127.0.0.1.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifndef NO_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif
#ifndef NO_ZLIB
#include <zlib.h>
#endif

enum { CONNECTING, TLS_HS, HANDSHAKE, OPEN, CLOSING, DONE };
enum { M_RT, M_IDLE, M_CHURN, M_MANY, M_FANOUT };

typedef struct {
    int fd, state, idx;
    unsigned char *out;      /* frame being sent */
    size_t out_len, out_off;
    unsigned char *in;       /* bytes received, not yet parsed */
    size_t in_len, in_cap;
    unsigned char *msg;      /* the echo being reassembled */
    size_t msg_len;
    uint64_t seq;
    double sent_at;
    double cycle_at;         /* churn: when this cycle's connect started */
    int waiting;             /* a message is out, its echo not complete */
    int echoed;              /* idle mode: the one echo arrived */
    int compressed;          /* the message being reassembled has RSV1 */
    int synced;              /* fanout: a probe arrived */
    int deflate_on;          /* permessage-deflate negotiated */
#ifndef NO_TLS
    SSL *ssl;
#endif
#ifndef NO_ZLIB
    z_stream *zd, *zi;       /* deflate (our messages) and inflate (the server's) */
#endif
} Conn;

static int port = 0, conns = 1, text = 0, kmax = 64, use_tls = 0, use_deflate = 0, window_q = 8;
static long size = 16;
static double duration = 5, warmup = 1, hard_timeout = 0, interval = 1;
static int server_pid = 0;
static int mode = M_RT;
static const char *mode_name = "rt";
static unsigned char *pattern;   /* size + 64 bytes: 'a'..'z', or words with -z */
static uint64_t rng = 88172645463325252ULL;
static long errors = 0, mismatch = 0, conn_fail = 0, no_deflate = 0, late = 0;
static long rx_compressed = 0, rx_messages = 0;   /* -z: messages the server compressed */
#ifndef NO_TLS
static SSL_CTX *ssl_ctx;
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t rand32(void)   /* xorshift64: fast, good enough for mask keys */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static double proc_sys_s = -1;   /* stime of the last proc_cpu() call, in seconds */

static double proc_cpu(int pid)   /* utime+stime of pid, in seconds (stime in proc_sys_s); -1 if unknown */
{
    char path[64], buf[1024];
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');   /* the command name may contain spaces */
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    /* after ')': state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    proc_sys_s = (double)st / sysconf(_SC_CLK_TCK);
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(int pid)
{
    char path[64], line[256];
    long kb = -1;
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Compressible text for -z: words drawn from a small vocabulary, the way
 * JSON or chat traffic repeats itself (deflate gets ~3-4x on one message,
 * more with context takeover across messages). */
static void fill_words(unsigned char *p, long n)
{
    static const char *words[] = {"event", "user", "id", "value", "status", "ok", "message",
                                  "timestamp", "channel", "update", "price", "the", "of", "and",
                                  "to", "a", "in", "is", "data", "count"};
    uint64_t s = 42;
    long i = 0;
    while (i < n) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        const char *w = words[(s >> 20) % 20];
        for (; *w && i < n; w++)
            p[i++] = (unsigned char)*w;
        if (i < n)
            p[i++] = (s >> 40) % 7 ? ' ' : '\n';
    }
}

/* The expected payload of message `seq` on connection `idx`: a window into
 * the pattern, so consecutive echoes differ and nothing is built per send. */
static const unsigned char *payload_of(const Conn *c)
{
    return pattern + (c->idx * 7 + c->seq) % 26;
}

static void put_frame(Conn *c, int opcode, int rsv1, const unsigned char *p, long len)
{
    unsigned char *o = c->out;
    size_t h = 0;
    o[h++] = 0x80 | (rsv1 ? 0x40 : 0) | opcode;
    if (len < 126) {
        o[h++] = 0x80 | (unsigned char)len;
    } else if (len < 65536) {
        o[h++] = 0x80 | 126;
        o[h++] = (unsigned char)(len >> 8);
        o[h++] = (unsigned char)len;
    } else {
        o[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            o[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    uint32_t k = rand32();
    unsigned char key[4];
    memcpy(key, &k, 4);
    memcpy(o + h, key, 4);
    h += 4;
    uint64_t k8;
    unsigned char kk[8];
    memcpy(kk, key, 4);
    memcpy(kk + 4, key, 4);
    memcpy(&k8, kk, 8);
    long i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= k8;
        memcpy(o + h + i, &w, 8);
    }
    for (; i < len; i++)
        o[h + i] = p[i] ^ key[i & 3];
    c->out_len = h + len;
    c->out_off = 0;
}

static unsigned char *zbuf;   /* scratch for one compressed message */
static size_t zbuf_cap;

static void build_frame(Conn *c, const unsigned char *p, long len)
{
    int opcode = (text && mode != M_FANOUT) ? 1 : 2;
#ifndef NO_ZLIB
    if (c->deflate_on) {
        z_stream *z = c->zd;
        z->next_in = (unsigned char *)p;
        z->avail_in = (uInt)len;
        z->next_out = zbuf;
        z->avail_out = (uInt)zbuf_cap;
        deflate(z, Z_SYNC_FLUSH);
        size_t n = zbuf_cap - z->avail_out;
        if (n >= 4 && memcmp(zbuf + n - 4, "\x00\x00\xff\xff", 4) == 0)
            n -= 4;   /* RFC 7692 7.2.1: drop the flush marker */
        put_frame(c, opcode, 1, zbuf, (long)n);
        return;
    }
#endif
    put_frame(c, opcode, 0, p, len);
}

static int epfd;
static long opened = 0, in_flight = 0;

static void set_events(Conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
}

static void release(Conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
#ifndef NO_TLS
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
#endif
#ifndef NO_ZLIB
    if (c->zd) {
        deflateEnd(c->zd);
        inflateEnd(c->zi);
        free(c->zd);
        free(c->zi);
        c->zd = c->zi = NULL;
    }
#endif
    c->deflate_on = 0;
    close(c->fd);
    c->fd = -1;
}

static long alive_n = 0;   /* connections OPEN (fanout: the receivers) */

static void fail_conn(Conn *c, long *counter)
{
    if (c->state == DONE)
        return;
    if (c->state == CONNECTING || c->state == TLS_HS || c->state == HANDSHAKE)
        in_flight--;
    else if (c->state == OPEN)
        alive_n--;
    (*counter)++;
    release(c);
    c->state = DONE;
    c->waiting = 0;
}

static ssize_t io_send(Conn *c, const void *b, size_t n)
{
#ifndef NO_TLS
    if (c->ssl) {
        int r = SSL_write(c->ssl, b, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        errno = (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? EAGAIN : EIO;
        return -1;
    }
#endif
    return send(c->fd, b, n, MSG_NOSIGNAL);
}

static ssize_t io_recv(Conn *c, void *b, size_t n)
{
#ifndef NO_TLS
    if (c->ssl) {
        int r = SSL_read(c->ssl, b, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        errno = (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) ? EAGAIN : EIO;
        return -1;
    }
#endif
    return recv(c->fd, b, n, 0);
}

/* Write what is pending; returns 0 on success (maybe partial), -1 on error. */
static int flush_out(Conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = io_send(c, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, EPOLLIN | EPOLLOUT);
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    set_events(c, EPOLLIN);
    return 0;
}

static void send_message(Conn *c, long len)
{
    build_frame(c, payload_of(c), len);
    c->sent_at = now();
    c->waiting = 1;
    c->msg_len = 0;
    if (flush_out(c) < 0)
        fail_conn(c, &errors);
}

/* Results. */
static double win_start, win_end;
static long rts = 0;
static double *lat = NULL;
static size_t lat_n = 0, lat_cap = 0;

static void record(double t0, double t1)
{
    if (t1 < win_start || t1 > win_end)
        return;
    rts++;
    if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, lat_cap * sizeof *lat);
    }
    lat[lat_n++] = (t1 - t0) * 1e6;
}

/* fanout bookkeeping: published broadcasts, the ones every receiver got,
 * and per outstanding sequence number how many receivers got it. */
#define RING 4096
static uint64_t published = 0, completed = 0;
static long recv_count[RING];
static long synced_n = 0;
static int fanout_live = 0;   /* probes are over: counted messages flow */
static Conn *publisher;
static const uint64_t PROBE = UINT64_MAX;

static void publish(uint64_t seq)
{
    /* payload: seq (8 bytes), send time in ns (8 bytes), then pattern bytes */
    unsigned char *p = malloc((size_t)size);
    double t = now();
    uint64_t ns = (uint64_t)(t * 1e9);
    memcpy(p, &seq, 8);
    memcpy(p + 8, &ns, 8);
    if (size > 16)
        memcpy(p + 16, pattern, (size_t)size - 16);
    build_frame(publisher, p, size);
    free(p);
    if (flush_out(publisher) < 0)
        fail_conn(publisher, &errors);
}

static void fanout_complete(void)
{
    while (completed < published && recv_count[completed % RING] >= alive_n) {
        recv_count[completed % RING] = 0;
        completed++;
    }
}

/* A whole message (already inflated) arrived on c. */
static void on_message(Conn *c, const unsigned char *m, size_t n)
{
    if (mode == M_FANOUT) {
        uint64_t seq, ns;
        if (n != (size_t)size) {
            mismatch++;
            return;
        }
        memcpy(&seq, m, 8);
        memcpy(&ns, m + 8, 8);
        if (seq == PROBE) {
            if (!c->synced) {
                c->synced = 1;
                synced_n++;
            }
            return;
        }
        if (seq != c->seq || (size > 16 && memcmp(m + 16, pattern, (size_t)size - 16) != 0)) {
            mismatch++;
            c->seq = seq + 1;
            return;
        }
        c->seq++;
        record(ns / 1e9, now());
        if (seq < published)
            recv_count[seq % RING]++;
        fanout_complete();
        return;
    }
    long want = (mode == M_RT) ? size : 16;
    if (!c->waiting) {
        mismatch++;
        return;
    }
    c->waiting = 0;
    if ((long)n != want || memcmp(m, payload_of(c), (size_t)want) != 0)
        mismatch++;
    else if (mode == M_RT || mode == M_MANY)
        record(c->sent_at, now());
    else
        c->echoed = 1;
    c->seq++;
    if (mode == M_RT && c->state == OPEN)
        send_message(c, size);
    else if (mode == M_CHURN && c->state == OPEN) {
        static const unsigned char code[2] = {0x03, 0xe8};   /* 1000 */
        put_frame(c, 8, 0, code, 2);
        c->state = CLOSING;
        alive_n--;
        if (flush_out(c) < 0)
            fail_conn(c, &errors);
    }
}

static int start_connect(Conn *c);

/* churn: the server's close frame arrived; the cycle is complete. */
static void churn_done(Conn *c)
{
    record(c->cycle_at, now());
    release(c);
    c->state = DONE;
    c->seq++;
    c->msg_len = 0;
    c->in_len = 0;
    if (start_connect(c) < 0)
        conn_fail++;
}

static size_t msg_cap;

/* Parse complete frames from c->in. Returns -1 on a protocol error. */
static int parse_frames(Conn *c)
{
    size_t pos = 0;
    while (c->in_len - pos >= 2) {
        unsigned char *b = c->in + pos;
        int fin = b[0] >> 7, op = b[0] & 15, rsv1 = (b[0] >> 6) & 1;
        if (b[1] & 0x80)
            return -1;   /* a server must not mask */
        uint64_t len = b[1] & 127;
        size_t h = 2;
        if (len == 126) {
            if (c->in_len - pos < 4)
                break;
            len = ((uint64_t)b[2] << 8) | b[3];
            h = 4;
        } else if (len == 127) {
            if (c->in_len - pos < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | b[2 + i];
            h = 10;
        }
        if (len > (uint64_t)size + 1024 && op < 8)
            return -1;
        if (c->in_len - pos < h + len)
            break;
        if (op == 8) {
            if (mode == M_CHURN && c->state == CLOSING) {
                churn_done(c);
                return 0;
            }
            return -1;   /* the server closed: an error for a benchmark */
        }
        if (op < 8) {
            if (op != 0)
                c->compressed = rsv1;
            else if (rsv1)
                return -1;
            if (c->msg_len + len > msg_cap)
                return -1;
            memcpy(c->msg + c->msg_len, b + h, len);
            c->msg_len += len;
            if (fin) {
                size_t n = c->msg_len;
                c->msg_len = 0;
                rx_messages++;
                rx_compressed += c->compressed;
                if (c->compressed) {
#ifndef NO_ZLIB
                    if (!c->deflate_on)
                        return -1;
                    memcpy(c->msg + n, "\x00\x00\xff\xff", 4);
                    z_stream *z = c->zi;
                    z->next_in = c->msg;
                    z->avail_in = (uInt)(n + 4);
                    z->next_out = zbuf;
                    z->avail_out = (uInt)zbuf_cap;
                    int r = inflate(z, Z_SYNC_FLUSH);
                    if ((r != Z_OK && r != Z_BUF_ERROR) || z->avail_in)
                        return -1;
                    on_message(c, zbuf, zbuf_cap - z->avail_out);
#else
                    return -1;
#endif
                } else {
                    on_message(c, c->msg, n);
                }
                if (c->state == DONE)
                    return 0;
            }
        }
        pos += h + len;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static const char *REQUEST_FMT =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n";

static void opened_conn(Conn *c)
{
    c->state = OPEN;
    opened++;
    alive_n++;
    in_flight--;
    if (mode == M_RT || mode == M_IDLE || mode == M_CHURN)
        send_message(c, mode == M_RT ? size : 16);
}

/* The handshake response is complete in c->in[0 .. head). */
static int check_response(Conn *c, size_t head)
{
    if (c->in_len < 12 || memcmp(c->in, "HTTP/1.1 101", 12) != 0)
        return -1;
    if (use_deflate) {
        char saved = (char)c->in[head - 1];
        c->in[head - 1] = 0;
        int ok = strcasestr((char *)c->in, "\nSec-WebSocket-Extensions:") != NULL
                 && strcasestr((char *)c->in, "permessage-deflate") != NULL;
        c->in[head - 1] = (unsigned char)saved;
        if (!ok) {
            no_deflate++;
            return -1;
        }
#ifndef NO_ZLIB
        c->zd = calloc(1, sizeof *c->zd);
        c->zi = calloc(1, sizeof *c->zi);
        deflateInit2(c->zd, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
        inflateInit2(c->zi, -15);
        c->deflate_on = 1;
#endif
    }
    return 0;
}

static void on_readable(Conn *c)
{
    for (;;) {
        /* Room for a large read while messages flow, a small one while idle. */
        size_t room = (mode == M_RT || mode == M_FANOUT) ? 65536 : 512;
        if (c->in_cap - c->in_len < room) {
            c->in_cap = c->in_len + 2 * room;
            c->in = realloc(c->in, c->in_cap);
        }
        ssize_t n = io_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            fail_conn(c, c->state == OPEN || c->state == CLOSING ? &errors : &conn_fail);
            return;
        }
        if (n == 0) {
            fail_conn(c, c->state == OPEN || c->state == CLOSING ? &errors : &conn_fail);
            return;
        }
        c->in_len += (size_t)n;
        if (c->state == HANDSHAKE) {
            unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!end) {
                if (c->in_len > 8192) {
                    fail_conn(c, &conn_fail);
                    return;
                }
                continue;
            }
            size_t head = (size_t)(end - c->in) + 4;
            if (check_response(c, head) < 0) {
                fail_conn(c, &conn_fail);
                return;
            }
            memmove(c->in, c->in + head, c->in_len - head);
            c->in_len -= head;
            opened_conn(c);
            if (c->state == DONE)
                return;
        }
        if ((c->state == OPEN || c->state == CLOSING)) {
            if (parse_frames(c) < 0) {
                fail_conn(c, &errors);
                return;
            }
            if (c->state != OPEN && c->state != CLOSING)
                return;   /* done, or (churn) the cycle ended and a new one started */
        }
        if (c->state == DONE)
            return;
    }
}

static void send_request(Conn *c)
{
    char req[640];
    int n = snprintf(req, sizeof req, REQUEST_FMT, port,
                     use_deflate ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "");
    memcpy(c->out, req, (size_t)n);
    c->out_len = (size_t)n;
    c->out_off = 0;
    c->state = HANDSHAKE;
    if (flush_out(c) < 0)
        fail_conn(c, &conn_fail);
}

#ifndef NO_TLS
static void tls_step(Conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        send_request(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        set_events(c, EPOLLIN);
    else if (e == SSL_ERROR_WANT_WRITE)
        set_events(c, EPOLLIN | EPOLLOUT);
    else
        fail_conn(c, &conn_fail);
}
#endif

static int start_connect(Conn *c)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->state = CONNECTING;
    c->cycle_at = now();   /* churn: a cycle starts here */
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &e);
    in_flight++;
    return 0;
}

static void on_connected(Conn *c)
{
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        fail_conn(c, &conn_fail);
        return;
    }
#ifndef NO_TLS
    if (use_tls) {
        c->ssl = SSL_new(ssl_ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        c->state = TLS_HS;
        tls_step(c);
        return;
    }
#endif
    send_request(c);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void features(void)
{
    int tls = 1, z = 1;
#ifdef NO_TLS
    tls = 0;
#endif
#ifdef NO_ZLIB
    z = 0;
#endif
    printf("{\"tls\":%d,\"deflate\":%d}\n", tls, z);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "p:m:c:s:d:w:tn:k:P:T:Szi:q:V")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'm': mode_name = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'n': conns = atoi(optarg); break;
        case 's': size = atol(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 't': text = 1; break;
        case 'k': kmax = atoi(optarg); break;
        case 'P': server_pid = atoi(optarg); break;
        case 'T': hard_timeout = atof(optarg); break;
        case 'S': use_tls = 1; break;
        case 'z': use_deflate = 1; break;
        case 'i': interval = atof(optarg); break;
        case 'q': window_q = atoi(optarg); break;
        case 'V': features(); return 0;
        default:
            fprintf(stderr, "usage: wsbench -p PORT [-m rt|idle|churn|many|fanout] [-c C|-n N] [-s S] "
                            "[-d D] [-w W] [-t] [-S] [-z] [-k K] [-i I] [-q Q] [-P PID] [-T TIMEOUT]\n");
            return 2;
        }
    }
    const char *names[] = {"rt", "idle", "churn", "many", "fanout"};
    mode = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(mode_name, names[i]) == 0)
            mode = i;
    if (strcmp(mode_name, "conns") == 0)
        mode = M_IDLE;   /* the shared harness's name for it */
    if (!port || conns < 1 || size < 0 || mode < 0 || interval <= 0 || window_q < 1 || window_q >= RING) {
        fprintf(stderr, "wsbench: -p PORT is required; a known -m; C/N >= 1, S >= 0, I > 0, 1 <= Q < %d\n",
                RING);
        return 2;
    }
#ifdef NO_TLS
    if (use_tls) {
        fprintf(stderr, "wsbench: built without OpenSSL (-DNO_TLS): -S is not available\n");
        return 2;
    }
#else
    if (use_tls) {
        ssl_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);   /* self-signed, loopback */
        SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif
#ifdef NO_ZLIB
    if (use_deflate) {
        fprintf(stderr, "wsbench: built without zlib (-DNO_ZLIB): -z is not available\n");
        return 2;
    }
#endif
    if (mode == M_IDLE || mode == M_CHURN || mode == M_MANY)
        size = 16;
    if (mode == M_FANOUT && size < 16) {
        fprintf(stderr, "wsbench: fanout messages carry a sequence number and a timestamp: S >= 16\n");
        return 2;
    }
    if (mode == M_CHURN)
        kmax = conns;   /* every slot is a handshake in flight much of the time */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rng ^= (uint64_t)getpid() << 20 ^ (uint64_t)(now() * 1e6);
    pattern = malloc((size_t)size + 64);
    if (use_deflate)
        fill_words(pattern, size + 64);
    else
        for (long i = 0; i < size + 64; i++)
            pattern[i] = (unsigned char)('a' + i % 26);
    msg_cap = (size_t)size + 1024;
    zbuf_cap = (size_t)size + (size_t)size / 8 + 1024;
    zbuf = malloc(zbuf_cap);

    epfd = epoll_create1(0);
    Conn *cs = calloc((size_t)conns, sizeof *cs);
    size_t out_cap = (size_t)size + (size_t)size / 8 + 1024;
    for (int i = 0; i < conns; i++) {
        cs[i].idx = i;
        cs[i].state = DONE;
        cs[i].fd = -1;
    }
    publisher = &cs[0];
    if (hard_timeout <= 0)
        hard_timeout = (mode == M_IDLE) ? 60 : warmup + duration + 60;
    double t_begin = now(), deadline = t_begin + hard_timeout;
    long rss_before = proc_rss_kb(server_pid), rss_open = -1;
    double open_s = -1;
    int next = 0, timed_out = 0;
    double cpu_c0 = 0, cpu_s0 = 0, cpu_c1 = 0, cpu_s1 = 0;
    double sys_s0 = -1, sys_s1 = -1;
    int window_started = 0, window_done = 0;
    uint64_t completed_at_start = 0, completed_at_end = 0;
    long sched = 0;   /* many: sends scheduled so far */
    double sched_start = 0, last_probe = 0;
    win_start = win_end = 1e300;
    if (mode == M_CHURN) {
        win_start = t_begin + warmup;
        win_end = win_start + duration;
    }
    struct epoll_event evs[256];

    while (!window_done) {
        /* Keep at most kmax handshakes in flight so no listen backlog overflows. */
        while (next < conns && in_flight < kmax) {
            Conn *c = &cs[next++];
            c->out = malloc(out_cap);
            c->in_cap = (mode == M_RT || mode == M_FANOUT) ? (size_t)size + 65536 * 2 : 1024;
            c->in = malloc(c->in_cap);
            c->msg = malloc(msg_cap + 8);
            if (start_connect(c) < 0)
                conn_fail++;   /* state stays DONE */
        }
        double t = now();
        if (t > deadline) {
            timed_out = 1;
            break;
        }
        int all_started = next >= conns && in_flight == 0;
        if (all_started && open_s < 0 && mode != M_CHURN) {
            open_s = t - t_begin;
            rss_open = proc_rss_kb(server_pid);
            if (mode == M_RT || mode == M_MANY) {
                win_start = t + warmup;
                win_end = win_start + duration;
                sched_start = t;
            }
        }
        if (mode == M_FANOUT && open_s >= 0 && !fanout_live && publisher->state == OPEN) {
            /* probe until every receiver got one, then start counting */
            if (synced_n >= alive_n) {
                fanout_live = 1;
                win_start = t + warmup;
                win_end = win_start + duration;
            } else if (t - last_probe > 0.1 && publisher->out_off >= publisher->out_len) {
                last_probe = t;
                publish(PROBE);
            }
        }
        if (mode == M_FANOUT && fanout_live && publisher->state == OPEN) {
            while (published - completed < (uint64_t)window_q && publisher->state == OPEN
                   && publisher->out_off >= publisher->out_len && t < win_end) {
                recv_count[published % RING] = 0;
                publish(published++);
            }
        }
        if (mode == M_MANY && open_s >= 0) {
            /* conn i's k-th send is due at sched_start + (k + i / N) * interval */
            while (t < win_end) {
                double due = sched_start + ((double)(sched / conns) + (double)(sched % conns) / conns) * interval;
                if (due > t)
                    break;
                Conn *c = &cs[sched % conns];
                sched++;
                if (c->state != OPEN)
                    continue;
                if (c->waiting || c->out_off < c->out_len)
                    late++;
                else
                    send_message(c, 16);
            }
        }
        if (open_s >= 0 || mode == M_CHURN) {
            if (!window_started && t >= win_start) {
                window_started = 1;
                cpu_c0 = self_cpu();
                cpu_s0 = proc_cpu(server_pid);
                sys_s0 = proc_sys_s;
                completed_at_start = completed;
            }
            if (t >= win_end) {
                cpu_c1 = self_cpu();
                cpu_s1 = proc_cpu(server_pid);
                sys_s1 = proc_sys_s;
                completed_at_end = completed;
                window_done = 1;
                break;
            }
            if (opened == 0 && (mode != M_CHURN || t >= win_start))
                break;   /* nothing connected: nothing to measure */
            if (alive_n == 0 && mode != M_CHURN)
                break;   /* every connection failed: nothing left to measure */
        }
        if (mode == M_IDLE && all_started) {
            int pending = 0;
            for (int i = 0; i < conns; i++)
                if (cs[i].state == OPEN && !cs[i].echoed)
                    pending = 1;
            if (!pending)
                break;
        }
        int wait_ms = 50;
        if (mode == M_MANY && open_s >= 0)
            wait_ms = 1;
        int n = epoll_wait(epfd, evs, 256, wait_ms);
        for (int i = 0; i < n; i++) {
            Conn *c = evs[i].data.ptr;
            if (c->state == DONE)
                continue;
            if (c->state == CONNECTING) {
                on_connected(c);
                continue;
            }
#ifndef NO_TLS
            if (c->state == TLS_HS) {
                tls_step(c);
                continue;
            }
#endif
            if (evs[i].events & EPOLLOUT) {
                if (flush_out(c) < 0) {
                    fail_conn(c, c->state == OPEN ? &errors : &conn_fail);
                    continue;
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
        }
    }

    long alive = 0, echo_ok = 0;
    for (int i = 0; i < conns; i++) {
        if (cs[i].state == OPEN || cs[i].state == CLOSING) {
            alive++;
            echo_ok += cs[i].echoed;
        }
    }
    double p50 = -1, p99 = -1, mx = -1;
    if (lat_n) {
        qsort(lat, lat_n, sizeof *lat, cmp_double);
        p50 = lat[lat_n / 2];
        p99 = lat[(size_t)(lat_n * 0.99)];
        mx = lat[lat_n - 1];
    }
    double scpu = (cpu_s0 >= 0 && cpu_s1 >= 0 && window_done) ? (cpu_s1 - cpu_s0) / duration : -1;
    double ssys = (scpu >= 0 && sys_s0 >= 0 && sys_s1 >= 0) ? (sys_s1 - sys_s0) / duration : -1;
    double ccpu = window_done ? (cpu_c1 - cpu_c0) / duration : -1;
    double rate = window_done ? rts / duration : 0.0;
    if (mode == M_RT) {
        printf("{\"mode\":\"rt\",\"conns\":%d,\"size\":%ld,\"tls\":%d,\"deflate\":%d,\"rt_per_s\":%.1f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"errors\":%ld,\"mismatch\":%ld,"
               "\"conn_fail\":%ld,\"no_deflate\":%ld,\"rx_compressed_pct\":%.1f,\"alive\":%ld,\"client_cpu\":%.3f,\"server_cpu\":%.3f,"
               "\"server_sys\":%.3f,\"timed_out\":%d}\n",
               conns, size, use_tls, use_deflate, rate, p50, p99, mx, errors, mismatch, conn_fail,
               no_deflate, rx_messages ? 100.0 * rx_compressed / rx_messages : 0.0, alive, ccpu, scpu, ssys, timed_out);
    } else if (mode == M_CHURN) {
        printf("{\"mode\":\"churn\",\"conns\":%d,\"hs_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"max_us\":%.1f,\"errors\":%ld,\"mismatch\":%ld,\"conn_fail\":%ld,\"client_cpu\":%.3f,"
               "\"server_cpu\":%.3f,\"server_sys\":%.3f,\"timed_out\":%d}\n",
               conns, rate, p50, p99, mx, errors, mismatch, conn_fail, ccpu, scpu, ssys, timed_out);
    } else if (mode == M_MANY) {
        long rss_end = proc_rss_kb(server_pid);
        double per = (rss_before > 0 && rss_open > 0 && opened) ? (double)(rss_open - rss_before) / opened : -1;
        printf("{\"mode\":\"many\",\"n\":%d,\"opened\":%ld,\"alive\":%ld,\"open_s\":%.3f,\"interval_s\":%g,"
               "\"msgs_per_s\":%.1f,\"late\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
               "\"rss_before_kb\":%ld,\"rss_open_kb\":%ld,\"rss_end_kb\":%ld,\"kb_per_conn\":%.2f,"
               "\"errors\":%ld,\"mismatch\":%ld,\"conn_fail\":%ld,\"client_cpu\":%.3f,\"server_cpu\":%.3f,"
               "\"server_sys\":%.3f,\"timed_out\":%d}\n",
               conns, opened, alive, open_s, interval, rate, late, p50, p99, mx, rss_before, rss_open,
               rss_end, per, errors, mismatch, conn_fail, ccpu, scpu, ssys, timed_out);
    } else if (mode == M_FANOUT) {
        double bps = window_done ? (completed_at_end - completed_at_start) / duration : 0.0;
        printf("{\"mode\":\"fanout\",\"n\":%d,\"size\":%ld,\"window\":%d,\"opened\":%ld,\"alive\":%ld,"
               "\"deliveries_per_s\":%.1f,\"broadcasts_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"max_us\":%.1f,\"errors\":%ld,\"mismatch\":%ld,\"conn_fail\":%ld,\"client_cpu\":%.3f,"
               "\"server_cpu\":%.3f,\"server_sys\":%.3f,\"timed_out\":%d}\n",
               conns, size, window_q, opened, alive, rate, bps, p50, p99, mx, errors, mismatch, conn_fail,
               ccpu, scpu, ssys, timed_out);
    } else {
        usleep(500000);   /* let the server settle before reading its RSS */
        long rss_after = proc_rss_kb(server_pid);
        double per = (rss_before > 0 && rss_after > 0 && echo_ok) ? (double)(rss_after - rss_before) / echo_ok : -1;
        printf("{\"mode\":\"idle\",\"n\":%d,\"opened\":%ld,\"echo_ok\":%ld,\"open_s\":%.3f,"
               "\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"kb_per_conn\":%.2f,\"errors\":%ld,"
               "\"mismatch\":%ld,\"conn_fail\":%ld,\"timed_out\":%d}\n",
               conns, opened, echo_ok, open_s, rss_before, rss_after, per, errors, mismatch, conn_fail,
               timed_out);
    }
    return 0;
}
