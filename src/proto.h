/*
 * proto.h - what a protocol (Redis, Memcached) provides to the proxy.
 *
 * client.c and backend.c move bytes and keep order; they never look inside a
 * message. A protocol is this small table of functions: it finds where a
 * request or a reply ends, answers what the proxy answers itself, and
 * formats the proxy's own errors in the protocol's words.
 *
 * Invariant the table must keep: every request it returns as PV_FORWARD gets
 * exactly one reply from the server (a protocol that lets clients ask for no
 * reply, like memcached's noreply, forwards the request without that option
 * and marks the reply to be dropped). This keeps a shared connection in step.
 */
#ifndef SIDEPOOL_PROTO_H
#define SIDEPOOL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "config.h"

enum proto_verdict {
	PV_NEED_MORE,   /* not a whole request yet; call again with more bytes */
	PV_FORWARD,     /* ri.len bytes at the head of in: send them to the server */
	PV_LOCAL,       /* answered here: reply in ri.reply; drain ri.len bytes */
	PV_LOCAL_CLOSE, /* answered here (reply may be empty); then close the client */
	PV_SKIP,        /* ri.len bytes that ask for nothing (empty line, "*0") */
	PV_ERROR_CLOSE, /* bad input: send ri.reply, then close the client */
	PV_WAIT,        /* not yet: call again once nothing of this
			   client's is in flight (ri.can_switch), or, in
			   a stream, after its next reply */
};

/* What a request needs from the server connection it runs on. */
enum session_need {
	NEED_SHARED,    /* any pooled connection, multiplexed with others */
	NEED_DEDICATED, /* the client's own connection, kept while the
			   protocol says a session lasts (MULTI, WATCH, BLPOP) */
	NEED_STREAM,    /* the client's own connection, and every byte the
			   server sends goes back in arrival order (SUBSCRIBE,
			   MONITOR): replies are not one per request */
};

/* What the protocol learned about one request. */
struct reqinfo {
	size_t len;             /* bytes of this request at the head of the input */
	uint32_t pflags;        /* protocol's notes for its reply parser (noreply...) */
	struct evbuffer *reply; /* where PV_LOCAL / PV_ERROR_CLOSE write (caller's) */
	const char *name;       /* command name, for logs and stats (static storage) */

	/* Given by the caller. */
	const struct cfg_upstream *upstream;
	uint64_t client_id;
	bool has_dedicated;     /* the client holds its own connection */
	bool can_switch;        /* nothing of the client's is in flight */

	/* Set by the protocol (zero: a plain multiplexed request). */
	enum session_need need;
	bool no_timeout;        /* blocks by design: request_timeout does not apply */
	bool drop_session;      /* close the client's own connection (RESET) */
};

enum reply_verdict {
	RV_NEED_MORE, /* the reply is not complete */
	RV_REPLY,     /* ri.len bytes at the head of in are the reply */
	RV_ERROR,     /* the server's bytes make no sense: the connection is dubious */
};

struct replyinfo {
	size_t len;
	bool drop;       /* the client asked for no reply (noreply, quiet mode) */
	bool push;       /* out-of-band message, not the answer to a request */
	bool busy_error; /* server says it cannot serve (LOADING, MASTERDOWN, BUSY) */
	const char *replace; /* the client gets these bytes instead (static) */
	const char *err; /* on RV_ERROR: what was wrong */
};

struct proto {
	const char *name;
	size_t req_state_size;   /* per-client parser state, zeroed then init'ed */
	size_t reply_state_size; /* per-backend parser state */

	void (*req_init)(void *state);
	/*
	 * Look at the head of in (the client's unread bytes) and say what the
	 * next request is. The protocol may rewrite the head of in (inline
	 * command to multibulk, noreply stripped) before answering PV_FORWARD;
	 * it never drains: the caller moves or drains ri->len bytes.
	 */
	enum proto_verdict (*parse_request)(void *state, struct evbuffer *in,
	    const struct cfg_limits *lim, struct reqinfo *ri);

	void (*reply_init)(void *state);
	/* pflags are the ones parse_request gave the request being answered. */
	enum reply_verdict (*parse_reply)(void *state, struct evbuffer *in,
	    uint32_t pflags, struct replyinfo *ri);

	/*
	 * Append the proxy's own error for a request ("-ERR sidepool: msg" or
	 * "SERVER_ERROR sidepool: msg"). Appends nothing when the client asked
	 * for no reply (pflags says so).
	 */
	int (*error_reply)(struct evbuffer *out, uint32_t pflags, const char *msg);

	/* Append a health probe request (PING, "mn") whose reply the proxy reads. */
	void (*probe)(struct evbuffer *out);
	/* Is the reply (len bytes at the head of in) the healthy answer to a
	 * probe or to an internal command (AUTH, SELECT)? NULL: any
	 * well-formed reply is. */
	bool (*reply_ok)(struct evbuffer *in, size_t len);

	/* Fill in limits left at 0 in the config with this protocol's defaults. */
	void (*default_limits)(struct cfg_limits *lim);

	/*
	 * Sessions: all optional (NULL for a protocol without them).
	 * req_free releases what the client's state holds. session_active
	 * says whether the client still needs its own connection;
	 * session_reset forgets the session (its connection was lost);
	 * session_binding says whether that loss would silently change what
	 * the client's next commands mean (an open MULTI or WATCH) or its
	 * replies (subscriptions, MONITOR), so the client must be closed
	 * instead of carrying on without it.
	 * reply_seen is told of every reply delivered to the client (and of
	 * every message of a stream). prepare appends commands a connection
	 * needs before this client's request (SELECT of its database) and
	 * says how many; handshake those a new connection needs (AUTH).
	 * abandon appends what leaves a session cleanly when its client has
	 * gone (DISCARD) and says how many, or -1 when the connection must
	 * be closed instead (a blocking command or subscriptions).
	 */
	void (*req_free)(void *state);
	bool (*session_active)(const void *state);
	void (*session_reset)(void *state);
	bool (*session_binding)(const void *state);
	void (*reply_seen)(void *state, uint32_t pflags, struct evbuffer *in,
	    size_t len);
	unsigned (*prepare)(void *conn_state, void *state, uint32_t pflags,
	    struct evbuffer *out);
	unsigned (*handshake)(void *conn_state, const struct cfg_upstream *up,
	    struct evbuffer *out);
	int (*abandon)(void *state, struct evbuffer *out);
};

extern const struct proto redis_proto;
extern const struct proto memcache_proto;

const struct proto *proto_for(enum proto_kind kind);

#endif
