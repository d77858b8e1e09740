/* names.c - the store's names on disk (see names.h). */
#define _GNU_SOURCE
#include "names.h"

#include <fcntl.h>
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

bool names_can_version(const char *name)
{
	/* the longest suffix, ".~4294967295~", is 13 bytes; NAME_MAX is 255 (the test keeps
	 * one byte more than that needs) */
	return strlen(name) + 14 <= 255;
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

size_t names_mirror_unescaped_len(const char *c, size_t len)
{
	return ends_with_suffix(c, len) ? len - (sizeof(NAMES_MIRROR_SUFFIX) - 1) : len;
}

bool names_store_entry(const char *name)
{
	return !strcmp(name, STORE_MARKER) || !strcmp(name, STORE_STAGING);
}

bool names_write_flags(unsigned long flags)
{
	if (flags & O_PATH)
		return false;
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}
