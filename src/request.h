/*
 * request.h - one request on its way from a client to a server and back.
 *
 * A request sits in two queues at once: its client's (the order replies
 * must go back in) and its backend connection's (the order the server
 * answers in). The reply travels back through req->done, the completion
 * callback the client installed, so backend.c never knows what a client is.
 * The callback takes ownership of the request; req->backend still names
 * the connection the reply came from while it runs. A client that leaves sets
 * req->client to NULL: the backend then reads the reply, throws it away and
 * frees the request, and the shared connection stays in step.
 */
#ifndef SIDEPOOL_REQUEST_H
#define SIDEPOOL_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/buffer.h>

struct request;
struct backend;

/* src holds the reply at its head (len bytes), or errmsg says why there is
 * none. The callback moves or drains those bytes. */
typedef void request_done_fn(struct request *req, struct evbuffer *src,
    size_t len, bool drop, const char *errmsg);

enum request_state {
	REQ_SENT,    /* handed to a backend connection, no reply yet */
	REQ_DONE,    /* replied, waiting for earlier requests of its client */
};

struct request {
	TAILQ_ENTRY(request) client_link;
	TAILQ_ENTRY(request) backend_link;
	void *client;               /* owner; NULL once the client has left */
	struct backend *backend;    /* while REQ_SENT */
	request_done_fn *done;
	struct evbuffer *reply;     /* a reply that came back out of order */
	uint64_t sent_us;           /* when it was handed to the backend */
	uint32_t pflags;            /* the protocol's notes for the reply parser */
	enum request_state state;
	bool no_timeout;            /* blocks by design (BLPOP): never timed out */
	bool internal;              /* sidepool's own (probe, AUTH, SELECT) */
	bool vital;                 /* ... whose refusal means the server is
				       misconfigured for us (AUTH) */
	bool stream;                /* takes every reply until ended (SUBSCRIBE) */
};

TAILQ_HEAD(request_queue, request);

/* A worker's free list: requests are recycled, not malloc'ed per request. */
struct request_cache {
	struct request *free;
	unsigned nfree;
};

struct request *request_new(struct request_cache *rc);
void request_free(struct request_cache *rc, struct request *req);
void request_cache_clear(struct request_cache *rc);

#endif
