/*
 * worker.c - a worker thread: its event loop, its accepts, the end-of-round
 * flush that batches writes, the janitor tick, the configuration
 * generations it serves, and the job mailbox that is its only door to
 * other threads.
 */
#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buffer.h"
#include "clock.h"
#include "log.h"
#include "net.h"

#define ACCEPTS_PER_WAKEUP 32
#define JANITOR_INTERVAL_MS 100
#define EMFILE_PAUSE_MS 100

/*
 * Three priorities: I/O runs at the default (1); the flush runs at 2, after
 * every ready socket of the round has been read, so one write carries many
 * clients' requests. libevent runs one priority per round, so the flush
 * waits for a round whose zero-timeout poll found nothing more to read:
 * under load a batch grows until the sockets are quiet. That costs an
 * epoll_wait per flush and saves more: flushing at the end of every round
 * instead measured 1.34x Redis's CPU per pipelined request. Flushing at
 * once only rounds that touched fewer than 4 connections was tried too:
 * no gain that paired runs could tell from their noise, with 1, 4 or 8
 * connect-per-request clients.
 */
#define PRIORITIES 3
#define FLUSH_PRIORITY 2

static const struct pool_ops daemon_pool_ops = {
	.open = backend_open,
	.probe = backend_probe,
	.close = backend_close,
};

static void finish_if_drained(struct worker *w);

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	do {
		backend_flush_all(&w->backends);
		client_flush_all(&w->env);
	} while (w->backends.dirty != NULL || w->env.dirty != NULL);
	client_reap(&w->env);
	backend_reap(&w->backends);
	finish_if_drained(w);
}

/* ---- accepting ----------------------------------------------------------- */

static void
accept_clients(struct worker *w, struct worker_listener *wl)
{
	struct listener *l = wl->listener;
	const struct cfg_listener *cfg = l->cfg;

	for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
		int fd;
		if (net_accept(l->fd, &fd) == -1) {
			if (net_local_shortage(errno)) {
				/* Out of descriptors: stop trying for a while
				 * instead of spinning on a readable socket. */
				static _Thread_local struct log_limit ll;
				log_limited(&ll, LOG_WARN, "cannot accept on "
				    "%s: %s (raise the open files limit, "
				    "LimitNOFILE=)", cfg->addr.text,
				    strerror(errno));
				struct timeval tv = { 0, EMFILE_PAUSE_MS * 1000 };
				event_del(&wl->accept_ev);
				event_add(&wl->resume_ev, &tv);
			}
			return;
		}
		if (cfg->addr.family != AF_UNIX)
			net_tune_stream(fd);
		atomic_uint *count = &l->count->clients;
		unsigned n = atomic_fetch_add(count, 1) + 1;
		if (cfg->max_clients > 0 && n > cfg->max_clients) {
			atomic_fetch_sub(count, 1);
			w->stats.clients_rejected++;
			client_reject(wl->route, fd,
			    "max number of clients reached");
			continue;
		}
		if (client_new(wl->route, (size_t)(l - wl->route->listeners),
		    fd) == NULL) {
			atomic_fetch_sub(count, 1);
			log_error("cannot accept a client on %s: out of memory",
			    cfg->addr.text);
			close(fd);
		}
	}
}

static void
on_accept(evutil_socket_t fd, short what, void *arg)
{
	struct worker_listener *wl = arg;

	if (wl->worker->state == WORKER_RUNNING)
		accept_clients(wl->worker, wl);
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct worker_listener *wl = arg;

	if (wl->worker->state == WORKER_RUNNING &&
	    wl->worker->current != NULL &&
	    wl >= wl->worker->current->listeners &&
	    wl < wl->worker->current->listeners +
	    wl->worker->current->nlisteners)
		event_add(&wl->accept_ev, NULL);
}

static void
set_accepting(struct wgen *g, bool on)
{
	if (g->accepting == on)
		return;
	g->accepting = on;
	for (size_t i = 0; i < g->nlisteners; i++) {
		if (on) {
			event_add(&g->listeners[i].accept_ev, NULL);
			continue;
		}
		event_del(&g->listeners[i].accept_ev);
		event_del(&g->listeners[i].resume_ev);
	}
}

/* ---- pools and generations ------------------------------------------------ */

/* A pool for this address in this worker, whatever generation made it:
 * pools are keyed by address, so a reload that keeps a server keeps its
 * connections and counters and only changes its settings. */
static struct pool *
get_pool(struct worker *w, const struct cfg_upstream *up,
    const struct cfg_server *server)
{
	struct pool *p;

	TAILQ_FOREACH(p, &w->pools, link)
		if (p->proto == proto_for(up->protocol) &&
		    strcmp(p->server->addr.text, server->addr.text) == 0) {
			pool_configure(p, up, server);
			p->refs++;
			return p;
		}
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return NULL;
	pool_init(p, up, server, &daemon_pool_ops,
	    clock_ms() * 2654435761u + w->id * 40503u + server->index);
	p->worker_id = w->id;
	p->base = w->base;
	p->requests = &w->env.requests;
	p->queues = &w->backends;
	p->refs = 1;
	TAILQ_INSERT_TAIL(&w->pools, p, link);
	return p;
}

/* The last route using a pool is gone: its connections close (requests
 * still on them belong to clients that have left) and it goes. */
static void
put_pool(struct worker *w, struct pool *p)
{
	if (--p->refs > 0)
		return;
	pool_close_all(p, CLOSE_SHUTDOWN);
	TAILQ_REMOVE(&w->pools, p, link);
	free(p);
}

static void
free_wgen(struct worker *w, struct wgen *g)
{
	set_accepting(g, false);
	for (size_t r = 0; r < g->nroutes; r++) {
		for (size_t i = 0; i < g->routes[r].npools; i++)
			if (g->routes[r].pools[i] != NULL)
				put_pool(w, g->routes[r].pools[i]);
		free(g->routes[r].pools);
	}
	free(g->routes);
	free(g->listeners);
	TAILQ_REMOVE(&w->gens, g, link);
	generation_unref(g->gen);
	free(g);
}

static struct wgen *
new_wgen(struct worker *w, struct generation *gen)
{
	const struct config *cfg = gen->cfg;
	struct wgen *g;

	if (gen->nlisteners > CLIENT_MAX_LISTENERS) {
		/* A client keeps its listener's index in 16 bits. */
		log_error("%zu listeners: at most %u are supported; use fewer",
		    gen->nlisteners, (unsigned)CLIENT_MAX_LISTENERS);
		return NULL;
	}
	if ((g = calloc(1, sizeof(*g))) == NULL)
		return NULL;
	g->gen = gen;
	generation_ref(gen);
	TAILQ_INSERT_TAIL(&w->gens, g, link);
	g->routes = calloc(cfg->nupstreams, sizeof(*g->routes));
	g->listeners = calloc(gen->nlisteners + 1, sizeof(*g->listeners));
	if (g->routes == NULL || g->listeners == NULL)
		goto fail;
	/* only now: free_wgen walks what these count */
	g->nroutes = cfg->nupstreams;
	g->nlisteners = gen->nlisteners;
	for (size_t r = 0; r < g->nroutes; r++) {
		const struct cfg_upstream *up = &cfg->upstreams[r];
		struct route *route = &g->routes[r];
		route->env = &w->env;
		route->listeners = gen->listeners;
		route->upstream = up;
		route->proto = proto_for(up->protocol);
		route->pools = calloc(up->nservers, sizeof(*route->pools));
		if (route->pools == NULL)
			goto fail;
		route->npools = up->nservers;
		for (size_t i = 0; i < up->nservers; i++)
			if ((route->pools[i] = get_pool(w, up,
			    &up->servers[i])) == NULL)
				goto fail;
	}
	for (size_t i = 0; i < g->nlisteners; i++) {
		struct worker_listener *wl = &g->listeners[i];
		wl->worker = w;
		wl->listener = &gen->listeners[i];
		wl->route = &g->routes[wl->listener->upstream_index];
		event_assign(&wl->accept_ev, w->base, wl->listener->fd,
		    EV_READ | EV_PERSIST, on_accept, wl);
		evtimer_assign(&wl->resume_ev, w->base, on_accept_resume, wl);
	}
	return g;
fail:
	free_wgen(w, g);
	return NULL;
}

static unsigned
wgen_clients(const struct wgen *g)
{
	unsigned n = 0;

	for (size_t r = 0; r < g->nroutes; r++)
		n += g->routes[r].nclients;
	return n;
}

/* Old generations go once their last client has. */
static void
free_unused_gens(struct worker *w)
{
	struct wgen *g, *next;

	for (g = TAILQ_FIRST(&w->gens); g != NULL; g = next) {
		next = TAILQ_NEXT(g, link);
		if (g != w->current && wgen_clients(g) == 0) {
			log_debug("configuration generation %u retired",
			    g->gen->id);
			free_wgen(w, g);
		}
	}
}

static uint64_t
min_client_timeout(const struct wgen *g)
{
	uint64_t min = 0;

	for (size_t i = 0; i < g->nlisteners; i++) {
		uint64_t t = g->listeners[i].listener->cfg->idle_timeout_ms;
		if (t > 0 && (min == 0 || t < min))
			min = t;
	}
	return min;
}

/* ---- the janitor ---------------------------------------------------------- */

static void job_apply(struct worker *w, void *arg);

static void
on_janitor(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	uint64_t now = clock_ms();
	struct pool *p, *next;
	uint64_t min = 0;
	struct wgen *g;

	for (p = TAILQ_FIRST(&w->pools); p != NULL; p = next) {
		next = TAILQ_NEXT(p, link);
		pool_tick(p, now);
	}
	TAILQ_FOREACH(g, &w->gens, link) {
		uint64_t t = min_client_timeout(g);
		if (t > 0 && (min == 0 || t < min))
			min = t;
	}
	if (min > 0)
		client_expire_idle(&w->env, now, min);
	client_release_quiet(&w->env, now);
	free_unused_gens(w);
	if (w->apply_later != NULL)
		job_apply(w, w->apply_later);
}

/* ---- stopping ------------------------------------------------------------- */

static void
close_everything(struct worker *w)
{
	struct client *c;
	struct pool *p;

	while ((c = TAILQ_FIRST(&w->env.clients)) != NULL)
		client_close(c, "shutting down");
	TAILQ_FOREACH(p, &w->pools, link)
		pool_close_all(p, CLOSE_SHUTDOWN);
	/* Off the to-flush lists before anything is freed: all are closed,
	 * so nothing is written, the lists are only emptied. */
	backend_flush_all(&w->backends);
	client_flush_all(&w->env);
	client_reap(&w->env);
	backend_reap(&w->backends);
}

static void
stop_loop(struct worker *w)
{
	close_everything(w);
	w->state = WORKER_STOPPED;
	event_del(w->janitor);
	event_base_loopbreak(w->base); /* loopexit allocates */
}

static void
finish_if_drained(struct worker *w)
{
	if (w->state == WORKER_DRAINING && w->env.nclients == 0)
		stop_loop(w);
}

static void
stop_accepting(struct worker *w)
{
	struct wgen *g;

	TAILQ_FOREACH(g, &w->gens, link)
		set_accepting(g, false);
	atomic_store(&w->accepts_stopped, true);
	event_active(w->notify_main, EV_READ, 0);
}

/* SIGTERM, first step: no more accepts; idle clients go now, busy ones
 * when their replies are written. */
static void
job_drain(struct worker *w, void *arg)
{
	struct client *c, *next;

	if (w->state != WORKER_RUNNING)
		return;
	w->state = WORKER_DRAINING;
	stop_accepting(w);
	for (c = TAILQ_FIRST(&w->env.clients); c != NULL; c = next) {
		next = TAILQ_NEXT(c, link);
		if (!client_owes_replies(c))
			client_close(c, "shutting down");
		else
			client_drain(c);
	}
	log_info("draining %u client(s)", w->env.nclients);
	finish_if_drained(w);
}

/* Shutdown timeout: whatever is left is closed. */
static void
job_stop_now(struct worker *w, void *arg)
{
	if (w->state == WORKER_STOPPED)
		return;
	if (w->env.nclients > 0)
		log_warn("shutdown timeout: closing %u client(s) with replies "
		    "still owed", w->env.nclients);
	stop_accepting(w);
	stop_loop(w);
}

/*
 * Reload: new clients come in through the new generation; clients already
 * connected keep the routes they came in on until they leave. Pools whose
 * address stays are shared and get the new settings now.
 */
static void
job_apply(struct worker *w, void *arg)
{
	struct generation *gen = arg;
	struct wgen *old = w->current;

	if (w->apply_later != NULL && w->apply_later != gen) {
		generation_unref(w->apply_later); /* a newer one came */
		w->apply_later = NULL;
	}
	if (w->state == WORKER_RUNNING) {
		struct wgen *g = new_wgen(w, gen);
		if (g == NULL) {
			/* keep the reference; the janitor tries again */
			if (w->apply_later == NULL)
				log_error("reload: out of memory; keeping "
				    "generation %u, trying again", old->gen->id);
			w->apply_later = gen;
			return;
		}
		set_accepting(old, false);
		w->current = g;
		set_accepting(g, true);
		log_debug("serving configuration generation %u", gen->id);
	}
	if (w->apply_later == gen)
		w->apply_later = NULL;
	atomic_store(&w->gen_id, gen->id);
	event_active(w->notify_main, EV_READ, 0);
	generation_unref(gen); /* the reference main took for this job */
	free_unused_gens(w);
}

/* ---- the mailbox ---------------------------------------------------------- */

static void
on_mailbox(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct worker_job *jobs, *next, *rev = NULL;

	int stop = atomic_exchange(&w->stop_request, STOP_NONE);
	if (stop == STOP_DRAIN)
		job_drain(w, NULL);
	else if (stop == STOP_NOW)
		job_stop_now(w, NULL);
	pthread_mutex_lock(&w->lock);
	jobs = w->jobs;
	w->jobs = NULL;
	pthread_mutex_unlock(&w->lock);
	for (; jobs != NULL; jobs = next) { /* restore posting order */
		next = jobs->next;
		jobs->next = rev;
		rev = jobs;
	}
	for (; rev != NULL; rev = next) {
		next = rev->next;
		rev->fn(w, rev->arg);
		free(rev);
	}
}

int
worker_post(struct worker *w, worker_job_fn *fn, void *arg)
{
	struct worker_job *job = malloc(sizeof(*job));

	if (job == NULL)
		return -1;
	job->fn = fn;
	job->arg = arg;
	pthread_mutex_lock(&w->lock);
	job->next = w->jobs;
	w->jobs = job;
	pthread_mutex_unlock(&w->lock);
	event_active(w->mailbox, EV_READ, 0);
	return 0;
}

void
worker_request_stop(struct worker *w, bool now)
{
	int want = now ? STOP_NOW : STOP_DRAIN;
	int had = atomic_load(&w->stop_request);

	while (had < want &&
	    !atomic_compare_exchange_weak(&w->stop_request, &had, want))
		;
	event_active(w->mailbox, EV_READ, 0);
}

/* Hand the worker a new generation; it takes its own reference. */
void
worker_apply(struct worker *w, struct generation *gen)
{
	generation_ref(gen);
	if (worker_post(w, job_apply, gen) == -1) {
		log_error("reload: cannot reach worker %u: out of memory",
		    w->id);
		generation_unref(gen);
	}
}

/* ---- snapshots for the control socket -------------------------------------- */

static void
snapshot_pool(const struct pool *p, uint64_t now, struct pool_snapshot *ps)
{
	const struct backend *b;

	ps->counts[0] = p->count[BACKEND_CONNECTING];
	ps->counts[1] = p->count[BACKEND_IDLE];
	ps->counts[2] = p->count[BACKEND_ACTIVE];
	ps->counts[3] = p->count[BACKEND_PROBING];
	ps->counts[4] = p->count[BACKEND_DEDICATED];
	TAILQ_FOREACH(b, &p->lists[BACKEND_ACTIVE], pool_link)
		ps->inflight += b->ninflight;
	TAILQ_FOREACH(b, &p->lists[BACKEND_CONNECTING], pool_link)
		ps->inflight += b->ninflight;
	TAILQ_FOREACH(b, &p->lists[BACKEND_DEDICATED], pool_link)
		ps->inflight += b->ninflight;
	ps->stats = p->stats;
	ps->down = p->down;
	ps->down_for_ms = p->down ? now - p->down_since_ms : 0;
	ps->failures = p->failures;
	snprintf(ps->last_error, sizeof(ps->last_error), "%s", p->last_error);
}

/* Which of the current generation's listeners a client came in on (by
 * address, so clients of an older generation count where they belong);
 * nlisteners for an address the current configuration no longer has. */
static size_t
listener_slot(const struct wgen *g, const struct client *c)
{
	for (size_t i = 0; i < g->nlisteners; i++)
		if (g->listeners[i].listener == client_listener(c) ||
		    strcmp(g->listeners[i].listener->cfg->addr.text,
		    client_listener(c)->cfg->addr.text) == 0)
			return i;
	return g->nlisteners;
}

/*
 * Copy this worker's counters for the control socket. Runs on the worker's
 * own thread (posted as a job), so it reads without locks; the copy is the
 * only thing that crosses threads. Pools are listed in the order of the
 * current configuration.
 */
int
worker_fill_snapshot(struct worker *w, struct worker_snapshot *s)
{
	const struct wgen *g = w->current;
	uint64_t now = clock_ms();
	const struct client *c;
	size_t n = 0;

	memset(s, 0, sizeof(*s));
	s->id = w->id;
	s->gen_id = g->gen->id;
	s->stats = w->stats;
	s->nclients = w->env.nclients;
	for (size_t r = 0; r < g->nroutes; r++)
		s->npools += g->routes[r].npools;
	s->pools = calloc(s->npools ? s->npools : 1, sizeof(*s->pools));
	s->clients_per_listener = calloc(g->nlisteners + 1,
	    sizeof(*s->clients_per_listener));
	if (s->pools == NULL || s->clients_per_listener == NULL) {
		worker_snapshot_free(s);
		return -1;
	}
	for (size_t r = 0; r < g->nroutes; r++)
		for (size_t i = 0; i < g->routes[r].npools; i++)
			snapshot_pool(g->routes[r].pools[i], now,
			    &s->pools[n++]);
	TAILQ_FOREACH(c, &w->env.clients, link) {
		s->clients_per_listener[listener_slot(g, c)]++;
		if (now - client_created_ms(c) > s->oldest_client_ms)
			s->oldest_client_ms = now - client_created_ms(c);
		if (client_input_length(c) > s->biggest_input)
			s->biggest_input = client_input_length(c);
		if (client_output_length(c) > s->biggest_output)
			s->biggest_output = client_output_length(c);
	}
	return 0;
}

void
worker_snapshot_free(struct worker_snapshot *s)
{
	free(s->pools);
	free(s->clients_per_listener);
	s->pools = NULL;
	s->clients_per_listener = NULL;
}

/* ---- life cycle ------------------------------------------------------------- */

int
worker_init(struct worker *w, unsigned id, struct generation *gen,
    struct event *notify_main, char *err, size_t errlen)
{
	memset(w, 0, sizeof(*w));
	w->id = id;
	w->notify_main = notify_main;
	TAILQ_INIT(&w->gens);
	TAILQ_INIT(&w->pools);
	snprintf(w->name, sizeof(w->name), "w%u", id);
	pthread_mutex_init(&w->lock, NULL);
	w->base = event_base_new();
	if (w->base == NULL || event_base_priority_init(w->base, PRIORITIES)) {
		snprintf(err, errlen, "worker %u: cannot create an event loop",
		    id);
		return -1;
	}
	struct event *flush = event_new(w->base, -1, 0, on_flush, w);
	w->janitor = event_new(w->base, -1, EV_PERSIST, on_janitor, w);
	w->mailbox = event_new(w->base, -1, EV_PERSIST, on_mailbox, w);
	w->env.scratch = evbuffer_new();
	w->backends.scratch = evbuffer_new();
	if (flush == NULL || w->janitor == NULL || w->mailbox == NULL ||
	    w->env.scratch == NULL || w->backends.scratch == NULL) {
		if (flush != NULL)
			event_free(flush);
		snprintf(err, errlen, "worker %u: out of memory", id);
		return -1;
	}
	event_priority_set(flush, FLUSH_PRIORITY);
	w->env.base = w->base;
	w->env.flush_ev = flush;
	w->env.stats = &w->stats;
	w->env.worker_id = id & 0xff;
	TAILQ_INIT(&w->env.clients);
	LIST_INIT(&w->env.talking);
	w->backends.flush_ev = flush;
	if ((w->current = new_wgen(w, gen)) == NULL) {
		snprintf(err, errlen, "worker %u: out of memory", id);
		return -1;
	}
	atomic_store(&w->gen_id, gen->id);
	return 0;
}

static void *
run_worker(void *arg)
{
	struct worker *w = arg;
	struct timeval tick = { 0, JANITOR_INTERVAL_MS * 1000 };

	log_set_thread_name(w->name);
	set_accepting(w->current, true);
	event_add(w->janitor, &tick);
	event_add(w->mailbox, NULL);
	on_janitor(-1, 0, w); /* min_idle connections open now, not in 100 ms */
	log_debug("started");
	event_base_dispatch(w->base);
	evbuffer_move_done();
	log_debug("stopped");
	atomic_store(&w->accepts_stopped, true);
	atomic_store(&w->finished, true);
	event_active(w->notify_main, EV_READ, 0);
	return NULL;
}

int
worker_start(struct worker *w, char *err, size_t errlen)
{
	int e = pthread_create(&w->thread, NULL, run_worker, w);

	if (e != 0) {
		snprintf(err, errlen, "cannot start worker %u: %s", w->id,
		    strerror(e));
		return -1;
	}
	w->started = true;
	return 0;
}

void
worker_join(struct worker *w)
{
	if (w->started)
		pthread_join(w->thread, NULL);
	w->started = false;
}

/* After the thread has ended (or never started): free everything. Jobs
 * never run drop what they hold. */
void
worker_free(struct worker *w)
{
	struct worker_job *job;
	struct wgen *g;

	if (w->base != NULL)
		close_everything(w);
	while ((job = w->jobs) != NULL) {
		w->jobs = job->next;
		if (job->fn == job_apply)
			generation_unref(job->arg);
		free(job);
	}
	if (w->apply_later != NULL)
		generation_unref(w->apply_later);
	w->current = NULL;
	while ((g = TAILQ_FIRST(&w->gens)) != NULL)
		free_wgen(w, g);
	request_cache_clear(&w->env.requests);
	if (w->env.scratch != NULL)
		evbuffer_free(w->env.scratch);
	if (w->backends.scratch != NULL)
		evbuffer_free(w->backends.scratch);
	if (w->env.flush_ev != NULL)
		event_free(w->env.flush_ev);
	if (w->janitor != NULL)
		event_free(w->janitor);
	if (w->mailbox != NULL)
		event_free(w->mailbox);
	if (w->base != NULL)
		event_base_free(w->base);
	pthread_mutex_destroy(&w->lock);
	memset(w, 0, sizeof(*w));
}
