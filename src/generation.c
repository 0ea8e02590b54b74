/*
 * generation.c - build a generation from a loaded config: open the sockets
 * of new addresses, take over those of addresses that stay, and free it all
 * when the last reference goes (whichever thread drops it).
 */
#include "generation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct listener *
find_listener(struct generation *g, const struct cfg_addr *addr)
{
	if (g == NULL)
		return NULL;
	for (size_t i = 0; i < g->nlisteners; i++)
		if (g->listeners[i].fd != -1 &&
		    strcmp(g->listeners[i].cfg->addr.text, addr->text) == 0)
			return &g->listeners[i];
	return NULL;
}

static size_t
upstream_index(const struct config *cfg, const struct cfg_listener *lc)
{
	return (size_t)(lc->upstream - cfg->upstreams);
}

/*
 * Two passes, so a failure changes nothing: first open every address that
 * is new (any error undoes them all), then take over the ones that stay.
 * Takes ownership of cfg on success only.
 */
struct generation *
generation_new(struct config *cfg, struct generation *prev, char *err,
    size_t errlen)
{
	struct generation *g = calloc(1, sizeof(*g));

	if (g == NULL || (g->listeners = calloc(cfg->nlisteners + 1,
	    sizeof(*g->listeners))) == NULL) {
		free(g);
		snprintf(err, errlen, "out of memory setting up %zu "
		    "listener(s) (check the memory limits of the service)",
		    cfg->nlisteners);
		return NULL;
	}
	g->cfg = cfg;
	g->nlisteners = cfg->nlisteners;
	g->id = prev != NULL ? prev->id + 1 : 1;
	atomic_init(&g->refs, 1);
	for (size_t i = 0; i < cfg->nlisteners; i++)
		g->listeners[i].fd = -1;
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct cfg_listener *lc = &cfg->listeners[i];
		if (find_listener(prev, &lc->addr) != NULL)
			continue;
		if (listener_open(&g->listeners[i], lc,
		    upstream_index(cfg, lc), err, errlen) == -1) {
			for (size_t j = 0; j < i; j++)
				listener_release(&g->listeners[j]);
			free(g->listeners);
			free(g);
			return NULL;
		}
	}
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct cfg_listener *lc = &cfg->listeners[i];
		struct listener *from = find_listener(prev, &lc->addr);
		if (from != NULL && g->listeners[i].count == NULL)
			listener_take_over(&g->listeners[i], lc,
			    upstream_index(cfg, lc), from);
	}
	return g;
}

void
generation_ref(struct generation *g)
{
	atomic_fetch_add(&g->refs, 1);
}

/* Close the sockets this generation still owns: new clients are refused at
 * once. Only when no worker watches them any more. */
void
generation_close_listeners(struct generation *g)
{
	for (size_t i = 0; i < g->nlisteners; i++)
		listener_close(&g->listeners[i]);
}

void
generation_unref(struct generation *g)
{
	if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	for (size_t i = 0; i < g->nlisteners; i++)
		listener_release(&g->listeners[i]);
	free(g->listeners);
	config_free(g->cfg);
	free(g);
}
