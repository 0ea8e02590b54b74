/*
 * backend.c - one server connection: the connect, the pipelined writes, and
 * the reading of replies, each handed to the request at the head of the
 * in-flight queue (a server answers in order, so the head is the one).
 *
 * Read events stay armed in every state: an idle pooled connection that the
 * server closes, or that receives bytes nobody asked for, is closed at once
 * instead of being handed to the next client.
 */
#include "backend.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buffer.h"
#include "clock.h"
#include "log.h"
#include "net.h"
#include "pool.h"

/* Bytes read from one connection per event, so one busy server cannot
 * starve the other connections of the worker. */
#define BACKEND_READ_CHUNK (64 * 1024)
#define BACKEND_READ_BUDGET (1024 * 1024)

static void on_backend_read(evutil_socket_t fd, short what, void *arg);
static void parse_replies(struct backend *b);
static void on_backend_write(evutil_socket_t fd, short what, void *arg);

static void
mark_dirty(struct backend *b)
{
	struct backend_queues *q = b->pool->queues;

	if (b->dirty)
		return;
	b->dirty = true;
	b->dirty_next = q->dirty;
	q->dirty = b;
	event_active(q->flush_ev, EV_TIMEOUT, 0);
}

/*
 * Only the request that needed the connection fails: the server is not
 * marked down and no failure is counted against it, so the other clients
 * go on using the connections that are open, and the next request tries
 * again as soon as a descriptor (or a port) is free. Every client that
 * hits it would log a line; one a second per worker is enough to be seen.
 */
static void
report_local_shortage(struct pool *p, int e, char *err, size_t errlen)
{
	static _Thread_local struct log_limit limit;
	const char *what, *todo;

	switch (e) {
	case EMFILE:
		what = "out of file descriptors";
		todo = "raise the open files limit (LimitNOFILE=, ulimit -n) "
		    "or lower max_clients";
		break;
	case ENFILE:
		what = "out of file descriptors";
		todo = "the system-wide limit is reached: raise fs.file-max "
		    "or find the process holding them";
		break;
	case EADDRNOTAVAIL:
		/* Every local port to this address is taken, most often
		 * by connections closed a moment ago (TIME_WAIT). */
		what = "out of local ports";
		todo = "widen net.ipv4.ip_local_port_range, or open and close "
		    "fewer connections to it (a larger pool size, a longer "
		    "idle_timeout and max_lifetime)";
		break;
	default:
		what = "out of kernel memory";
		todo = "free memory on the host or lower max_connections";
		break;
	}
	snprintf(err, errlen, "%s: cannot open a connection to %s (%s); %s",
	    what, p->server->addr.text, strerror(e), todo);
	log_limited(&limit, LOG_WARN, "%s; the server is not marked down",
	    err);
}

struct backend *
backend_open(struct pool *p, char *err, size_t errlen)
{
	const struct proto *proto = p->proto;
	struct backend *b = calloc(1, sizeof(*b) + proto->reply_state_size);
	char why[128];

	if (b == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	b->fd = -1;
	TAILQ_INIT(&b->inflight);
	b->in = evbuffer_new();
	b->out = evbuffer_new();
	if (b->in == NULL || b->out == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (net_connect(&p->server->addr, &b->fd, why, sizeof(why)) ==
	    NET_FAILED) {
		int e = errno; /* as the failed socket() or connect() left it */
		if (net_local_shortage(e)) {
			report_local_shortage(p, e, err, errlen);
			goto fail;
		}
		snprintf(err, errlen, "cannot connect to %s: %s",
		    p->server->addr.text, why);
		p->stats.closed[CLOSE_CONNECT_FAILED]++;
		pool_record_failure(p, clock_ms(), true, err);
		goto fail;
	}
	proto->reply_init(b->parser);
	event_assign(&b->rev, p->base, b->fd, EV_READ | EV_PERSIST,
	    on_backend_read, b);
	event_assign(&b->wev, p->base, b->fd, EV_WRITE | EV_PERSIST,
	    on_backend_write, b);
	/* Writable means the connect finished, one way or the other. The
	 * first event of a descriptor allocates its slot: check. */
	if (event_add(&b->rev, NULL) == -1 || event_add(&b->wev, NULL) == -1) {
		event_del(&b->rev);
		close(b->fd);
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	b->write_armed = true;
	b->queues = p->queues;
	pool_add(p, b, BACKEND_CONNECTING, clock_ms());
	log_debug("backend %s#%llu: connecting", p->server->addr.text,
	    (unsigned long long)b->id);
	/* What every connection is told first (AUTH): queued before any
	 * client's request, sent when the connect completes. */
	if (proto->handshake != NULL)
		backend_queue_internal(b, proto->handshake(b->parser,
		    p->upstream, b->out), true);
	return b;
fail:
	if (b->in != NULL)
		evbuffer_free(b->in);
	if (b->out != NULL)
		evbuffer_free(b->out);
	free(b);
	return NULL;
}

/* Queue len bytes of from as req's request; they go out at the end of the
 * event, together with whatever else the worker sends this server. now_us:
 * when the request was read (its latency and timeout run from there). -1:
 * out of memory, the request is gone and nothing was queued. */
int
backend_send(struct backend *b, struct request *req, struct evbuffer *from,
    size_t len, uint64_t now_us)
{
	uint64_t now = now_us / 1000;

	if (evbuffer_move(from, b->out, len) == -1)
		return -1;
	req->backend = b;
	req->sent_us = now_us;
	req->state = REQ_SENT;
	TAILQ_INSERT_TAIL(&b->inflight, req, backend_link);
	b->ninflight++;
	b->pool->stats.requests++;
	if (b->state == BACKEND_IDLE)
		pool_set_state(b, BACKEND_ACTIVE, now);
	if (b->state != BACKEND_CONNECTING)
		mark_dirty(b);
	return 0;
}

static void
on_probe_done(struct request *req, struct evbuffer *src, size_t len,
    bool drop, const char *errmsg)
{
	struct backend *b = req->client;
	struct pool *p = b->pool;
	uint64_t now = clock_ms();

	request_free(p->requests, req);
	b->probe_queued = false;
	if (errmsg != NULL)
		return; /* the connection is closing and said why */
	bool ok = p->proto->reply_ok == NULL || p->proto->reply_ok(src, len);
	evbuffer_drain(src, len);
	if (!ok) {
		backend_close(b, CLOSE_PROBE_FAILED, "unhealthy probe reply");
		return;
	}
	b->probed_ms = now;
	pool_record_success(p, now);
	pool_release(b, now);
}

/*
 * Check a connection nobody is using: the protocol's no-op, with its reply
 * read by the proxy itself. A probing connection is in no list a client
 * takes from, so a probe never delays a client's request.
 */
void
backend_probe(struct backend *b)
{
	struct request *req = request_new(b->pool->requests);

	if (req == NULL) {
		backend_close(b, CLOSE_PROBE_FAILED, "out of memory");
		return;
	}
	req->client = b;
	req->internal = true;
	req->done = on_probe_done;
	req->state = REQ_SENT;
	req->backend = b;
	req->sent_us = clock_us();
	b->pool->proto->probe(b->out);
	TAILQ_INSERT_TAIL(&b->inflight, req, backend_link);
	b->ninflight++;
	b->probe_queued = true;
	if (b->state != BACKEND_CONNECTING) {
		pool_set_state(b, BACKEND_PROBING, req->sent_us / 1000);
		mark_dirty(b);
	}
}

/* The answer to a command sidepool sent for itself (AUTH, SELECT,
 * DISCARD): anything but success means the connection is not what we
 * think it is, so it goes; a refused AUTH is the server telling us our
 * configuration is wrong, and marks it down with the server's words. */
static void
on_internal_done(struct request *req, struct evbuffer *src, size_t len,
    bool drop, const char *errmsg)
{
	struct backend *b = req->client;
	struct pool *p = b->pool;
	char line[128] = "";
	bool vital = req->vital;

	request_free(p->requests, req);
	if (errmsg != NULL)
		return;
	bool ok = p->proto->reply_ok == NULL || p->proto->reply_ok(src, len);
	if (!ok) {
		size_t n = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
		evbuffer_copyout(src, line, n);
		line[strcspn(line, "\r\n")] = '\0';
	}
	evbuffer_drain(src, len);
	if (!ok) {
		char why[192];
		snprintf(why, sizeof(why), "server refused sidepool's own "
		    "command: %s", line);
		/* A refused AUTH is the server's configuration against ours:
		 * it is down for us. A refused SELECT (databases set higher
		 * than the server's) is one client's request: its connection
		 * goes, the server stays up. */
		backend_close(b, vital ? CLOSE_SETUP_FAILED : CLOSE_REFUSED, why);
	}
}

/* n commands are at the end of b->out, sidepool's own: their replies are
 * checked and dropped. */
void
backend_queue_internal(struct backend *b, unsigned n, bool vital)
{
	for (unsigned i = 0; i < n; i++) {
		struct request *req = request_new(b->pool->requests);
		if (req == NULL) {
			backend_close(b, CLOSE_SETUP_FAILED, "out of memory");
			return;
		}
		req->client = b;
		req->internal = true;
		req->vital = vital;
		req->done = on_internal_done;
		req->state = REQ_SENT;
		req->backend = b;
		req->sent_us = clock_us();
		TAILQ_INSERT_TAIL(&b->inflight, req, backend_link);
		b->ninflight++;
	}
	if (n > 0 && b->state != BACKEND_CONNECTING)
		mark_dirty(b);
}

/* Bytes for a stream (a subscribed client's commands): their replies come
 * back through the stream request, in the server's order. -1: out of
 * memory, nothing was queued. */
int
backend_send_raw(struct backend *b, struct evbuffer *from, size_t len)
{
	if (evbuffer_move(from, b->out, len) == -1)
		return -1;
	b->pool->stats.requests++;
	if (b->state != BACKEND_CONNECTING)
		mark_dirty(b);
	return 0;
}

/* From now on every reply on b goes to req (which stays at the head of
 * the queue) until backend_end_stream. */
void
backend_start_stream(struct backend *b, struct request *req)
{
	req->stream = true;
	req->no_timeout = true;
	req->state = REQ_SENT;
	req->backend = b;
	req->sent_us = clock_us();
	TAILQ_INSERT_TAIL(&b->inflight, req, backend_link);
	b->ninflight++;
}

void
backend_end_stream(struct backend *b, struct request *req)
{
	TAILQ_REMOVE(&b->inflight, req, backend_link);
	b->ninflight--;
	request_free(b->pool->requests, req);
}

/*
 * A client that does not read its replies stops the reading of the
 * connection they come from, instead of sidepool's memory growing: the
 * server's replies wait in the kernel. New requests avoid a paused
 * connection; those already on it wait for the slow client, as they would
 * behind it on one server connection.
 */
void
backend_pause(struct backend *b)
{
	if (b->paused++ == 0 && b->state != BACKEND_CLOSED)
		event_del(&b->rev);
}

void
backend_resume(struct backend *b)
{
	if (b->paused == 0 || --b->paused > 0)
		return;
	if (b->state == BACKEND_CLOSED) {
		if (b->zombie) { /* the last client that held it lets go */
			b->zombie = false;
			b->dead_next = b->queues->dead;
			b->queues->dead = b;
			event_active(b->queues->flush_ev, EV_TIMEOUT, 0);
		}
		return;
	}
	event_add(&b->rev, NULL);
	b->resume_parse = true; /* replies read before the pause */
	mark_dirty(b);
}

void
backend_set_owner(struct backend *b, void *owner, void (*lost)(void *owner))
{
	b->owner = owner;
	b->owner_lost = lost;
	if (owner != NULL)
		b->pool->stats.sessions++;
}

/* Hand the reply (or the failure) to the request, which leaves our queue.
 * The reply is len bytes at the head of src (b->in, or a replacement). */
static void
complete_from(struct backend *b, struct request *req, struct evbuffer *src,
    size_t len, bool drop, const char *errmsg)
{
	struct pool *p = b->pool;

	if (req->stream && errmsg == NULL) {
		/* It stays at the head; the client may end it from done. */
		req->done(req, src, len, drop, NULL);
		return;
	}
	TAILQ_REMOVE(&b->inflight, req, backend_link);
	b->ninflight--;
	if (errmsg == NULL && !req->internal) {
		uint64_t us = b->read_us > req->sent_us ?
		    b->read_us - req->sent_us : 0;
		p->stats.replies++;
		p->stats.latency_sum_us += us;
		latency_record(p->stats.latency, us);
	}
	if (req->client == NULL) {
		/* Its client left: read and discard, stay in step. */
		req->backend = NULL;
		if (errmsg == NULL)
			evbuffer_drain(src, len);
		request_free(p->requests, req);
		return;
	}
	req->done(req, src, len, drop, errmsg);
}

static void
complete_request(struct backend *b, struct request *req, size_t len,
    bool drop, const char *errmsg)
{
	complete_from(b, req, b->in, len, drop, errmsg);
}

/* What a close says about the server's health: nothing, one failure, or
 * that it is down now. */
enum verdict { HEALTHY, FAILURE, FATAL };

static enum verdict
judge_close(const struct backend *b, enum close_reason why)
{
	switch (why) {
	case CLOSE_CONNECT_FAILED:
	case CLOSE_CONNECT_TIMEOUT:
		return FATAL;
	case CLOSE_SERVER_EOF:
		/* Servers close idle connections (redis "timeout"): normal. */
		return b->ninflight > 0 ? FAILURE : HEALTHY;
	case CLOSE_SETUP_FAILED:
		return FATAL;
	case CLOSE_SERVER_ERROR:
	case CLOSE_UNEXPECTED_DATA:
	case CLOSE_PROTOCOL_ERROR:
	case CLOSE_REQUEST_TIMEOUT:
	case CLOSE_PROBE_FAILED:
		return FAILURE;
	case CLOSE_EVICTED:
	case CLOSE_IDLE_TIMEOUT:
	case CLOSE_MAX_LIFETIME:
	case CLOSE_REFUSED:
	case CLOSE_ABANDONED:
	case CLOSE_RESET:
	case CLOSE_SHUTDOWN:
	case CLOSE_REASON_COUNT:
		break;
	}
	return HEALTHY;
}

void
backend_close(struct backend *b, enum close_reason why, const char *detail)
{
	struct pool *p = b->pool;
	struct request *req;
	char msg[256];

	if (b->state == BACKEND_CLOSED)
		return;
	p->stats.closed[why]++;
	enum verdict v = judge_close(b, why);
	if (why == CLOSE_EVICTED || why == CLOSE_IDLE_TIMEOUT ||
	    why == CLOSE_SHUTDOWN)
		log_debug("backend %s#%llu: closed: %s", p->server->addr.text,
		    (unsigned long long)b->id, detail);
	else
		log_info("backend %s#%llu: closed with %u request(s) in "
		    "flight: %s", p->server->addr.text,
		    (unsigned long long)b->id, b->ninflight, detail);
	event_del(&b->rev);
	event_del(&b->wev);
	close(b->fd);
	b->fd = -1;
	pool_set_state(b, BACKEND_CLOSED, clock_ms());
	if (why == CLOSE_CONNECT_FAILED)
		snprintf(msg, sizeof(msg), "cannot connect to %s: %s",
		    p->server->addr.text, detail);
	else
		snprintf(msg, sizeof(msg), "connection to %s lost: %s",
		    p->server->addr.text, detail);
	while ((req = TAILQ_FIRST(&b->inflight)) != NULL) {
		if (!req->internal)
			p->stats.errors++;
		complete_request(b, req, 0, false, msg);
	}
	if (v != HEALTHY && why != CLOSE_SHUTDOWN)
		pool_record_failure(p, clock_ms(), v == FATAL, msg);
	if (b->owner != NULL) {
		void (*lost)(void *) = b->owner_lost;
		void *owner = b->owner;
		b->owner = NULL;
		b->owner_lost = NULL;
		if (lost != NULL)
			lost(owner);
	}
	b->dead_next = p->queues->dead;
	p->queues->dead = b;
	event_active(p->queues->flush_ev, EV_TIMEOUT, 0);
}

static void
finish_connect(struct backend *b)
{
	int e = net_socket_error(b->fd);
	uint64_t now = clock_ms(), now_us = clock_us();
	struct request *req;

	if (e != 0) {
		backend_close(b, CLOSE_CONNECT_FAILED, strerror(e));
		return;
	}
	/* The request timeout runs from when a request is written. */
	TAILQ_FOREACH(req, &b->inflight, backend_link)
		req->sent_us = now_us;
	if (b->probe_queued)
		pool_set_state(b, BACKEND_PROBING, now);
	else if (b->owner != NULL)
		pool_set_state(b, BACKEND_DEDICATED, now);
	else
		pool_set_state(b, b->ninflight > 0 ? BACKEND_ACTIVE :
		    BACKEND_IDLE, now);
}

/* Write what is queued. Returns -1 when the connection had to close. */
static int
flush_backend(struct backend *b)
{
	if (net_flush(b->out, b->fd, &b->wev, &b->write_armed,
	    &b->pool->stats.bytes_sent) == -1) {
		backend_close(b, CLOSE_SERVER_ERROR,
		    errno == 0 ? "write failed" : strerror(errno));
		return -1;
	}
	return 0;
}

static void
on_backend_write(evutil_socket_t fd, short what, void *arg)
{
	struct backend *b = arg;

	if (b->state == BACKEND_CONNECTING) {
		finish_connect(b);
		if (b->state == BACKEND_CLOSED)
			return;
	}
	flush_backend(b);
}

void
backend_flush_all(struct backend_queues *q)
{
	struct backend *b;

	while ((b = q->dirty) != NULL) {
		q->dirty = b->dirty_next;
		b->dirty = false;
		if (b->resume_parse && b->state != BACKEND_CLOSED &&
		    b->state != BACKEND_CONNECTING) {
			b->resume_parse = false;
			parse_replies(b);
		}
		if (b->state != BACKEND_CLOSED && b->state != BACKEND_CONNECTING)
			flush_backend(b);
	}
}

void
backend_reap(struct backend_queues *q)
{
	struct backend *b;

	while ((b = q->dead) != NULL) {
		q->dead = b->dead_next;
		assert(!b->dirty); /* the worker flushes before it reaps */
		if (b->paused > 0) {
			/* A slow client still holds it paused and will resume
			 * it: freed then, not now. */
			b->zombie = true;
			continue;
		}
		evbuffer_free(b->in);
		evbuffer_free(b->out);
		free(b);
	}
}

/* Match every whole reply in b->in to the request it answers. */
static void
parse_replies(struct backend *b)
{
	const struct proto *proto = b->pool->proto;

	while (evbuffer_get_length(b->in) > 0 && b->state != BACKEND_CLOSED &&
	    b->paused == 0) {
		struct request *req = TAILQ_FIRST(&b->inflight);
		struct replyinfo ri = { 0 };
		if (req == NULL) {
			backend_close(b, CLOSE_UNEXPECTED_DATA,
			    "unexpected data from server");
			return;
		}
		enum reply_verdict v = proto->parse_reply(b->parser, b->in,
		    req->pflags, &ri);
		if (v == RV_NEED_MORE)
			return;
		if (v == RV_ERROR) {
			backend_close(b, CLOSE_PROTOCOL_ERROR, ri.err != NULL ?
			    ri.err : "unparsable reply");
			return;
		}
		if (ri.push) {
			evbuffer_drain(b->in, ri.len);
			continue;
		}
		/* The reply still goes to the client that asked; new requests
		 * fail fast until the server is better. */
		if (ri.busy_error)
			pool_record_failure(b->pool, clock_ms(), true,
			    "server is busy (LOADING, MASTERDOWN or BUSY)");
		else if (b->pool->failures > 0 || b->pool->down)
			pool_record_success(b->pool, b->read_us / 1000);
		if (ri.replace != NULL) {
			struct evbuffer *scratch = b->pool->queues->scratch;
			size_t n = strlen(ri.replace);
			evbuffer_drain(b->in, ri.len);
			evbuffer_drain(scratch, evbuffer_get_length(scratch));
			evbuffer_add(scratch, ri.replace, n);
			complete_from(b, req, scratch, n, ri.drop, NULL);
			continue;
		}
		complete_request(b, req, ri.len, ri.drop, NULL);
	}
	if (b->state == BACKEND_ACTIVE && b->ninflight == 0)
		pool_release(b, clock_ms());
}

static void
on_backend_read(evutil_socket_t fd, short what, void *arg)
{
	struct backend *b = arg;
	size_t total = 0;

	b->read_us = clock_us();
	while (total < BACKEND_READ_BUDGET) {
		ssize_t n = net_read(b->in, b->fd, BACKEND_READ_CHUNK);
		if (n > 0) {
			total += (size_t)n;
			b->pool->stats.bytes_received += (uint64_t)n;
			if ((size_t)n < BACKEND_READ_CHUNK)
				break;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		/* Replies already read still go to their clients first. */
		parse_replies(b);
		if (b->state == BACKEND_CLOSED)
			return;
		if (n == 0)
			backend_close(b, CLOSE_SERVER_EOF, "closed by server");
		else
			backend_close(b, CLOSE_SERVER_ERROR, strerror(errno));
		return;
	}
	if (b->state == BACKEND_CONNECTING)
		return; /* data before the connect completed: wait for it */
	parse_replies(b);
}
