/*
 * pool.h - the connections of one worker to one server address.
 *
 * The seeds' rules, per worker per server: idle connections are kept up to
 * the pool size, most recently used first; beyond it the least recently
 * used one is closed; idle ones past the idle timeout are closed. Open
 * connections never exceed max_connections. Requests are multiplexed: a
 * request takes an idle connection, else joins a busy one that is not too
 * deep in its pipeline, else a new connection is opened, else it joins the
 * least recently picked busy one.
 */
#ifndef SIDEPOOL_POOL_H
#define SIDEPOOL_POOL_H

#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "proto.h"
#include "stats.h"

struct pool;

/* How a pool opens and closes connections: backend.c for the daemon, a
 * fake in unit tests. open adds the new connection with pool_add(). */
struct pool_ops {
	struct backend *(*open)(struct pool *p, char *err, size_t errlen);
	void (*close)(struct backend *b, enum close_reason why,
	    const char *detail);
};

struct pool {
	const struct cfg_upstream *upstream;
	const struct cfg_server *server;
	const struct proto *proto;
	const struct pool_ops *ops;
	unsigned worker_id;
	struct event_base *base;         /* the worker's */
	struct request_cache *requests;  /* the worker's free list */
	struct backend_queues *queues;   /* the worker's end-of-event work */

	/* settings, copied so a reload can change them in place */
	unsigned size;
	unsigned max_connections;
	unsigned pipeline_depth;
	uint64_t idle_timeout_ms;
	uint64_t connect_timeout_ms;
	uint64_t request_timeout_ms;

	struct backend_list lists[BACKEND_CLOSED];
	unsigned count[BACKEND_CLOSED];
	uint64_t next_id;
	struct pool_stats stats;
	bool failing;                    /* logged the current failure episode */
};

/* A connection that has this many requests in flight is "deep": the next
 * request prefers a new connection, if the pool may open one. */
#define POOL_PIPELINE_DEPTH 32

void pool_init(struct pool *p, const struct cfg_upstream *up,
    const struct cfg_server *server, const struct pool_ops *ops);
struct backend *pool_acquire(struct pool *p, uint64_t now, char *err,
    size_t errlen);
void pool_add(struct pool *p, struct backend *b, enum backend_state s,
    uint64_t now);
void pool_set_state(struct backend *b, enum backend_state s, uint64_t now);
void pool_expire(struct pool *p, uint64_t now);
void pool_close_all(struct pool *p, enum close_reason why);
unsigned pool_total(const struct pool *p);
const char *backend_state_name(enum backend_state s);

#endif
