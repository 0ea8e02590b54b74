/*
 * pool.h - the connections of one worker to one server address, and what
 * that worker believes about the server's health.
 *
 * The seeds' rules, per worker per server: idle connections are kept up to
 * the pool size, most recently used first; beyond it the least recently
 * used one is closed; idle ones past the idle timeout are closed; idle ones
 * are probed, so a dead one is found before a client needs it. Open
 * connections never exceed max_connections. Requests are multiplexed: a
 * request takes an idle connection, else joins a busy one that is not too
 * deep in its pipeline, else a new connection is opened, else it joins the
 * next busy one.
 *
 * Health is per worker (nothing is shared between workers): a server that
 * refuses connections, or fails failure_limit times in a row, is "down";
 * requests then fail at once without touching the network, and the pool
 * retries in the background with capped exponential backoff and jitter
 * until a probe succeeds.
 */
#ifndef SIDEPOOL_POOL_H
#define SIDEPOOL_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "backend.h"
#include "config.h"
#include "proto.h"
#include "stats.h"

struct pool;

/* A client waiting for a connection of its own (all max_connections are
 * held): woken when one may be had, or when queue_timeout has passed. */
struct pool_waiter {
	TAILQ_ENTRY(pool_waiter) link;
	struct pool *pool;          /* NULL when not waiting */
	uint64_t since_ms;
	void (*wake)(struct pool_waiter *w, bool timed_out);
};

TAILQ_HEAD(waiter_list, pool_waiter);

/* How a pool opens, probes and closes connections: backend.c for the
 * daemon, a fake in unit tests. open adds the connection with pool_add(). */
struct pool_ops {
	struct backend *(*open)(struct pool *p, char *err, size_t errlen);
	void (*probe)(struct backend *b);
	void (*close)(struct backend *b, enum close_reason why,
	    const char *detail);
};

struct pool {
	TAILQ_ENTRY(pool) link;          /* in the worker's list of pools */
	unsigned refs;                   /* routes using it, in its worker */
	const struct cfg_upstream *upstream;
	const struct cfg_server *server;
	const struct proto *proto;
	const struct pool_ops *ops;
	unsigned worker_id;
	struct event_base *base;         /* the worker's */
	struct request_cache *requests;  /* the worker's free list */
	struct backend_queues *queues;   /* the worker's end-of-event work */

	/* settings, copied so a reload can change them in place (the
	 * worker calls pool_configure on its own thread) */
	unsigned size;
	unsigned max_connections;
	unsigned min_idle;
	unsigned pipeline_depth;
	uint64_t idle_timeout_ms;
	uint64_t max_lifetime_ms;
	uint64_t probe_interval_ms;
	uint64_t connect_timeout_ms;
	uint64_t request_timeout_ms;
	unsigned failure_limit;
	unsigned queue_size;
	uint64_t queue_timeout_ms;
	uint64_t retry_interval_ms;
	uint64_t retry_max_interval_ms;

	struct backend_list lists[BACKEND_CLOSED];
	unsigned count[BACKEND_CLOSED];
	struct waiter_list waiters;      /* oldest first */
	unsigned nwaiters;
	uint64_t next_id;
	uint64_t rng;                    /* xorshift state for jitter */
	struct pool_stats stats;

	/* health */
	unsigned failures;               /* in a row */
	bool down;
	bool retrying;                   /* a retry of a down server is under way */
	uint64_t down_since_ms;
	uint64_t retry_at_ms;
	uint64_t backoff_ms;
	char last_error[160];
};

void pool_init(struct pool *p, const struct cfg_upstream *up,
    const struct cfg_server *server, const struct pool_ops *ops,
    uint64_t seed);
void pool_configure(struct pool *p, const struct cfg_upstream *up,
    const struct cfg_server *server);
struct backend *pool_acquire(struct pool *p, uint64_t now, char *err,
    size_t errlen);
struct backend *pool_acquire_dedicated(struct pool *p, uint64_t now,
    char *err, size_t errlen);
void pool_release_dedicated(struct backend *b, uint64_t now);
int pool_wait(struct pool *p, struct pool_waiter *w, uint64_t now);
void pool_unwait(struct pool_waiter *w);
void pool_add(struct pool *p, struct backend *b, enum backend_state s,
    uint64_t now);
void pool_set_state(struct backend *b, enum backend_state s, uint64_t now);
void pool_release(struct backend *b, uint64_t now);
void pool_tick(struct pool *p, uint64_t now);
void pool_close_all(struct pool *p, enum close_reason why);
void pool_record_failure(struct pool *p, uint64_t now, bool fatal,
    const char *why);
void pool_record_success(struct pool *p, uint64_t now);
unsigned pool_total(const struct pool *p);
const char *backend_state_name(enum backend_state s);

#endif
