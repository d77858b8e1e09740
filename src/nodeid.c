/* nodeid.c - the nodeids of nodes, and what a forgotten nodeid still names.
 *
 * The kernel puts a node's nodeid and generation in the file handles it makes inside the mount
 * (name_to_handle_at), and open_by_handle_at of a nodeid it no longer caches sends LOOKUP of
 * (nodeid, "."). Such a nodeid comes from user space and is never trusted: it is an index into
 * a table of slots plus the slot's generation, (gen << 32) | index, so an unknown, stale or
 * forged one is recognised without touching memory it might name. The root is 1.
 *
 * When a node is freed (its FORGET), its slot keeps the backing object's file handle: a LOOKUP
 * "." of that nodeid reopens the object by handle and makes its node again with the same
 * nodeid (export.c), and a LOOKUP by name of the same object gets that nodeid
 * back too (nodeid_attach). At most MAX_KEPT slots are kept so, oldest given up first; a slot
 * given up is reused for another object with the next generation, which the kernel compares
 * with the handle's (ESTALE). Generations start at a random value per daemon, so a handle made
 * under an earlier mount is stale here rather than naming whatever now has its index; unless
 * that mount stopped cleanly and left its table (nodeid_table_build), which this one took
 * (nodeid_table_take): then its slots are forgotten ones here, and its handles find their
 * objects. docs/design.md §3, docs/format.md "The nodeid table". */
#define _GNU_SOURCE
#include "nodeid.h"
#include "log.h"
#include "names.h"
#include "node.h"
#include "nodefd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BITS   12
#define CHUNK_SLOTS  (1u << CHUNK_BITS)
#define MAX_CHUNKS   (1u << 16) /* 2^28 nodeids live or kept at once */
#define MAX_KEPT     (1u << 16) /* forgotten nodeids that keep their object's handle */
#define KEPT_BUCKETS (1u << 16)
#define FIRST	     2 /* index 0 is no nodeid, 1 the root */

struct slot {
	struct node *live;   /* atomic: the node that has the nodeid, NULL if none */
	uint32_t gen;	     /* atomic: the generation of the object that has or had it */
	uint32_t next, prev; /* the free list (next), or the list of kept slots */
	uint32_t hnext;	     /* kept: chain of kept[] */
	bool kept;	     /* forgotten, fh finds the object again */
	bool in_versions;    /* a directory of the .versions/ view */
	uint8_t kind;	     /* the node's kind (enum node_kind) */
	dev_t dev;
	ino_t ino;
	struct file_handle *fh; /* the object's handle on the backing filesystem, or NULL */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* under the node table's lock */
static struct slot *chunks[MAX_CHUNKS];			 /* set once each (atomic), never moved */
static struct node *root;
static uint32_t used = FIRST;	      /* indexes below have been handed out */
static uint32_t free_head, free_tail; /* slots to reuse, oldest freed first */
static uint32_t kept_head, kept_tail; /* kept slots, oldest forgotten first */
static unsigned nkept;
static uint32_t *kept;	   /* KEPT_BUCKETS chains by (dev, ino) */
static uint32_t gen_first; /* a new slot's first generation: random per daemon, so a handle
			    * from an earlier mount does not name an object of this one */

static struct slot *slot_of(uint32_t idx)
{
	struct slot *c;

	if (idx < FIRST || (idx >> CHUNK_BITS) >= MAX_CHUNKS)
		return NULL;
	c = __atomic_load_n(&chunks[idx >> CHUNK_BITS], __ATOMIC_ACQUIRE);
	return c ? &c[idx & (CHUNK_SLOTS - 1)] : NULL;
}

static uint32_t bucket(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev;
	return (uint32_t)(h ^ (h >> 32)) & (KEPT_BUCKETS - 1);
}

void nodeid_init(struct node *r)
{
	kept = calloc(KEPT_BUCKETS, sizeof(*kept));
	if (!kept)
		fatal("nodeid table");
	root = r;
	if (getrandom(&gen_first, sizeof(gen_first), 0) != sizeof(gen_first))
		gen_first = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 16;
	if (!gen_first)
		gen_first = 1;
}

void nodeid_destroy(void)
{
	for (uint32_t i = 0; i < MAX_CHUNKS; i++) {
		if (!chunks[i])
			continue; /* (a table taken at mount can have gaps) */
		for (uint32_t j = 0; j < CHUNK_SLOTS; j++)
			free(chunks[i][j].fh);
		free(chunks[i]);
		chunks[i] = NULL;
	}
	free(kept);
	kept = NULL;
	used = FIRST;
	free_head = free_tail = kept_head = kept_tail = 0;
	nkept = 0;
}

/* The slot, and the id's generation matches; lock held or the id is the kernel's. */
static struct slot *slot_of_id(uint64_t id)
{
	struct slot *s = slot_of((uint32_t)id);

	return s && __atomic_load_n(&s->gen, __ATOMIC_ACQUIRE) == nodeid_gen(id) ? s : NULL;
}

struct node *nodeid_node(uint64_t id)
{
	struct slot *s;

	if (id == NODEID_ROOT)
		return root;
	s = slot_of_id(id);
	return s ? __atomic_load_n(&s->live, __ATOMIC_ACQUIRE) : NULL;
}

/* Slot idx goes at the end of the list head..tail (the kept list, or the free list). */
static void append(uint32_t *head, uint32_t *tail, uint32_t idx)
{
	struct slot *s = slot_of(idx);

	s->prev = *tail;
	s->next = 0;
	if (*tail)
		slot_of(*tail)->next = idx;
	else
		*head = idx;
	*tail = idx;
}

/* Slot idx (its dev, ino set) is kept, newest: appended to the list, chained in kept[]. */
static void keep(uint32_t idx)
{
	struct slot *s = slot_of(idx);

	s->kept = true;
	append(&kept_head, &kept_tail, idx);
	s->hnext = kept[bucket(s->dev, s->ino)];
	kept[bucket(s->dev, s->ino)] = idx;
	nkept++;
}

static void unkeep(uint32_t idx)
{
	struct slot *s = slot_of(idx);

	for (uint32_t *p = &kept[bucket(s->dev, s->ino)]; *p; p = &slot_of(*p)->hnext) {
		if (*p == idx) {
			*p = s->hnext;
			break;
		}
	}
	if (s->prev)
		slot_of(s->prev)->next = s->next;
	else
		kept_head = s->next;
	if (s->next)
		slot_of(s->next)->prev = s->prev;
	else
		kept_tail = s->prev;
	s->kept = false;
	s->next = s->prev = s->hnext = 0;
	nkept--;
}

static void release_slot(uint32_t idx)
{
	struct slot *s = slot_of(idx);

	free(s->fh);
	s->fh = NULL;
	append(&free_head, &free_tail, idx);
}

static uint32_t new_slot(void)
{
	uint32_t idx = free_head;
	struct slot *s;

	if (idx) {
		s = slot_of(idx);
		free_head = s->next;
		if (!free_head)
			free_tail = 0;
		s->next = s->prev = 0;
		/* another object: a handle of the old one fails the kernel's generation check */
		uint32_t gen = s->gen + 1 ? s->gen + 1 : 1;
		__atomic_store_n(&s->gen, gen, __ATOMIC_RELEASE);
		return idx;
	}
	if ((used >> CHUNK_BITS) >= MAX_CHUNKS)
		return 0;
	if (!chunks[used >> CHUNK_BITS]) {
		struct slot *c = calloc(CHUNK_SLOTS, sizeof(*c));
		if (!c)
			return 0;
		__atomic_store_n(&chunks[used >> CHUNK_BITS], c, __ATOMIC_RELEASE);
	}
	s = slot_of(used);
	__atomic_store_n(&s->gen, gen_first, __ATOMIC_RELEASE);
	return used++;
}

static struct file_handle *copy_handle(const struct file_handle *fh)
{
	struct file_handle *c = malloc(sizeof(*c) + fh->handle_bytes);

	if (c)
		memcpy(c, fh, sizeof(*c) + fh->handle_bytes);
	return c;
}

bool nodeid_attach(struct node *n, const struct file_handle *fh)
{
	uint32_t idx = 0;
	struct slot *s;

	pthread_mutex_lock(&lock);
	if (fh && n->kind != NODE_STAGING) {
		for (uint32_t k = kept[bucket(n->dev, n->ino)]; k; k = slot_of(k)->hnext) {
			s = slot_of(k);
			if (s->dev != n->dev || s->ino != n->ino)
				continue;
			unkeep(k);
			if (nodefd_same(s->fh, fh))
				idx = k; /* the same object, forgotten: its nodeid again */
			else
				release_slot(k); /* its inode number was reused behind us */
			break;
		}
	}
	if (!idx) {
		struct file_handle *c = fh && n->kind != NODE_STAGING ? copy_handle(fh) : NULL;
		if ((fh && n->kind != NODE_STAGING && !c) || !(idx = new_slot())) {
			pthread_mutex_unlock(&lock);
			free(c);
			return false;
		}
		slot_of(idx)->fh = c;
	}
	s = slot_of(idx);
	s->dev = n->dev;
	s->ino = n->ino;
	s->in_versions = n->in_versions;
	s->kind = (uint8_t)n->kind;
	n->id = (uint64_t)s->gen << 32 | idx;
	__atomic_store_n(&s->live, n, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&lock);
	return true;
}

void nodeid_detach(struct node *n)
{
	uint32_t idx = (uint32_t)n->id;
	struct slot *s;

	if (!n->id || n == root)
		return;
	pthread_mutex_lock(&lock);
	s = slot_of(idx);
	__atomic_store_n(&s->live, NULL, __ATOMIC_RELEASE);
	if (s->fh) {
		keep(idx);
		if (nkept > MAX_KEPT) {
			uint32_t old = kept_head;
			unkeep(old);
			release_slot(old);
		}
	} else {
		release_slot(idx);
	}
	pthread_mutex_unlock(&lock);
	n->id = 0;
}

struct file_handle *nodeid_forgotten(uint64_t id, bool *in_versions, int *kind)
{
	struct file_handle *fh = NULL;
	struct slot *s;

	pthread_mutex_lock(&lock);
	s = id == NODEID_ROOT ? NULL : slot_of_id(id);
	if (s && s->kept && !s->live) {
		fh = copy_handle(s->fh);
		*in_versions = s->in_versions;
		*kind = s->kind;
	}
	pthread_mutex_unlock(&lock);
	return fh;
}

void nodeid_drop(uint64_t id)
{
	struct slot *s;

	pthread_mutex_lock(&lock);
	s = id == NODEID_ROOT ? NULL : slot_of_id(id);
	if (s && s->kept && !s->live) {
		unkeep((uint32_t)id);
		release_slot((uint32_t)id);
	}
	pthread_mutex_unlock(&lock);
}

/* The table a clean stop leaves for the next mount (docs/format.md, "The nodeid table"), all
 * numbers little-endian: NODEIDS_MAGIC; SOURCE's identity: u64 f_fsid of its filesystem, u32
 * type and u32 length of SOURCE's own file handle, its bytes; u32 count (at most MAX_KEPT);
 * count records of u32 index, u32 generation, u64 inode number, u8 kind ('d', 'f', 'o'), u8
 * flags (1: a directory of the view), u32 type and u32 length (1 to MAX_HANDLE_SZ) of the
 * object's handle, its bytes; then the SHA-256 of everything before. Only objects on SOURCE's
 * own filesystem are written (their handles are opened relative to SOURCE). */
#define REC_FIXED (4 + 4 + 8 + 1 + 1 + 4 + 4)
#define SUM_LEN	  32
#define MAGIC_LEN (sizeof(NODEIDS_MAGIC) - 1)
#define HEAD_MAX  (MAGIC_LEN + 8 + 4 + 4 + MAX_HANDLE_SZ + 4)
#define TABLE_MAX (HEAD_MAX + (size_t)MAX_KEPT * (REC_FIXED + MAX_HANDLE_SZ) + SUM_LEN)
#define FLAG_VIEW 1u

struct wbuf {
	unsigned char *p;
	size_t len;
};

static void put(struct wbuf *b, const void *v, size_t n)
{
	memcpy(b->p + b->len, v, n);
	b->len += n;
}

static void put32(struct wbuf *b, uint32_t v)
{
	unsigned char c[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
			      (unsigned char)(v >> 24)};
	put(b, c, 4);
}

static void put64(struct wbuf *b, uint64_t v)
{
	put32(b, (uint32_t)v);
	put32(b, (uint32_t)(v >> 32));
}

static void put_handle(struct wbuf *b, const struct file_handle *fh)
{
	put32(b, (uint32_t)fh->handle_type);
	put32(b, fh->handle_bytes);
	put(b, fh->f_handle, fh->handle_bytes);
}

struct rbuf {
	const unsigned char *p;
	size_t len, off;
	bool short_;
};

static void get(struct rbuf *r, void *out, size_t n)
{
	if (r->len - r->off < n) {
		r->short_ = true;
		r->off = r->len;
		memset(out, 0, n);
		return;
	}
	memcpy(out, r->p + r->off, n);
	r->off += n;
}

static uint32_t get32(struct rbuf *r)
{
	unsigned char c[4];

	get(r, c, 4);
	return (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
}

static uint64_t get64(struct rbuf *r)
{
	uint64_t lo = get32(r);

	return lo | (uint64_t)get32(r) << 32;
}

/* A handle read from the table (malloc'd), NULL if its length is out of range or the table
 * ends inside it. */
static struct file_handle *get_handle(struct rbuf *r)
{
	uint32_t type = get32(r), len = get32(r);
	struct file_handle *fh;

	if (r->short_ || !len || len > MAX_HANDLE_SZ || r->len - r->off < len ||
	    !(fh = malloc(sizeof(*fh) + len)))
		return NULL;
	fh->handle_type = (int)type;
	fh->handle_bytes = len;
	get(r, fh->f_handle, len);
	return fh;
}

/* SOURCE's identity: its filesystem's f_fsid and its own handle (malloc'd). */
static struct file_handle *source_id(int rootfd, uint64_t *fsid)
{
	struct statfs sf;
	uint32_t v[2];

	if (fstatfs(rootfd, &sf) < 0)
		return NULL;
	memcpy(v, &sf.f_fsid, sizeof(v));
	*fsid = (uint64_t)v[0] | (uint64_t)v[1] << 32;
	return nodefd_handle(rootfd);
}

static const char kind_chars[] = {[NODE_DIR] = 'd', [NODE_FILE] = 'f', [NODE_OTHER] = 'o'};

/* Is slot s one to write: it keeps a handle of an object on SOURCE's filesystem? */
static bool saved(const struct slot *s, dev_t dev)
{
	return s->fh && s->dev == dev && s->kind <= NODE_OTHER && (s->kept || s->live);
}

static void save_slot(struct wbuf *b, uint32_t idx)
{
	const struct slot *s = slot_of(idx);

	put32(b, idx);
	put32(b, s->gen);
	put64(b, (uint64_t)s->ino);
	put(b, &kind_chars[s->kind], 1);
	put(b, &(unsigned char){s->in_versions ? FLAG_VIEW : 0}, 1);
	put_handle(b, s->fh);
}

size_t nodeid_table_max(void)
{
	return TABLE_MAX;
}

void *nodeid_table_build(int rootfd, size_t *len, uint32_t *count)
{
	struct stat rst = {0};
	uint64_t fsid = 0;
	struct file_handle *rfh = fstat(rootfd, &rst) == 0 ? source_id(rootfd, &fsid) : NULL;
	dev_t dev = rst.st_dev;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	uint32_t total = 0, skip;
	struct wbuf wb = {0}, *b = &wb;

	*count = 0;
	if (!rfh || !kept) {
		free(rfh);
		return NULL; /* no handles on SOURCE's filesystem: no nodeid keeps one */
	}
	pthread_mutex_lock(&lock);
	for (uint32_t k = kept_head; k; k = slot_of(k)->next)
		total += saved(slot_of(k), dev);
	for (uint32_t c = 0; c < MAX_CHUNKS && (c << CHUNK_BITS) < used; c++)
		for (uint32_t j = 0; chunks[c] && j < CHUNK_SLOTS; j++)
			total += chunks[c][j].live && saved(&chunks[c][j], dev);
	/* the newest MAX_KEPT: the oldest forgotten ones are given up first, as while running */
	skip = total > MAX_KEPT ? total - MAX_KEPT : 0;
	*count = total - skip;
	b->len = 0;
	b->p = *count ? malloc(HEAD_MAX + (size_t)*count * (REC_FIXED + MAX_HANDLE_SZ) + SUM_LEN)
		      : NULL;
	if (b->p) {
		put(b, NODEIDS_MAGIC, MAGIC_LEN);
		put64(b, fsid);
		put_handle(b, rfh);
		put32(b, *count);
		for (uint32_t k = kept_head; k; k = slot_of(k)->next)
			if (saved(slot_of(k), dev) && (!skip || !skip--))
				save_slot(b, k);
		for (uint32_t c = 0; c < MAX_CHUNKS && (c << CHUNK_BITS) < used; c++)
			for (uint32_t j = 0; chunks[c] && j < CHUNK_SLOTS; j++)
				if (chunks[c][j].live && saved(&chunks[c][j], dev) &&
				    (!skip || !skip--))
					save_slot(b, c << CHUNK_BITS | j);
	}
	pthread_mutex_unlock(&lock);
	free(rfh);
	if (!b->p)
		return NULL;
	if (!EVP_Digest(b->p, b->len, md, &mdlen, EVP_sha256(), NULL) || mdlen != SUM_LEN) {
		free(b->p);
		return NULL;
	}
	put(b, md, SUM_LEN);
	*len = b->len;
	return b->p;
}

struct rec {
	uint32_t idx, gen;
	uint64_t ino;
	uint8_t kind;
	bool in_versions;
	struct file_handle *fh;
};

static int cmp_idx(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static void free_recs(struct rec *recs, uint32_t n)
{
	for (uint32_t i = 0; recs && i < n; i++)
		free(recs[i].fh);
	free(recs);
}

/* The records of table p (len bytes), checked; NULL and *why if it is not a whole table of
 * this SOURCE. */
static struct rec *parse_table(const unsigned char *p, size_t len, int rootfd, uint32_t *n,
			       const char **why)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	struct rbuf r = {.p = p, .len = len - SUM_LEN, .off = MAGIC_LEN};
	struct file_handle *rfh = NULL, *cur = NULL;
	uint64_t fsid, cur_fsid = 0;
	struct rec *recs = NULL;
	uint32_t *idxs = NULL, count = 0, i = 0;

	*why = "damaged";
	if (len < MAGIC_LEN + SUM_LEN || memcmp(p, NODEIDS_MAGIC, MAGIC_LEN) != 0) {
		*why = "not a nodeid table of this version";
		return NULL;
	}
	if (!EVP_Digest(p, len - SUM_LEN, md, &mdlen, EVP_sha256(), NULL) || mdlen != SUM_LEN ||
	    memcmp(md, p + len - SUM_LEN, SUM_LEN) != 0) {
		*why = "damaged: its checksum does not match";
		return NULL;
	}
	fsid = get64(&r);
	rfh = get_handle(&r);
	cur = source_id(rootfd, &cur_fsid);
	if (!rfh || !cur || fsid != cur_fsid || !nodefd_same(rfh, cur)) {
		*why = rfh ? "written for another SOURCE or filesystem" : "damaged";
		goto bad;
	}
	count = get32(&r);
	if (r.short_ || count > MAX_KEPT || !(recs = calloc(count ? count : 1, sizeof(*recs))) ||
	    !(idxs = malloc((count ? count : 1) * sizeof(*idxs))))
		goto bad;
	for (i = 0; i < count; i++) {
		struct rec *c = &recs[i];
		uint8_t kind, flags;
		const char *k;

		c->idx = idxs[i] = get32(&r);
		c->gen = get32(&r);
		c->ino = get64(&r);
		get(&r, &kind, 1);
		get(&r, &flags, 1);
		k = kind ? memchr(kind_chars, kind, sizeof(kind_chars)) : NULL;
		c->fh = get_handle(&r);
		if (r.short_ || !c->fh || c->idx < FIRST ||
		    (uint64_t)c->idx >= (uint64_t)MAX_CHUNKS << CHUNK_BITS || !c->gen || !k ||
		    (flags & ~FLAG_VIEW) || ((flags & FLAG_VIEW) && *k != 'd')) {
			i++;
			goto bad;
		}
		c->kind = (uint8_t)(k - kind_chars);
		c->in_versions = flags & FLAG_VIEW;
	}
	if (r.off != r.len)
		goto bad;
	qsort(idxs, count, sizeof(*idxs), cmp_idx);
	for (uint32_t j = 1; j < count; j++)
		if (idxs[j] == idxs[j - 1])
			goto bad; /* one nodeid twice */
	free(idxs);
	free(rfh);
	free(cur);
	*n = count;
	*why = NULL;
	return recs;
bad:
	free_recs(recs, i);
	free(idxs);
	free(rfh);
	free(cur);
	return NULL;
}

/* Take the records as forgotten nodeids; false (nothing taken) if out of memory. */
static bool take_table(struct rec *recs, uint32_t n, dev_t dev)
{
	bool ok = used == FIRST && !nkept; /* (a table that took nothing yet: no chunk) */

	pthread_mutex_lock(&lock);
	for (uint32_t i = 0; i < n && ok; i++) {
		uint32_t c = recs[i].idx >> CHUNK_BITS;
		if (!chunks[c])
			ok = (chunks[c] = calloc(CHUNK_SLOTS, sizeof(*chunks[c]))) != NULL;
	}
	if (!ok) {
		for (uint32_t c = 0; c < MAX_CHUNKS; c++) {
			free(chunks[c]);
			chunks[c] = NULL;
		}
		pthread_mutex_unlock(&lock);
		return false;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint32_t idx = recs[i].idx;
		struct slot *s = slot_of(idx);

		s->gen = recs[i].gen;
		s->dev = dev; /* (the device number may differ from the last mount's) */
		s->ino = (ino_t)recs[i].ino;
		s->kind = recs[i].kind;
		s->in_versions = recs[i].in_versions;
		s->fh = recs[i].fh;
		recs[i].fh = NULL;
		/* forgotten, oldest first as written (nodeid_detach's order) */
		keep(idx);
		if (idx >= used)
			used = idx + 1;
	}
	/* The indexes between, in the chunks there are, are free: another object there gets this
	 * daemon's random first generation, as a new index does (the last mount's generation
	 * of a nodeid it did not keep is unknown). */
	for (uint32_t idx = FIRST; idx < used; idx++) {
		struct slot *s = slot_of(idx);
		if (s && !s->kept) {
			s->gen = gen_first - 1; /* new_slot takes the next */
			release_slot(idx);
		}
	}
	pthread_mutex_unlock(&lock);
	return true;
}

const char *nodeid_table_take(const void *table, size_t len, int rootfd, uint32_t *count)
{
	const char *why = NULL;
	struct rec *recs;
	struct stat rst;
	uint32_t n = 0;

	*count = 0;
	if (fstat(rootfd, &rst) < 0)
		return "cannot stat SOURCE";
	recs = parse_table(table, len, rootfd, &n, &why);
	if (recs && !take_table(recs, n, rst.st_dev))
		why = "out of memory";
	free_recs(recs, n);
	if (!why)
		*count = n;
	return why;
}
