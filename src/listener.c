/*
 * listener.c - open and close the shared listening sockets.
 */
#include "listener.h"

#include <unistd.h>

#include "net.h"

int
listener_open(struct listener *l, const struct cfg_listener *cfg,
    size_t upstream_index, char *err, size_t errlen)
{
	l->cfg = cfg;
	l->upstream_index = upstream_index;
	l->own_file = false;
	atomic_init(&l->nclients, 0);
	l->fd = net_listen(&cfg->addr, cfg->backlog, cfg->mode, err, errlen);
	if (l->fd == -1)
		return -1;
	if (cfg->addr.family == AF_UNIX)
		l->own_file = net_unix_identity(&cfg->addr, &l->dev,
		    &l->ino) == 0;
	return 0;
}

void
listener_close(struct listener *l)
{
	if (l->fd == -1)
		return;
	if (l->own_file)
		net_unlink_unix(&l->cfg->addr, l->dev, l->ino);
	close(l->fd);
	l->fd = -1;
}
