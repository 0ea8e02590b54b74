/*
 * pool.c - per worker per server: the lists of connections by state, the
 * one function that moves a connection between them, LRU eviction, the
 * janitor's work (timeouts, probes, warm connections, retirement) and the
 * server's health as this worker sees it.
 */
#include "pool.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/buffer.h>

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
	[CLOSE_PROBE_FAILED] = "probe_failed",
	[CLOSE_MAX_LIFETIME] = "max_lifetime",
	[CLOSE_SETUP_FAILED] = "setup_failed",
	[CLOSE_REFUSED] = "command_refused",
	[CLOSE_ABANDONED] = "abandoned",
	[CLOSE_RESET] = "reset",
	[CLOSE_SHUTDOWN] = "shutdown",
};

static const char *const state_names[BACKEND_STATE_COUNT] = {
	[BACKEND_CONNECTING] = "connecting",
	[BACKEND_IDLE] = "idle",
	[BACKEND_ACTIVE] = "active",
	[BACKEND_PROBING] = "probing",
	[BACKEND_DEDICATED] = "dedicated",
	[BACKEND_CLOSED] = "closed",
};

const char *
backend_state_name(enum backend_state s)
{
	return s < BACKEND_STATE_COUNT ? state_names[s] : "?";
}

/* Settings from the config; on reload, the pool keeps its connections and
 * counters and takes the new settings from the next tick on. */
void
pool_configure(struct pool *p, const struct cfg_upstream *up,
    const struct cfg_server *server)
{
	p->upstream = up;
	p->server = server;
	p->size = up->pool.size;
	p->max_connections = up->pool.max_connections;
	p->min_idle = up->pool.min_idle;
	p->pipeline_depth = up->pool.pipeline_depth > 0 ?
	    up->pool.pipeline_depth : 128;
	p->idle_timeout_ms = up->pool.idle_timeout_ms;
	p->max_lifetime_ms = up->pool.max_lifetime_ms;
	p->probe_interval_ms = up->pool.probe_interval_ms;
	p->connect_timeout_ms = up->connect_timeout_ms;
	p->request_timeout_ms = up->request_timeout_ms;
	p->failure_limit = up->failure_limit > 0 ? up->failure_limit : 1;
	p->queue_size = up->pool.queue_size;
	p->queue_timeout_ms = up->pool.queue_timeout_ms;
	p->retry_interval_ms = up->retry_interval_ms > 0 ?
	    up->retry_interval_ms : 250;
	p->retry_max_interval_ms = up->retry_max_interval_ms >
	    p->retry_interval_ms ? up->retry_max_interval_ms :
	    p->retry_interval_ms;
}

void
pool_init(struct pool *p, const struct cfg_upstream *up,
    const struct cfg_server *server, const struct pool_ops *ops,
    uint64_t seed)
{
	p->proto = proto_for(up->protocol);
	p->ops = ops;
	pool_configure(p, up, server);
	p->rng = seed | 1;
	TAILQ_INIT(&p->waiters);
	for (int s = 0; s < BACKEND_CLOSED; s++) {
		TAILQ_INIT(&p->lists[s]);
		p->count[s] = 0;
	}
}

unsigned
pool_total(const struct pool *p)
{
	return p->count[BACKEND_CONNECTING] + p->count[BACKEND_IDLE] +
	    p->count[BACKEND_ACTIVE] + p->count[BACKEND_PROBING] +
	    p->count[BACKEND_DEDICATED];
}

static uint64_t
random_below(struct pool *p, uint64_t n)
{
	p->rng ^= p->rng << 13;
	p->rng ^= p->rng >> 7;
	p->rng ^= p->rng << 17;
	return n > 0 ? p->rng % n : 0;
}

/* A number in [base * 0.8, base * 1.2]: timers spread so that many
 * connections or workers never act in the same millisecond. */
static uint64_t
jitter(struct pool *p, uint64_t base)
{
	return base * 8 / 10 + random_below(p, base * 4 / 10 + 1);
}

/*
 * Idle connections beyond the pool size go, least recently used first, once
 * they have been idle for EVICT_GRACE_MS: under bursty pipelined load the
 * working set hovers around the size, and closing the extra connection each
 * time it goes idle for a moment means reopening it for the next burst.
 */
#define EVICT_GRACE_MS 1000

static void
evict_idle(struct pool *p, uint64_t now)
{
	while (p->count[BACKEND_IDLE] > p->size) {
		struct backend *lru = TAILQ_LAST(&p->lists[BACKEND_IDLE],
		    backend_list);
		/* the least recent is recent: so are the others (size 0
		 * means keep none, at once) */
		if (p->size > 0 && now - lru->used_ms < EVICT_GRACE_MS)
			break;
		p->ops->close(lru, CLOSE_EVICTED, "pool size reached");
	}
}

/* Keep the idle list ordered by last use, most recent first, also for a
 * connection coming back from a probe (it was not used by a client). */
static void
insert_idle(struct pool *p, struct backend *b)
{
	struct backend *at;

	TAILQ_FOREACH(at, &p->lists[BACKEND_IDLE], pool_link)
		if (at->used_ms <= b->used_ms)
			break;
	if (at != NULL)
		TAILQ_INSERT_BEFORE(at, b, pool_link);
	else
		TAILQ_INSERT_TAIL(&p->lists[BACKEND_IDLE], b, pool_link);
}

/* A connection may be had: the longest waiting client tries again (it
 * runs later, at the end of the event; if it loses the race it waits again,
 * at the head of the queue). */
static void
wake_waiter(struct pool *p)
{
	struct pool_waiter *w = TAILQ_FIRST(&p->waiters);

	if (w == NULL)
		return;
	pool_unwait(w);
	w->wake(w, false);
}

int
pool_wait(struct pool *p, struct pool_waiter *w, uint64_t now)
{
	if (w->pool != NULL)
		abort(); /* waiting twice would corrupt the queue */
	if (p->nwaiters >= p->queue_size || p->queue_timeout_ms == 0)
		return -1;
	if (w->since_ms == 0)
		w->since_ms = now;
	w->pool = p;
	/* a client woken that lost the race keeps its place */
	if (now > w->since_ms)
		TAILQ_INSERT_HEAD(&p->waiters, w, link);
	else
		TAILQ_INSERT_TAIL(&p->waiters, w, link);
	p->nwaiters++;
	p->stats.queued++;
	return 0;
}

void
pool_unwait(struct pool_waiter *w)
{
	if (w->pool == NULL)
		return;
	TAILQ_REMOVE(&w->pool->waiters, w, link);
	w->pool->nwaiters--;
	w->pool = NULL;
}

static void
expire_waiters(struct pool *p, uint64_t now)
{
	struct pool_waiter *w;

	while ((w = TAILQ_FIRST(&p->waiters)) != NULL &&
	    now - w->since_ms >= p->queue_timeout_ms) {
		pool_unwait(w);
		p->stats.exhausted++;
		w->wake(w, true);
	}
}

/*
 * The one place a connection changes state. Every state but closed is a
 * list, so counts, timeouts and the stats fall out of list membership.
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
	if (s == BACKEND_CLOSED) {
		wake_waiter(p); /* one more may be opened */
		return;
	}
	p->count[s]++;
	if (s != BACKEND_IDLE) {
		TAILQ_INSERT_TAIL(&p->lists[s], b, pool_link);
		return;
	}
	if (from != BACKEND_PROBING)
		b->used_ms = now; /* a probe is not a use: keep the LRU order */
	insert_idle(p, b);
	wake_waiter(p);
	evict_idle(p, now);
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
	b->used_ms = now;
	b->probed_ms = now;
	/* Retired between 90% and 100% of max_lifetime, so connections
	 * opened together do not all reconnect together. */
	b->retire_ms = p->max_lifetime_ms > 0 ? now + p->max_lifetime_ms -
	    random_below(p, p->max_lifetime_ms / 10 + 1) : 0;
	TAILQ_INSERT_TAIL(&p->lists[s], b, pool_link);
	p->count[s]++;
	p->stats.opened++;
}

/* A busy connection has answered everything: back to idle, or retired. */
void
pool_release(struct backend *b, uint64_t now)
{
	if (b->retire_ms != 0 && now >= b->retire_ms)
		b->pool->ops->close(b, CLOSE_MAX_LIFETIME, "max lifetime");
	else
		pool_set_state(b, BACKEND_IDLE, now);
}

/* b goes last in list s: the most recently used end. */
static struct backend *
to_tail(struct pool *p, enum backend_state s, struct backend *b)
{
	TAILQ_REMOVE(&p->lists[s], b, pool_link);
	TAILQ_INSERT_TAIL(&p->lists[s], b, pool_link);
	return b;
}

/* Take the head of s, moved to the tail. */
static struct backend *
rotate(struct pool *p, enum backend_state s)
{
	return to_tail(p, s, TAILQ_FIRST(&p->lists[s]));
}

/* A server marked down fails requests at once rather than each waiting
 * for its own connect to time out. */
static bool
fail_fast(struct pool *p, char *err, size_t errlen)
{
	if (!p->down)
		return false;
	p->stats.fast_failures++;
	snprintf(err, errlen, "server %s down (%s)", p->server->addr.text,
	    p->last_error);
	return true;
}

/* A reply or request this large in transfer makes a connection full: what
 * joined it would wait for every byte of it, while another connection
 * could be answered at once (the server interleaves its connections). */
#define LARGE_TRANSFER (64 * 1024)

/* Room for one more request: its pipeline is not full, no slow client
 * holds its reads, and no large reply or request is in transfer on it. */
static bool
has_room(const struct pool *p, const struct backend *b)
{
	return b->ninflight < p->pipeline_depth && b->paused == 0 &&
	    evbuffer_get_length(b->in) < LARGE_TRANSFER &&
	    evbuffer_get_length(b->out) < LARGE_TRANSFER;
}

/*
 * A connection of list s (busy, or still connecting) with room, held by no
 * client: the one that took the last request, for as long as it has room,
 * then the one before it. Filling one connection before the next makes a
 * round of many clients' requests one write to the server and one read of
 * its replies; spread over n connections they would cost n writes, n
 * reads and n wakeups on both sides, for no gain: the server runs one
 * command at a time anyway.
 */
static struct backend *
with_room(struct pool *p, enum backend_state s)
{
	struct backend *b;

	TAILQ_FOREACH_REVERSE(b, &p->lists[s], backend_list, pool_link)
		if (b->owner == NULL && has_room(p, b))
			return to_tail(p, s, b);
	return NULL;
}

/*
 * A connection for one more multiplexed request, or NULL with the reason
 * in err. Prefer reuse over new connections: a few deep pipelines cost the
 * server far less per request than many shallow ones, and that saving is
 * the point of a sidecar.
 */
struct backend *
pool_acquire(struct pool *p, uint64_t now, char *err, size_t errlen)
{
	struct backend *b;

	if (fail_fast(p, err, errlen))
		return NULL;
	if ((b = with_room(p, BACKEND_ACTIVE)) != NULL)
		return b;
	if ((b = TAILQ_FIRST(&p->lists[BACKEND_IDLE])) != NULL) {
		pool_set_state(b, BACKEND_ACTIVE, now);
		return b;
	}
	/* After a quiet spell a burst finds only connections being opened:
	 * they fill like busy ones, or each client would open its own. */
	if ((b = with_room(p, BACKEND_CONNECTING)) != NULL)
		return b;
	if (pool_total(p) < p->max_connections) {
		b = p->ops->open(p, err, errlen);
		if (b != NULL)
			return b;
		if (p->count[BACKEND_ACTIVE] + p->count[BACKEND_CONNECTING] == 0)
			return NULL;
	}
	if (p->count[BACKEND_ACTIVE] > 0)
		return rotate(p, BACKEND_ACTIVE);
	TAILQ_FOREACH(b, &p->lists[BACKEND_CONNECTING], pool_link)
		if (b->owner == NULL)
			return b;
	snprintf(err, errlen, "no connection to %s available: all %u are "
	    "held by clients' sessions or being probed (raise "
	    "max_connections)", p->server->addr.text, pool_total(p));
	return NULL;
}

/*
 * A connection for one client alone, for as long as its session lasts
 * (MULTI..EXEC, SUBSCRIBE, a blocking command). Never one with other
 * clients' requests on it: an idle one, or a new one within the limit.
 */
struct backend *
pool_acquire_dedicated(struct pool *p, uint64_t now, char *err, size_t errlen)
{
	struct backend *b;

	if (fail_fast(p, err, errlen))
		return NULL;
	if ((b = TAILQ_FIRST(&p->lists[BACKEND_IDLE])) != NULL) {
		pool_set_state(b, BACKEND_DEDICATED, now);
		return b;
	}
	if (pool_total(p) < p->max_connections)
		return p->ops->open(p, err, errlen); /* dedicated once up */
	snprintf(err, errlen, "pool exhausted: all %u connections to %s are "
	    "in use and a session needs one of its own (raise "
	    "max_connections or queue_timeout)", p->max_connections,
	    p->server->addr.text);
	return NULL;
}

/* The session is over: back to sharing, or idle, or retired. */
void
pool_release_dedicated(struct backend *b, uint64_t now)
{
	b->owner = NULL;
	b->owner_lost = NULL;
	if (b->state != BACKEND_DEDICATED)
		return; /* still connecting: it joins the pool once up */
	if (b->ninflight > 0)
		pool_set_state(b, BACKEND_ACTIVE, now);
	else
		pool_release(b, now);
}

static void
mark_down(struct pool *p, uint64_t now)
{
	p->down = true;
	p->down_since_ms = now;
	p->backoff_ms = p->retry_interval_ms;
	p->retry_at_ms = now + jitter(p, p->backoff_ms);
	p->stats.marked_down++;
	log_warn("server %s down: %s; new requests fail at once, retrying in "
	    "the background", p->server->addr.text, p->last_error);
}

/*
 * A failure of the server as this worker saw it. fatal failures (it
 * refused or ignored a connect, it says it cannot serve) mark it down at
 * once; others (a timeout, a dropped connection) after failure_limit in a
 * row. While down, each failed retry doubles the backoff, up to the cap.
 */
void
pool_record_failure(struct pool *p, uint64_t now, bool fatal, const char *why)
{
	snprintf(p->last_error, sizeof(p->last_error), "%s", why);
	p->failures++;
	if (p->down) {
		/* Only the retry's own failure counts: the connections that
		 * were open when the server went all fail at once, and must
		 * not push the backoff to its cap in one go. */
		if (!p->retrying)
			return;
		p->retrying = false;
		p->backoff_ms = p->backoff_ms * 2 > p->retry_max_interval_ms ?
		    p->retry_max_interval_ms : p->backoff_ms * 2;
		p->retry_at_ms = now + jitter(p, p->backoff_ms);
		log_debug("server %s still down: %s; next retry in %llu ms",
		    p->server->addr.text, why,
		    (unsigned long long)(p->retry_at_ms - now));
		return;
	}
	if (fatal || p->failures >= p->failure_limit)
		mark_down(p, now);
}

void
pool_record_success(struct pool *p, uint64_t now)
{
	p->failures = 0;
	p->retrying = false;
	if (!p->down)
		return;
	p->down = false;
	log_notice("server %s up again after %llu ms", p->server->addr.text,
	    (unsigned long long)(now - p->down_since_ms));
}

static void
expire_idle(struct pool *p, uint64_t now)
{
	struct backend *b, *prev;

	/* Oldest use last: scan from the tail, stop at the first recent one,
	 * and keep min_idle connections whatever their age. */
	for (b = TAILQ_LAST(&p->lists[BACKEND_IDLE], backend_list); b != NULL;
	    b = prev) {
		prev = TAILQ_PREV(b, backend_list, pool_link);
		if (b->retire_ms != 0 && now >= b->retire_ms) {
			p->ops->close(b, CLOSE_MAX_LIFETIME, "max lifetime");
			continue;
		}
		if (p->idle_timeout_ms == 0 ||
		    now - b->used_ms < p->idle_timeout_ms ||
		    pool_total(p) <= p->min_idle)
			continue;
		p->ops->close(b, CLOSE_IDLE_TIMEOUT, "idle timeout");
	}
}

/* Probe idle connections nobody has used or checked for probe_interval.
 * Only idle ones: a probe never delays, or waits behind, a client. */
static void
probe_idle(struct pool *p, uint64_t now)
{
	struct backend *b, *prev;

	if (p->probe_interval_ms == 0)
		return;
	for (b = TAILQ_LAST(&p->lists[BACKEND_IDLE], backend_list); b != NULL;
	    b = prev) {
		prev = TAILQ_PREV(b, backend_list, pool_link);
		uint64_t last = b->used_ms > b->probed_ms ? b->used_ms :
		    b->probed_ms;
		if (now - last >= p->probe_interval_ms) {
			p->stats.probes++;
			p->ops->probe(b);
		}
	}
}

static void
expire_busy(struct pool *p, uint64_t now)
{
	struct backend *b, *prev;

	while ((b = TAILQ_FIRST(&p->lists[BACKEND_CONNECTING])) != NULL &&
	    now - b->created_ms >= p->connect_timeout_ms)
		p->ops->close(b, CLOSE_CONNECT_TIMEOUT, "connect timeout");
	/* A probe gets as long as a connect: a server that is slow to answer
	 * a PING is not one to hand clients to. */
	while ((b = TAILQ_FIRST(&p->lists[BACKEND_PROBING])) != NULL &&
	    now - b->since_ms >= p->connect_timeout_ms)
		p->ops->close(b, CLOSE_PROBE_FAILED, "probe timeout");
	if (p->request_timeout_ms == 0)
		return;
	static const enum backend_state busy[] = { BACKEND_ACTIVE,
	    BACKEND_DEDICATED };
	for (size_t k = 0; k < 2; k++) {
		for (b = TAILQ_LAST(&p->lists[busy[k]], backend_list);
		    b != NULL; b = prev) {
			prev = TAILQ_PREV(b, backend_list, pool_link);
			struct request *oldest = TAILQ_FIRST(&b->inflight);
			/* A paused connection waits for our own slow client,
			 * not for the server. */
			if (oldest != NULL && !oldest->no_timeout &&
			    b->paused == 0 &&
			    now - oldest->sent_us / 1000 >= p->request_timeout_ms)
				p->ops->close(b, CLOSE_REQUEST_TIMEOUT,
				    "request timeout");
		}
	}
}

/* Down: one connection at a time tries again, and its probe decides. An
 * idle connection that survived (the server said LOADING, say) is the one
 * to probe; otherwise a new one is opened. */
static void
retry_down(struct pool *p, uint64_t now)
{
	char err[160];
	struct backend *b;

	if (now < p->retry_at_ms || p->count[BACKEND_PROBING] > 0 ||
	    p->count[BACKEND_CONNECTING] > 0)
		return;
	p->retrying = true;
	if ((b = TAILQ_FIRST(&p->lists[BACKEND_IDLE])) != NULL) {
		p->stats.probes++;
		p->ops->probe(b);
		return;
	}
	b = p->ops->open(p, err, sizeof(err));
	if (b == NULL)
		return; /* open recorded the failure: the backoff grew */
	p->stats.probes++;
	p->ops->probe(b);
}

/* Keep min_idle connections open, so the first clients after a start or
 * a failure do not pay for the connect. */
static void
warm_up(struct pool *p)
{
	char err[160];

	while (pool_total(p) < p->min_idle)
		if (p->ops->open(p, err, sizeof(err)) == NULL)
			return;
}

/* The janitor's round for one pool; called every tick of the worker. */
void
pool_tick(struct pool *p, uint64_t now)
{
	expire_waiters(p, now);
	expire_busy(p, now);
	expire_idle(p, now);
	evict_idle(p, now);
	if (p->down) {
		retry_down(p, now);
		return;
	}
	probe_idle(p, now);
	warm_up(p);
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
