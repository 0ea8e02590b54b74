/*
 * client.h - one client connection: read, parse, route, reply in order.
 */
#ifndef SIDEPOOL_CLIENT_H
#define SIDEPOOL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/buffer.h>

#include "listener.h"
#include "pool.h"
#include "proto.h"
#include "request.h"
#include "stats.h"

/* Where a listener's clients send their requests: the upstream's protocol
 * and the worker's pools, one per server. Owned by the worker, one per
 * upstream per configuration generation; clients keep the route they came
 * in on until they leave, even across reloads. */
struct route {
	struct client_env *env;       /* the worker's */
	const struct listener *listeners; /* its generation's, all of them */
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
struct conversation;
struct talk;
TAILQ_HEAD(client_list, client);
LIST_HEAD(conversation_list, conversation);

/* What clients share within one worker (and only within it). */
struct client_env {
	struct event_base *base;
	struct request_cache requests;
	struct client_list clients;   /* least recently active first */
	unsigned nclients;
	struct conversation_list talking; /* conversations, in no order */
	uint64_t quiet_scan_ms;       /* when to look for quiet ones next */
	struct client *dirty;         /* replies to write at end of event */
	struct client *dead;          /* to free at end of event */
	struct evbuffer *scratch;     /* a local reply being built */
	struct event *flush_ev;       /* activated whenever dirty or dead gains one */
	struct worker_stats *stats;
	uint64_t next_id;
	unsigned worker_id;           /* low byte of client ids */
};

/*
 * A client connection, kept to what an idle one needs: idle connections
 * are the many (a pool in every application process), so each costs about
 * what the kernel and libevent need for its descriptor. At its first read
 * that returns data it gets its talk (client.c): when it connected, the
 * protocol's request state (a Redis client's database, name, AUTH), kept
 * until it leaves, and its conversation: what a request needs (buffers,
 * the write event, the request queue, the backends it holds), given back
 * once the client has been quiet for a while and made again when it talks.
 */
struct client {
	union {
		TAILQ_ENTRY(client) link; /* in env->clients while not closed */
		struct client *dead_next; /* in env->dead once closed */
	};
	struct route *route;
	struct talk *talk;            /* NULL until its first read with data */
	uint64_t id;
	uint64_t last_active_ms;      /* connect, then each read with data */
	int fd;
	uint16_t listener;            /* index in route->listeners */
	uint8_t state;                /* enum client_state, in a byte */
	bool reading;
	struct event rev;
};

/* Listeners per generation, for struct client's index. */
#define CLIENT_MAX_LISTENERS UINT16_MAX

static inline const struct listener *
client_listener(const struct client *c)
{
	return &c->route->listeners[c->listener];
}

struct client *client_new(struct route *route, size_t listener, int fd);
void client_reject(const struct route *route, int fd, const char *msg);
void client_close(struct client *c, const char *why);
void client_drain(struct client *c);
void client_flush_all(struct client_env *env);
void client_reap(struct client_env *env);
void client_expire_idle(struct client_env *env, uint64_t now,
    uint64_t min_timeout_ms);
void client_release_quiet(struct client_env *env, uint64_t now);
bool client_owes_replies(const struct client *c);
uint64_t client_created_ms(const struct client *c);
size_t client_input_length(const struct client *c);
size_t client_output_length(const struct client *c);

#endif
