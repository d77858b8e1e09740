/* versions.c - the .versions/ view: reachable by name at the mount root, hidden from its
 * listing, read-only, and backed directly by the store's .versions/ directory. */
#define _GNU_SOURCE
#include "versions.h"
#include "fs.h"
#include "inval.h"

#include "log.h"

#include <errno.h>
#include <string.h>

/* Every refused change gets one log line. Returns -EROFS. */
int versions_refuse(const char *op, const char *name)
{
	log_info("refused %s %s: .versions/ is read-only", op, name ? name : "(by handle)");
	return -EROFS;
}

bool versions_is_view_root(struct node *parent, const char *name)
{
	return parent == node_root() && !strcmp(name, STORE_DIR);
}

/* The store's own entries never show in the view, but for the history of releases (read by
 * binvfsctl releases; each record readable as its directory is). */
bool versions_hidden(struct node *dir, const char *name)
{
	return dir->in_versions && dir->ino == fs.view_ino && dir->dev == fs.view_dev &&
	       names_store_entry(name) && strcmp(name, STORE_RELEASES);
}

/* Nothing in the view can change, and an old version is read-only wherever it is reached. */
bool versions_readonly(struct node *n)
{
	return n->in_versions || (n->kind == NODE_FILE && node_old(n));
}

/* A file was replaced or removed and kept as a version: its node turns read-only unless it
 * is still linked at another tree name. */
void versions_after_change(const struct store_change *ch)
{
	uint64_t ids[2];

	if (!ch->kept)
		return;
	if (ch->old.st_nlink == 1)
		node_mark_old(ch->old.st_dev, ch->old.st_ino, true);
	/* It has one name in the tree less. A publish renames behind the kernel's back, and the
	 * kernel keeps a version's attributes for a day: if the inode keeps another name (a hard
	 * link), drop them (not its pages), so that name shows its new link count (links.c). An
	 * inode that had one name still counts it for whoever holds it from before (a reader, a
	 * stat() in flight), as after an in-place write: node.replaced, design.md §3. */
	for (int i = ch->old.st_nlink >= 2 ? node_known(ch->old.st_dev, ch->old.st_ino, ids) : 0;
	     i-- > 0;)
		inval_attrs(ids[i]);
}
