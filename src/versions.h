/* versions.h - the read-only .versions/ view (versions.c). */
#ifndef BINVFS_VERSIONS_H
#define BINVFS_VERSIONS_H

#include <stdbool.h>

struct node;
struct store_change;

bool versions_is_view_root(struct node *parent, const char *name);
bool versions_hidden(struct node *dir, const char *name);
bool versions_readonly(struct node *n);
int versions_refuse(const char *op, const char *name);
void versions_after_change(const struct store_change *ch);

#endif
