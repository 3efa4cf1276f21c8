/*
 * wsbench: a small WebSocket load generator for benchmarks/run.py.
 *
 * Why C: a Python client would need about as much CPU per round trip as the
 * Python server it measures, so the client would be the bottleneck. This one
 * is a single thread on epoll with raw non-blocking sockets; its own work per
 * round trip (build one masked frame, parse one unmasked frame, one memcmp)
 * is small next to the kernel's loopback cost, which every client pays.
 *
 * Modes (one JSON line on stdout in both):
 *   rt:   C connections, each a closed loop: send one S-byte message masked
 *         with a fresh key, wait for the whole echo (fragments reassembled,
 *         ping/pong skipped), compare it byte for byte, repeat. Only round
 *         trips that complete inside the D-second window after W seconds of
 *         warm-up count. Reports round trips/s, p50/p99 latency, and the CPU
 *         (cores) of this process and of the server pid (-P) in the window.
 *   idle: open N connections (at most K handshakes in flight), send one 16-B
 *         message on each, check every echo, wait 0.5 s, and report the
 *         server's RSS growth per connection.
 *
 * Usage: wsbench -p PORT [-m rt|idle] [-c C] [-s S] [-d D] [-w W] [-t]
 *                [-n N] [-k K] [-P SERVER_PID] [-T TIMEOUT]
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

enum { CONNECTING, HANDSHAKE, OPEN, DONE };

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
    int waiting;             /* a message is out, its echo not complete */
    int echoed;              /* idle mode: the one echo arrived */
} Conn;

static int port = 0, conns = 1, text = 0, kmax = 64;
static long size = 16;
static double duration = 5, warmup = 1, hard_timeout = 0;
static int server_pid = 0;
static const char *mode = "rt";
static unsigned char *pattern;   /* size + 64 bytes of 'a'..'z' */
static uint64_t rng = 88172645463325252ULL;
static long errors = 0, mismatch = 0, conn_fail = 0;

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

static double proc_cpu(int pid)   /* utime+stime of pid, in seconds; -1 if unknown */
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

/* The expected payload of message `seq` on connection `idx`: a window into
 * the pattern, so consecutive echoes differ and nothing is built per send. */
static const unsigned char *payload_of(const Conn *c, long len)
{
    (void)len;
    return pattern + (c->idx * 7 + c->seq) % 26;
}

static void build_frame(Conn *c, long len)
{
    const unsigned char *p = payload_of(c, len);
    unsigned char *o = c->out;
    size_t h = 0;
    o[h++] = 0x80 | (text ? 1 : 2);
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

static int epfd;
static long opened = 0, in_flight = 0;

static void set_events(Conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
}

static void fail_conn(Conn *c, long *counter)
{
    if (c->state == DONE)
        return;
    if (c->state == CONNECTING || c->state == HANDSHAKE)
        in_flight--;
    (*counter)++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = DONE;
    c->waiting = 0;
}

/* Write what is pending; returns 0 on success (maybe partial), -1 on error. */
static int flush_out(Conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
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
    build_frame(c, len);
    c->sent_at = now();
    c->waiting = 1;
    c->msg_len = 0;
    if (flush_out(c) < 0)
        fail_conn(c, &errors);
}

/* Results of the rt mode. */
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

static int is_rt;

/* Parse complete frames from c->in. Returns -1 on a protocol error. */
static int parse_frames(Conn *c)
{
    size_t pos = 0;
    while (c->in_len - pos >= 2) {
        unsigned char *b = c->in + pos;
        int fin = b[0] >> 7, op = b[0] & 15;
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
        if (op == 8)
            return -1;   /* the server closed: an error for a benchmark */
        if (op < 8) {
            if (!c->waiting || c->msg_len + len > (size_t)(is_rt ? size : 16))
                return -1;
            memcpy(c->msg + c->msg_len, b + h, len);
            c->msg_len += len;
            if (fin) {
                long want = is_rt ? size : 16;
                c->waiting = 0;
                if ((long)c->msg_len != want || memcmp(c->msg, payload_of(c, want), want) != 0)
                    mismatch++;
                else if (is_rt)
                    record(c->sent_at, now());
                else
                    c->echoed = 1;
                c->seq++;
                if (is_rt && c->state == OPEN)
                    send_message(c, size);
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
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

static void on_readable(Conn *c)
{
    for (;;) {
        /* Room for a large read while messages flow, a small one while idle. */
        size_t room = is_rt ? 65536 : 512;
        if (c->in_cap - c->in_len < room) {
            c->in_cap = c->in_len + 2 * room;
            c->in = realloc(c->in, c->in_cap);
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            fail_conn(c, c->state == OPEN ? &errors : &conn_fail);
            return;
        }
        if (n == 0) {
            fail_conn(c, c->state == OPEN ? &errors : &conn_fail);
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
            if (c->in_len < 12 || memcmp(c->in, "HTTP/1.1 101", 12) != 0) {
                fail_conn(c, &conn_fail);
                return;
            }
            size_t head = (size_t)(end - c->in) + 4;
            memmove(c->in, c->in + head, c->in_len - head);
            c->in_len -= head;
            c->state = OPEN;
            opened++;
            in_flight--;
            send_message(c, is_rt ? size : 16);
            if (c->state == DONE)
                return;
        }
        if (c->state == OPEN && parse_frames(c) < 0) {
            fail_conn(c, &errors);
            return;
        }
        if (c->state == DONE)
            return;
    }
}

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
        return -1;
    }
    c->state = CONNECTING;
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
    char req[512];
    int n = snprintf(req, sizeof req, REQUEST_FMT, port);
    memcpy(c->out, req, (size_t)n);
    c->out_len = (size_t)n;
    c->out_off = 0;
    c->state = HANDSHAKE;
    if (flush_out(c) < 0)
        fail_conn(c, &conn_fail);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "p:m:c:s:d:w:tn:k:P:T:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'n': conns = atoi(optarg); break;
        case 's': size = atol(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 't': text = 1; break;
        case 'k': kmax = atoi(optarg); break;
        case 'P': server_pid = atoi(optarg); break;
        case 'T': hard_timeout = atof(optarg); break;
        default:
            fprintf(stderr, "usage: wsbench -p PORT [-m rt|idle] [-c C|-n N] [-s S] [-d D] [-w W] [-t] "
                            "[-k K] [-P PID] [-T TIMEOUT]\n");
            return 2;
        }
    }
    is_rt = strcmp(mode, "idle") != 0;
    if (!port || conns < 1 || size < 0) {
        fprintf(stderr, "wsbench: -p PORT is required; C/N >= 1, S >= 0\n");
        return 2;
    }
    if (!is_rt)
        size = 16;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rng ^= (uint64_t)getpid() << 20 ^ (uint64_t)(now() * 1e6);
    pattern = malloc((size_t)size + 64);
    for (long i = 0; i < size + 64; i++)
        pattern[i] = (unsigned char)('a' + i % 26);

    epfd = epoll_create1(0);
    Conn *cs = calloc((size_t)conns, sizeof *cs);
    size_t out_cap = (size_t)size + 14 > 512 ? (size_t)size + 14 : 512;
    for (int i = 0; i < conns; i++) {
        cs[i].idx = i;
        cs[i].state = DONE;
        cs[i].fd = -1;
    }
    if (hard_timeout <= 0)
        hard_timeout = is_rt ? warmup + duration + 30 : 60;
    double t_begin = now(), deadline = t_begin + hard_timeout;
    long rss_before = proc_rss_kb(server_pid);
    double open_s = -1;
    int next = 0, timed_out = 0;
    double cpu_c0 = 0, cpu_s0 = 0, cpu_c1 = 0, cpu_s1 = 0;
    int window_started = 0, window_done = 0;
    win_start = win_end = 1e300;
    struct epoll_event evs[256];

    while (!window_done) {
        /* Keep at most kmax handshakes in flight so no listen backlog overflows. */
        while (next < conns && in_flight < kmax) {
            Conn *c = &cs[next++];
            c->out = malloc(out_cap);
            c->in_cap = is_rt ? (size_t)size + 65536 * 2 : 1024;
            c->in = malloc(c->in_cap);
            c->msg = malloc((size_t)size + 16);
            if (start_connect(c) < 0)
                conn_fail++;   /* state stays DONE */
        }
        double t = now();
        if (t > deadline) {
            timed_out = 1;
            break;
        }
        int all_started = next >= conns && in_flight == 0;
        if (all_started && open_s < 0) {
            open_s = t - t_begin;
            if (is_rt) {
                win_start = t + warmup;
                win_end = win_start + duration;
            }
        }
        if (is_rt && open_s >= 0) {
            if (!window_started && t >= win_start) {
                window_started = 1;
                cpu_c0 = self_cpu();
                cpu_s0 = proc_cpu(server_pid);
            }
            if (t >= win_end) {
                cpu_c1 = self_cpu();
                cpu_s1 = proc_cpu(server_pid);
                window_done = 1;
                break;
            }
            if (opened == 0)
                break;   /* nothing connected: nothing to measure */
        }
        if (!is_rt && all_started) {
            int pending = 0;
            for (int i = 0; i < conns; i++)
                if (cs[i].state == OPEN && !cs[i].echoed)
                    pending = 1;
            if (!pending)
                break;
        }
        int n = epoll_wait(epfd, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            Conn *c = evs[i].data.ptr;
            if (c->state == DONE)
                continue;
            if (c->state == CONNECTING) {
                on_connected(c);
                continue;
            }
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
        if (cs[i].state == OPEN) {
            alive++;
            echo_ok += cs[i].echoed;
        }
    }
    if (is_rt) {
        double p50 = -1, p99 = -1, mx = -1;
        if (lat_n) {
            qsort(lat, lat_n, sizeof *lat, cmp_double);
            p50 = lat[lat_n / 2];
            p99 = lat[(size_t)(lat_n * 0.99)];
            mx = lat[lat_n - 1];
        }
        double scpu = (cpu_s0 >= 0 && cpu_s1 >= 0 && window_done) ? (cpu_s1 - cpu_s0) / duration : -1;
        double ccpu = window_done ? (cpu_c1 - cpu_c0) / duration : -1;
        printf("{\"mode\":\"rt\",\"conns\":%d,\"size\":%ld,\"rt_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"max_us\":%.1f,\"errors\":%ld,\"mismatch\":%ld,\"conn_fail\":%ld,\"alive\":%ld,"
               "\"client_cpu\":%.3f,\"server_cpu\":%.3f,\"timed_out\":%d}\n",
               conns, size, window_done ? rts / duration : 0.0, p50, p99, mx, errors, mismatch,
               conn_fail, alive, ccpu, scpu, timed_out);
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
