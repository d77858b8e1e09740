/* names.c - the store's names on disk (see names.h). */
#define _GNU_SOURCE
#include "names.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t names_version_parse(const char *entry, size_t *namelen)
{
	size_t len = strlen(entry);
	const char *p;
	uint64_t n = 0;

	if (len < 5 || entry[len - 1] != '~')
		return 0;
	for (p = entry + len - 2; p > entry && *p >= '0' && *p <= '9'; p--)
		;
	/* p at the '~' before the digits; it must follow a '.', after a non-empty name */
	if (p - entry < 2 || *p != '~' || p[-1] != '.' || p[1] == '0' || p + 1 == entry + len - 1)
		return 0;
	for (const char *q = p + 1; q < entry + len - 1; q++) {
		n = n * 10 + (uint64_t)(*q - '0');
		if (n > UINT32_MAX)
			return 0;
	}
	*namelen = (size_t)(p - 1 - entry);
	return (uint32_t)n;
}

uint32_t names_version_of(const char *entry, const char *name)
{
	size_t nlen;
	uint32_t n = names_version_parse(entry, &nlen);

	return n && nlen == strlen(name) && !strncmp(entry, name, nlen) ? n : 0;
}

_Static_assert(NAMES_RECORD_MAX == NAMES_STORED_MAX + sizeof(NAMES_MIRROR_SUFFIX) - 1,
	       "NAMES_RECORD_MAX");

/* ".~~" and 16 hex digits end a shortened stored name */
#define SHORT_TAIL (sizeof(NAMES_MIRROR_SUFFIX) - 1 + 16)

bool names_is_shortened(const char *s, size_t len)
{
	if (len <= SHORT_TAIL || strncmp(s + len - SHORT_TAIL, NAMES_MIRROR_SUFFIX,
					 sizeof(NAMES_MIRROR_SUFFIX) - 1) != 0)
		return false;
	for (const char *p = s + len - 16; p < s + len; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

bool names_stored(const char *name, char out[NAMES_STORED_MAX + 1])
{
	static const char hex[] = "0123456789abcdef";
	size_t len = strlen(name), keep = NAMES_STORED_MAX - SHORT_TAIL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	/* the longest version suffix, ".~4294967295~", is 13 bytes: NAME_MAX (255) - 13 - 1 */
	if (len <= NAMES_STORED_MAX && !names_is_shortened(name, len)) {
		memcpy(out, name, len + 1);
		return false;
	}
	if (keep > len)
		keep = len;
	/* do not end inside a UTF-8 character (at most 3 continuation bytes to drop) */
	for (int i = 0; i < 3 && keep > 1 && ((unsigned char)name[keep] & 0xc0) == 0x80; i++)
		keep--;
	if (!EVP_Digest(name, len, md, &mdlen, EVP_sha256(), NULL) || mdlen < 8)
		memset(md, 0, 8); /* (cannot fail with the default provider) */
	memcpy(out, name, keep);
	memcpy(out + keep, NAMES_MIRROR_SUFFIX, sizeof(NAMES_MIRROR_SUFFIX) - 1);
	keep += sizeof(NAMES_MIRROR_SUFFIX) - 1;
	for (int i = 0; i < 8; i++) {
		out[keep++] = hex[md[i] >> 4];
		out[keep++] = hex[md[i] & 15];
	}
	out[keep] = 0;
	return true;
}

bool names_is_record(const char *entry, size_t *stored_len)
{
	size_t len = strlen(entry), sl = sizeof(NAMES_MIRROR_SUFFIX) - 1;

	if (len <= sl || strcmp(entry + len - sl, NAMES_MIRROR_SUFFIX) != 0 ||
	    !names_is_shortened(entry, len - sl))
		return false;
	*stored_len = len - sl;
	return true;
}

void names_record_of(const char *stored, size_t len, char out[NAMES_RECORD_MAX + 1])
{
	if (len > NAMES_STORED_MAX)
		len = NAMES_STORED_MAX;
	snprintf(out, NAMES_RECORD_MAX + 1, "%.*s" NAMES_MIRROR_SUFFIX, (int)len, stored);
}

static bool ends_with_suffix(const char *c, size_t len)
{
	size_t sl = sizeof(NAMES_MIRROR_SUFFIX) - 1;

	return len >= sl && !strncmp(c + len - sl, NAMES_MIRROR_SUFFIX, sl);
}

bool names_mirror_escaped(const char *name)
{
	size_t dummy;

	return names_version_parse(name, &dummy) || names_store_entry(name) ||
	       ends_with_suffix(name, strlen(name));
}

const char *names_mirror(const char *name, char *buf, size_t len)
{
	if (!names_mirror_escaped(name))
		return name;
	if (strlen(name) + sizeof(NAMES_MIRROR_SUFFIX) > len)
		return NULL;
	snprintf(buf, len, "%s" NAMES_MIRROR_SUFFIX, name);
	return buf;
}

size_t names_mirror_unescaped_len(const char *c, size_t len)
{
	return ends_with_suffix(c, len) ? len - (sizeof(NAMES_MIRROR_SUFFIX) - 1) : len;
}

bool names_aside(const char *mirror, long long t, unsigned n, char *out, size_t len)
{
	size_t keep = strlen(mirror);
	int r;

	if (keep > 200) {
		keep = 200;
		/* do not end inside a UTF-8 character */
		for (int i = 0; i < 3 && keep > 1 && ((unsigned char)mirror[keep] & 0xc0) == 0x80;
		     i++)
			keep--;
	}
	r = snprintf(out, len, "%.*s" NAMES_ASIDE_TAG "%lld-%u" NAMES_MIRROR_SUFFIX, (int)keep,
		     mirror, t, n);
	return r > 0 && (size_t)r < len && r <= 255;
}

/* "<anything>.~gone-<digits>-<digits>.~~" */
bool names_is_aside(const char *entry)
{
	size_t len = strlen(entry), sl = sizeof(NAMES_MIRROR_SUFFIX) - 1;
	const char *p, *tag;
	int dashes = 0;

	if (!ends_with_suffix(entry, len))
		return false;
	for (tag = NULL, p = strstr(entry, NAMES_ASIDE_TAG); p; p = strstr(p + 1, NAMES_ASIDE_TAG))
		tag = p;
	if (!tag)
		return false;
	p = tag + sizeof(NAMES_ASIDE_TAG) - 1;
	if (p >= entry + len - sl || *p < '0' || *p > '9')
		return false;
	for (; p < entry + len - sl; p++) {
		if (*p == '-' && p[-1] >= '0' && p[-1] <= '9' && !dashes)
			dashes++;
		else if (*p < '0' || *p > '9')
			return false;
	}
	return dashes == 1 && p[-1] >= '0' && p[-1] <= '9';
}

bool names_store_entry(const char *name)
{
	return !strcmp(name, STORE_MARKER) || !strcmp(name, STORE_STAGING) ||
	       !strcmp(name, STORE_NODEIDS) || !strcmp(name, STORE_RELEASES);
}

bool names_write_flags(unsigned long flags)
{
	if (flags & O_PATH)
		return false;
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

int names_utf8_len(const unsigned char *p)
{
	unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
	int n;

	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	if (p[0] == 0xe0)
		lo = 0xa0;
	else if (p[0] == 0xed)
		hi = 0x9f;
	else if (p[0] == 0xf0)
		lo = 0x90;
	else if (p[0] == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (int i = 2; i < n; i++) /* stops at the NUL of a string cut short */
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

char *names_escape(const char *s, const char *named, const char *letter)
{
	static const char hex[] = "0123456789abcdef";
	char *out = malloc(4 * strlen(s) + 1), *o = out;

	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p;) {
		int n = *p >= 0x80 ? names_utf8_len(p) : 1;
		const char *k = strchr(named, *p);		 /* *p is not 0 here */
		bool c1 = n == 2 && p[0] == 0xc2 && p[1] < 0xa0; /* U+0080-U+009F: CSI and co. */
		if (k) {
			*o++ = '\\';
			*o++ = letter[k - named];
			p++;
		} else if (n == 1 && *p >= 0x20 && *p != 0x7f) {
			*o++ = (char)*p++;
		} else if (n > 1 && !c1) {
			memcpy(o, p, (size_t)n);
			o += n;
			p += n;
		} else {
			/* a control byte, each byte of a C1 control, or a byte of no character */
			for (int i = 0; i < (n ? n : 1); i++, p++) {
				*o++ = '\\';
				*o++ = 'x';
				*o++ = hex[*p >> 4];
				*o++ = hex[*p & 15];
			}
		}
	}
	*o = 0;
	return out;
}
