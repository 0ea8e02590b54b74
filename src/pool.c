/*
 * pool.c - per worker per server: the lists of connections by state, the
 * one function that moves a connection between them, LRU eviction and the
 * timeouts that are scanned from the oldest end of each list.
 */
#include "pool.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"

const char *const close_reason_names[CLOSE_REASON_COUNT] = {
	[CLOSE_EVICTED] = "evicted",
	[CLOSE_IDLE_TIMEOUT] = "idle_timeout",
	[CLOSE_SERVER_EOF] = "server_closed",
	[CLOSE_SERVER_ERROR] = "server_error",
	[CLOSE_UNEXPECTED_DATA] = "unexpected_data",
	[CLOSE_PROTOCOL_ERROR] = "protocol_error",
	[CLOSE_CONNECT_FAILED] = "connect_failed",
	[CLOSE_CONNECT_TIMEOUT] = "connect_timeout",
	[CLOSE_REQUEST_TIMEOUT] = "request_timeout",
	[CLOSE_SHUTDOWN] = "shutdown",
};

static const char *const state_names[BACKEND_STATE_COUNT] = {
	[BACKEND_CONNECTING] = "connecting",
	[BACKEND_IDLE] = "idle",
	[BACKEND_ACTIVE] = "active",
	[BACKEND_CLOSED] = "closed",
};

const char *
backend_state_name(enum backend_state s)
{
	return s < BACKEND_STATE_COUNT ? state_names[s] : "?";
}

void
pool_init(struct pool *p, const struct cfg_upstream *up,
    const struct cfg_server *server, const struct pool_ops *ops)
{
	p->upstream = up;
	p->server = server;
	p->proto = proto_for(up->protocol);
	p->ops = ops;
	p->size = up->pool.size;
	p->max_connections = up->pool.max_connections;
	p->pipeline_depth = POOL_PIPELINE_DEPTH;
	p->idle_timeout_ms = up->pool.idle_timeout_ms;
	p->connect_timeout_ms = up->connect_timeout_ms;
	p->request_timeout_ms = up->request_timeout_ms;
	for (int s = 0; s < BACKEND_CLOSED; s++) {
		TAILQ_INIT(&p->lists[s]);
		p->count[s] = 0;
	}
}

unsigned
pool_total(const struct pool *p)
{
	return p->count[BACKEND_CONNECTING] + p->count[BACKEND_IDLE] +
	    p->count[BACKEND_ACTIVE];
}

/* Idle connections beyond the pool size go, least recently used first. */
static void
evict_idle(struct pool *p)
{
	while (p->count[BACKEND_IDLE] > p->size) {
		struct backend *lru = TAILQ_LAST(&p->lists[BACKEND_IDLE],
		    backend_list);
		p->ops->close(lru, CLOSE_EVICTED, "pool size reached");
	}
}

/*
 * The one place a connection changes state. Idle connections go to the
 * head of their list, so the tail is always the least recently used.
 */
void
pool_set_state(struct backend *b, enum backend_state s, uint64_t now)
{
	struct pool *p = b->pool;
	enum backend_state from = b->state;

	if (from == s)
		return;
	if (from == BACKEND_CLOSED)
		abort(); /* a closed connection never comes back */
	TAILQ_REMOVE(&p->lists[from], b, pool_link);
	p->count[from]--;
	b->state = s;
	b->since_ms = now;
	log_debug("backend %s#%llu: %s -> %s", p->server->addr.text,
	    (unsigned long long)b->id, state_names[from], state_names[s]);
	if (s == BACKEND_CLOSED)
		return;
	if (s == BACKEND_IDLE)
		TAILQ_INSERT_HEAD(&p->lists[s], b, pool_link);
	else
		TAILQ_INSERT_TAIL(&p->lists[s], b, pool_link);
	p->count[s]++;
	if (s == BACKEND_IDLE)
		evict_idle(p);
}

void
pool_add(struct pool *p, struct backend *b, enum backend_state s,
    uint64_t now)
{
	assert(s != BACKEND_CLOSED);
	b->pool = p;
	b->state = s;
	b->id = ++p->next_id;
	b->created_ms = now;
	b->since_ms = now;
	TAILQ_INSERT_TAIL(&p->lists[s], b, pool_link);
	p->count[s]++;
	p->stats.opened++;
}

/* Round robin among busy connections: take the head, move it to the tail. */
static struct backend *
rotate(struct pool *p, enum backend_state s)
{
	struct backend *b = TAILQ_FIRST(&p->lists[s]);

	TAILQ_REMOVE(&p->lists[s], b, pool_link);
	TAILQ_INSERT_TAIL(&p->lists[s], b, pool_link);
	return b;
}

/*
 * A connection for one more multiplexed request. Prefer reuse over new
 * connections: a few deep pipelines cost the server far less per request
 * than many shallow ones, and that saving is the point of a sidecar.
 */
struct backend *
pool_acquire(struct pool *p, uint64_t now, char *err, size_t errlen)
{
	struct backend *b;

	if ((b = TAILQ_FIRST(&p->lists[BACKEND_IDLE])) != NULL) {
		pool_set_state(b, BACKEND_ACTIVE, now);
		return b;
	}
	b = TAILQ_FIRST(&p->lists[BACKEND_ACTIVE]);
	if (b != NULL && b->ninflight < p->pipeline_depth)
		return rotate(p, BACKEND_ACTIVE);
	b = TAILQ_FIRST(&p->lists[BACKEND_CONNECTING]);
	if (b != NULL && b->ninflight < p->pipeline_depth)
		return rotate(p, BACKEND_CONNECTING);
	if (pool_total(p) < p->max_connections) {
		b = p->ops->open(p, err, errlen);
		if (b != NULL || pool_total(p) > 0)
			return b;
		return NULL;
	}
	if (p->count[BACKEND_ACTIVE] > 0)
		return rotate(p, BACKEND_ACTIVE);
	return rotate(p, BACKEND_CONNECTING);
}

/*
 * Timeouts, scanned from the oldest end: idle connections past the idle
 * timeout, connects past the connect timeout, and busy connections whose
 * oldest request has waited past the request timeout (its order is lost,
 * so the whole connection goes and every request on it gets an error).
 */
void
pool_expire(struct pool *p, uint64_t now)
{
	struct backend *b, *prev;

	if (p->idle_timeout_ms > 0) {
		while ((b = TAILQ_LAST(&p->lists[BACKEND_IDLE],
		    backend_list)) != NULL &&
		    now - b->since_ms >= p->idle_timeout_ms)
			p->ops->close(b, CLOSE_IDLE_TIMEOUT, "idle timeout");
	}
	while ((b = TAILQ_FIRST(&p->lists[BACKEND_CONNECTING])) != NULL &&
	    now - b->created_ms >= p->connect_timeout_ms)
		p->ops->close(b, CLOSE_CONNECT_TIMEOUT, "connect timeout");
	if (p->request_timeout_ms == 0)
		return;
	for (b = TAILQ_LAST(&p->lists[BACKEND_ACTIVE], backend_list);
	    b != NULL; b = prev) {
		prev = TAILQ_PREV(b, backend_list, pool_link);
		struct request *oldest = TAILQ_FIRST(&b->inflight);
		if (oldest != NULL &&
		    now - oldest->sent_ms >= p->request_timeout_ms)
			p->ops->close(b, CLOSE_REQUEST_TIMEOUT,
			    "request timeout");
	}
}

void
pool_close_all(struct pool *p, enum close_reason why)
{
	for (int s = 0; s < BACKEND_CLOSED; s++) {
		struct backend *b;
		while ((b = TAILQ_FIRST(&p->lists[s])) != NULL)
			p->ops->close(b, why, "closing");
	}
}
