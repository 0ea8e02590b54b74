/*
 * client.c - a client connection: read bytes, let the protocol cut them
 * into requests, send each to a pooled backend connection (or answer it
 * here), and write the replies back in the order the requests came.
 *
 * Order: a client's requests all ride on one backend connection while any
 * is in flight (bound), so the server runs them in the order sent, and
 * replies that complete out of turn wait in their request until every
 * earlier one has been written.
 *
 * Memory: an idle client is struct client alone (client.h). What talking
 * needs is its conversation, made at the first read that returns data and
 * given back once the client has been quiet for QUIET_MS.
 */
#include "client.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buffer.h"
#include "clock.h"
#include "log.h"
#include "net.h"

#define CLIENT_READ_CHUNK (16 * 1024)
#define CLIENT_READ_BUDGET (256 * 1024)

/* Long enough that a client between two requests keeps its conversation,
 * so the request path allocates nothing; short enough that a pool of
 * connections gone quiet gives its memory back within seconds. */
#define QUIET_MS 1000

/* What a client needs while it talks (see struct client). */
struct conversation {
	LIST_ENTRY(conversation) link; /* in env->talking while open */
	struct client *client;
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
	struct reqinfo pending;       /* ... for this request, still unread */
	size_t stored;                /* bytes of replies kept out of turn */
	struct client *dirty_next;
	bool has_pending;
	bool retry_pending;           /* woken: try again at the end of event */
	bool pending_timed_out;
	bool dirty;
	bool write_armed;
	bool wait_switch;             /* a request waits for nsent == 0, or
					 for its stream's next reply */
	struct event wev;
};

/* What a client keeps from its first read that returned data until it
 * leaves (see struct client). */
struct talk {
	struct conversation *conv;    /* NULL while it is quiet */
	uint64_t created_ms;
	/* the protocol's request state; aligned for any struct */
	_Alignas(max_align_t) unsigned char parser[];
};

/* The client's conversation, or NULL when it is quiet or never talked. */
static inline struct conversation *
conv_of(const struct client *c)
{
	return c->talk != NULL ? c->talk->conv : NULL;
}

uint64_t
client_created_ms(const struct client *c)
{
	/* Until its first read that returned data, a client was last
	 * active when it connected. */
	return c->talk != NULL ? c->talk->created_ms : c->last_active_ms;
}

static void on_client_read(evutil_socket_t fd, short what, void *arg);
static void on_client_write(evutil_socket_t fd, short what, void *arg);
static void process_input(struct client *c, uint64_t now_us);

static void
mark_dirty(struct client *c)
{
	struct client_env *env = c->route->env;
	struct conversation *cv = c->talk->conv;

	if (cv->dirty)
		return;
	cv->dirty = true;
	cv->dirty_next = env->dirty;
	env->dirty = c;
	event_active(env->flush_ev, EV_TIMEOUT, 0);
}

static void
set_reading(struct client *c, bool on)
{
	if (c->reading == on)
		return;
	c->reading = on;
	if (on)
		event_add(&c->rev, NULL);
	else
		event_del(&c->rev);
}

struct client *
client_new(struct route *route, size_t listener, int fd)
{
	struct client_env *env = route->env;
	struct client *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->route = route;
	c->listener = (uint16_t)listener;
	c->fd = fd;
	/* Unique across workers: CLIENT ID and HELLO show it. */
	c->id = (++env->next_id << 8) | env->worker_id;
	c->state = CLIENT_OPEN;
	c->last_active_ms = clock_ms();
	event_assign(&c->rev, env->base, fd, EV_READ | EV_PERSIST,
	    on_client_read, c);
	/* the first event of a descriptor allocates its slot */
	if (event_add(&c->rev, NULL) == -1) {
		free(c);
		return NULL;
	}
	c->reading = true;
	TAILQ_INSERT_TAIL(&env->clients, c, link);
	env->nclients++;
	route->nclients++;
	env->stats->clients_accepted++;
	log_debug("client #%llu: connected on %s", (unsigned long long)c->id,
	    client_listener(c)->cfg->addr.text);
	return c;
}

/* Over max_clients: one error line, best effort, and close. */
void
client_reject(const struct route *route, int fd, const char *msg)
{
	struct evbuffer *out = evbuffer_new();

	if (out != NULL) {
		route->proto->error_reply(out, 0, msg);
		(void)evbuffer_write(out, fd);
		evbuffer_free(out);
	}
	close(fd);
}

/* ---- conversations ------------------------------------------------------- */

/* The client talks (for the first time, or again after going quiet): it
 * gets what that needs. What it keeps (struct talk) is made once. */
static int
start_conversation(struct client *c)
{
	const struct proto *proto = c->route->proto;
	struct client_env *env = c->route->env;
	struct conversation *cv;

	if (c->talk == NULL) {
		struct talk *t = calloc(1, sizeof(*t) + proto->req_state_size);
		if (t == NULL)
			return -1;
		t->created_ms = c->last_active_ms; /* it has not talked yet */
		proto->req_init(t->parser);
		c->talk = t;
	}
	if ((cv = calloc(1, sizeof(*cv))) == NULL)
		return -1;
	cv->in = evbuffer_new();
	cv->out = evbuffer_new();
	if (cv->in == NULL || cv->out == NULL) {
		if (cv->in != NULL)
			evbuffer_free(cv->in);
		if (cv->out != NULL)
			evbuffer_free(cv->out);
		free(cv);
		return -1;
	}
	cv->client = c;
	TAILQ_INIT(&cv->reqs);
	event_assign(&cv->wev, env->base, c->fd, EV_WRITE | EV_PERSIST,
	    on_client_write, c);
	LIST_INSERT_HEAD(&env->talking, cv, link);
	c->talk->conv = cv;
	return 0;
}

static void
free_conversation(struct conversation *cv)
{
	event_del(&cv->wev);
	evbuffer_free(cv->in);
	evbuffer_free(cv->out);
	free(cv);
}

/* Nothing owed either way, nothing held, nothing waiting, and no read for
 * QUIET_MS: what the conversation holds can go. */
static bool
is_quiet(const struct client *c, uint64_t now)
{
	const struct conversation *cv = c->talk->conv;

	return c->state == CLIENT_OPEN && c->reading &&
	    now - c->last_active_ms >= QUIET_MS &&
	    cv->npending == 0 && cv->stream == NULL &&
	    cv->dedicated == NULL && cv->bound == NULL && cv->paused == NULL &&
	    cv->waiter.pool == NULL && !cv->has_pending && !cv->retry_pending &&
	    !cv->wait_switch && !cv->dirty && !cv->write_armed &&
	    evbuffer_get_length(cv->in) == 0 &&
	    evbuffer_get_length(cv->out) == 0;
}

/*
 * Quiet clients give their conversations back. Once every QUIET_MS, over
 * the talking clients only (idle ones have nothing to give), so neither
 * the request path nor the idle clients pay for it; a client that talks
 * again gets a new conversation at its next read.
 */
void
client_release_quiet(struct client_env *env, uint64_t now)
{
	struct conversation *cv, *next;
	unsigned n = 0;

	if (now < env->quiet_scan_ms)
		return;
	env->quiet_scan_ms = now + QUIET_MS;
	for (cv = LIST_FIRST(&env->talking); cv != NULL; cv = next) {
		next = LIST_NEXT(cv, link);
		struct client *c = cv->client;
		if (!is_quiet(c, now))
			continue;
		LIST_REMOVE(cv, link);
		c->talk->conv = NULL;
		free_conversation(cv);
		n++;
	}
	if (n > 0)
		log_debug("%u quiet client(s) gave their buffers back", n);
}

/* Replies not yet written: a client shutting down is drained, not closed. */
bool
client_owes_replies(const struct client *c)
{
	const struct conversation *cv = conv_of(c);

	return cv != NULL && (cv->npending > 0 ||
	    evbuffer_get_length(cv->out) > 0);
}

size_t
client_input_length(const struct client *c)
{
	const struct conversation *cv = conv_of(c);

	return cv != NULL ? evbuffer_get_length(cv->in) : 0;
}

size_t
client_output_length(const struct client *c)
{
	const struct conversation *cv = conv_of(c);

	return cv != NULL ? evbuffer_get_length(cv->out) : 0;
}

/* ---- sessions ------------------------------------------------------------ */

static void on_dedicated_lost(void *arg);
static void release_backend(struct client *c);

/*
 * The client's session is over (or the client is): its own connection
 * goes back to the pool, or is closed when what the client left on it
 * cannot be undone (a blocking command, subscriptions).
 */
static void
release_dedicated(struct client *c, bool drop)
{
	struct conversation *cv = c->talk->conv;
	struct backend *b = cv->dedicated;

	if (b == NULL)
		return;
	cv->dedicated = NULL;
	if (cv->bound == b)
		cv->bound = NULL;
	if (cv->stream != NULL) {
		backend_end_stream(b, cv->stream);
		cv->stream = NULL;
		drop = true; /* replies may still be coming: nobody to read them */
	}
	if (drop) {
		b->owner = NULL;
		b->owner_lost = NULL;
		backend_close(b, CLOSE_ABANDONED, "its client's session was "
		    "abandoned");
		return;
	}
	pool_release_dedicated(b, clock_ms());
}

/* The client leaves mid-session: undo what can be undone (DISCARD,
 * UNWATCH) and give the connection back, or close it. */
static void
abandon_session(struct client *c)
{
	const struct proto *proto = c->route->proto;
	struct conversation *cv = c->talk->conv;
	struct backend *b = cv->dedicated;

	if (b == NULL)
		return;
	int n = proto->abandon != NULL && cv->stream == NULL ?
	    proto->abandon(c->talk->parser, b->out) : -1;
	if (n > 0)
		backend_queue_internal(b, (unsigned)n, false);
	if (cv->dedicated != NULL) /* backend_queue_internal may close it */
		release_dedicated(c, n < 0);
}

/* When nothing of the client's is in flight and its session is over, its
 * own connection goes back to the pool. */
static void
maybe_release(struct client *c)
{
	const struct proto *proto = c->route->proto;
	struct conversation *cv = c->talk->conv;

	if (cv->dedicated == NULL || cv->nsent > 0 || cv->stream != NULL)
		return;
	if (proto->session_active != NULL &&
	    proto->session_active(c->talk->parser))
		return;
	release_dedicated(c, false);
}

/* ---- closing ------------------------------------------------------------- */

/* Requests still at a server become orphans: their backend reads the
 * replies and drops them. Finished ones just go. Whatever the client held
 * is given back. Its memory goes at the end of the event (client_reap). */
static void
end_conversation(struct client *c)
{
	struct client_env *env = c->route->env;
	struct conversation *cv = c->talk->conv;
	struct request *req, *next;

	for (req = TAILQ_FIRST(&cv->reqs); req != NULL; req = next) {
		next = TAILQ_NEXT(req, client_link);
		if (req->state == REQ_SENT)
			req->client = NULL;
		else
			request_free(&env->requests, req);
	}
	TAILQ_INIT(&cv->reqs);
	cv->npending = 0;
	cv->nsent = 0;
	cv->bound = NULL;
	cv->stored = 0;
	release_backend(c);
	pool_unwait(&cv->waiter);
	cv->has_pending = false;
	abandon_session(c);
	LIST_REMOVE(cv, link);
}

void
client_close(struct client *c, const char *why)
{
	struct route *route = c->route;
	struct client_env *env = route->env;

	if (c->state == CLIENT_CLOSED)
		return;
	log_debug("client #%llu: closed: %s", (unsigned long long)c->id, why);
	c->state = CLIENT_CLOSED;
	event_del(&c->rev);
	if (conv_of(c) != NULL)
		event_del(&c->talk->conv->wev);
	close(c->fd);
	c->fd = -1;
	if (conv_of(c) != NULL)
		end_conversation(c);
	if (c->talk != NULL && route->proto->req_free != NULL)
		route->proto->req_free(c->talk->parser);
	TAILQ_REMOVE(&env->clients, c, link);
	env->nclients--;
	route->nclients--;
	env->stats->clients_closed++;
	atomic_fetch_sub(&client_listener(c)->count->clients, 1);
	c->dead_next = env->dead;
	env->dead = c;
	event_active(env->flush_ev, EV_TIMEOUT, 0);
}

/* Stop reading; close once every reply owed has been written. */
void
client_drain(struct client *c)
{
	if (c->state != CLIENT_OPEN)
		return;
	if (conv_of(c) == NULL) {
		client_close(c, "done"); /* nothing owed */
		return;
	}
	c->state = CLIENT_DRAINING;
	set_reading(c, false);
	mark_dirty(c);
}

/* ---- replies ------------------------------------------------------------- */

/* Put a finished reply where it belongs: on the wire if every earlier
 * request has been answered, else kept in the request until they are. */
static bool
store_reply(struct client *c, struct request *req, struct evbuffer *dst,
    struct evbuffer *src, size_t len, bool drop, const char *errmsg)
{
	if (errmsg != NULL)
		return c->route->proto->error_reply(dst, req->pflags,
		    errmsg) == 0;
	if (drop) {
		evbuffer_drain(src, len);
		return true;
	}
	return evbuffer_move(src, dst, len) == 0;
}

/* Write out, in order, every finished request at the head of the queue. */
static void
release_done(struct client *c)
{
	struct conversation *cv = c->talk->conv;
	struct request *req;

	while ((req = TAILQ_FIRST(&cv->reqs)) != NULL &&
	    req->state == REQ_DONE) {
		TAILQ_REMOVE(&cv->reqs, req, client_link);
		cv->npending--;
		if (req->reply != NULL) {
			cv->stored -= evbuffer_get_length(req->reply);
			evbuffer_add_buffer(cv->out, req->reply);
		}
		request_free(&c->route->env->requests, req);
	}
	mark_dirty(c);
}

static size_t
buffered(const struct conversation *cv)
{
	return evbuffer_get_length(cv->out) + cv->stored;
}

/* Too much owed to a client that does not read: stop reading the
 * connection its replies come from until it catches up. */
static inline void
hold_backend(struct client *c, struct backend *b)
{
	struct conversation *cv = c->talk->conv;

	if (b == NULL || cv->paused != NULL ||
	    buffered(cv) <= c->route->upstream->limits.max_output)
		return;
	cv->paused = b;
	backend_pause(b);
}

static void
release_backend(struct client *c)
{
	struct conversation *cv = c->talk->conv;

	if (cv->paused == NULL)
		return;
	backend_resume(cv->paused);
	cv->paused = NULL;
}

static void
on_request_done(struct request *req, struct evbuffer *src, size_t len,
    bool drop, const char *errmsg)
{
	struct client *c = req->client;
	struct talk *t = c->talk;
	struct conversation *cv = t->conv;
	const struct proto *proto = c->route->proto;
	struct backend *from = req->backend;

	if (errmsg == NULL && proto->reply_seen != NULL)
		proto->reply_seen(t->parser, req->pflags, src, len);
	if (--cv->nsent == 0) {
		cv->bound = NULL; /* free to use any connection again */
		if (cv->dedicated != NULL)
			maybe_release(c);
		if (cv->wait_switch) {
			cv->wait_switch = false;
			mark_dirty(c); /* resumes reading and parsing */
		}
	}
	req->state = REQ_DONE;
	if (req == TAILQ_FIRST(&cv->reqs)) {
		if (!store_reply(c, req, cv->out, src, len, drop, errmsg)) {
			client_close(c, "out of memory"); /* a reply lost */
			return;
		}
		release_done(c);
		hold_backend(c, errmsg == NULL ? from : NULL);
		return;
	}
	req->reply = evbuffer_new();
	if (req->reply == NULL) {
		client_close(c, "out of memory");
		evbuffer_drain(src, len);
		return;
	}
	if (!store_reply(c, req, req->reply, src, len, drop, errmsg)) {
		client_close(c, "out of memory"); /* a reply lost */
		return;
	}
	cv->stored += evbuffer_get_length(req->reply);
	hold_backend(c, errmsg == NULL ? from : NULL);
}

/* A reply the proxy made itself, queued in order like any other. */
static void
queue_local_reply(struct client *c, struct evbuffer *reply)
{
	struct conversation *cv = c->talk->conv;

	if (cv->npending == 0) {
		evbuffer_add_buffer(cv->out, reply);
		mark_dirty(c);
		return;
	}
	struct request *req = request_new(&c->route->env->requests);
	if (req == NULL || (req->reply = evbuffer_new()) == NULL) {
		if (req != NULL)
			request_free(&c->route->env->requests, req);
		/* the scratch is shared: left there, this reply would be the
		 * next client's */
		evbuffer_drain(reply, evbuffer_get_length(reply));
		client_close(c, "out of memory");
		return;
	}
	evbuffer_add_buffer(req->reply, reply);
	cv->stored += evbuffer_get_length(req->reply);
	req->client = c;
	req->state = REQ_DONE;
	TAILQ_INSERT_TAIL(&cv->reqs, req, client_link);
	cv->npending++;
}

static void
reply_error(struct client *c, uint32_t pflags, const char *msg)
{
	struct evbuffer *scratch = c->route->env->scratch;

	if (c->route->proto->error_reply(scratch, pflags, msg) == -1) {
		client_close(c, "out of memory"); /* not a reply short */
		return;
	}
	queue_local_reply(c, scratch);
}

/* Every reply of a stream goes straight out, in the server's order. */
static void
on_stream_reply(struct request *req, struct evbuffer *src, size_t len,
    bool drop, const char *errmsg)
{
	struct client *c = req->client;
	struct talk *t = c->talk;
	struct conversation *cv = t->conv;
	const struct proto *proto = c->route->proto;

	if (errmsg != NULL) {
		/* The connection is gone, and the request with it. */
		cv->stream = NULL;
		request_free(&c->route->env->requests, req);
		if (proto->error_reply(cv->out, 0, errmsg) == -1) {
			client_close(c, "out of memory"); /* a reply lost */
			return;
		}
		mark_dirty(c);
		return;
	}
	if (proto->reply_seen != NULL)
		proto->reply_seen(t->parser, 0, src, len);
	if (cv->wait_switch) {
		/* A request waits for the replies the stream owes (QUIT,
		 * RESET): it asks again after each; the protocol knows when
		 * none is left. */
		cv->wait_switch = false;
		mark_dirty(c);
	}
	if (evbuffer_move(src, cv->out, len) == -1) {
		client_close(c, "out of memory");
		return;
	}
	mark_dirty(c);
	hold_backend(c, req->backend);
	if (proto->session_active != NULL && !proto->session_active(t->parser)) {
		/* Unsubscribed from everything, every reply read: the
		 * connection is clean and goes back to the pool. */
		backend_end_stream(cv->dedicated, req);
		cv->stream = NULL;
		maybe_release(c);
	}
}

static void
on_dedicated_lost(void *arg)
{
	struct client *c = arg;
	struct conversation *cv = c->talk->conv;
	const struct proto *proto = c->route->proto;
	bool binding;

	binding = proto->session_binding != NULL &&
	    proto->session_binding(c->talk->parser);
	if (cv->bound == cv->dedicated)
		cv->bound = NULL;
	cv->dedicated = NULL;
	cv->stream = NULL;
	if (proto->session_reset != NULL)
		proto->session_reset(c->talk->parser);
	if (cv->wait_switch) { /* what it waited for went with the connection */
		cv->wait_switch = false;
		mark_dirty(c);
	}
	/*
	 * Carrying on would run the client's next "queued" commands at once,
	 * outside any transaction, or let EXEC succeed after a WATCH that no
	 * longer watches: the client gets the replies already owed (the
	 * in-flight ones are errors) and then its connection is closed.
	 */
	if (binding)
		client_drain(c);
}

/* ---- requests ------------------------------------------------------------ */

/* The connection a request goes to: the client's own if it has one (or
 * needs one now), else the one carrying its requests in flight, else any
 * the pool gives. NULL with err when there is none to be had. */
static struct backend *
pick_backend(struct client *c, const struct reqinfo *ri, uint64_t now_ms,
    char *err, size_t errlen)
{
	struct conversation *cv = c->talk->conv;
	struct pool *pool = c->route->pools[0];
	struct backend *b;

	if (cv->dedicated != NULL)
		return cv->dedicated;
	if (ri->need == NEED_SHARED)
		return cv->bound != NULL ? cv->bound :
		    pool_acquire(pool, now_ms, err, errlen);
	if ((b = pool_acquire_dedicated(pool, now_ms, err, errlen)) == NULL)
		return NULL;
	backend_set_owner(b, c, on_dedicated_lost);
	cv->dedicated = b;
	return b;
}

static void
on_pool_wake(struct pool_waiter *w, bool timed_out)
{
	struct conversation *cv = (struct conversation *)((char *)w -
	    offsetof(struct conversation, waiter));

	cv->retry_pending = true;
	cv->pending_timed_out = timed_out;
	mark_dirty(cv->client);
}

/*
 * Every connection is held by a session and this request needs one of its
 * own: it waits (reading stops, so order holds) until one frees or
 * queue_timeout passes. The protocol's state already counts the request as
 * sent, so it is retried as it is, never parsed again.
 */
static bool
wait_for_connection(struct client *c, const struct reqinfo *ri)
{
	struct conversation *cv = c->talk->conv;
	struct pool *pool = c->route->pools[0];

	if (pool->down)
		return false;
	cv->waiter.wake = on_pool_wake;
	if (pool_wait(pool, &cv->waiter, clock_ms()) == -1)
		return false;
	cv->pending = *ri;
	cv->pending.reply = NULL;
	cv->has_pending = true;
	set_reading(c, false);
	return true;
}

/* Send the request at the head of the input (ri->len bytes) to a server.
 * now_us: when the input was read (one clock read per read, not per
 * request: on this path the clock was the costliest call). */
static void
forward_request(struct client *c, const struct reqinfo *ri, uint64_t now_us)
{
	struct conversation *cv = c->talk->conv;
	struct client_env *env = c->route->env;
	const struct proto *proto = c->route->proto;
	char err[256];
	struct backend *b = pick_backend(c, ri, now_us / 1000, err,
	    sizeof(err));

	/* Wait only for a pool that is full: a connection that could not
	 * be opened (memory, descriptors) is not coming by waiting. */
	if (b == NULL && pool_total(c->route->pools[0]) >=
	    c->route->pools[0]->max_connections && wait_for_connection(c, ri))
		return;
	if (b == NULL) {
		evbuffer_drain(cv->in, ri->len);
		if (ri->need != NEED_SHARED && proto->session_reset != NULL)
			proto->session_reset(c->talk->parser);
		reply_error(c, ri->pflags, err);
		return;
	}
	/* What the connection must be told first (SELECT of our db). */
	if (proto->prepare != NULL)
		backend_queue_internal(b, proto->prepare(b->parser,
		    c->talk->parser, ri->pflags, b->out), false);
	if (b->state == BACKEND_CLOSED) {
		evbuffer_drain(cv->in, ri->len);
		reply_error(c, ri->pflags, "connection lost");
		return;
	}
	if (ri->need == NEED_STREAM || cv->stream != NULL) {
		if (cv->stream == NULL) {
			struct request *sreq = request_new(&env->requests);
			if (sreq == NULL) {
				client_close(c, "out of memory");
				return;
			}
			sreq->client = c;
			sreq->done = on_stream_reply;
			backend_start_stream(b, sreq);
			cv->stream = sreq;
		}
		if (backend_send_raw(b, cv->in, ri->len) == -1)
			client_close(c, "out of memory");
		return;
	}
	struct request *req = request_new(&env->requests);
	if (req == NULL) {
		client_close(c, "out of memory");
		return;
	}
	req->client = c;
	req->done = on_request_done;
	req->pflags = ri->pflags;
	TAILQ_INSERT_TAIL(&cv->reqs, req, client_link);
	if (backend_send(b, req, cv->in, ri->len, now_us) == -1) {
		TAILQ_REMOVE(&cv->reqs, req, client_link);
		request_free(&env->requests, req);
		client_close(c, "out of memory");
		return;
	}
	cv->npending++;
	cv->nsent++;
	cv->bound = b;
	req->no_timeout = ri->no_timeout;
}

static bool
over_limits(const struct client *c)
{
	const struct cfg_limits *lim = &c->route->upstream->limits;

	const struct conversation *cv = c->talk->conv;

	return cv->npending >= lim->max_pending ||
	    evbuffer_get_length(cv->out) >= lim->max_output;
}

/* Cut the input into requests and dispatch each, until it runs dry, a
 * limit pauses reading, or the client must close. */
static void
process_input(struct client *c, uint64_t now_us)
{
	struct conversation *cv = c->talk->conv;
	void *parser = c->talk->parser;
	const struct proto *proto = c->route->proto;
	const struct cfg_limits *lim = &c->route->upstream->limits;
	struct worker_stats *stats = c->route->env->stats;
	struct evbuffer *scratch = c->route->env->scratch;

	while (c->state == CLIENT_OPEN && evbuffer_get_length(cv->in) > 0) {
		if (over_limits(c)) {
			set_reading(c, false); /* resumed when replies drain */
			return;
		}
		struct reqinfo ri = {
			.reply = scratch,
			.upstream = c->route->upstream,
			.client_id = c->id,
			.has_dedicated = cv->dedicated != NULL,
			.can_switch = cv->nsent == 0,
		};
		unsigned long failures = buffer_alloc_failures();
		enum proto_verdict v = proto->parse_request(parser, cv->in, lim,
		    &ri);
		if (ri.drop_session)
			release_dedicated(c, true);
		if ((v == PV_LOCAL || v == PV_LOCAL_CLOSE ||
		    v == PV_ERROR_CLOSE) && buffer_alloc_failures() != failures) {
			/* A reply of ours came out short (an allocation
			 * failed): sent, it would shift every later one. */
			evbuffer_drain(scratch, evbuffer_get_length(scratch));
			client_close(c, "out of memory");
			return;
		}
		switch (v) {
		case PV_NEED_MORE:
			if (evbuffer_get_length(cv->in) > lim->max_request_size) {
				reply_error(c, 0, "request larger than "
				    "max_request_size");
				client_drain(c);
			}
			return;
		case PV_FORWARD:
			stats->requests++;
			forward_request(c, &ri, now_us);
			if (cv->has_pending)
				return; /* it waits at the head of the input */
			break;
		case PV_WAIT:
			/* It needs another connection than the one its
			 * requests are on: wait for them, keep the order. */
			cv->wait_switch = true;
			set_reading(c, false);
			return;
		case PV_LOCAL:
			stats->local_replies++;
			evbuffer_drain(cv->in, ri.len);
			queue_local_reply(c, scratch);
			break;
		case PV_SKIP:
			evbuffer_drain(cv->in, ri.len);
			break;
		case PV_LOCAL_CLOSE:
		case PV_ERROR_CLOSE:
			if (v == PV_ERROR_CLOSE)
				stats->protocol_errors++;
			evbuffer_drain(cv->in, evbuffer_get_length(cv->in));
			queue_local_reply(c, scratch);
			client_drain(c);
			return;
		}
	}
}

/* ---- reading and writing ------------------------------------------------- */

/*
 * The first read of a client without a conversation goes to the stack, so
 * that a client that only connects and closes (a health check, a pool
 * filling up) allocates nothing; the conversation is made once there are
 * bytes to keep. Returns what read(2) does; -1 with ENOMEM when there is
 * no memory for the conversation.
 */
static ssize_t
read_to_start(struct client *c)
{
	char first[CLIENT_READ_CHUNK];
	ssize_t n = read(c->fd, first, sizeof(first));

	if (n <= 0)
		return n;
	if (start_conversation(c) == -1 ||
	    evbuffer_add(c->talk->conv->in, first, (size_t)n) == -1) {
		errno = ENOMEM;
		return -1;
	}
	return n;
}

/* End of stream from the client. */
static void
on_client_eof(struct client *c)
{
	const struct proto *proto = c->route->proto;

	if (conv_of(c) == NULL) {
		client_close(c, "closed by client");
		return;
	}
	/* A half-close ("send these, then EOF") still gets every reply, as
	 * redis-server gives it; but a client gone in the middle of a
	 * session (blocked in BLPOP, subscribed, in MULTI) is gone: its
	 * session is abandoned now, not when the server answers. */
	process_input(c, clock_us());
	if (proto->session_active != NULL &&
	    proto->session_active(c->talk->parser))
		client_close(c, "closed by client mid-session");
	else if (c->state == CLIENT_OPEN)
		client_drain(c);
}

static void
on_client_read(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	struct client_env *env = c->route->env;
	size_t total = 0;

	while (total < CLIENT_READ_BUDGET) {
		struct conversation *cv = conv_of(c);
		ssize_t n = cv != NULL ?
		    net_read(cv->in, c->fd, CLIENT_READ_CHUNK) :
		    read_to_start(c);
		if (n > 0) {
			total += (size_t)n;
			if ((size_t)n < CLIENT_READ_CHUNK)
				break;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		env->stats->bytes_in += total;
		if (n == 0)
			on_client_eof(c);
		else
			client_close(c, strerror(errno));
		return;
	}
	if (total == 0)
		return;
	env->stats->bytes_in += total;
	uint64_t now_us = clock_us();
	c->last_active_ms = now_us / 1000;
	TAILQ_REMOVE(&env->clients, c, link);
	TAILQ_INSERT_TAIL(&env->clients, c, link);
	process_input(c, now_us);
}

/* Woken from the pool's wait queue: the request waiting at the head of
 * the input goes now, or gets its error. */
static void
retry_pending(struct client *c)
{
	struct conversation *cv = c->talk->conv;
	struct reqinfo ri = cv->pending;
	struct pool *pool = c->route->pools[0];

	cv->retry_pending = false;
	cv->has_pending = false;
	if (!cv->pending_timed_out) {
		forward_request(c, &ri, clock_us());
		if (cv->has_pending)
			return; /* lost the race: waiting again */
		cv->waiter.since_ms = 0;
		return;
	}
	cv->waiter.since_ms = 0;
	evbuffer_drain(cv->in, ri.len);
	if (c->route->proto->session_reset != NULL)
		c->route->proto->session_reset(c->talk->parser);
	char err[256];
	snprintf(err, sizeof(err), "pool exhausted: no connection to %s came "
	    "free within queue_timeout (%llu ms); all %u are held by sessions "
	    "(raise max_connections)", pool->server->addr.text,
	    (unsigned long long)pool->queue_timeout_ms, pool->max_connections);
	reply_error(c, ri.pflags, err);
}

/* Write what is owed. Afterwards: close a draining client that is done,
 * or resume a paused one whose backlog has shrunk. */
static void
flush_client(struct client *c)
{
	struct conversation *cv = c->talk->conv;

	if (cv->retry_pending && c->state == CLIENT_OPEN)
		retry_pending(c);
	if (net_flush(cv->out, c->fd, &cv->wev, &cv->write_armed,
	    &c->route->env->stats->bytes_out) == -1) {
		client_close(c, errno == 0 ? "write failed" : strerror(errno));
		return;
	}
	if (cv->paused != NULL &&
	    buffered(cv) < c->route->upstream->limits.max_output / 2)
		release_backend(c);
	if (c->state == CLIENT_DRAINING && !cv->write_armed &&
	    cv->npending == 0) {
		client_close(c, "done");
		return;
	}
	if (c->state == CLIENT_OPEN && !c->reading && !cv->wait_switch &&
	    !cv->has_pending && !over_limits(c)) {
		set_reading(c, true);
		process_input(c, clock_us());
	}
}

static void
on_client_write(evutil_socket_t fd, short what, void *arg)
{
	flush_client(arg);
}

void
client_flush_all(struct client_env *env)
{
	struct client *c;

	while ((c = env->dirty) != NULL) {
		struct conversation *cv = c->talk->conv;
		env->dirty = cv->dirty_next;
		cv->dirty = false;
		if (c->state != CLIENT_CLOSED)
			flush_client(c);
	}
}

void
client_reap(struct client_env *env)
{
	struct client *c;

	while ((c = env->dead) != NULL) {
		env->dead = c->dead_next;
		if (conv_of(c) != NULL)
			free_conversation(c->talk->conv);
		free(c->talk);
		free(c);
	}
}

/* Clients idle past their listener's idle_timeout. The list is in order of
 * last activity, so the scan stops at the first that is recent enough for
 * the shortest timeout of all. */
void
client_expire_idle(struct client_env *env, uint64_t now,
    uint64_t min_timeout_ms)
{
	struct client *c, *next;

	for (c = TAILQ_FIRST(&env->clients); c != NULL; c = next) {
		next = TAILQ_NEXT(c, link);
		uint64_t idle = now - c->last_active_ms;
		if (idle < min_timeout_ms)
			break;
		uint64_t limit = client_listener(c)->cfg->idle_timeout_ms;
		if (limit > 0 && idle >= limit &&
		    (conv_of(c) == NULL || conv_of(c)->npending == 0))
			client_close(c, "idle timeout");
	}
}
