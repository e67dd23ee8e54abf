/*
 * checksum.c - a small C library for taskfleet's native examples and tests.
 *
 * Every exported function is declared in examples/native/workers.py; the calling conventions are
 * the ones taskfleet.native understands:
 *
 *   - plain values in, a plain value out              (tf_crc32, tf_count_primes)
 *   - "status" functions: return 0 on success, a non-zero code on failure, and write a message
 *     into the caller's (char *err, size_t errlen) buffer   (tf_checksum)
 *
 * The two functions named tf_test_aid_* exist only so tests can prove that the pool survives a
 * crash and enforces hard time limits inside native code. Never call them in a real worker.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Status codes of tf_checksum. Code 1 is a caller error (retrying cannot help). */
enum { TF_OK = 0, TF_UNKNOWN_ALGORITHM = 1, TF_OUTPUT_TOO_SMALL = 2 };

static uint32_t crc_table[256];

/* Built when the library is loaded, so concurrent callers never race on a lazy initialisation. */
__attribute__((constructor)) static void build_crc_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[n] = c;
    }
}

/* CRC-32 (IEEE 802.3, the one zlib.crc32 computes) of len bytes at data. */
uint32_t tf_crc32(const uint8_t *data, size_t len) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        c = crc_table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

/* Adler-32 (zlib.adler32) of len bytes at data. */
uint32_t tf_adler32(const uint8_t *data, size_t len) {
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < len; i++) {
        a = (a + data[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return (b << 16) | a;
}

static void put_error(char *err, size_t errlen, const char *message) {
    if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s", message);
    }
}

/*
 * Checksum of data by algorithm name ("crc32" or "adler32"), written big-endian into out.
 * Returns TF_OK, or an error code with a message in err.
 */
int tf_checksum(const char *algorithm, const uint8_t *data, size_t len, uint8_t *out,
                size_t outlen, char *err, size_t errlen) {
    uint32_t value;
    if (strcmp(algorithm, "crc32") == 0) {
        value = tf_crc32(data, len);
    } else if (strcmp(algorithm, "adler32") == 0) {
        value = tf_adler32(data, len);
    } else {
        char message[128];
        snprintf(message, sizeof message, "unknown algorithm '%.60s' (crc32, adler32)", algorithm);
        put_error(err, errlen, message);
        return TF_UNKNOWN_ALGORITHM;
    }
    if (outlen < 4) {
        put_error(err, errlen, "output buffer needs 4 bytes");
        return TF_OUTPUT_TOO_SMALL;
    }
    out[0] = (uint8_t)(value >> 24);
    out[1] = (uint8_t)(value >> 16);
    out[2] = (uint8_t)(value >> 8);
    out[3] = (uint8_t)value;
    return TF_OK;
}

/* Number of primes <= n by trial division: deliberately CPU-bound, for benchmarks and demos. */
uint64_t tf_count_primes(uint64_t n) {
    uint64_t count = 0;
    for (uint64_t candidate = 2; candidate <= n; candidate++) {
        int prime = 1;
        for (uint64_t d = 2; d * d <= candidate; d++) {
            if (candidate % d == 0) {
                prime = 0;
                break;
            }
        }
        count += (uint64_t)prime;
    }
    return count;
}

/* A version string owned by the library (callers copy it, never free it). */
const char *tf_checksum_version(void) { return "taskfleet-checksum 1.0"; }

/* ---- test aids: never call these in a real worker ------------------------------------------ */

/* Dies with SIGSEGV by writing to address 0. Both the pointer and the store are volatile: with
 * either one plain, the optimiser may drop the store as undefined behaviour or turn it into a
 * trap instruction (SIGILL), and the tests want a real segfault. */
void tf_test_aid_segfault(void) {
    volatile int *volatile nowhere = NULL;
    *nowhere = 42;
}

/* Never returns (and keeps a CPU busy), like a native loop that hangs: only a hard time limit,
 * which kills the process, can stop it. */
void tf_test_aid_spin_forever(void) {
    volatile uint64_t spins = 0;
    for (;;) {
        spins++;
    }
}
