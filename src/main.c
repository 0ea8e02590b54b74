/*
 * main.c - the daemon's life: arguments, config, the generation in force,
 * workers, reloads, signals, and an orderly exit. The only place that
 * decides to exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "build_config.h"
#include "buffer.h"
#include "config.h"
#include "control.h"
#include "generation.h"
#include "log.h"
#include "notify.h"
#include "worker.h"

#define MAX_RETIRING 16

struct daemon {
	const char *config_path;
	struct generation *gen;      /* in force */
	/* Older generations whose sockets some worker may still watch: their
	 * removed listeners close once every worker has moved past them. */
	struct generation *retiring[MAX_RETIRING];
	size_t nretiring;
	struct event_base *base;
	struct worker *workers;
	unsigned nworkers;
	struct control *control;
	bool stopping;
	struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
	struct event *worker_news; /* a worker applied, stopped accepting, ended */
	struct event *stop_timer;
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: sidepool [-t] [-c file]\n"
	    "       sidepool -V | -h\n"
	    "\n"
	    "  -c file  configuration file (default %s)\n"
	    "  -t       check the configuration file and exit: 0 if valid\n"
	    "  -V       print the version and exit\n"
	    "  -h       print this help and exit\n"
	    "\n"
	    "sidepool runs in the foreground; see sidepool(8) and "
	    "sidepool.yml(5).\n", CONFIG_DEFAULT_PATH);
}

/* Errors go to stderr when there is no log yet (start, -t), to the log
 * and to the caller's buffer on reload. */
static struct config *
load_config(const char *path, bool to_log, char *msg, size_t msglen)
{
	struct config_errors errs = { 0 };
	struct config *cfg = config_load(path, &errs);
	size_t used = 0;

	for (size_t i = 0; i < errs.n; i++) {
		if (to_log)
			log_error("%s", errs.msgs[i]);
		else
			fprintf(stderr, "%s\n", errs.msgs[i]);
		if (msg != NULL && used < msglen) {
			int n = snprintf(msg + used, msglen - used, "%s%s",
			    i ? "; " : "", errs.msgs[i]);
			if (n > 0)
				used += (size_t)n;
		}
	}
	config_errors_clear(&errs);
	return cfg;
}

/*
 * What the loader accepts but this version cannot run. The schema already
 * takes several servers per upstream (for sharding, later); until then a
 * second server would silently get no traffic, so it is refused instead.
 */
static bool
config_runnable(const struct config *cfg, char *msg, size_t msglen)
{
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		const struct cfg_upstream *up = &cfg->upstreams[i];
		if (up->nservers > 1) {
			snprintf(msg, msglen, "%s:%d:%d: upstream '%s' lists %zu "
			    "servers, but this version sends an upstream's "
			    "traffic to one server (no sharding yet): list one "
			    "server, or one upstream and listener per server",
			    cfg->path, up->line, up->col, up->name,
			    up->nservers);
			return false;
		}
	}
	return true;
}

static int
write_pid_file(const char *path)
{
	char buf[32];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd == -1) {
		log_error("cannot write pid file %s: %s (check that its "
		    "directory exists and is writable)", path, strerror(errno));
		return -1;
	}
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	ssize_t w = write(fd, buf, (size_t)n);
	close(fd);
	return w == n ? 0 : -1;
}

static void
log_listeners(const struct generation *g)
{
	for (size_t i = 0; i < g->nlisteners; i++) {
		const struct cfg_listener *lc = g->listeners[i].cfg;
		log_info("listening on %s for upstream %s (%s)", lc->addr.text,
		    lc->upstream->name, proto_kind_name(lc->upstream->protocol));
	}
}

static int
start_workers(struct daemon *d)
{
	char err[256];

	for (unsigned i = 0; i < d->gen->cfg->workers; i++) {
		d->nworkers = i + 1;
		if (worker_init(&d->workers[i], i, d->gen, d->worker_news, err,
		    sizeof(err)) == -1 ||
		    worker_start(&d->workers[i], err, sizeof(err)) == -1) {
			log_error("%s", err);
			return -1;
		}
	}
	return 0;
}

static void
stop_workers(struct daemon *d)
{
	for (unsigned i = 0; i < d->nworkers; i++)
		if (d->workers[i].started)
			worker_request_stop(&d->workers[i], true);
	for (unsigned i = 0; i < d->nworkers; i++) {
		worker_join(&d->workers[i]);
		worker_free(&d->workers[i]);
	}
	free(d->workers);
	d->workers = NULL;
	d->nworkers = 0;
}

static void
apply_log_file(const char *old, const struct config *cfg)
{
	char err[512];

	if ((old == NULL && cfg->log_file == NULL) || (old != NULL &&
	    cfg->log_file != NULL && strcmp(old, cfg->log_file) == 0))
		return;
	if (cfg->log_file == NULL) {
		log_close();
		(void)log_open(NULL, cfg->log_level, err, sizeof(err));
	} else if (log_open(cfg->log_file, cfg->log_level, err,
	    sizeof(err)) == -1) {
		log_error("reload: %s; logging stays where it was", err);
		return;
	}
	log_notice("logging to %s", cfg->log_file ? cfg->log_file : "stderr");
}

/*
 * Reload: load and check the file, open the sockets of new addresses; only
 * if all of that works does anything change. Then every worker gets the
 * new generation: new clients use it, connected clients keep what they had
 * until they leave, pools of addresses that stay keep their connections.
 */
static bool
same_string(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/*
 * Settings read once at start: a reload cannot apply them, so it says so
 * rather than let an operator believe the new file is in force.
 */
static void
warn_restart_only(const struct daemon *d, const struct config *cfg)
{
	const struct config *old = d->gen->cfg;

	if (cfg->workers != d->nworkers)
		log_warn("reload: workers: %u needs a restart; keeping %u",
		    cfg->workers, d->nworkers);
	if (!same_string(cfg->control_path, old->control_path))
		log_warn("reload: a new control path needs a restart; the "
		    "control socket stays where it is");
	if (cfg->control_mode != old->control_mode)
		log_warn("reload: control.mode needs a restart; the control "
		    "socket keeps mode %04o", (unsigned)old->control_mode);
	if (cfg->has_metrics != old->has_metrics || (cfg->has_metrics &&
	    strcmp(cfg->metrics_addr.text, old->metrics_addr.text) != 0))
		log_warn("reload: metrics.listen needs a restart; the metrics "
		    "endpoint stays as it is");
	if (!same_string(cfg->pid_file, old->pid_file))
		log_warn("reload: pid_file needs a restart; the pid stays in %s",
		    old->pid_file != NULL ? old->pid_file : "no file");
}

static int
reload(struct daemon *d, char *msg, size_t msglen)
{
	char err[512];
	struct config *cfg;

	if (d->stopping) {
		snprintf(msg, msglen, "shutting down");
		return -1;
	}
	notify_send("RELOADING=1\nSTATUS=reloading %s", d->config_path);
	log_notice("reloading %s", d->config_path);
	if ((cfg = load_config(d->config_path, true, msg, msglen)) != NULL &&
	    !config_runnable(cfg, msg, msglen)) {
		log_error("%s", msg);
		config_free(cfg);
		cfg = NULL;
	}
	if (cfg == NULL) {
		log_error("reload failed: %s is not valid; still running the "
		    "previous configuration", d->config_path);
		notify_send("READY=1\nSTATUS=reload failed, running the "
		    "previous configuration");
		return -1;
	}
	if (d->nretiring == MAX_RETIRING) {
		snprintf(msg, msglen, "too many reloads still in progress; "
		    "try again in a moment");
		log_error("reload refused: %s", msg);
		config_free(cfg);
		notify_send("READY=1");
		return -1;
	}
	warn_restart_only(d, cfg);
	struct generation *g = generation_new(cfg, d->gen, err, sizeof(err));
	if (g == NULL) {
		log_error("reload failed: %s; still running the previous "
		    "configuration", err);
		snprintf(msg, msglen, "%s", err);
		config_free(cfg);
		notify_send("READY=1\nSTATUS=reload failed, running the "
		    "previous configuration");
		return -1;
	}
	log_set_level(cfg->log_level);
	apply_log_file(d->gen->cfg->log_file, cfg);
	d->retiring[d->nretiring++] = d->gen;
	d->gen = g;
	for (unsigned i = 0; i < d->nworkers; i++)
		worker_apply(&d->workers[i], g);
	control_set_config(d->control, cfg, g->id);
	log_listeners(g);
	log_notice("configuration generation %u in force", g->id);
	notify_send("READY=1\nSTATUS=serving %zu listener(s) with %u worker(s)",
	    g->nlisteners, d->nworkers);
	snprintf(msg, msglen, "reloaded %s (generation %u)", d->config_path,
	    g->id);
	return 0;
}

static int
reload_from_control(void *arg, char *msg, size_t msglen)
{
	return reload(arg, msg, msglen);
}

static void
on_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	for (unsigned i = 0; i < d->nworkers; i++)
		worker_request_stop(&d->workers[i], true);
}

/* SIGTERM/SIGINT: stop accepting at once, let replies owed be written,
 * give up after shutdown_timeout. */
static void
begin_stop(struct daemon *d, const char *why)
{
	struct timeval tv;
	uint64_t ms = d->gen->cfg->shutdown_timeout_ms;

	if (d->stopping) {
		log_notice("%s again: closing everything now", why);
		on_stop_timeout(-1, 0, d);
		return;
	}
	d->stopping = true;
	notify_send("STOPPING=1\nSTATUS=draining clients (up to %llu ms)",
	    (unsigned long long)ms);
	log_notice("%s: shutting down (waiting up to %llu ms for replies "
	    "owed)", why, (unsigned long long)ms);
	for (unsigned i = 0; i < d->nworkers; i++)
		worker_request_stop(&d->workers[i], false);
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	if (event_add(d->stop_timer, &tv) == -1) {
		/* Without the timer a slow client could hold the exit
		 * forever: do not wait at all. */
		log_error("cannot arm the shutdown timeout (out of memory); "
		    "closing every client now");
		on_stop_timeout(-1, 0, d);
	}
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	char msg[1024];

	switch (sig) {
	case SIGTERM:
		begin_stop(d, "SIGTERM");
		break;
	case SIGINT:
		begin_stop(d, "SIGINT");
		break;
	case SIGHUP:
		(void)reload(d, msg, sizeof(msg));
		break;
	case SIGUSR1:
		log_notice("SIGUSR1: reopening the log file");
		log_reopen();
		break;
	default:
		break;
	}
}

/*
 * Activations can merge, so look at every worker. A retired generation's
 * sockets close once every worker has moved past it; the current one's
 * once every worker has stopped accepting (closing them earlier would pull
 * descriptors from under the workers' loops). Then new clients are refused
 * at once instead of waiting in a backlog nobody will accept from.
 */
static void
on_worker_news(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	unsigned stopped = 0, deaf = 0, oldest = UINT32_MAX;

	for (unsigned i = 0; i < d->nworkers; i++) {
		struct worker *w = &d->workers[i];
		if (atomic_load(&w->accepts_stopped))
			deaf++;
		if (atomic_load(&w->finished))
			stopped++;
		unsigned id = atomic_load(&w->gen_id);
		if (id < oldest)
			oldest = id;
	}
	size_t keep = 0;
	for (size_t i = 0; i < d->nretiring; i++) {
		struct generation *g = d->retiring[i];
		if (g->id < oldest || deaf == d->nworkers) {
			generation_close_listeners(g);
			generation_unref(g);
		} else {
			d->retiring[keep++] = g;
		}
	}
	d->nretiring = keep;
	if (deaf == d->nworkers)
		generation_close_listeners(d->gen);
	if (stopped == d->nworkers) {
		if (!d->stopping)
			log_error("all workers stopped unexpectedly (the "
			    "errors above say why); exiting");
		event_base_loopbreak(d->base);
	}
}

static int
setup_main_loop(struct daemon *d)
{
	d->base = event_base_new();
	if (d->base == NULL)
		return -1;
	d->sig_term = evsignal_new(d->base, SIGTERM, on_signal, d);
	d->sig_int = evsignal_new(d->base, SIGINT, on_signal, d);
	d->sig_hup = evsignal_new(d->base, SIGHUP, on_signal, d);
	d->sig_usr1 = evsignal_new(d->base, SIGUSR1, on_signal, d);
	d->worker_news = event_new(d->base, -1, EV_PERSIST, on_worker_news,
	    d);
	d->stop_timer = evtimer_new(d->base, on_stop_timeout, d);
	if (!d->sig_term || !d->sig_int || !d->sig_hup || !d->sig_usr1 ||
	    !d->worker_news || !d->stop_timer)
		return -1;
	/* Adding a signal event allocates: unchecked, a failure would leave
	 * SIGTERM with its default action, or never tell main that the
	 * workers ended. */
	if (event_add(d->sig_term, NULL) == -1 ||
	    event_add(d->sig_int, NULL) == -1 ||
	    event_add(d->sig_hup, NULL) == -1 ||
	    event_add(d->sig_usr1, NULL) == -1 ||
	    event_add(d->worker_news, NULL) == -1)
		return -1;
	return 0;
}

static void
free_main_loop(struct daemon *d)
{
	struct event *evs[] = { d->sig_term, d->sig_int, d->sig_hup,
	    d->sig_usr1, d->worker_news, d->stop_timer };

	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i] != NULL)
			event_free(evs[i]);
	if (d->base != NULL)
		event_base_free(d->base);
}

/* Workers must not take signals: block them before the threads start
 * (the mask is inherited), then unblock in the main thread only. */
static void
mask_signals(int how)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(how, &set, NULL);
}

static int
run(struct daemon *d, struct config *cfg)
{
	char err[512];
	int rc = 1;

	if (log_open(cfg->log_file, cfg->log_level, err, sizeof(err)) == -1) {
		fprintf(stderr, "sidepool: %s\n", err);
		config_free(cfg);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (evthread_use_pthreads() == -1 || setup_main_loop(d) == -1) {
		log_error("cannot set up the event loop: out of memory or "
		    "of file descriptors (check the service's memory and open "
		    "files limits)");
		config_free(cfg);
		goto out;
	}
	if (cfg->pid_file != NULL && write_pid_file(cfg->pid_file) == -1) {
		config_free(cfg);
		goto out;
	}
	d->workers = calloc(cfg->workers, sizeof(*d->workers));
	if (d->workers == NULL) {
		log_error("out of memory for %u workers; lower workers: or "
		    "check the memory limits of the service", cfg->workers);
		config_free(cfg);
		goto out;
	}
	/* The control socket exists before any listener accepts, so whoever
	 * sees sidepool serving can also ask it how it is. Its commands run
	 * only from the main loop, once the workers are up. */
	if (cfg->control_path != NULL || cfg->has_metrics) {
		d->control = control_open(cfg, d->base, d->workers,
		    cfg->workers, reload_from_control, d, err, sizeof(err));
		if (d->control == NULL) {
			log_error("%s", err);
			config_free(cfg);
			goto out;
		}
	}
	if ((d->gen = generation_new(cfg, NULL, err, sizeof(err))) == NULL) {
		log_error("%s", err);
		config_free(cfg);
		goto out;
	}
	control_set_config(d->control, cfg, d->gen->id);
	log_listeners(d->gen);
	mask_signals(SIG_BLOCK);
	int started = start_workers(d);
	mask_signals(SIG_UNBLOCK);
	if (started == -1)
		goto out;
	log_notice("sidepool %s started: %u worker(s), %zu listener(s)",
	    PACKAGE_VERSION, d->nworkers, d->gen->nlisteners);
	notify_send("READY=1\nMAINPID=%ld\nSTATUS=serving %zu listener(s) "
	    "with %u worker(s)", (long)getpid(), d->gen->nlisteners,
	    d->nworkers);
	event_base_dispatch(d->base);
	/* The loop also ends when every worker stopped by itself: that is a
	 * failure, and a service manager must see it as one. */
	rc = d->stopping ? 0 : 1;
out:
	stop_workers(d);
	control_close(d->control);
	for (size_t i = 0; i < d->nretiring; i++)
		generation_unref(d->retiring[i]);
	if (d->gen != NULL) {
		const char *pid_file = d->gen->cfg->pid_file;
		if (pid_file != NULL)
			unlink(pid_file);
		generation_unref(d->gen);
	}
	free_main_loop(d);
	log_notice("sidepool stopped");
	log_close();
	return rc;
}

int
main(int argc, char **argv)
{
	const char *path = CONFIG_DEFAULT_PATH;
	bool test_only = false;
	int opt;

	buffer_count_failures(); /* before anything of libevent's */

	while ((opt = getopt(argc, argv, "c:thV")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test_only = true;
			break;
		case 'V':
			printf("sidepool %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "sidepool: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		return 2;
	}
	struct config *cfg = load_config(path, false, NULL, 0);
	char why[512];
	if (cfg != NULL && !config_runnable(cfg, why, sizeof(why))) {
		fprintf(stderr, "%s\n", why);
		config_free(cfg);
		cfg = NULL;
	}
	if (cfg == NULL) {
		fprintf(stderr, "sidepool: configuration file %s is not valid\n",
		    path);
		return 1;
	}
	if (test_only) {
		printf("sidepool: configuration file %s is valid\n", path);
		config_free(cfg);
		return 0;
	}
	struct daemon d = { .config_path = path };
	int rc = run(&d, cfg);
	libevent_global_shutdown();
	return rc;
}
