/* json.h - a streaming JSON writer to stdout for binvfsctl --json: values, arrays and objects
 * nest; commas and string escapes are handled here. */
#ifndef BINVFSCTL_JSON_H
#define BINVFSCTL_JSON_H

#include <stdbool.h>

void json_obj(void);	 /* { */
void json_obj_end(void); /* } */
void json_arr(void);	 /* [ */
void json_arr_end(void); /* ] */
void json_key(const char *k);
void json_str(const char *s); /* null when s is NULL */
void json_int(long long v);
void json_bool(bool v);
void json_null(void);

/* key and value in one call */
void json_kstr(const char *k, const char *s);
void json_kint(const char *k, long long v);
void json_kbool(const char *k, bool v);

#endif
