/*
 * loadgen: the load generator and the local servers of the ipv4proxy benchmark.
 *
 * Written in C so that the side that drives the load is never what limits a figure: the
 * benchmark pins it to one core and the proxy to the other, and reports this program's own
 * CPU time next to every figure.
 *
 *   loadgen stream-server PORT         accept; send 256 KiB chunks on every connection
 *   loadgen echo-server PORT [BACKLOG] accept; echo every byte; close after the peer's EOF
 *   loadgen stream  OPTS               N connections read what the server streams
 *   loadgen rate    OPTS               closed loop: connect, handshake, 64-byte echo, close
 *   loadgen rtt     OPTS               ping-pongs of SIZE bytes on one connection
 *   loadgen hold    OPTS               open N tunnels, verify each by echo, wait for stdin
 *   loadgen connect OPTS               one tunnel: time to the handshake reply and an echo
 *
 * OPTS: --target HOST:PORT   what to reach (an IPv4 literal, or a name with --proxy)
 *       --proxy IP:PORT      go through this proxy; without it, connect directly
 *       --proto connect|socks5
 *       --conns N --seconds S --count N --size N
 *
 * Servers listen on 127.0.0.1 (or the --bind address) and print "port N" once listening;
 * clients print one JSON object. Every loop is bounded in time or count; all traffic is to
 * the addresses given, which the benchmark keeps inside 127.0.0.0/8.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
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

#define CHUNK (256 * 1024)
#define MAX_EVENTS 256

static char buffer[CHUNK];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int parse_addr(const char *text, struct sockaddr_in *addr) {
    char host[256];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = 0;
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &addr->sin_addr) == 1 ? 0 : -1;
}

/* ---- options ---------------------------------------------------------------------- */

static struct {
    const char *target;
    const char *proxy;
    const char *proto;
    const char *bind;
    int conns, count, size, backlog;
    double seconds;
} opt = {NULL, NULL, "connect", "127.0.0.1", 1, 1000, 1024, 1024, 3.0};

static struct sockaddr_in dest;  /* where a client socket connects: the proxy or the target */
static char request[600];        /* the first handshake message */
static size_t request_len;
static char socks_request[300];  /* SOCKS5's second message */
static size_t socks_request_len;
static int via_proxy, socks5;

static void prepare(void) {
    if (opt.target == NULL) { fprintf(stderr, "loadgen: --target is required\n"); exit(2); }
    via_proxy = opt.proxy != NULL;
    socks5 = strcmp(opt.proto, "socks5") == 0;
    if (parse_addr(via_proxy ? opt.proxy : opt.target, &dest) != 0) {
        fprintf(stderr, "loadgen: bad address %s\n", via_proxy ? opt.proxy : opt.target);
        exit(2);
    }
    if (!via_proxy) return;
    if (!socks5) {
        request_len = (size_t)snprintf(request, sizeof request,
                                       "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", opt.target,
                                       opt.target);
        return;
    }
    /* RFC 1928: greeting (no auth), then CONNECT by domain name or IPv4. */
    memcpy(request, "\x05\x01\x00", 3);
    request_len = 3;
    const char *colon = strrchr(opt.target, ':');
    size_t hlen = (size_t)(colon - opt.target);
    uint16_t port = htons((uint16_t)atoi(colon + 1));
    struct in_addr ip;
    char host[256];
    memcpy(host, opt.target, hlen);
    host[hlen] = 0;
    unsigned char *r = (unsigned char *)socks_request;
    r[0] = 5; r[1] = 1; r[2] = 0;
    if (inet_pton(AF_INET, host, &ip) == 1) {
        r[3] = 1;
        memcpy(r + 4, &ip, 4);
        memcpy(r + 8, &port, 2);
        socks_request_len = 10;
    } else {
        r[3] = 3;
        r[4] = (unsigned char)hlen;
        memcpy(r + 5, host, hlen);
        memcpy(r + 5 + hlen, &port, 2);
        socks_request_len = 7 + hlen;
    }
}

/* ---- servers ------------------------------------------------------------------------ */

static int listen_on(int port, int backlog) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, opt.bind, &addr.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    if (listen(fd, backlog) != 0) die("listen");
    socklen_t len = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &len);
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    nonblocking(fd);
    return fd;
}

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }

/* One epoll loop serves both kinds; runs until SIGTERM. */
static int serve(int port, int streaming) {
    int lfd = listen_on(port, opt.backlog);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, events[MAX_EVENTS];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    memset(buffer, 'x', sizeof buffer);
    while (!stopping) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (int k = 0; k < 64; k++) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    nodelay(c);
                    struct epoll_event cev = {.events = streaming ? EPOLLOUT : EPOLLIN,
                                              .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (streaming) {
                if (events[i].events & (EPOLLERR | EPOLLHUP) ||
                    (send(fd, buffer, CHUNK, MSG_NOSIGNAL) < 0 && errno != EAGAIN))
                    close(fd);
                continue;
            }
            char data[CHUNK > 65536 ? 65536 : CHUNK];
            ssize_t got = recv(fd, data, sizeof data, 0);
            if (got > 0) {
                /* Echo replies are small; a short write would only happen to a client
                 * that does not read, which the benchmark never is. */
                if (send(fd, data, (size_t)got, MSG_NOSIGNAL) < 0 && errno != EAGAIN) close(fd);
            } else if (got == 0 || errno != EAGAIN) {
                close(fd);
            }
        }
    }
    return 0;
}

/* ---- blocking client helpers (stream, rtt, connect) ----------------------------------- */

static int read_exact(int fd, char *out, size_t n) {
    size_t have = 0;
    while (have < n) {
        ssize_t got = recv(fd, out + have, n - have, 0);
        if (got <= 0) return -1;
        have += (size_t)got;
    }
    return 0;
}

/* Read an HTTP reply head; 0 if it is a 200. */
static int read_http_reply(int fd) {
    char head[1024];
    size_t have = 0;
    while (have < sizeof head - 1) {
        ssize_t got = recv(fd, head + have, 1, 0); /* byte-wise: no tunnel byte is eaten */
        if (got <= 0) return -1;
        have += (size_t)got;
        if (have >= 4 && memcmp(head + have - 4, "\r\n\r\n", 4) == 0) break;
    }
    head[have] = 0;
    return strncmp(head + 8, " 200", 4) == 0 ? 0 : -1;
}

/* Connect (blocking) and complete the handshake. Returns the fd or -1. */
static int open_tunnel(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    nodelay(fd);
    if (connect(fd, (struct sockaddr *)&dest, sizeof dest) != 0) { close(fd); return -1; }
    if (!via_proxy) return fd;
    char reply[16];
    if (send(fd, request, request_len, 0) != (ssize_t)request_len) goto fail;
    if (!socks5) {
        if (read_http_reply(fd) != 0) goto fail;
        return fd;
    }
    if (read_exact(fd, reply, 2) != 0 || reply[1] != 0) goto fail;
    if (send(fd, socks_request, socks_request_len, 0) != (ssize_t)socks_request_len) goto fail;
    if (read_exact(fd, reply, 10) != 0 || reply[1] != 0) goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *sorted, size_t n, double p) {
    if (n == 0) return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static int run_stream(void) {
    int fds[1024];
    if (opt.conns < 1 || opt.conns > 1024) { fprintf(stderr, "loadgen: --conns 1-1024\n"); return 2; }
    for (int i = 0; i < opt.conns; i++) {
        fds[i] = open_tunnel();
        if (fds[i] < 0) die("open tunnel");
        nonblocking(fds[i]);
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < opt.conns; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    struct epoll_event events[MAX_EVENTS];
    /* Warm up for a fifth of the time, then count. */
    double start = now(), warm = start + opt.seconds / 5, end = warm + opt.seconds, cpu0 = 0;
    long long bytes = 0;
    int counting = 0;
    while (1) {
        double t = now();
        if (!counting && t >= warm) { counting = 1; bytes = 0; cpu0 = cpu_seconds(); start = t; }
        if (t >= end) break;
        int n = epoll_wait(ep, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            ssize_t got = recv(events[i].data.fd, buffer, CHUNK, 0);
            if (got > 0) bytes += got;
            else if (got == 0 || errno != EAGAIN) die("stream ended early");
        }
    }
    double wall = now() - start, cpu = cpu_seconds() - cpu0;
    printf("{\"bytes\": %lld, \"seconds\": %.4f, \"bytes_per_second\": %.1f, "
           "\"cpu_seconds\": %.4f}\n", bytes, wall, (double)bytes / wall, cpu);
    return 0;
}

static int run_rtt(void) {
    int fd = open_tunnel();
    if (fd < 0) die("open tunnel");
    size_t size = (size_t)opt.size;
    if (size < 1 || size > sizeof buffer / 2) { fprintf(stderr, "loadgen: bad --size\n"); return 2; }
    memset(buffer, 'p', size);
    int warmup = opt.count / 10 + 10;
    double *lat = calloc((size_t)opt.count, sizeof *lat);
    double cpu0 = 0, start = 0;
    for (int i = -warmup; i < opt.count; i++) {
        if (i == 0) { cpu0 = cpu_seconds(); start = now(); }
        double t = now();
        if (send(fd, buffer, size, 0) != (ssize_t)size) die("send");
        if (read_exact(fd, buffer + size, size) != 0) die("echo");
        if (i >= 0) lat[i] = now() - t;
    }
    double wall = now() - start, cpu = cpu_seconds() - cpu0;
    qsort(lat, (size_t)opt.count, sizeof *lat, cmp_double);
    printf("{\"count\": %d, \"size\": %d, \"p50_us\": %.2f, \"p99_us\": %.2f, "
           "\"max_us\": %.2f, \"seconds\": %.4f, \"cpu_seconds\": %.4f}\n",
           opt.count, opt.size, percentile(lat, (size_t)opt.count, .5) * 1e6,
           percentile(lat, (size_t)opt.count, .99) * 1e6, lat[opt.count - 1] * 1e6, wall, cpu);
    return 0;
}

/* One tunnel, timed: through black holes the handshake reply is what waits on the dialer. */
static int run_connect(void) {
    double t0 = now();
    int fd = open_tunnel();
    if (fd < 0) die("open tunnel");
    double t1 = now();
    if (send(fd, "ping", 4, 0) != 4 || read_exact(fd, buffer, 4) != 0) die("echo");
    double t2 = now();
    printf("{\"handshake_s\": %.6f, \"first_echo_s\": %.6f}\n", t1 - t0, t2 - t0);
    close(fd);
    return 0;
}

/* ---- nonblocking closed loop (rate, hold) --------------------------------------------- */

enum { CONNECTING, SENT_GREETING, SENT_REQUEST, ECHOING, HOLDING };

struct slot {
    int fd, state;
    size_t have;
    double started;
    char in[256];
};

static int start_slot(int ep, struct slot *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) return -1;
    nodelay(s->fd);
    s->state = CONNECTING;
    s->have = 0;
    s->started = now();
    int rc = connect(s->fd, (struct sockaddr *)&dest, sizeof dest);
    if (rc != 0 && errno != EINPROGRESS) { close(s->fd); s->fd = -1; return -1; }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    return 0;
}

static void want(int ep, struct slot *s, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static const char echo_payload[64] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";

/* Advance one slot. Returns 1 when its handshake completed in this call, -1 on failure. */
static int step(int ep, struct slot *s, size_t echo_len, int *echoed) {
    ssize_t got;
    *echoed = 0;
    switch (s->state) {
    case CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) return -1;
        if (!via_proxy) {
            if (send(s->fd, echo_payload, echo_len, 0) != (ssize_t)echo_len) return -1;
            s->state = ECHOING;
            want(ep, s, EPOLLIN);
            return 1;
        }
        if (send(s->fd, request, request_len, 0) != (ssize_t)request_len) return -1;
        s->state = socks5 ? SENT_GREETING : SENT_REQUEST;
        want(ep, s, EPOLLIN);
        return 0;
    }
    case SENT_GREETING:
        got = recv(s->fd, s->in + s->have, 2 - s->have, 0);
        if (got <= 0) return got < 0 && errno == EAGAIN ? 0 : -1;
        s->have += (size_t)got;
        if (s->have < 2) return 0;
        if (s->in[1] != 0) return -1;
        if (send(s->fd, socks_request, socks_request_len, 0) != (ssize_t)socks_request_len)
            return -1;
        s->have = 0;
        s->state = SENT_REQUEST;
        return 0;
    case SENT_REQUEST:
        got = recv(s->fd, s->in + s->have, sizeof s->in - 1 - s->have, 0);
        if (got <= 0) return got < 0 && errno == EAGAIN ? 0 : -1;
        s->have += (size_t)got;
        if (socks5) {
            if (s->have < 10) return 0;
            if (s->in[1] != 0 || s->have > 10) return -1;
        } else {
            s->in[s->have] = 0;
            if (strstr(s->in, "\r\n\r\n") == NULL) return s->have < sizeof s->in - 1 ? 0 : -1;
            if (strncmp(s->in + 8, " 200", 4) != 0) return -1;
            /* The proxy sends nothing after its head until the target does. */
        }
        s->have = 0;
        if (send(s->fd, echo_payload, echo_len, 0) != (ssize_t)echo_len) return -1;
        s->state = ECHOING;
        return 1;
    case ECHOING:
        got = recv(s->fd, s->in + s->have, echo_len - s->have, 0);
        if (got <= 0) return got < 0 && errno == EAGAIN ? 0 : -1;
        s->have += (size_t)got;
        if (s->have == echo_len) { *echoed = 1; s->have = 0; }
        return 0;
    default: /* HOLDING: a byte from an idle tunnel is unexpected */
        got = recv(s->fd, s->in, sizeof s->in, 0);
        return got < 0 && errno == EAGAIN ? 0 : -1;
    }
}

static int run_rate(void) {
    int conc = opt.conns;
    if (conc < 1 || conc > 4096) { fprintf(stderr, "loadgen: --conns 1-4096\n"); return 2; }
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    size_t cap = 4000000, nlat = 0;
    double *lat = malloc(cap * sizeof *lat);
    int ep = epoll_create1(0);
    struct epoll_event events[MAX_EVENTS];
    long long done = 0, errors = 0;
    double warm_end = now() + opt.seconds / 5, start = 0, end = warm_end + opt.seconds, cpu0 = 0;
    int counting = 0;
    for (int i = 0; i < conc; i++)
        if (start_slot(ep, &slots[i]) != 0) errors++;
    while (1) {
        double t = now();
        if (!counting && t >= warm_end) {
            counting = 1; done = 0; errors = 0; nlat = 0; start = t; cpu0 = cpu_seconds();
        }
        if (t >= end) break;
        int n = epoll_wait(ep, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = events[i].data.ptr;
            int echoed, rc = step(ep, s, 64, &echoed);
            if (rc == 1 && nlat < cap) lat[nlat++] = now() - s->started;
            if (rc < 0 || echoed) {
                if (rc < 0) errors++; else done++;
                close(s->fd);  /* closing unregisters it from epoll */
                if (start_slot(ep, s) != 0) errors++;
            }
        }
    }
    double wall = now() - start, cpu = cpu_seconds() - cpu0;
    qsort(lat, nlat, sizeof *lat, cmp_double);
    printf("{\"tunnels\": %lld, \"errors\": %lld, \"seconds\": %.4f, \"per_second\": %.1f, "
           "\"handshake_p50_us\": %.1f, \"handshake_p99_us\": %.1f, \"cpu_seconds\": %.4f}\n",
           done, errors, wall, (double)done / wall, percentile(lat, nlat, .5) * 1e6,
           percentile(lat, nlat, .99) * 1e6, cpu);
    return 0;
}

/* Open --count tunnels (at most --conns opening at once), echo one byte on each, then
 * print a report and serve commands from stdin: "verify" (echo a byte on every tunnel
 * again) or "close" / EOF (exit). A tunnel that fails makes the whole run fail. */
static int verify_all(struct slot *slots, int count, double timeout) {
    int ep = epoll_create1(0), pending = count;
    struct epoll_event events[MAX_EVENTS];
    for (int i = 0; i < count; i++) {
        slots[i].state = ECHOING;
        slots[i].have = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &slots[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, slots[i].fd, &ev);
        if (send(slots[i].fd, "v", 1, 0) != 1) return -1;
    }
    double end = now() + timeout;
    while (pending > 0 && now() < end) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = events[i].data.ptr;
            int echoed;
            if (step(ep, s, 1, &echoed) < 0) return -1;
            if (echoed) {
                s->state = HOLDING;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                pending--;
            }
        }
    }
    close(ep);
    return pending == 0 ? 0 : -1;
}

static int run_hold(void) {
    int count = opt.count, conc = opt.conns;
    struct slot *slots = calloc((size_t)count, sizeof *slots);
    int ep = epoll_create1(0), opened = 0, live = 0, inflight = 0;
    struct epoll_event events[MAX_EVENTS];
    double t0 = now(), end = t0 + opt.seconds, cpu0 = cpu_seconds();
    while (live < count && now() < end) {
        while (inflight < conc && opened < count) {
            if (start_slot(ep, &slots[opened]) != 0) die("socket");
            opened++;
            inflight++;
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = events[i].data.ptr;
            int echoed, rc = step(ep, s, 1, &echoed);
            if (rc < 0) { fprintf(stderr, "loadgen: tunnel %ld failed\n", (long)(s - slots)); return 1; }
            if (echoed) {
                s->state = HOLDING;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                live++;
                inflight--;
            }
        }
    }
    if (live < count) { fprintf(stderr, "loadgen: only %d of %d tunnels opened\n", live, count); return 1; }
    printf("{\"open\": %d, \"seconds\": %.3f, \"cpu_seconds\": %.4f}\n", live, now() - t0,
           cpu_seconds() - cpu0);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strncmp(line, "verify", 6) != 0) break;
        int ok = verify_all(slots, count, 30.0) == 0;
        printf("{\"verified\": %d}\n", ok ? count : 0);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: loadgen MODE [ARGS]\n"); return 2; }
    const char *mode = argv[1];
    int port = 0, i = 2;
    if (strcmp(mode, "stream-server") == 0 || strcmp(mode, "echo-server") == 0) {
        if (argc < 3) { fprintf(stderr, "loadgen: PORT required\n"); return 2; }
        port = atoi(argv[2]);
        i = 3;
        if (argc > 3 && argv[3][0] != '-') { opt.backlog = atoi(argv[3]); i = 4; }
    }
    for (; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--target")) opt.target = v;
        else if (!strcmp(k, "--proxy")) opt.proxy = v;
        else if (!strcmp(k, "--proto")) opt.proto = v;
        else if (!strcmp(k, "--bind")) opt.bind = v;
        else if (!strcmp(k, "--conns")) opt.conns = atoi(v);
        else if (!strcmp(k, "--count")) opt.count = atoi(v);
        else if (!strcmp(k, "--size")) opt.size = atoi(v);
        else if (!strcmp(k, "--seconds")) opt.seconds = atof(v);
        else { fprintf(stderr, "loadgen: unknown option %s\n", k); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(mode, "stream-server")) return serve(port, 1);
    if (!strcmp(mode, "echo-server")) return serve(port, 0);
    prepare();
    if (!strcmp(mode, "stream")) return run_stream();
    if (!strcmp(mode, "rate")) return run_rate();
    if (!strcmp(mode, "rtt")) return run_rtt();
    if (!strcmp(mode, "hold")) return run_hold();
    if (!strcmp(mode, "connect")) return run_connect();
    fprintf(stderr, "loadgen: unknown mode %s\n", mode);
    return 2;
}
