/*
 * listener.c - open, hand over and close the shared listening sockets.
 */
#include "listener.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "net.h"

int
listener_open(struct listener *l, const struct cfg_listener *cfg,
    size_t upstream_index, char *err, size_t errlen)
{
	l->cfg = cfg;
	l->upstream_index = upstream_index;
	l->own_file = false;
	l->count = calloc(1, sizeof(*l->count));
	if (l->count == NULL) {
		snprintf(err, errlen, "cannot listen on %s: out of memory "
		    "(check the memory limits of the service)", cfg->addr.text);
		l->fd = -1;
		return -1;
	}
	atomic_init(&l->count->clients, 0);
	atomic_init(&l->count->refs, 1);
	l->fd = net_listen(&cfg->addr, cfg->backlog, cfg->mode, err, errlen);
	if (l->fd == -1) {
		free(l->count);
		l->count = NULL;
		return -1;
	}
	if (cfg->addr.family == AF_UNIX)
		l->own_file = net_unix_identity(&cfg->addr, &l->dev,
		    &l->ino) == 0;
	return 0;
}

/* The same address in a new configuration: keep the socket, its file and
 * its client count; only the settings change. */
void
listener_take_over(struct listener *l, const struct cfg_listener *cfg,
    size_t upstream_index, struct listener *from)
{
	l->cfg = cfg;
	l->upstream_index = upstream_index;
	l->fd = from->fd;
	l->dev = from->dev;
	l->ino = from->ino;
	l->own_file = from->own_file;
	l->count = from->count;
	atomic_fetch_add(&l->count->refs, 1);
	from->fd = -1;
	from->own_file = false;
	if (cfg->addr.family == AF_UNIX && (cfg->mode != from->cfg->mode))
		(void)net_chmod_unix(&cfg->addr, cfg->mode);
}

void
listener_close(struct listener *l)
{
	if (l->fd == -1)
		return;
	if (l->own_file)
		net_unlink_unix(&l->cfg->addr, l->dev, l->ino);
	l->own_file = false;
	close(l->fd);
	l->fd = -1;
}

void
listener_release(struct listener *l)
{
	listener_close(l);
	if (l->count != NULL && atomic_fetch_sub(&l->count->refs, 1) == 1)
		free(l->count);
	l->count = NULL;
}
