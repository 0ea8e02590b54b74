/*
 * client.h - one client connection: read, parse, route, reply in order.
 */
#ifndef SIDEPOOL_CLIENT_H
#define SIDEPOOL_CLIENT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/buffer.h>

#include "pool.h"
#include "proto.h"
#include "request.h"
#include "stats.h"

/* Where a listener's clients send their requests: the upstream's protocol
 * and the worker's pools, one per server. Owned by the worker, one per
 * upstream per configuration generation; clients keep the route they came
 * in on until they leave, even across reloads. */
struct route {
	const struct cfg_upstream *upstream;
	const struct proto *proto;
	struct pool **pools;
	size_t npools;
	unsigned nclients;
};

enum client_state {
	CLIENT_OPEN,     /* reading requests */
	CLIENT_DRAINING, /* no more reads; close once every reply is written */
	CLIENT_CLOSED,   /* in no list but the dead one; freed at end of event */
};

struct client;
TAILQ_HEAD(client_list, client);

/* What clients share within one worker (and only within it). */
struct client_env {
	struct event_base *base;
	struct request_cache requests;
	struct client_list clients;   /* least recently active first */
	unsigned nclients;
	struct client *dirty;         /* replies to write at end of event */
	struct client *dead;          /* to free at end of event */
	struct evbuffer *scratch;     /* a local reply being built */
	struct event *flush_ev;       /* activated whenever dirty or dead gains one */
	struct worker_stats *stats;
	uint64_t next_id;
	unsigned worker_id;           /* low byte of client ids */
};

struct client {
	TAILQ_ENTRY(client) link;
	struct client_env *env;
	struct route *route;
	const struct cfg_listener *listener;
	atomic_uint *listener_count;  /* decremented when this client goes */
	enum client_state state;
	int fd;
	uint64_t id;
	uint64_t created_ms;
	uint64_t last_active_ms;
	struct event rev;
	struct event wev;
	struct evbuffer *in;
	struct evbuffer *out;
	struct request_queue reqs;    /* in the order the client sent them */
	unsigned npending;            /* requests not yet answered */
	unsigned nsent;               /* of which at a server */
	struct backend *bound;        /* carries all of those at a server */
	struct backend *dedicated;    /* its own connection, for a session */
	struct request *stream;       /* on dedicated: takes every reply */
	struct backend *paused;       /* whose reads wait for us to catch up */
	struct pool_waiter waiter;    /* queued for a connection of its own */
	struct reqinfo pending;       /* ... for this request, still in c->in */
	bool has_pending;
	bool retry_pending;           /* woken: try again at the end of event */
	bool pending_timed_out;
	size_t stored;                /* bytes of replies kept out of turn */
	struct client *dirty_next;
	struct client *dead_next;
	bool dirty;
	bool reading;
	bool write_armed;
	bool wait_switch;             /* a request waits for nsent == 0 */
	/* the protocol's request parser state; aligned for any struct */
	_Alignas(max_align_t) unsigned char parser[];
};

struct client *client_new(struct client_env *env, struct route *route,
    const struct cfg_listener *listener, atomic_uint *listener_count, int fd);
void client_reject(const struct route *route, int fd, const char *msg);
void client_close(struct client *c, const char *why);
void client_drain(struct client *c);
void client_flush_all(struct client_env *env);
void client_reap(struct client_env *env);
void client_expire_idle(struct client_env *env, uint64_t now,
    uint64_t min_timeout_ms);

#endif
