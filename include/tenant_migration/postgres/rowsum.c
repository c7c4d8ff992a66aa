/*
 * tm-rowsum: an order-independent checksum of a PostgreSQL binary COPY stream, computed in
 * passing (--tee) or at the end of a pipe.
 *
 * Why C: the chunk copier keeps Python out of the byte path (a Python loop over COPY blocks costs
 * ~1.4x the raw psql pipe), and the checksum must be computed from the very bytes the target
 * loads, so that the source is read ONCE per chunk (a second checksum query on the replica cost
 * ~35 % of the copy). rowsum.py holds the reference implementation in Python (same algorithm,
 * used when no C compiler is available, and by the unit tests to pin this one).
 *
 * Algorithm (keep in step with rowsum.py): for each tuple, the bytes from its 16-bit field count
 * through its last field (lengths included, so NULL and '' differ) are hashed with
 *   h = SEED ^ (len * K1); per 8-byte little-endian word w (the last one zero-padded):
 *   h ^= w; h *= K2; h ^= h >> 29;   then the splitmix64 finaliser of h.
 * The stream's checksum is "<rows>:<sum of row hashes mod 2^64, 16 hex digits>": equal multisets
 * of rows give equal sums whatever their order.
 *
 * Usage: tm-rowsum [--tee] [--out FILE]
 *   --tee   copy stdin to stdout unchanged while hashing (a broken stdout is an error)
 *   --out   where "<rows>:<sum> <bytes>\n" goes at the end (default: stdout; required with --tee)
 * Exit status: 0 ok, 2 usage, 3 malformed or truncated stream, 4 I/O error.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEED 0x9E3779B97F4A7C15ULL
#define K1 0xC2B2AE3D27D4EB4FULL
#define K2 0x9FB21C651E98DF25ULL
#define CHUNK (1 << 20)

static const unsigned char SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};

static uint64_t row_hash(const unsigned char *p, size_t n) {
    uint64_t h = SEED ^ ((uint64_t)n * K1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8); /* little-endian machines only: checked in main() */
        h ^= w;
        h *= K2;
        h ^= h >> 29;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, p + i, n - i);
        h ^= w;
        h *= K2;
        h ^= h >> 29;
    }
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    h ^= h >> 31;
    return h;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fail(int code, const char *what) {
    fprintf(stderr, "tm-rowsum: %s\n", what);
    return code;
}

int main(int argc, char **argv) {
    int tee = 0;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tee") == 0) tee = 1;
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = argv[++i];
        else return fail(2, "usage: tm-rowsum [--tee] [--out FILE]");
    }
    if (tee && out == NULL) return fail(2, "--tee needs --out");
    {
        uint16_t probe = 1;
        if (*(unsigned char *)&probe != 1) return fail(2, "big-endian machines are not supported");
    }
    signal(SIGPIPE, SIG_IGN);

    size_t cap = 4 * CHUNK, len = 0, pos = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return fail(4, "out of memory");
    uint64_t rows = 0, sum = 0, total = 0;
    int header_done = 0, trailer = 0;

    for (;;) {
        if (pos == len) pos = len = 0;
        if (cap - len < CHUNK) {
            /* Move the unparsed tail to the front, grow only for a tuple larger than the buffer. */
            if (pos > 0) {
                memmove(buf, buf + pos, len - pos);
                len -= pos;
                pos = 0;
            }
            if (cap - len < CHUNK) {
                cap *= 2;
                unsigned char *grown = realloc(buf, cap);
                if (!grown) return fail(4, "out of memory");
                buf = grown;
            }
        }
        ssize_t r = read(0, buf + len, CHUNK);
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail(4, "read error");
        }
        if (r == 0) break;
        if (tee && write_all(1, buf + len, (size_t)r) != 0) return fail(4, "write error (reader gone)");
        len += (size_t)r;
        total += (uint64_t)r;

        if (!header_done) {
            if (len - pos < 19) continue;
            if (memcmp(buf + pos, SIGNATURE, 11) != 0) return fail(3, "not a binary COPY stream");
            uint32_t ext = be32(buf + pos + 15);
            if (len - pos < 19 + (size_t)ext) continue;
            pos += 19 + ext;
            header_done = 1;
        }
        while (!trailer && len - pos >= 2) {
            int16_t nfields = (int16_t)((buf[pos] << 8) | buf[pos + 1]);
            if (nfields == -1) {
                trailer = 1;
                pos += 2;
                break;
            }
            if (nfields < 0) return fail(3, "malformed tuple header");
            size_t end = pos + 2;
            int complete = 1;
            for (int f = 0; f < nfields; f++) {
                if (len - end < 4) { complete = 0; break; }
                int32_t flen = (int32_t)be32(buf + end);
                end += 4;
                if (flen < -1) return fail(3, "malformed field length");
                if (flen > 0) {
                    if (len - end < (size_t)flen) { complete = 0; break; }
                    end += (size_t)flen;
                }
            }
            if (!complete) break;
            sum += row_hash(buf + pos, end - pos);
            rows++;
            pos = end;
        }
        if (trailer && len - pos > 0) return fail(3, "data after the trailer");
    }
    if (!header_done || !trailer) return fail(3, "truncated stream (no trailer)");

    FILE *fh = out ? fopen(out, "w") : stdout;
    if (!fh) return fail(4, "cannot open --out");
    fprintf(fh, "%llu:%016llx %llu\n", (unsigned long long)rows, (unsigned long long)sum,
            (unsigned long long)total);
    if (fclose(fh) != 0) return fail(4, "cannot write --out");
    return 0;
}
