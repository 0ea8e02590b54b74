/*
 * listener.h - listening sockets.
 *
 * A listener is opened by the main thread (so a bad address is reported
 * before anything changes) and then shared: every worker watches the same
 * descriptor and accepts from it in its own loop; the kernel hands each
 * connection to exactly one accept(). On reload, a listener whose address
 * stays is taken over by the new configuration with its descriptor and its
 * client count, so not one connection is refused or dropped.
 */
#ifndef SIDEPOOL_LISTENER_H
#define SIDEPOOL_LISTENER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "config.h"

/* Clients connected through an address, across workers and reloads: the
 * one counter workers share (for max_clients). */
struct listener_count {
	atomic_uint clients;
	atomic_uint refs;
};

struct listener {
	const struct cfg_listener *cfg;
	size_t upstream_index;  /* the route clients of this listener take */
	int fd;                 /* -1 once closed or handed to a successor */
	dev_t dev;              /* identity of our unix socket file */
	ino_t ino;
	bool own_file;
	struct listener_count *count;
};

int listener_open(struct listener *l, const struct cfg_listener *cfg,
    size_t upstream_index, char *err, size_t errlen);
void listener_take_over(struct listener *l, const struct cfg_listener *cfg,
    size_t upstream_index, struct listener *from);
void listener_close(struct listener *l);
void listener_release(struct listener *l);

#endif
