/* json.c - the --json writer: one document per command, ends with a newline. */
#include "json.h"
#include "names.h"

#include <stdio.h>
#include <string.h>

#define MAXDEPTH 32

static int depth;
static bool need_comma[MAXDEPTH];
static bool after_key;

/* Before every value or key: a comma if a sibling came before it. */
static void sep(void)
{
	if (after_key) {
		after_key = false;
		return;
	}
	if (depth > 0 && need_comma[depth - 1])
		putchar(',');
	if (depth > 0)
		need_comma[depth - 1] = true;
}

static void open_(int c)
{
	sep();
	putchar(c);
	if (depth < MAXDEPTH)
		need_comma[depth] = false;
	depth++;
}

static void close_(int c)
{
	putchar(c);
	depth--;
	if (depth == 0)
		putchar('\n');
}

void json_obj(void)
{
	open_('{');
}

void json_obj_end(void)
{
	close_('}');
}

void json_arr(void)
{
	open_('[');
}

void json_arr_end(void)
{
	close_(']');
}

/* Names are bytes. Well-formed UTF-8 is written as is; every other byte 0xNN as \udcNN, a
 * lone low surrogate that no UTF-8 text can contain (Python's "surrogateescape": its
 * os.fsencode() gives the bytes back), so the output stays UTF-8 and no two names look the
 * same. binvfsctl(8), JSON OUTPUT. */
static void put_string(const char *s)
{
	/* written as a backslash and the letter below it */
	static const char escaped[] = "\"\\\n\t\r", escape[] = "\"\\ntr";

	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p >= 0x80) {
			int n = names_utf8_len(p);
			if (n) {
				fwrite(p, 1, (size_t)n, stdout);
				p += n - 1;
			} else {
				printf("\\udc%02x", *p);
			}
			continue;
		}
		const char *e = strchr(escaped, *p); /* *p is not 0 here */
		if (e) {
			putchar('\\');
			putchar(escape[e - escaped]);
		} else if (*p < 0x20 || *p == 0x7f) {
			printf("\\u%04x", *p);
		} else {
			putchar(*p);
		}
	}
	putchar('"');
}

void json_key(const char *k)
{
	sep();
	put_string(k);
	putchar(':');
	after_key = true;
}

void json_str(const char *s)
{
	if (!s) {
		json_null();
		return;
	}
	sep();
	put_string(s);
}

void json_int(long long v)
{
	sep();
	printf("%lld", v);
}

void json_bool(bool v)
{
	sep();
	fputs(v ? "true" : "false", stdout);
}

void json_null(void)
{
	sep();
	fputs("null", stdout);
}

void json_kstr(const char *k, const char *s)
{
	json_key(k);
	json_str(s);
}

void json_kint(const char *k, long long v)
{
	json_key(k);
	json_int(v);
}

void json_kbool(const char *k, bool v)
{
	json_key(k);
	json_bool(v);
}
