/*
 * generation.h - a configuration in force: the config and its listening
 * sockets, shared by the main thread and every worker, counted by
 * references. A reload makes a new generation; the old one lives on while
 * any worker still has clients that came in through it, then goes.
 */
#ifndef SIDEPOOL_GENERATION_H
#define SIDEPOOL_GENERATION_H

#include <stdatomic.h>
#include <stddef.h>

#include "config.h"
#include "listener.h"

struct generation {
	unsigned id;
	struct config *cfg;
	struct listener *listeners;
	size_t nlisteners;
	atomic_uint refs;
};

struct generation *generation_new(struct config *cfg,
    struct generation *prev, char *err, size_t errlen);
void generation_ref(struct generation *g);
void generation_unref(struct generation *g);
void generation_close_listeners(struct generation *g);

#endif
