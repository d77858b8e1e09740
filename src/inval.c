/* inval.c - kernel cache invalidations (FUSE_NOTIFY_INVAL_ENTRY), sent from a thread of their own.
 *
 * A version pruned while "in use" waits for its FORGET, but a dentry left in the kernel's
 * cache by a mere `ls -l .versions` or `cat` keeps the inode referenced (FUSE keeps expired
 * dentries until memory pressure). Invalidating that entry lets the kernel forget the inode
 * when nobody really uses it. the invalidation takes the directory's inode lock in the
 * kernel, so it is never sent from a request handler. */
#define _GNU_SOURCE
#include "fs.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

struct inval {
	struct inval *next;
	struct node *dir; /* holds a ref */
	char name[];
};

static pthread_mutex_t inval_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t inval_cond = PTHREAD_COND_INITIALIZER;
static struct inval *queue; /* protected by inval_lock */
static bool stopping;	    /* protected by inval_lock */
static bool running;
static pthread_t inval_thread;
static struct fuse_session *session;

static void *inval_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&inval_lock);
	for (;;) {
		while (!queue && !stopping)
			pthread_cond_wait(&inval_cond, &inval_lock);
		if (!queue)
			break;
		struct inval *iv = queue;
		queue = iv->next;
		pthread_mutex_unlock(&inval_lock);
		if (!stopping)
			fuse_lowlevel_notify_inval_entry(session, node_id(iv->dir), iv->name,
							 strlen(iv->name));
		node_unref(iv->dir);
		free(iv);
		pthread_mutex_lock(&inval_lock);
	}
	pthread_mutex_unlock(&inval_lock);
	return NULL;
}

int inval_start(struct fuse_session *se)
{
	session = se;
	running = pthread_create(&inval_thread, NULL, inval_main, NULL) == 0;
	return running ? 0 : -1;
}

void inval_stop(void)
{
	if (!running)
		return;
	pthread_mutex_lock(&inval_lock);
	stopping = true;
	pthread_cond_signal(&inval_cond);
	pthread_mutex_unlock(&inval_lock);
	pthread_join(inval_thread, NULL);
	running = false;
}

void inval_entry_queue(struct node *dir, const char *name)
{
	struct inval *iv = malloc(sizeof(*iv) + strlen(name) + 1);

	if (!iv)
		return;
	strcpy(iv->name, name);
	iv->dir = dir;
	node_ref(dir);
	pthread_mutex_lock(&inval_lock);
	iv->next = queue;
	queue = iv;
	pthread_cond_signal(&inval_cond);
	pthread_mutex_unlock(&inval_lock);
}
