/*
 * client.c - a client connection: read bytes, let the protocol cut them
 * into requests, send each to a pooled backend connection (or answer it
 * here), and write the replies back in the order the requests came.
 *
 * Order: a client's requests all ride on one backend connection while any
 * is in flight (c->bound), so the server runs them in the order sent, and
 * replies that complete out of turn wait in their request until every
 * earlier one has been written.
 */
#include "client.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "net.h"

#define CLIENT_READ_CHUNK (16 * 1024)
#define CLIENT_READ_BUDGET (256 * 1024)

static void on_client_read(evutil_socket_t fd, short what, void *arg);
static void on_client_write(evutil_socket_t fd, short what, void *arg);
static void process_input(struct client *c);

static void
mark_dirty(struct client *c)
{
	struct client_env *env = c->env;

	if (c->dirty)
		return;
	c->dirty = true;
	c->dirty_next = env->dirty;
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
client_new(struct client_env *env, struct route *route,
    const struct cfg_listener *listener, atomic_uint *listener_count, int fd)
{
	const struct proto *proto = route->proto;
	struct client *c = calloc(1, sizeof(*c) + proto->req_state_size);

	if (c == NULL)
		return NULL;
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	if (c->in == NULL || c->out == NULL) {
		if (c->in != NULL)
			evbuffer_free(c->in);
		if (c->out != NULL)
			evbuffer_free(c->out);
		free(c);
		return NULL;
	}
	c->env = env;
	c->route = route;
	c->listener = listener;
	c->listener_count = listener_count;
	c->fd = fd;
	/* Unique across workers: CLIENT ID and HELLO show it. */
	c->id = (++env->next_id << 8) | env->worker_id;
	c->state = CLIENT_OPEN;
	c->created_ms = c->last_active_ms = clock_ms();
	TAILQ_INIT(&c->reqs);
	proto->req_init(c->parser);
	event_assign(&c->rev, env->base, fd, EV_READ | EV_PERSIST,
	    on_client_read, c);
	event_assign(&c->wev, env->base, fd, EV_WRITE | EV_PERSIST,
	    on_client_write, c);
	set_reading(c, true);
	TAILQ_INSERT_TAIL(&env->clients, c, link);
	env->nclients++;
	route->nclients++;
	env->stats->clients_accepted++;
	log_debug("client #%llu: connected on %s", (unsigned long long)c->id,
	    listener->addr.text);
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
	struct backend *b = c->dedicated;

	if (b == NULL)
		return;
	c->dedicated = NULL;
	if (c->bound == b)
		c->bound = NULL;
	if (c->stream != NULL) {
		backend_end_stream(b, c->stream);
		c->stream = NULL;
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
	struct backend *b = c->dedicated;

	if (b == NULL)
		return;
	int n = proto->abandon != NULL && c->stream == NULL ?
	    proto->abandon(c->parser, b->out) : -1;
	if (n > 0)
		backend_queue_internal(b, (unsigned)n, false);
	if (c->dedicated != NULL) /* backend_queue_internal may close it */
		release_dedicated(c, n < 0);
}

/* When nothing of the client's is in flight and its session is over, its
 * own connection goes back to the pool. */
static void
maybe_release(struct client *c)
{
	const struct proto *proto = c->route->proto;

	if (c->dedicated == NULL || c->nsent > 0 || c->stream != NULL)
		return;
	if (proto->session_active != NULL && proto->session_active(c->parser))
		return;
	release_dedicated(c, false);
}

void
client_close(struct client *c, const char *why)
{
	struct client_env *env = c->env;
	struct request *req, *next;

	if (c->state == CLIENT_CLOSED)
		return;
	log_debug("client #%llu: closed: %s", (unsigned long long)c->id, why);
	c->state = CLIENT_CLOSED;
	event_del(&c->rev);
	event_del(&c->wev);
	close(c->fd);
	c->fd = -1;
	/* Requests still at a server become orphans: their backend reads the
	 * replies and drops them. Finished ones just go. */
	for (req = TAILQ_FIRST(&c->reqs); req != NULL; req = next) {
		next = TAILQ_NEXT(req, client_link);
		if (req->state == REQ_SENT)
			req->client = NULL;
		else
			request_free(&env->requests, req);
	}
	TAILQ_INIT(&c->reqs);
	c->npending = 0;
	c->nsent = 0;
	c->bound = NULL;
	c->stored = 0;
	release_backend(c);
	pool_unwait(&c->waiter);
	c->has_pending = false;
	abandon_session(c);
	if (c->route->proto->req_free != NULL)
		c->route->proto->req_free(c->parser);
	TAILQ_REMOVE(&env->clients, c, link);
	env->nclients--;
	c->route->nclients--;
	env->stats->clients_closed++;
	atomic_fetch_sub(c->listener_count, 1);
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
	c->state = CLIENT_DRAINING;
	set_reading(c, false);
	mark_dirty(c);
}

/* Put a finished reply where it belongs: on the wire if every earlier
 * request has been answered, else kept in the request until they are. */
static void
store_reply(struct client *c, struct request *req, struct evbuffer *dst,
    struct evbuffer *src, size_t len, bool drop, const char *errmsg)
{
	if (errmsg != NULL)
		c->route->proto->error_reply(dst, req->pflags, errmsg);
	else if (drop)
		evbuffer_drain(src, len);
	else
		evbuffer_remove_buffer(src, dst, len);
}

/* Write out, in order, every finished request at the head of the queue. */
static void
release_done(struct client *c)
{
	struct request *req;

	while ((req = TAILQ_FIRST(&c->reqs)) != NULL &&
	    req->state == REQ_DONE) {
		TAILQ_REMOVE(&c->reqs, req, client_link);
		c->npending--;
		if (req->reply != NULL) {
			c->stored -= evbuffer_get_length(req->reply);
			evbuffer_add_buffer(c->out, req->reply);
		}
		request_free(&c->env->requests, req);
	}
	mark_dirty(c);
}

static size_t
buffered(const struct client *c)
{
	return evbuffer_get_length(c->out) + c->stored;
}

/* Too much owed to a client that does not read: stop reading the
 * connection its replies come from until it catches up. */
static void
hold_backend(struct client *c, struct backend *b)
{
	if (b == NULL || c->paused != NULL ||
	    buffered(c) <= c->route->upstream->limits.max_output)
		return;
	c->paused = b;
	backend_pause(b);
}

static void
release_backend(struct client *c)
{
	if (c->paused == NULL)
		return;
	backend_resume(c->paused);
	c->paused = NULL;
}

static void
on_request_done(struct request *req, struct evbuffer *src, size_t len,
    bool drop, const char *errmsg)
{
	struct client *c = req->client;
	const struct proto *proto = c->route->proto;
	struct backend *from = req->backend;

	if (errmsg == NULL && proto->reply_seen != NULL)
		proto->reply_seen(c->parser, req->pflags, src, len);
	if (--c->nsent == 0) {
		c->bound = NULL; /* free to use any connection again */
		maybe_release(c);
		if (c->wait_switch) {
			c->wait_switch = false;
			mark_dirty(c); /* resumes reading and parsing */
		}
	}
	req->state = REQ_DONE;
	if (req == TAILQ_FIRST(&c->reqs)) {
		store_reply(c, req, c->out, src, len, drop, errmsg);
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
	store_reply(c, req, req->reply, src, len, drop, errmsg);
	c->stored += evbuffer_get_length(req->reply);
	hold_backend(c, errmsg == NULL ? from : NULL);
}

/* A reply the proxy made itself, queued in order like any other. */
static void
queue_local_reply(struct client *c, struct evbuffer *reply)
{
	if (c->npending == 0) {
		evbuffer_add_buffer(c->out, reply);
		mark_dirty(c);
		return;
	}
	struct request *req = request_new(&c->env->requests);
	if (req == NULL || (req->reply = evbuffer_new()) == NULL) {
		if (req != NULL)
			request_free(&c->env->requests, req);
		client_close(c, "out of memory");
		return;
	}
	evbuffer_add_buffer(req->reply, reply);
	c->stored += evbuffer_get_length(req->reply);
	req->client = c;
	req->state = REQ_DONE;
	TAILQ_INSERT_TAIL(&c->reqs, req, client_link);
	c->npending++;
}

static void
reply_error(struct client *c, uint32_t pflags, const char *msg)
{
	struct evbuffer *scratch = c->env->scratch;

	c->route->proto->error_reply(scratch, pflags, msg);
	queue_local_reply(c, scratch);
}

/* Every reply of a stream goes straight out, in the server's order. */
static void
on_stream_reply(struct request *req, struct evbuffer *src, size_t len,
    bool drop, const char *errmsg)
{
	struct client *c = req->client;
	const struct proto *proto = c->route->proto;

	if (errmsg != NULL) {
		/* The connection is gone, and the request with it. */
		c->stream = NULL;
		request_free(&c->env->requests, req);
		proto->error_reply(c->out, 0, errmsg);
		mark_dirty(c);
		return;
	}
	if (proto->reply_seen != NULL)
		proto->reply_seen(c->parser, 0, src, len);
	evbuffer_remove_buffer(src, c->out, len);
	mark_dirty(c);
	hold_backend(c, req->backend);
	if (proto->session_active != NULL && !proto->session_active(c->parser)) {
		/* Unsubscribed from everything, every reply read: the
		 * connection is clean and goes back to the pool. */
		backend_end_stream(c->dedicated, req);
		c->stream = NULL;
		maybe_release(c);
	}
}

static void
on_dedicated_lost(void *arg)
{
	struct client *c = arg;
	const struct proto *proto = c->route->proto;
	bool binding;

	binding = proto->session_binding != NULL &&
	    proto->session_binding(c->parser);
	if (c->bound == c->dedicated)
		c->bound = NULL;
	c->dedicated = NULL;
	c->stream = NULL;
	if (proto->session_reset != NULL)
		proto->session_reset(c->parser);
	/*
	 * Carrying on would run the client's next "queued" commands at once,
	 * outside any transaction, or let EXEC succeed after a WATCH that no
	 * longer watches: the client gets the replies already owed (the
	 * in-flight ones are errors) and then its connection is closed.
	 */
	if (binding)
		client_drain(c);
}

/* The connection a request goes to: the client's own if it has one (or
 * needs one now), else the one carrying its requests in flight, else any
 * the pool gives. NULL with err when there is none to be had. */
static struct backend *
pick_backend(struct client *c, const struct reqinfo *ri, char *err,
    size_t errlen)
{
	struct pool *pool = c->route->pools[0];
	struct backend *b;

	if (c->dedicated != NULL)
		return c->dedicated;
	if (ri->need == NEED_SHARED)
		return c->bound != NULL ? c->bound :
		    pool_acquire(pool, clock_ms(), err, errlen);
	if ((b = pool_acquire_dedicated(pool, clock_ms(), err, errlen)) == NULL)
		return NULL;
	backend_set_owner(b, c, on_dedicated_lost);
	c->dedicated = b;
	return b;
}

static void
on_pool_wake(struct pool_waiter *w, bool timed_out)
{
	struct client *c = (struct client *)((char *)w -
	    offsetof(struct client, waiter));

	c->retry_pending = true;
	c->pending_timed_out = timed_out;
	mark_dirty(c);
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
	struct pool *pool = c->route->pools[0];

	if (pool->down)
		return false;
	c->waiter.wake = on_pool_wake;
	if (pool_wait(pool, &c->waiter, clock_ms()) == -1)
		return false;
	c->pending = *ri;
	c->pending.reply = NULL;
	c->has_pending = true;
	set_reading(c, false);
	return true;
}

/* Send the request at the head of c->in (ri->len bytes) to a server. */
static void
forward_request(struct client *c, const struct reqinfo *ri)
{
	const struct proto *proto = c->route->proto;
	char err[256];
	struct backend *b = pick_backend(c, ri, err, sizeof(err));

	if (b == NULL && wait_for_connection(c, ri))
		return;
	if (b == NULL) {
		evbuffer_drain(c->in, ri->len);
		if (ri->need != NEED_SHARED && proto->session_reset != NULL)
			proto->session_reset(c->parser);
		reply_error(c, ri->pflags, err);
		return;
	}
	/* What the connection must be told first (SELECT of our db). */
	if (proto->prepare != NULL)
		backend_queue_internal(b, proto->prepare(b->parser, c->parser,
		    ri->pflags, b->out), false);
	if (b->state == BACKEND_CLOSED) {
		evbuffer_drain(c->in, ri->len);
		reply_error(c, ri->pflags, "connection lost");
		return;
	}
	if (ri->need == NEED_STREAM || c->stream != NULL) {
		if (c->stream == NULL) {
			struct request *sreq = request_new(&c->env->requests);
			if (sreq == NULL) {
				client_close(c, "out of memory");
				return;
			}
			sreq->client = c;
			sreq->done = on_stream_reply;
			backend_start_stream(b, sreq);
			c->stream = sreq;
		}
		backend_send_raw(b, c->in, ri->len);
		return;
	}
	struct request *req = request_new(&c->env->requests);
	if (req == NULL) {
		client_close(c, "out of memory");
		return;
	}
	req->client = c;
	req->done = on_request_done;
	req->pflags = ri->pflags;
	TAILQ_INSERT_TAIL(&c->reqs, req, client_link);
	c->npending++;
	c->nsent++;
	c->bound = b;
	backend_send(b, req, c->in, ri->len);
	req->no_timeout = ri->no_timeout;
}

static bool
over_limits(const struct client *c)
{
	const struct cfg_limits *lim = &c->route->upstream->limits;

	return c->npending >= lim->max_pending ||
	    evbuffer_get_length(c->out) >= lim->max_output;
}

/* Cut c->in into requests and dispatch each, until it runs dry, a limit
 * pauses reading, or the client must close. */
static void
process_input(struct client *c)
{
	const struct proto *proto = c->route->proto;
	const struct cfg_limits *lim = &c->route->upstream->limits;
	struct evbuffer *scratch = c->env->scratch;

	while (c->state == CLIENT_OPEN && evbuffer_get_length(c->in) > 0) {
		if (over_limits(c)) {
			set_reading(c, false); /* resumed when replies drain */
			return;
		}
		struct reqinfo ri = {
			.reply = scratch,
			.upstream = c->route->upstream,
			.client_id = c->id,
			.has_dedicated = c->dedicated != NULL,
			.can_switch = c->nsent == 0,
		};
		enum proto_verdict v = proto->parse_request(c->parser, c->in,
		    lim, &ri);
		if (ri.drop_session)
			release_dedicated(c, true);
		switch (v) {
		case PV_NEED_MORE:
			if (evbuffer_get_length(c->in) > lim->max_request_size) {
				reply_error(c, 0, "request larger than "
				    "max_request_size");
				client_drain(c);
			}
			return;
		case PV_FORWARD:
			c->env->stats->requests++;
			forward_request(c, &ri);
			if (c->has_pending)
				return; /* it waits at the head of c->in */
			break;
		case PV_WAIT:
			/* It needs another connection than the one its
			 * requests are on: wait for them, keep the order. */
			c->wait_switch = true;
			set_reading(c, false);
			return;
		case PV_LOCAL:
			c->env->stats->local_replies++;
			evbuffer_drain(c->in, ri.len);
			queue_local_reply(c, scratch);
			break;
		case PV_SKIP:
			evbuffer_drain(c->in, ri.len);
			break;
		case PV_LOCAL_CLOSE:
		case PV_ERROR_CLOSE:
			if (v == PV_ERROR_CLOSE)
				c->env->stats->protocol_errors++;
			evbuffer_drain(c->in, evbuffer_get_length(c->in));
			queue_local_reply(c, scratch);
			client_drain(c);
			return;
		}
	}
}

static void
on_client_read(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	struct client_env *env = c->env;
	size_t total = 0;

	while (total < CLIENT_READ_BUDGET) {
		ssize_t n = net_read(c->in, c->fd, CLIENT_READ_CHUNK);
		if (n > 0) {
			total += (size_t)n;
			if ((size_t)n < CLIENT_READ_CHUNK)
				break;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n == 0) {
			/* A half-close ("send these, then EOF") still gets
			 * every reply, as redis-server gives it; but a client
			 * gone in the middle of a session (blocked in BLPOP,
			 * subscribed, in MULTI) is gone: its session is
			 * abandoned now, not when the server answers. */
			const struct proto *proto = c->route->proto;
			env->stats->bytes_in += total;
			process_input(c);
			if (proto->session_active != NULL &&
			    proto->session_active(c->parser))
				client_close(c, "closed by client mid-session");
			else if (c->state == CLIENT_OPEN)
				client_drain(c);
			return;
		}
		client_close(c, strerror(errno));
		return;
	}
	env->stats->bytes_in += total;
	c->last_active_ms = clock_ms();
	TAILQ_REMOVE(&env->clients, c, link);
	TAILQ_INSERT_TAIL(&env->clients, c, link);
	process_input(c);
}

/* Write what is owed. Afterwards: close a draining client that is done,
 * or resume a paused one whose backlog has shrunk. */
/* Woken from the pool's wait queue: the request waiting at the head of
 * c->in goes now, or gets its error. */
static void
retry_pending(struct client *c)
{
	struct reqinfo ri = c->pending;
	struct pool *pool = c->route->pools[0];

	c->retry_pending = false;
	c->has_pending = false;
	if (!c->pending_timed_out) {
		forward_request(c, &ri);
		if (c->has_pending)
			return; /* lost the race: waiting again */
		c->waiter.since_ms = 0;
		return;
	}
	c->waiter.since_ms = 0;
	evbuffer_drain(c->in, ri.len);
	if (c->route->proto->session_reset != NULL)
		c->route->proto->session_reset(c->parser);
	char err[256];
	snprintf(err, sizeof(err), "pool exhausted: no connection to %s came "
	    "free within queue_timeout (%llu ms); all %u are held by sessions "
	    "(raise max_connections)", pool->server->addr.text,
	    (unsigned long long)pool->queue_timeout_ms, pool->max_connections);
	reply_error(c, ri.pflags, err);
}

static void
flush_client(struct client *c)
{
	if (c->retry_pending && c->state == CLIENT_OPEN)
		retry_pending(c);
	while (evbuffer_get_length(c->out) > 0) {
		int n = evbuffer_write(c->out, c->fd);
		if (n > 0) {
			c->env->stats->bytes_out += (uint64_t)n;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		client_close(c, n == 0 ? "write failed" : strerror(errno));
		return;
	}
	bool want = evbuffer_get_length(c->out) > 0;
	if (want && !c->write_armed)
		event_add(&c->wev, NULL);
	else if (!want && c->write_armed)
		event_del(&c->wev);
	c->write_armed = want;
	if (c->paused != NULL &&
	    buffered(c) < c->route->upstream->limits.max_output / 2)
		release_backend(c);
	if (c->state == CLIENT_DRAINING && !want && c->npending == 0) {
		client_close(c, "done");
		return;
	}
	if (c->state == CLIENT_OPEN && !c->reading && !c->wait_switch &&
	    !c->has_pending && !over_limits(c)) {
		set_reading(c, true);
		process_input(c);
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
		env->dirty = c->dirty_next;
		c->dirty = false;
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
		evbuffer_free(c->in);
		evbuffer_free(c->out);
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
		uint64_t limit = c->listener->idle_timeout_ms;
		if (limit > 0 && idle >= limit && c->npending == 0)
			client_close(c, "idle timeout");
	}
}
