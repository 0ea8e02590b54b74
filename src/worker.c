/*
 * worker.c - a worker thread: its event loop, its accepts, the end-of-round
 * flush that batches writes, the janitor tick, and the job mailbox that is
 * its only door to other threads.
 */
#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "net.h"

#define ACCEPTS_PER_WAKEUP 32
#define JANITOR_INTERVAL_MS 100
#define EMFILE_PAUSE_MS 100

/* Three priorities: I/O runs at the default (1); the flush runs at 2, after
 * every ready socket of the round has been read, so one write carries many
 * clients' requests. */
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

static void
accept_clients(struct worker *w, struct worker_listener *wl)
{
	struct listener *l = wl->listener;
	const struct cfg_listener *cfg = l->cfg;

	for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
		int fd;
		if (net_accept(l->fd, &fd) == -1) {
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: stop trying for a while
				 * instead of spinning on a readable socket. */
				log_warn("cannot accept on %s: %s (raise the "
				    "open files limit, LimitNOFILE=)",
				    cfg->addr.text, strerror(errno));
				struct timeval tv = { 0, EMFILE_PAUSE_MS * 1000 };
				event_del(&wl->accept_ev);
				event_add(&wl->resume_ev, &tv);
			}
			return;
		}
		if (cfg->addr.family != AF_UNIX)
			net_tune_stream(fd);
		const struct route *route = &w->routes[l->upstream_index];
		unsigned n = atomic_fetch_add(&l->nclients, 1) + 1;
		if (cfg->max_clients > 0 && n > cfg->max_clients) {
			atomic_fetch_sub(&l->nclients, 1);
			w->stats.clients_rejected++;
			client_reject(route, fd, "max number of clients reached");
			continue;
		}
		if (client_new(&w->env, route, cfg, &l->nclients, fd) == NULL) {
			atomic_fetch_sub(&l->nclients, 1);
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
	struct worker *w = wl->worker;

	if (w->state == WORKER_RUNNING)
		accept_clients(w, wl);
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	for (size_t i = 0; i < w->nlisteners; i++) {
		struct worker_listener *wl = &w->listeners[i];
		if (w->state == WORKER_RUNNING &&
		    !event_pending(&wl->accept_ev, EV_READ, NULL))
			event_add(&wl->accept_ev, NULL);
	}
}

static void
on_janitor(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	uint64_t now = clock_ms();

	for (size_t r = 0; r < w->nroutes; r++)
		for (size_t i = 0; i < w->routes[r].npools; i++)
			pool_tick(&w->routes[r].pools[i], now);
	if (w->min_client_timeout_ms > 0)
		client_expire_idle(&w->env, now, w->min_client_timeout_ms);
}

static void
close_everything(struct worker *w)
{
	struct client *c;

	while ((c = TAILQ_FIRST(&w->env.clients)) != NULL)
		client_close(c, "shutting down");
	for (size_t r = 0; r < w->nroutes; r++)
		for (size_t i = 0; i < w->routes[r].npools; i++)
			pool_close_all(&w->routes[r].pools[i], CLOSE_SHUTDOWN);
	client_reap(&w->env);
	backend_reap(&w->backends);
}

static void
stop_loop(struct worker *w)
{
	close_everything(w);
	w->state = WORKER_STOPPED;
	event_del(w->janitor);
	event_base_loopexit(w->base, NULL);
}

static void
finish_if_drained(struct worker *w)
{
	if (w->state == WORKER_DRAINING && w->env.nclients == 0)
		stop_loop(w);
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
	for (size_t i = 0; i < w->nlisteners; i++) {
		event_del(&w->listeners[i].accept_ev);
		event_del(&w->listeners[i].resume_ev);
	}
	atomic_store(&w->accepts_stopped, true);
	event_active(w->notify_main, EV_READ, 0);
	for (c = TAILQ_FIRST(&w->env.clients); c != NULL; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->npending == 0 && evbuffer_get_length(c->out) == 0)
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
	stop_loop(w);
}

static void
on_mailbox(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	struct worker_job *jobs, *next, *rev = NULL;

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
	if (worker_post(w, now ? job_stop_now : job_drain, NULL) == -1)
		log_error("cannot stop worker %u: out of memory", w->id);
}

static void
snapshot_pool(const struct pool *p, uint64_t now, struct pool_snapshot *ps)
{
	ps->counts[0] = p->count[BACKEND_CONNECTING];
	ps->counts[1] = p->count[BACKEND_IDLE];
	ps->counts[2] = p->count[BACKEND_ACTIVE];
	ps->counts[3] = p->count[BACKEND_PROBING];
	const struct backend *b;
	TAILQ_FOREACH(b, &p->lists[BACKEND_ACTIVE], pool_link)
		ps->inflight += b->ninflight;
	TAILQ_FOREACH(b, &p->lists[BACKEND_CONNECTING], pool_link)
		ps->inflight += b->ninflight;
	ps->stats = p->stats;
	ps->down = p->down;
	ps->down_for_ms = p->down ? now - p->down_since_ms : 0;
	ps->failures = p->failures;
	snprintf(ps->last_error, sizeof(ps->last_error), "%s", p->last_error);
}

/*
 * Copy this worker's counters for the control socket. Runs on the worker's
 * own thread (posted as a job), so it reads without locks; the copy is the
 * only thing that crosses threads.
 */
int
worker_fill_snapshot(struct worker *w, struct worker_snapshot *s)
{
	uint64_t now = clock_ms();
	const struct client *c;
	size_t n = 0;

	memset(s, 0, sizeof(*s));
	s->id = w->id;
	s->stats = w->stats;
	s->nclients = w->env.nclients;
	for (size_t r = 0; r < w->nroutes; r++)
		s->npools += w->routes[r].npools;
	s->pools = calloc(s->npools ? s->npools : 1, sizeof(*s->pools));
	s->clients_per_listener = calloc(w->cfg->nlisteners + 1,
	    sizeof(*s->clients_per_listener));
	if (s->pools == NULL || s->clients_per_listener == NULL) {
		worker_snapshot_free(s);
		return -1;
	}
	for (size_t r = 0; r < w->nroutes; r++)
		for (size_t i = 0; i < w->routes[r].npools; i++)
			snapshot_pool(&w->routes[r].pools[i], now,
			    &s->pools[n++]);
	TAILQ_FOREACH(c, &w->env.clients, link) {
		size_t l = (size_t)(c->listener - w->cfg->listeners);
		if (l < w->cfg->nlisteners)
			s->clients_per_listener[l]++;
		if (now - c->created_ms > s->oldest_client_ms)
			s->oldest_client_ms = now - c->created_ms;
		if (evbuffer_get_length(c->in) > s->biggest_input)
			s->biggest_input = evbuffer_get_length(c->in);
		if (evbuffer_get_length(c->out) > s->biggest_output)
			s->biggest_output = evbuffer_get_length(c->out);
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

static int
init_routes(struct worker *w, char *err, size_t errlen)
{
	const struct config *cfg = w->cfg;

	w->nroutes = cfg->nupstreams;
	w->routes = calloc(w->nroutes, sizeof(*w->routes));
	if (w->routes == NULL)
		goto oom;
	for (size_t r = 0; r < w->nroutes; r++) {
		const struct cfg_upstream *up = &cfg->upstreams[r];
		struct route *route = &w->routes[r];
		route->upstream = up;
		route->proto = proto_for(up->protocol);
		route->npools = up->nservers;
		route->pools = calloc(up->nservers, sizeof(*route->pools));
		if (route->pools == NULL)
			goto oom;
		for (size_t i = 0; i < up->nservers; i++) {
			struct pool *p = &route->pools[i];
			pool_init(p, up, &up->servers[i], &daemon_pool_ops,
			    clock_ms() * 2654435761u + w->id * 40503u + i);
			p->worker_id = w->id;
			p->base = w->base;
			p->requests = &w->env.requests;
			p->queues = &w->backends;
		}
	}
	return 0;
oom:
	snprintf(err, errlen, "worker %u: out of memory", w->id);
	return -1;
}

static int
init_listeners(struct worker *w, struct listener *ls, size_t n)
{
	w->nlisteners = n;
	w->listeners = calloc(n, sizeof(*w->listeners));
	if (w->listeners == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		struct worker_listener *wl = &w->listeners[i];
		uint64_t t = ls[i].cfg->idle_timeout_ms;
		wl->worker = w;
		wl->listener = &ls[i];
		event_assign(&wl->accept_ev, w->base, ls[i].fd,
		    EV_READ | EV_PERSIST, on_accept, wl);
		evtimer_assign(&wl->resume_ev, w->base, on_accept_resume, w);
		if (t > 0 && (w->min_client_timeout_ms == 0 ||
		    t < w->min_client_timeout_ms))
			w->min_client_timeout_ms = t;
	}
	return 0;
}

int
worker_init(struct worker *w, unsigned id, const struct config *cfg,
    struct listener *listeners, size_t nlisteners, struct event *notify_main,
    char *err, size_t errlen)
{
	memset(w, 0, sizeof(*w));
	w->id = id;
	w->cfg = cfg;
	w->notify_main = notify_main;
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
	if (flush == NULL || w->janitor == NULL || w->mailbox == NULL ||
	    w->env.scratch == NULL) {
		if (flush != NULL)
			event_free(flush);
		snprintf(err, errlen, "worker %u: out of memory", id);
		return -1;
	}
	event_priority_set(flush, FLUSH_PRIORITY);
	w->env.base = w->base;
	w->env.flush_ev = flush;
	w->env.stats = &w->stats;
	TAILQ_INIT(&w->env.clients);
	w->backends.flush_ev = flush;
	if (init_routes(w, err, errlen) == -1)
		return -1;
	if (init_listeners(w, listeners, nlisteners) == -1) {
		snprintf(err, errlen, "worker %u: out of memory", id);
		return -1;
	}
	return 0;
}

static void *
run_worker(void *arg)
{
	struct worker *w = arg;
	struct timeval tick = { 0, JANITOR_INTERVAL_MS * 1000 };

	log_set_thread_name(w->name);
	for (size_t i = 0; i < w->nlisteners; i++)
		event_add(&w->listeners[i].accept_ev, NULL);
	event_add(w->janitor, &tick);
	event_add(w->mailbox, NULL);
	on_janitor(-1, 0, w); /* min_idle connections open now, not in 100 ms */
	log_debug("started");
	event_base_dispatch(w->base);
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

void
worker_free(struct worker *w)
{
	struct worker_job *job;

	if (w->base != NULL)
		close_everything(w);
	while ((job = w->jobs) != NULL) {
		w->jobs = job->next;
		free(job);
	}
	for (size_t r = 0; r < w->nroutes; r++)
		free(w->routes[r].pools);
	free(w->routes);
	for (size_t i = 0; i < w->nlisteners; i++) {
		event_del(&w->listeners[i].accept_ev);
		event_del(&w->listeners[i].resume_ev);
	}
	free(w->listeners);
	request_cache_clear(&w->env.requests);
	if (w->env.scratch != NULL)
		evbuffer_free(w->env.scratch);
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
