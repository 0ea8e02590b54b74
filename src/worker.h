/*
 * worker.h - one thread with its own event loop, clients, pools and stats.
 *
 * Nothing on the request path is shared between workers. The single point
 * where another thread reaches in is worker_post(): a job queued under a
 * mutex and a wakeup of the worker's loop; the job then runs on the worker's
 * own thread. The main thread uses it to hand a worker a new configuration
 * generation, to collect its counters, and to stop it.
 */
#ifndef SIDEPOOL_WORKER_H
#define SIDEPOOL_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "backend.h"
#include "client.h"
#include "config.h"
#include "generation.h"
#include "stats.h"

struct worker;
typedef void worker_job_fn(struct worker *w, void *arg);

struct worker_job {
	struct worker_job *next;
	worker_job_fn *fn;
	void *arg;
};

enum worker_state {
	WORKER_RUNNING,
	WORKER_DRAINING, /* no accepts; waiting for clients' replies */
	WORKER_STOPPED,
};

struct worker_listener {
	struct worker *worker;
	struct listener *listener;
	struct route *route;
	struct event accept_ev;
	struct event resume_ev; /* accepts paused after EMFILE */
};

/* What one worker made of one generation: its routes (pools shared with
 * other generations where the address stays) and its accept events. The
 * current one accepts; older ones live until their last client leaves. */
struct wgen {
	TAILQ_ENTRY(wgen) link;
	struct generation *gen;
	struct route *routes;   /* one per upstream, index as in the config */
	size_t nroutes;
	struct worker_listener *listeners;
	size_t nlisteners;
	bool accepting;
};

TAILQ_HEAD(wgen_list, wgen);
TAILQ_HEAD(pool_list, pool);

struct worker {
	unsigned id;
	char name[16];
	pthread_t thread;
	bool started;
	struct event_base *base;
	enum worker_state state;

	struct wgen *current;
	struct wgen_list gens;  /* oldest first; the last is current */
	struct pool_list pools; /* every pool of every generation */
	struct client_env env;
	struct backend_queues backends;
	struct worker_stats stats;

	struct event *janitor;
	struct event *mailbox;
	pthread_mutex_t lock;   /* guards jobs, and nothing else */
	struct worker_job *jobs;
	/* The main thread's event, activated when this worker has applied a
	 * generation (gen_id), stopped accepting, or finished, so main knows
	 * which listening sockets nobody watches any more and when to join. */
	struct event *notify_main;
	atomic_uint gen_id;
	atomic_bool accepts_stopped;
	atomic_bool finished;
	/* Stopping needs no memory: an enum stop_request the mailbox acts on. */
	atomic_int stop_request;
	struct generation *apply_later; /* a reload new_wgen could not build */
};

/* What main asked a worker to do about stopping; only ever raised. */
enum stop_request { STOP_NONE, STOP_DRAIN, STOP_NOW };

int worker_init(struct worker *w, unsigned id, struct generation *gen,
    struct event *notify_main, char *err, size_t errlen);
int worker_start(struct worker *w, char *err, size_t errlen);
int worker_post(struct worker *w, worker_job_fn *fn, void *arg);
void worker_apply(struct worker *w, struct generation *gen);
void worker_request_stop(struct worker *w, bool now);
int worker_fill_snapshot(struct worker *w, struct worker_snapshot *s);
void worker_snapshot_free(struct worker_snapshot *s);
void worker_join(struct worker *w);
void worker_free(struct worker *w);

#endif
