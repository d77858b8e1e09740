/* sha256.h - a small SHA-256 (FIPS 180-4) for binvfsctl; no external crypto library. */
#ifndef BINVFSCTL_SHA256_H
#define BINVFSCTL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32
#define SHA256_HEX (2 * SHA256_LEN + 1)

struct sha256 {
	uint32_t h[8];
	uint64_t len; /* bytes hashed so far */
	unsigned char buf[64];
	size_t fill;
};

void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t len);
void sha256_final(struct sha256 *c, unsigned char out[SHA256_LEN]);
void sha256_hex(const unsigned char d[SHA256_LEN], char out[SHA256_HEX]);
/* Hash everything readable from fd (from its current offset); 0 or -errno. */
int sha256_fd(int fd, char out[SHA256_HEX]);

#endif
