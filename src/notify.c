/* notify.c - kernel cache invalidations, sent from a thread of their own.
 *
 * A version pruned while "in use" waits for its FORGET, but a dentry left in the kernel's
 * cache by a mere `ls -l .versions` or `cat` keeps the inode referenced (FUSE keeps expired
 * dentries until memory pressure). Invalidating that entry lets the kernel forget the inode
 * when nobody really uses it. notify_inval_entry takes the directory's inode lock in the
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

static pthread_mutex_t notify_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notify_cond = PTHREAD_COND_INITIALIZER;
static struct inval *queue; /* protected by notify_lock */
static bool stopping;	    /* protected by notify_lock */
static bool running;
static pthread_t notifier;
static struct fuse_session *session;

static void *notify_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&notify_lock);
	for (;;) {
		while (!queue && !stopping)
			pthread_cond_wait(&notify_cond, &notify_lock);
		if (!queue)
			break;
		struct inval *iv = queue;
		queue = iv->next;
		pthread_mutex_unlock(&notify_lock);
		if (!stopping)
			fuse_lowlevel_notify_inval_entry(session, node_id(iv->dir), iv->name,
							 strlen(iv->name));
		node_unref(iv->dir);
		free(iv);
		pthread_mutex_lock(&notify_lock);
	}
	pthread_mutex_unlock(&notify_lock);
	return NULL;
}

int notify_start(struct fuse_session *se)
{
	session = se;
	running = pthread_create(&notifier, NULL, notify_main, NULL) == 0;
	return running ? 0 : -1;
}

void notify_stop(void)
{
	if (!running)
		return;
	pthread_mutex_lock(&notify_lock);
	stopping = true;
	pthread_cond_signal(&notify_cond);
	pthread_mutex_unlock(&notify_lock);
	pthread_join(notifier, NULL);
	running = false;
}

void notify_inval_entry(struct node *dir, const char *name)
{
	struct inval *iv = malloc(sizeof(*iv) + strlen(name) + 1);

	if (!iv)
		return;
	strcpy(iv->name, name);
	iv->dir = dir;
	node_ref(dir);
	pthread_mutex_lock(&notify_lock);
	iv->next = queue;
	queue = iv;
	pthread_cond_signal(&notify_cond);
	pthread_mutex_unlock(&notify_lock);
}
