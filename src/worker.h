/*
 * worker.h - one thread with its own event loop, clients, pools and stats.
 *
 * Nothing on the request path is shared between workers. The single point
 * where another thread reaches in is worker_post(): a job queued under a
 * mutex and a wakeup of the worker's loop; the job then runs on the worker's
 * own thread. The main thread uses it to stop workers (and, later, to hand
 * them a new config or collect their stats).
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
#include "listener.h"
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
	struct event accept_ev;
	struct event resume_ev; /* accepts paused after EMFILE */
};

struct worker {
	unsigned id;
	char name[16];
	pthread_t thread;
	bool started;
	struct event_base *base;
	const struct config *cfg;
	enum worker_state state;

	struct worker_listener *listeners;
	size_t nlisteners;
	struct route *routes;   /* one per upstream, index as in the config */
	size_t nroutes;
	struct client_env env;
	struct backend_queues backends;
	struct worker_stats stats;
	uint64_t min_client_timeout_ms;

	struct event *janitor;
	struct event *mailbox;
	pthread_mutex_t lock;   /* guards jobs, and nothing else */
	struct worker_job *jobs;
	/* The main thread's event, activated when this worker has stopped
	 * accepting (accepts_stopped) and again when its thread ends (state
	 * finished), so main knows when the listening sockets are no longer
	 * watched by anyone and may be closed, and when to join. */
	struct event *notify_main;
	atomic_bool accepts_stopped;
	atomic_bool finished;
};

int worker_init(struct worker *w, unsigned id, const struct config *cfg,
    struct listener *listeners, size_t nlisteners, struct event *notify_main,
    char *err, size_t errlen);
int worker_start(struct worker *w, char *err, size_t errlen);
int worker_post(struct worker *w, worker_job_fn *fn, void *arg);
void worker_request_stop(struct worker *w, bool now);
int worker_fill_snapshot(struct worker *w, struct worker_snapshot *s);
void worker_snapshot_free(struct worker_snapshot *s);
void worker_join(struct worker *w);
void worker_free(struct worker *w);

#endif
