/*
 * loadgen.c -- the bunws benchmark's WebSocket load generator.
 *
 * One thread, one epoll set (edge-triggered), non-blocking sockets. It performs the HTTP upgrade itself,
 * sends precomputed masked frames, parses server frames in a streaming way (the payload is
 * never copied, only counted), handles partial reads and writes, and stops on a hard time
 * limit (and optionally a message count). Loopback only: it refuses any host outside
 * 127.0.0.0/8. Results: one JSON line on stdout.
 *
 * Modes
 *   echo    --conns C --window W --size S [--text] --duration D
 *           Every connection keeps W messages in flight on /echo; counts echoed messages.
 *           With --rate R (msgs/s in total) it sends on a fixed schedule instead and
 *           reports round-trip latency percentiles (p50/p90/p99/max).
 *   fanout  --subs N --size S --window K --duration D
 *           N connections on /sub, one on /pub. The publisher keeps at most K messages
 *           published but not yet seen by the SLOWEST subscriber (each payload carries a
 *           sequence number; a subscriber's position is the last sequence it received, so
 *           a server that drops messages cannot wedge the window). deliveries/s = messages
 *           received by all subscribers / measured time.
 *   conns   --conns N --concurrency H
 *           Opens N idle WebSocket connections (at most H handshakes in flight), prints a
 *           JSON line with handshakes/s, then holds them until stdin reaches EOF (the harness
 *           reads the server's RSS meanwhile) or --hold seconds pass.
 *
 * Build: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <zlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (1 << 18)
#define HS_MAX 2048
#define TS_RING 8192          /* per-connection in-flight timestamps (rate mode) */
#define SEQ_RING 4096         /* fan-out window bookkeeping; > any window */
#define EV_TIMER 0xFFFFFFF0u
#define EV_STDIN 0xFFFFFFF1u

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DEAD };
enum { ROLE_ECHO, ROLE_SUB, ROLE_PUB, ROLE_IDLE };

typedef struct {
    int fd;
    uint8_t state, role, want_out;
    /* handshake: response accumulator (freed once open) */
    char *hs;
    int hslen;
    /* streaming frame parser */
    uint8_t hdr[14];
    uint8_t hdrlen, hdrneed;
    uint8_t opcode, msg_opcode, fin, rsv1, counted;
    uint64_t remaining, plen;
    uint8_t cap[8];
    uint8_t caplen;
    /* output: (a) frames_pending copies of the shared frame, starting frame_off bytes in;
     * (b) a private byte buffer (handshake request, publisher frames) sent first */
    uint64_t frames_pending;
    uint32_t frame_off;
    char *ob;
    size_t oblen, oboff, obcap;
    /* counters */
    uint64_t sent, recvd, bad_len;
    int64_t last_seq;
    /* rate mode: send timestamps of in-flight messages */
    uint64_t *ts;
    uint32_t ts_head, ts_tail;
} conn_t;

/* ---- options ---- */
static const char *o_mode = "echo", *o_host = "127.0.0.1", *o_path = NULL;
static int o_port = 0, o_conns = 1, o_window = 16, o_text = 0, o_subs = 100, o_concurrency = 256;
static size_t o_size = 16;
static double o_duration = 3.0, o_warmup = 0.5, o_timeout = 0.0, o_hold = 60.0, o_rate = 0.0;
static uint64_t o_max_msgs = 0;
static int o_deflate = 0;
static int o_compress = 0; /* --compress: send RSV1 frames deflated once up front (echo mode) */
static double o_stall = 1.0; /* fan-out: seconds without progress before publishing past the window */

/* ---- state ---- */
static int epfd;
static conn_t *conns;
static int nconns;
static struct sockaddr_in srv;
static uint8_t *frame_block; /* B back-to-back copies of the one echo frame */
static size_t frame_len, block_frames;
static uint8_t mask_key[4] = {0x37, 0xfa, 0x21, 0x3d};
static uint8_t *pub_template; /* masked publisher frame; first 8 payload bytes get the sequence */
static size_t pub_hdr_len;
static uint8_t rbuf[RBUF_SIZE];

static uint64_t n_open, n_failed, n_closed_by_server, n_connect_started;
static int measuring;
static uint64_t msgs_measured, bytes_measured;
static double t_measure_start;
static double cpu_measure_start;

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* latency samples (ns) */
static uint32_t *lat;
static size_t lat_n, lat_cap;

/* fan-out bookkeeping */
static uint64_t pub_seq;       /* last sequence published */
static uint64_t oldest;        /* min over subscribers of last sequence received */
static uint32_t seqcnt[SEQ_RING];
static double last_progress;
static uint64_t stall_sends;
static uint64_t lost_measured; /* sequence gaps seen by subscribers while measuring */
static conn_t *pub;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void die(const char *msg) {
    printf("{\"error\":\"%s\"}\n", msg);
    fflush(stdout);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) die("out of memory");
    return p;
}

/* Build a masked client frame for `payload` into out; returns its length. */
static size_t build_frame_rsv(uint8_t *out, int opcode, const uint8_t *payload, size_t n, int rsv1) {
    size_t h = 0;
    out[h++] = 0x80 | (rsv1 ? 0x40 : 0) | opcode;
    if (n < 126) {
        out[h++] = 0x80 | n;
    } else if (n < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = n >> 8;
        out[h++] = n & 0xff;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) out[h++] = (n >> (8 * i)) & 0xff;
    }
    memcpy(out + h, mask_key, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) out[h + i] = payload[i] ^ mask_key[i & 3];
    return h + n;
}

static size_t build_frame(uint8_t *out, int opcode, const uint8_t *payload, size_t n) {
    return build_frame_rsv(out, opcode, payload, n, 0);
}

/* RFC 7692: raw deflate with a sync flush, the trailing 00 00 ff ff removed. The message
   is compressed once; with client_no_context_takeover every copy is a valid message. */
static size_t deflate_message(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        die("deflateInit2 failed");
    zs.next_in = (Bytef *)in;
    zs.avail_in = n;
    zs.next_out = out;
    zs.avail_out = cap;
    if (deflate(&zs, Z_SYNC_FLUSH) != Z_OK || zs.avail_in) die("deflate failed");
    size_t len = cap - zs.avail_out;
    deflateEnd(&zs);
    if (len < 4) die("deflate output too short");
    return len - 4;
}

/* Text that compresses like chat/JSON traffic (about 3-4x), not like a repeated byte. */
static void fill_text_payload(uint8_t *p, size_t n) {
    static const char *words[] = {"\"user\":", "\"alice\"", "\"bob\"", "\"text\":", "\"hello\"",
                                  "\"price\":", "\"ts\":", "{", "}", ",", " ", "\"room\":", "\"lobby\""};
    uint32_t x = 12345;
    size_t i = 0;
    while (i < n) {
        x = x * 1103515245u + 12345u;
        const char *w = (x >> 16) % 5 == 0 ? NULL : words[(x >> 8) % 13];
        if (w) {
            for (size_t k = 0; w[k] && i < n; k++) p[i++] = w[k];
        } else {
            p[i++] = '0' + (x >> 20) % 10;
        }
    }
}

static void ob_append(conn_t *c, const void *p, size_t n) {
    if (c->oblen + n > c->obcap) {
        if (c->oboff) { /* compact first */
            memmove(c->ob, c->ob + c->oboff, c->oblen - c->oboff);
            c->oblen -= c->oboff;
            c->oboff = 0;
        }
        if (c->oblen + n > c->obcap) {
            size_t cap = c->obcap ? c->obcap : 4096;
            while (cap < c->oblen + n) cap *= 2;
            c->ob = realloc(c->ob, cap);
            if (!c->ob) die("out of memory");
            c->obcap = cap;
        }
    }
    memcpy(c->ob + c->oblen, p, n);
    c->oblen += n;
}

static void set_events(conn_t *c, int want_out) {
    if (c->want_out == want_out || c->state == ST_DEAD) return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET | (want_out ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void kill_conn(conn_t *c, int by_server) {
    if (c->state == ST_DEAD) return;
    if (c->state == ST_OPEN) n_open--;
    else n_failed++;
    if (by_server) n_closed_by_server++;
    if (c->role == ROLE_SUB && !c->counted) { /* a dead subscriber no longer holds the window */
        c->counted = 1;
        seqcnt[c->last_seq % SEQ_RING]--;
        while (oldest < pub_seq && seqcnt[oldest % SEQ_RING] == 0) oldest++;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    struct linger lg = {1, 0}; /* RST: no TIME_WAIT pile-up across repetitions */
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    c->state = ST_DEAD;
    free(c->hs);
    c->hs = NULL;
}

/* Flush pending output; returns 0, or -1 if the connection died. */
static int flush_out(conn_t *c) {
    if (c->state == ST_DEAD) return -1;
    for (int guard = 0; guard < 64; guard++) {
        ssize_t w;
        if (c->oboff < c->oblen) {
            w = write(c->fd, c->ob + c->oboff, c->oblen - c->oboff);
            if (w > 0) {
                c->oboff += w;
                if (c->oboff == c->oblen) c->oboff = c->oblen = 0;
                continue;
            }
        } else if (c->frames_pending) {
            size_t pending = c->frames_pending * frame_len - c->frame_off;
            size_t avail = block_frames * frame_len - c->frame_off;
            w = write(c->fd, frame_block + c->frame_off, pending < avail ? pending : avail);
            if (w > 0) {
                uint64_t tot = c->frame_off + (uint64_t)w;
                c->frames_pending -= tot / frame_len;
                c->frame_off = tot % frame_len;
                continue;
            }
        } else {
            set_events(c, 0);
            return 0;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, 1);
            return 0;
        }
        if (w < 0 && errno == EINTR) continue;
        kill_conn(c, 1);
        return -1;
    }
    set_events(c, 1);
    return 0;
}

static void fanout_sub_seq(conn_t *c, uint64_t seq) {
    /* move this subscriber from its old position to seq; advance the global minimum */
    if (seq <= (uint64_t)c->last_seq || seq > pub_seq) return;
    if (measuring && c->last_seq > 0) lost_measured += seq - (uint64_t)c->last_seq - 1;
    seqcnt[c->last_seq % SEQ_RING]--;
    seqcnt[seq % SEQ_RING]++;
    c->last_seq = (int64_t)seq;
    while (oldest < pub_seq && seqcnt[oldest % SEQ_RING] == 0) oldest++;
}

static void publish_some(void);

static void on_message(conn_t *c) {
    c->recvd++;
    if (c->plen != o_size && !c->rsv1) c->bad_len++;
    if (measuring) {
        msgs_measured++;
        bytes_measured += c->plen;
    }
    if (c->role == ROLE_ECHO) {
        if (o_rate > 0) {
            if (c->ts_tail != c->ts_head) {
                uint64_t dt = now_ns() - c->ts[c->ts_tail % TS_RING];
                c->ts_tail++;
                if (measuring && lat_n < lat_cap) lat[lat_n++] = dt > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)dt;
            }
        } else {
            c->frames_pending++;
            c->sent++;
        }
    } else if (c->role == ROLE_SUB) {
        if (c->caplen >= 8) {
            uint64_t seq;
            memcpy(&seq, c->cap, 8);
            fanout_sub_seq(c, seq);
        }
    }
}

/* Streaming parser for server frames: headers are assembled, payloads only counted. */
static int feed(conn_t *c, const uint8_t *p, size_t n) {
    size_t i = 0;
    if (n == 0 && !c->hdrneed && c->remaining == 0) goto complete;
    while (i < n) {
        if (c->hdrneed) {
            /* fast path: whole header available in place */
            if (c->hdrlen == 0 && n - i >= 2) {
                uint8_t b1 = p[i + 1];
                size_t need = 2 + ((b1 & 0x7f) == 126 ? 2 : (b1 & 0x7f) == 127 ? 8 : 0) + ((b1 & 0x80) ? 4 : 0);
                if (n - i >= need) {
                    memcpy(c->hdr, p + i, need);
                    c->hdrlen = need;
                    i += need;
                    goto parse_header;
                }
            }
            c->hdr[c->hdrlen++] = p[i++];
            if (c->hdrlen < 2) continue;
            {
                uint8_t b1 = c->hdr[1];
                size_t need = 2 + ((b1 & 0x7f) == 126 ? 2 : (b1 & 0x7f) == 127 ? 8 : 0) + ((b1 & 0x80) ? 4 : 0);
                if (c->hdrlen < need) continue;
            }
        parse_header : {
            uint8_t b0 = c->hdr[0], b1 = c->hdr[1];
            uint64_t len = b1 & 0x7f;
            if (len == 126) len = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
            else if (len == 127) {
                len = 0;
                for (int k = 0; k < 8; k++) len = (len << 8) | c->hdr[2 + k];
            }
            c->fin = b0 >> 7;
            c->opcode = b0 & 0x0f;
            if (c->opcode == 0) { /* continuation: part of the current data message */
                c->plen += len;
            } else if (c->opcode < 8) { /* first frame of a data message */
                c->msg_opcode = c->opcode;
                c->rsv1 = (b0 >> 6) & 1;
                c->plen = len;
            }
            c->remaining = len;
            c->caplen = 0;
            c->hdrlen = 0;
            c->hdrneed = 0;
        }
        } else {
            size_t take = n - i;
            if (take > c->remaining) take = c->remaining;
            if (c->caplen < 8 && c->role == ROLE_SUB) {
                size_t k = 8 - c->caplen;
                if (k > take) k = take;
                memcpy(c->cap + c->caplen, p + i, k);
                c->caplen += k;
            }
            i += take;
            c->remaining -= take;
        }
        if (!c->hdrneed && c->remaining == 0) {
        complete:
            c->hdrneed = 1;
            if (c->opcode == 8) { /* close from server */
                kill_conn(c, 1);
                return -1;
            }
            if (c->fin && c->opcode < 8 && (c->msg_opcode == 1 || c->msg_opcode == 2)) on_message(c);
            /* ping/pong ignored: peers are configured without pings */
        }
    }
    return 0;
}

static void start_connect(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->fd = -1;
        c->state = ST_DEAD;
        n_failed++;
        if (c->role == ROLE_SUB && !c->counted) {
            c->counted = 1;
            seqcnt[0]--;
        }
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->hdrneed = 1;
    c->last_seq = 0;
    n_connect_started++;
    int r = connect(fd, (struct sockaddr *)&srv, sizeof srv);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)(c - conns)};
    c->want_out = 1;
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (r < 0 && errno != EINPROGRESS) kill_conn(c, 0);
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        kill_conn(c, 0);
        return;
    }
    c->state = ST_HANDSHAKE;
    c->hs = xmalloc(HS_MAX);
    c->hslen = 0;
    const char *path = c->role == ROLE_SUB ? "/sub" : c->role == ROLE_PUB ? "/pub" : (o_path ? o_path : "/echo");
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: YnVud3MtbG9hZGdlbi0xMg==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                     path, o_host, o_port,
                     o_compress ? "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
                     : o_deflate ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "");
    ob_append(c, req, n);
    flush_out(c);
}

static void on_open(conn_t *c);

/* Connection sockets are edge-triggered: read until a short read (the receive queue was
 * empty at that moment; later data raises a new edge). Measured against c_echo, 1000
 * subscribers x 64 B: 90 ns of client CPU per delivery instead of 170-330 ns with
 * level-triggered epoll, which re-polls every ready socket on every epoll_wait. */
static void handle_read(conn_t *c) {
    for (;;) {
        /* inside a large payload that needs no inspection: let the kernel discard it
         * (TCP honours MSG_TRUNC: the bytes are dropped without a copy to user space) */
        if (c->state == ST_OPEN && !c->hdrneed && c->remaining >= 4096 &&
            !(c->role == ROLE_SUB && c->caplen < 8)) {
            size_t want = c->remaining > (1u << 22) ? (1u << 22) : c->remaining;
            ssize_t r = recv(c->fd, NULL, want, MSG_TRUNC | MSG_DONTWAIT);
            if (r == 0) {
                kill_conn(c, 1);
                return;
            }
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
                kill_conn(c, 1);
                return;
            }
            c->remaining -= r;
            if (c->remaining == 0 && feed(c, rbuf, 0) < 0) return; /* completes the frame */
            if (c->frames_pending || c->oblen) {
                if (flush_out(c) < 0) return;
            }
            if ((size_t)r < want) return;
            continue;
        }
        ssize_t r = read(c->fd, rbuf, sizeof rbuf);
        if (r == 0) {
            kill_conn(c, 1);
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
            kill_conn(c, 1);
            return;
        }
        const uint8_t *p = rbuf;
        size_t n = r;
        if (c->state == ST_HANDSHAKE) {
            size_t take = n;
            if (c->hslen + take > HS_MAX - 1) take = HS_MAX - 1 - c->hslen;
            memcpy(c->hs + c->hslen, p, take);
            c->hslen += take;
            c->hs[c->hslen] = 0;
            char *end = strstr(c->hs, "\r\n\r\n");
            if (!end) {
                if (c->hslen >= HS_MAX - 1) kill_conn(c, 0);
                return;
            }
            if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
                kill_conn(c, 0);
                return;
            }
            size_t hdr_bytes = (end + 4) - c->hs;
            size_t extra = c->hslen - hdr_bytes; /* bytes after the response head: frames */
            size_t consumed_from_p = take - extra;
            free(c->hs);
            c->hs = NULL;
            c->state = ST_OPEN;
            n_open++;
            on_open(c);
            if (c->state == ST_DEAD) return;
            p += consumed_from_p;
            n -= consumed_from_p;
            if (n == 0) {
                if ((size_t)r < sizeof rbuf) return;
                continue;
            }
        }
        if (feed(c, p, n) < 0) return;
        if (c->frames_pending || c->oblen) {
            if (flush_out(c) < 0) return;
        }
        if ((size_t)r < sizeof rbuf) return;
    }
}

/* ---- mode logic ---- */
static int phase; /* 0 connecting, 1 warmup, 2 measuring, 3 done */
static double t_phase;

static void on_open(conn_t *c) {
    /* echo: the in-flight window starts once every connection is open (start_echo);
     * fan-out: subscribers are counted at position 0 from the start (seqcnt[0]) */
    (void)c;
}

static void start_echo(void) {
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->state != ST_OPEN) continue;
        uint64_t w = o_window;
        c->frames_pending += w;
        c->sent += w;
        flush_out(c);
    }
}

static void publish_one(void) {
    pub_seq++;
    size_t flen = pub_hdr_len + o_size;
    uint8_t *f = pub_template;
    uint8_t seqb[8];
    memcpy(seqb, &pub_seq, 8);
    for (int k = 0; k < 8; k++) f[pub_hdr_len + k] = seqb[k] ^ mask_key[k & 3];
    ob_append(pub, f, flen);
    pub->sent++;
}

static void publish_some(void) {
    if (!pub || pub->state != ST_OPEN) return;
    int any = 0;
    while (pub_seq - oldest < (uint64_t)o_window) {
        publish_one();
        any = 1;
        if (pub->oblen - pub->oboff > (1u << 20)) break; /* let the socket drain first */
    }
    if (any) flush_out(pub);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void print_latency(void) {
    if (!lat_n) {
        printf(",\"lat_samples\":0");
        return;
    }
    qsort(lat, lat_n, sizeof *lat, cmp_u32);
#define PCT(q) (lat[(size_t)((q) * (lat_n - 1))] / 1000.0)
    printf(",\"lat_samples\":%zu,\"lat_p50_us\":%.1f,\"lat_p90_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_max_us\":%.1f", lat_n,
           PCT(0.50), PCT(0.90), PCT(0.99), lat[lat_n - 1] / 1000.0);
#undef PCT
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode echo|fanout|conns --port P [--host 127.0.0.1] [--conns C] [--window W]\n"
            "               [--size S] [--text] [--duration D] [--warmup D] [--rate R] [--max-msgs M]\n"
            "               [--subs N] [--concurrency H] [--hold S] [--timeout S] [--path /echo] [--deflate]\n"
            "               [--compress]  (echo: send deflated RSV1 frames; implies --deflate)\n"
            "               [--stall-ms MS]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v && (i++, 1))
        if (OPT("--mode")) o_mode = v;
        else if (OPT("--host")) o_host = v;
        else if (OPT("--port")) o_port = atoi(v);
        else if (OPT("--path")) o_path = v;
        else if (OPT("--conns")) o_conns = atoi(v);
        else if (OPT("--window")) o_window = atoi(v);
        else if (OPT("--size")) o_size = strtoull(v, NULL, 10);
        else if (OPT("--duration")) o_duration = atof(v);
        else if (OPT("--warmup")) o_warmup = atof(v);
        else if (OPT("--timeout")) o_timeout = atof(v);
        else if (OPT("--rate")) o_rate = atof(v);
        else if (OPT("--max-msgs")) o_max_msgs = strtoull(v, NULL, 10);
        else if (OPT("--subs")) o_subs = atoi(v);
        else if (OPT("--concurrency")) o_concurrency = atoi(v);
        else if (OPT("--hold")) o_hold = atof(v);
        else if (OPT("--stall-ms")) o_stall = atof(v) / 1000.0;
        else if (strcmp(a, "--text") == 0) o_text = 1;
        else if (strcmp(a, "--binary") == 0) o_text = 0;
        else if (strcmp(a, "--deflate") == 0) o_deflate = 1;
        else if (strcmp(a, "--compress") == 0) o_compress = o_deflate = 1;
        else usage();
#undef OPT
    }
    if (o_port <= 0 || o_port > 65535) usage();
    if (o_window < 1) o_window = 1;
    if (o_window > SEQ_RING / 2) o_window = SEQ_RING / 2;
    if (o_concurrency < 1) o_concurrency = 1;
    memset(&srv, 0, sizeof srv);
    srv.sin_family = AF_INET;
    srv.sin_port = htons(o_port);
    if (inet_pton(AF_INET, o_host, &srv.sin_addr) != 1) die("host must be an IPv4 literal");
    if ((ntohl(srv.sin_addr.s_addr) >> 24) != 127) die("refusing non-loopback host: loopback (127.0.0.0/8) only");

    int mode_echo = !strcmp(o_mode, "echo"), mode_fan = !strcmp(o_mode, "fanout"), mode_conns = !strcmp(o_mode, "conns");
    if (!mode_echo && !mode_fan && !mode_conns) usage();
    if (mode_fan && o_size < 8) o_size = 8; /* room for the sequence number */
    if (o_timeout <= 0) o_timeout = o_warmup + o_duration + 30.0;

    signal(SIGPIPE, SIG_IGN); /* a peer that resets must not kill the generator */
    /* raise our own fd limit as far as the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* payload: printable ASCII (valid UTF-8, so --text is legal) */
    uint8_t *payload = xmalloc(o_size + 1);
    for (size_t i = 0; i < o_size; i++) payload[i] = 'a' + (i % 26);
    int opcode = (o_text && !mode_fan) ? 1 : 2;
    uint8_t *one = xmalloc(o_size + 14);
    if (o_compress && mode_echo) {
        /* one deflated message (RSV1), sent over and over; replies are counted, not inflated */
        size_t cap = o_size + o_size / 8 + 64;
        uint8_t *z = xmalloc(cap);
        fill_text_payload(payload, o_size);
        size_t zn = deflate_message(payload, o_size, z, cap);
        one = realloc(one, zn + 14);
        frame_len = build_frame_rsv(one, opcode, z, zn, 1);
        free(z);
    } else {
        frame_len = build_frame(one, opcode, payload, o_size);
    }
    block_frames = (1u << 16) / frame_len;
    if (block_frames < 1) block_frames = 1;
    frame_block = xmalloc(block_frames * frame_len);
    for (size_t i = 0; i < block_frames; i++) memcpy(frame_block + i * frame_len, one, frame_len);
    if (mode_fan) {
        pub_template = xmalloc(o_size + 14);
        size_t fl = build_frame(pub_template, 2, payload, o_size);
        pub_hdr_len = fl - o_size;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    nconns = mode_fan ? o_subs + 1 : o_conns;
    conns = calloc(nconns, sizeof *conns);
    if (!conns) die("out of memory");
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].role = mode_echo ? ROLE_ECHO : mode_conns ? ROLE_IDLE : (i < o_subs ? ROLE_SUB : ROLE_PUB);
        conns[i].state = 255; /* not started */
    }
    if (mode_fan) {
        pub = &conns[o_subs];
        seqcnt[0] = o_subs; /* every subscriber starts at position 0 */
    }
    if (mode_echo && o_rate > 0) {
        for (int i = 0; i < nconns; i++) conns[i].ts = xmalloc(TS_RING * sizeof(uint64_t));
        lat_cap = (size_t)(o_rate * o_duration * 1.2) + 1024;
        if (lat_cap > 20000000) lat_cap = 20000000;
        lat = xmalloc(lat_cap * sizeof *lat);
    }

    int tfd = -1;
    double tick = 0.001;
    if (mode_echo && o_rate > 0) {
        tick = 1.0 / o_rate;
        if (tick < 0.0001) tick = 0.0001;
        if (tick > 0.01) tick = 0.01;
    }
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec its = {.it_interval = {0, (long)(tick * 1e9)}, .it_value = {0, (long)(tick * 1e9)}};
    timerfd_settime(tfd, 0, &its, NULL);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = EV_TIMER};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    double t0 = now_s(), deadline = t0 + o_timeout;
    double cpu_conn_start = cpu_s();
    double t_conn_start = t0, t_conn_end = 0;
    int next_to_start = 0;
    int to_start_total = mode_fan ? o_subs : nconns; /* publisher connects after the subscribers */
    phase = 0;
    double rate_t0 = 0;
    uint64_t rate_sent = 0;
    int rr = 0;
    int stdin_watched = 0;
    int hold_printed = 0;
    double hold_deadline = 0;
    const char *end_reason = "duration";
    struct epoll_event evs[2048];

    for (;;) {
        double t = now_s();
        if (t >= deadline) {
            end_reason = "timeout";
            break;
        }
        /* keep at most o_concurrency connects/handshakes in flight */
        if (phase == 0) {
            uint64_t inflight = n_connect_started - n_open - n_failed;
            while (next_to_start < to_start_total && inflight < (uint64_t)o_concurrency) {
                start_connect(&conns[next_to_start++]);
                inflight++;
            }
            int done = next_to_start >= to_start_total && n_open + n_failed >= (uint64_t)to_start_total;
            if (done && mode_fan && pub->state == 255) {
                start_connect(pub);
                to_start_total = nconns;
                done = 0;
            }
            if (done) {
                t_conn_end = t;
                if (mode_conns) {
                    phase = 3;
                } else {
                    if (n_open == 0) die("no connection could be opened");
                    phase = 1;
                    t_phase = t;
                    if (mode_echo && o_rate <= 0) start_echo();
                    if (mode_echo && o_rate > 0) {
                        rate_t0 = t;
                        rate_sent = 0;
                    }
                    if (mode_fan) last_progress = t;
                }
            }
        }
        if (phase == 1 && mode_fan && oldest == 0) {
            /* warmup in fan-out starts only when every subscriber got something: a server
             * may register a subscription slightly after its 101 response */
            t_phase = t;
        }
        if (phase == 1 && t - t_phase >= o_warmup) {
            phase = 2;
            measuring = 1;
            msgs_measured = bytes_measured = 0;
            lat_n = 0;
            t_measure_start = t;
            cpu_measure_start = cpu_s();
            if (!mode_conns) { /* lets the harness sample the server's CPU time over the same window */
                printf("{\"event\":\"measuring\"}\n");
                fflush(stdout);
            }
        }
        if (phase == 2 && t - t_measure_start >= o_duration) break;
        if (phase == 2 && o_max_msgs && msgs_measured >= o_max_msgs) {
            end_reason = "max-msgs";
            break;
        }
        if (mode_conns && phase == 3) {
            if (!hold_printed) {
                double el = t_conn_end - t_conn_start;
                printf("{\"mode\":\"conns\",\"phase\":\"held\",\"requested\":%d,\"opened\":%llu,\"failed\":%llu,"
                       "\"seconds\":%.4f,\"handshakes_per_s\":%.1f,\"client_cpu\":%.3f}\n",
                       nconns, (unsigned long long)n_open, (unsigned long long)n_failed, el, el > 0 ? n_open / el : 0.0,
                       el > 0 ? (cpu_s() - cpu_conn_start) / el : 0.0);
                fflush(stdout);
                hold_printed = 1;
                hold_deadline = t + o_hold;
                struct epoll_event sev = {.events = EPOLLIN, .data.u32 = EV_STDIN};
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev) == 0) stdin_watched = 1;
            }
            if (t >= hold_deadline) {
                end_reason = "hold";
                break;
            }
        }
        if (mode_fan && phase >= 1) {
            if (pub->state != ST_OPEN) die("publisher connection lost");
            publish_some();
            /* a subscriber that lost messages could hold the window forever: after --stall-ms
             * (1 s) without progress, publish one more anyway (counted as stall_sends). Not
             * shorter: one W128 window to 5000 subscribers of 1 KiB is 640 MB, ~0.2 s here. */
            static uint64_t seen_oldest;
            if (oldest != seen_oldest) {
                seen_oldest = oldest;
                last_progress = t;
            } else if (t - last_progress > o_stall) {
                if (getenv("LOADGEN_DEBUG")) {
                    int at = 0;
                    conn_t *slow = NULL;
                    for (int i = 0; i < o_subs; i++)
                        if (conns[i].state == ST_OPEN && (uint64_t)conns[i].last_seq == oldest) {
                            at++;
                            if (!slow) slow = &conns[i];
                        }
                    fprintf(stderr, "stall: oldest=%llu pub_seq=%llu subs_at_oldest=%d pub_pending=%zu pub_state=%d",
                            (unsigned long long)oldest, (unsigned long long)pub_seq, at, pub->oblen - pub->oboff,
                            pub->state);
                    if (slow)
                        fprintf(stderr, " slow: recvd=%llu hdrneed=%d hdrlen=%d remaining=%llu want_out=%d",
                                (unsigned long long)slow->recvd, slow->hdrneed, slow->hdrlen,
                                (unsigned long long)slow->remaining, slow->want_out);
                    fprintf(stderr, "\n");
                }
                publish_one();
                flush_out(pub);
                stall_sends++;
                last_progress = t;
            }
        }

        int n = epoll_wait(epfd, evs, 2048, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait failed");
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == EV_TIMER) {
                uint64_t x;
                if (read(tfd, &x, 8) < 0) {
                }
                if (mode_echo && o_rate > 0 && phase >= 1) {
                    double tt = now_s();
                    uint64_t due = (uint64_t)((tt - rate_t0) * o_rate);
                    while (rate_sent < due) {
                        /* round-robin over open connections */
                        conn_t *c = NULL;
                        for (int tries = 0; tries < nconns; tries++) {
                            conn_t *cc = &conns[rr];
                            rr = (rr + 1) % nconns;
                            if (cc->state == ST_OPEN && cc->ts_head - cc->ts_tail < TS_RING) {
                                c = cc;
                                break;
                            }
                        }
                        rate_sent++;
                        if (!c) continue;
                        c->ts[c->ts_head % TS_RING] = now_ns();
                        c->ts_head++;
                        c->frames_pending++;
                        c->sent++;
                        if (c->frames_pending >= 1) flush_out(c);
                    }
                }
                continue;
            }
            if (id == EV_STDIN) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0) {
                    end_reason = "stdin";
                    goto out;
                }
                continue;
            }
            conn_t *c = &conns[id];
            if (c->state == ST_DEAD) continue;
            if (c->state == ST_CONNECTING) {
                if (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
                continue;
            }
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) handle_read(c);
            if (c->state != ST_DEAD && (evs[k].events & EPOLLOUT)) flush_out(c);
        }
        if (mode_fan && phase >= 1) publish_some();
    }
out:;
    double t_end = now_s();
    double measured = phase == 2 ? t_end - t_measure_start : 0.0;
    double cpu_frac = measured > 0 ? (cpu_s() - cpu_measure_start) / measured : 0.0;
    if (mode_conns) {
        printf("{\"mode\":\"conns\",\"phase\":\"done\",\"end\":\"%s\",\"open_at_end\":%llu,\"closed_by_server\":%llu}\n",
               end_reason, (unsigned long long)n_open, (unsigned long long)n_closed_by_server);
    } else {
        uint64_t bad = 0, sent = 0;
        for (int i = 0; i < nconns; i++) {
            bad += conns[i].bad_len;
            sent += conns[i].sent;
        }
        printf("{\"mode\":\"%s\",\"end\":\"%s\",\"conns\":%d,\"size\":%zu,\"window\":%d,\"text\":%d,\"opened\":%llu,"
               "\"failed\":%llu,\"closed_by_server\":%llu,\"connect_s\":%.4f,\"seconds\":%.4f,\"messages\":%llu,"
               "\"msgs_per_s\":%.1f,\"bytes_per_s\":%.1f,\"bad_len\":%llu,\"sent\":%llu,\"client_cpu\":%.3f",
               o_mode, end_reason, mode_fan ? o_subs : nconns, o_size, o_window, o_text && !mode_fan,
               (unsigned long long)(n_open), (unsigned long long)n_failed, (unsigned long long)n_closed_by_server,
               t_conn_end > 0 ? t_conn_end - t_conn_start : 0.0, measured, (unsigned long long)msgs_measured,
               measured > 0 ? msgs_measured / measured : 0.0, measured > 0 ? bytes_measured / measured : 0.0,
               (unsigned long long)bad, (unsigned long long)sent, cpu_frac);
        if (mode_fan)
            printf(",\"published\":%llu,\"slowest_seq\":%llu,\"stall_sends\":%llu,\"lost\":%llu,"
                   "\"deliveries_per_s\":%.1f",
                   (unsigned long long)pub_seq, (unsigned long long)oldest, (unsigned long long)stall_sends,
                   (unsigned long long)lost_measured,
                   measured > 0 ? msgs_measured / measured : 0.0);
        if (mode_echo && o_rate > 0) {
            printf(",\"rate\":%.1f", o_rate);
            print_latency();
        }
        printf("}\n");
    }
    fflush(stdout);
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != 255) kill_conn(&conns[i], 0);
    (void)stdin_watched;
    return 0;
}
