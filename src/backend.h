/*
 * backend.h - one connection to a server: connect, pipelined writes, and
 * replies matched to the requests in flight on it, in order.
 */
#ifndef SIDEPOOL_BACKEND_H
#define SIDEPOOL_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/buffer.h>

#include "request.h"
#include "stats.h"

struct pool;

/* Each state is a list in the pool (pool.c moves connections between them). */
enum backend_state {
	BACKEND_CONNECTING, /* connect() in progress; requests queue in out */
	BACKEND_IDLE,       /* connected, nothing in flight: in the LRU list */
	BACKEND_ACTIVE,     /* requests in flight */
	BACKEND_PROBING,    /* a health probe in flight; no client may use it */
	BACKEND_DEDICATED,  /* one client's own, for a session (MULTI, SUBSCRIBE) */
	BACKEND_CLOSED,     /* in no list; freed at the end of the event */
	BACKEND_STATE_COUNT
};

struct backend {
	TAILQ_ENTRY(backend) pool_link;
	struct pool *pool;
	enum backend_state state;
	int fd;
	uint64_t id;
	uint64_t created_ms;
	uint64_t since_ms;          /* when it entered its current state */
	uint64_t used_ms;           /* when it last finished serving clients */
	uint64_t probed_ms;         /* when a probe last succeeded on it */
	uint64_t retire_ms;         /* max_lifetime, staggered; 0 = never */
	uint64_t read_us;           /* when its replies were last read: their
				       latency ends there, one clock read per
				       read instead of one per reply */
	struct event rev;           /* always armed: idle reads are watched too */
	struct event wev;           /* armed only while out could not be written */
	struct evbuffer *in;
	struct evbuffer *out;
	struct request_queue inflight;
	unsigned ninflight;
	struct backend *dirty_next; /* in the worker's to-flush list */
	struct backend *dead_next;  /* in the worker's to-free list */
	bool dirty;
	bool write_armed;
	bool probe_queued;          /* a probe is in flight (or queued) */
	unsigned paused;            /* slow clients holding reads stopped */
	bool zombie;                /* closed while paused: freed on the last
				       resume (a client still points at it) */
	struct backend_queues *queues; /* the worker's, outlives any pool */
	bool resume_parse;          /* parse what was read while paused */
	/* The client that holds it as its own (BACKEND_DEDICATED, or
	 * connecting for it), told if the connection is lost. */
	void *owner;
	void (*owner_lost)(void *owner);
	/* the protocol's reply parser state; aligned for any struct */
	_Alignas(max_align_t) unsigned char parser[];
};

TAILQ_HEAD(backend_list, backend);

/* Work deferred to the end of the current event, owned by the worker:
 * connections with bytes to write (so many clients' requests go out in one
 * writev) and closed connections to free (never inside their own callback). */
struct backend_queues {
	struct backend *dirty;
	struct backend *dead;
	struct evbuffer *scratch; /* a reply the protocol replaced */
	struct event *flush_ev; /* activated whenever either list gains one */
};

struct backend *backend_open(struct pool *p, char *err, size_t errlen);
void backend_probe(struct backend *b);
int backend_send(struct backend *b, struct request *req,
    struct evbuffer *from, size_t len, uint64_t now_us);
int backend_send_raw(struct backend *b, struct evbuffer *from, size_t len);
void backend_queue_internal(struct backend *b, unsigned n, bool vital);
void backend_start_stream(struct backend *b, struct request *req);
void backend_end_stream(struct backend *b, struct request *req);
void backend_set_owner(struct backend *b, void *owner,
    void (*lost)(void *owner));
void backend_pause(struct backend *b);
void backend_resume(struct backend *b);
void backend_close(struct backend *b, enum close_reason why,
    const char *detail);
void backend_flush_all(struct backend_queues *q);
void backend_reap(struct backend_queues *q);

#endif
