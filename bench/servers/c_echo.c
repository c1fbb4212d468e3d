/*
 * c_echo.c -- a minimal single-threaded epoll WebSocket server. It exists only to show the
 * load generator's ceiling: it speaks just enough of RFC 6455 (handshake, unmasking, echo
 * with the same opcode, close, ping) and does nothing else, so whatever rate the load
 * generator reaches against it is a rate the instrument itself can sustain.
 *
 * Follows the bench server convention: 127.0.0.1:$PORT, GET / -> 200, /echo echoes,
 * /sub subscribes to the one topic, /pub republishes every message to all subscribers
 * (one frame built once, appended to each subscriber's output buffer, one write each
 * per read batch). Not a real server: no limits beyond MAX_PAYLOAD, no deflate, no
 * fragmentation support (fragments are echoed frame by frame).
 *
 * Build: cc -O2 -o c_echo c_echo.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- SHA-1 (RFC 3174), only for Sec-WebSocket-Accept ---- */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = bits >> (8 * i);
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 | (uint32_t)m[off + 4 * i + 2] << 8 |
                   m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = h[i] >> (24 - 8 * j);
}
static void b64(const uint8_t *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

typedef struct conn {
    int fd, ws, sub, dead, want_out;
    uint8_t *in;
    size_t inlen, incap;
    uint8_t *out;
    size_t outlen, outoff, outcap;
    struct conn *next_sub, *prev_sub;
    struct conn *next_dirty;
    int dirty;
} conn_t;

static int epfd;
static size_t max_payload = 64u << 20;
static conn_t *subs;
static conn_t *dirty_list;

static void grow(uint8_t **b, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    *b = realloc(*b, c);
    if (!*b) abort();
    *cap = c;
}

static void out_append(conn_t *c, const void *p, size_t n) {
    if (c->outoff && c->outoff == c->outlen) c->outoff = c->outlen = 0;
    grow(&c->out, &c->outcap, c->outlen + n);
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = dirty_list;
        dirty_list = c;
    }
}

static size_t frame_header(uint8_t *h, int opcode, size_t n) {
    h[0] = 0x80 | opcode;
    if (n < 126) {
        h[1] = n;
        return 2;
    }
    if (n < 65536) {
        h[1] = 126, h[2] = n >> 8, h[3] = n;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint64_t)n >> (56 - 8 * i);
    return 10;
}

static void close_conn(conn_t *c) {
    if (c->dead) return;
    c->dead = 1;
    if (c->sub) {
        if (c->prev_sub) c->prev_sub->next_sub = c->next_sub;
        else subs = c->next_sub;
        if (c->next_sub) c->next_sub->prev_sub = c->prev_sub;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    /* freed lazily: it may still be on the dirty list */
}

static void flush(conn_t *c) {
    while (!c->dead && c->outoff < c->outlen) {
        ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w > 0) {
            c->outoff += w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        close_conn(c);
        return;
    }
    if (c->dead) return;
    if (c->outoff == c->outlen) c->outoff = c->outlen = 0;
    int want = c->outlen > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
}

static void http_phase(conn_t *c) {
    c->in[c->inlen < c->incap ? c->inlen : c->incap - 1] = 0;
    char *end = strstr((char *)c->in, "\r\n\r\n");
    if (!end) {
        if (c->inlen > 16384) close_conn(c);
        return;
    }
    size_t head = end + 4 - (char *)c->in;
    char *key = strcasestr((char *)c->in, "\r\nSec-WebSocket-Key:");
    if (!key || key > end) {
        const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
        out_append(c, r, strlen(r));
        memmove(c->in, c->in + head, c->inlen - head);
        c->inlen -= head;
        return;
    }
    key += 20;
    while (*key == ' ') key++;
    char *ke = key;
    while (*ke && *ke != '\r' && *ke != ' ') ke++;
    char buf[128];
    size_t kl = ke - key;
    if (kl > 64) kl = 64;
    memcpy(buf, key, kl);
    memcpy(buf + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    uint8_t dig[20];
    sha1((uint8_t *)buf, kl + 36, dig);
    char acc[32];
    b64(dig, 20, acc);
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    out_append(c, resp, n);
    c->ws = strncmp((char *)c->in, "GET /sub", 8) == 0 ? 2 : strncmp((char *)c->in, "GET /pub", 8) == 0 ? 3 : 1;
    if (c->ws == 2) {
        c->sub = 1;
        c->next_sub = subs;
        c->prev_sub = NULL;
        if (subs) subs->prev_sub = c;
        subs = c;
    }
    memmove(c->in, c->in + head, c->inlen - head);
    c->inlen -= head;
}

static void ws_phase(conn_t *c) {
    size_t i = 0;
    while (c->inlen - i >= 2) {
        uint8_t *p = c->in + i;
        int op = p[0] & 0x0f, masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (c->inlen - i < 4) break;
            len = (uint64_t)p[2] << 8 | p[3];
            h = 4;
        } else if (len == 127) {
            if (c->inlen - i < 10) break;
            len = 0;
            for (int k = 0; k < 8; k++) len = len << 8 | p[2 + k];
            h = 10;
        }
        if (len > max_payload) {
            close_conn(c);
            return;
        }
        if (masked) h += 4;
        if (c->inlen - i < h + len) break;
        uint8_t *pl = p + h;
        if (masked) {
            const uint8_t *mk = p + h - 4;
            uint32_t m32;
            memcpy(&m32, mk, 4);
            uint64_t m64 = (uint64_t)m32 << 32 | m32;
            size_t j = 0;
            for (; j + 8 <= len; j += 8) {
                uint64_t v;
                memcpy(&v, pl + j, 8);
                v ^= m64;
                memcpy(pl + j, &v, 8);
            }
            for (; j < len; j++) pl[j] ^= mk[j & 3];
        }
        uint8_t hdr[10];
        if (op == 8) {
            size_t hl = frame_header(hdr, 8, len > 2 ? 2 : len);
            out_append(c, hdr, hl);
            out_append(c, pl, len > 2 ? 2 : len);
            flush(c);
            close_conn(c);
            return;
        } else if (op == 9) {
            size_t hl = frame_header(hdr, 10, len);
            out_append(c, hdr, hl);
            out_append(c, pl, len);
        } else if (op == 10) {
            /* pong: ignore */
        } else if (c->ws == 3) {
            size_t hl = frame_header(hdr, op ? op : 2, len);
            for (conn_t *s = subs; s; s = s->next_sub) {
                out_append(s, hdr, hl);
                out_append(s, pl, len);
            }
        } else if (c->ws == 1) {
            size_t hl = frame_header(hdr, op, len);
            hdr[0] = (p[0] & 0x80) | op; /* keep FIN for fragments */
            if (len >= 16384 && c->outoff == c->outlen) {
                /* large frame, nothing queued: write it straight from the input buffer
                 * (saves a copy; only the unwritten rest is queued) */
                struct iovec iov[2] = {{hdr, hl}, {pl, len}};
                ssize_t w = writev(c->fd, iov, 2);
                if (w < 0) w = 0;
                if ((size_t)w < hl) {
                    out_append(c, hdr + w, hl - w);
                    out_append(c, pl, len);
                } else if ((size_t)w < hl + len) {
                    out_append(c, pl + (w - hl), len - (w - hl));
                }
            } else {
                out_append(c, hdr, hl);
                out_append(c, pl, len);
            }
        }
        i += h + len;
    }
    if (i) {
        memmove(c->in, c->in + i, c->inlen - i);
        c->inlen -= i;
    }
}

int main(void) {
    signal(SIGPIPE, SIG_IGN); /* clients reset their connections at the end of a run */
    const char *ps = getenv("PORT");
    int port = ps ? atoi(ps) : 9001;
    const char *mp = getenv("MAX_PAYLOAD");
    if (mp && atoll(mp) > 0) max_payload = atoll(mp);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    conn_t *graveyard[4096];
    int ngrave = 0;
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (!c) {
                for (int acc = 0; acc < 256; acc++) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            if (c->dead) continue;
            if (evs[k].events & EPOLLOUT) flush(c);
            if (c->dead) goto reap;
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                /* do not read more while a large reply is still queued (backpressure) */
                if (c->outlen - c->outoff > (8u << 20)) continue;
                grow(&c->in, &c->incap, c->inlen + 65536 + 1);
                ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen - 1);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    close_conn(c);
                    goto reap;
                }
                if (r > 0) {
                    c->inlen += r;
                    if (!c->ws) http_phase(c);
                    if (c->ws && !c->dead) ws_phase(c);
                }
            }
        reap:
            if (c->dead && !c->dirty && ngrave < 4096) graveyard[ngrave++] = c;
        }
        /* one write per connection per loop iteration (the cork) */
        while (dirty_list) {
            conn_t *c = dirty_list;
            dirty_list = c->next_dirty;
            c->dirty = 0;
            if (!c->dead) flush(c);
            if (c->dead && ngrave < 4096) graveyard[ngrave++] = c;
        }
        for (int g = 0; g < ngrave; g++) {
            free(graveyard[g]->in);
            free(graveyard[g]->out);
            free(graveyard[g]);
        }
        ngrave = 0;
    }
}
