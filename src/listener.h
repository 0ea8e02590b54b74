/*
 * listener.h - listening sockets.
 *
 * A listener is created once, by the main thread, before the workers
 * start (so a bad address stops the daemon at start with a clear message),
 * and is then shared: every worker watches the same descriptor and accepts
 * from it in its own loop. The kernel hands each connection to exactly one
 * accept(). nclients is the one counter workers share (max_clients).
 */
#ifndef SIDEPOOL_LISTENER_H
#define SIDEPOOL_LISTENER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "config.h"

struct listener {
	const struct cfg_listener *cfg;
	size_t upstream_index;  /* the route clients of this listener take */
	int fd;
	dev_t dev;              /* identity of our unix socket file */
	ino_t ino;
	bool own_file;
	atomic_uint nclients;   /* across all workers */
};

int listener_open(struct listener *l, const struct cfg_listener *cfg,
    size_t upstream_index, char *err, size_t errlen);
void listener_close(struct listener *l);

#endif
