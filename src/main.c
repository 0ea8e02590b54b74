/*
 * main.c - the daemon's life: arguments, config, listeners, workers,
 * signals, and an orderly exit. The only place that decides to exit.
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
#include "config.h"
#include "control.h"
#include "listener.h"
#include "log.h"
#include "notify.h"
#include "worker.h"

struct daemon {
	struct config *cfg;
	struct event_base *base;
	struct listener *listeners;
	size_t nlisteners;
	struct worker *workers;
	unsigned nworkers;
	struct control *control;
	bool stopping;
	struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
	struct event *worker_news; /* a worker stopped accepting, or ended */
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

static struct config *
load_config(const char *path)
{
	struct config_errors errs = { 0 };
	struct config *cfg = config_load(path, &errs);

	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	config_errors_clear(&errs);
	return cfg;
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

static int
open_listeners(struct daemon *d)
{
	const struct config *cfg = d->cfg;
	char err[512];

	d->listeners = calloc(cfg->nlisteners, sizeof(*d->listeners));
	if (d->listeners == NULL)
		return -1;
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct cfg_listener *lc = &cfg->listeners[i];
		size_t up = (size_t)(lc->upstream - cfg->upstreams);
		d->listeners[i].fd = -1;
		if (listener_open(&d->listeners[i], lc, up, err,
		    sizeof(err)) == -1) {
			log_error("%s", err);
			return -1;
		}
		d->nlisteners = i + 1;
		log_info("listening on %s for upstream %s (%s)", lc->addr.text,
		    lc->upstream->name, proto_kind_name(lc->upstream->protocol));
	}
	return 0;
}

/* Close the listening sockets; the structures stay until workers are gone. */
static void
close_listener_sockets(struct daemon *d)
{
	for (size_t i = 0; i < d->nlisteners; i++)
		listener_close(&d->listeners[i]);
}

static void
close_listeners(struct daemon *d)
{
	close_listener_sockets(d);
	free(d->listeners);
	d->listeners = NULL;
	d->nlisteners = 0;
}

static int
start_workers(struct daemon *d)
{
	char err[256];

	for (unsigned i = 0; i < d->cfg->workers; i++) {
		d->nworkers = i + 1;
		if (worker_init(&d->workers[i], i, d->cfg, d->listeners,
		    d->nlisteners, d->worker_news, err, sizeof(err)) == -1 ||
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
	uint64_t ms = d->cfg->shutdown_timeout_ms;

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
	event_add(d->stop_timer, &tv);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;

	switch (sig) {
	case SIGTERM:
		begin_stop(d, "SIGTERM");
		break;
	case SIGINT:
		begin_stop(d, "SIGINT");
		break;
	case SIGHUP:
		log_notice("SIGHUP: configuration reload is not supported in "
		    "this version; restart sidepool to apply a new config");
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
 * Activations can merge, so look at every worker. Once no worker watches
 * the listening sockets any more they close, and new clients are refused at
 * once instead of waiting in a backlog nobody will accept from (closing
 * them earlier would pull descriptors from under the workers' loops).
 */
static void
on_worker_news(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	unsigned stopped = 0, deaf = 0;

	for (unsigned i = 0; i < d->nworkers; i++) {
		if (atomic_load(&d->workers[i].accepts_stopped))
			deaf++;
		if (atomic_load(&d->workers[i].finished))
			stopped++;
	}
	if (deaf == d->nworkers)
		close_listener_sockets(d);
	if (stopped == d->nworkers) {
		if (!d->stopping)
			log_error("all workers stopped unexpectedly");
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
	event_add(d->sig_term, NULL);
	event_add(d->sig_int, NULL);
	event_add(d->sig_hup, NULL);
	event_add(d->sig_usr1, NULL);
	event_add(d->worker_news, NULL);
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
run(struct daemon *d)
{
	char err[512];
	int rc = 1;

	if (log_open(d->cfg->log_file, d->cfg->log_level, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "sidepool: %s\n", err);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (evthread_use_pthreads() == -1 || setup_main_loop(d) == -1) {
		log_error("cannot set up the event loop");
		goto out;
	}
	if (d->cfg->pid_file != NULL && write_pid_file(d->cfg->pid_file) == -1)
		goto out;
	d->workers = calloc(d->cfg->workers, sizeof(*d->workers));
	if (d->workers == NULL)
		goto out;
	/* The control socket exists before any listener accepts, so whoever
	 * sees sidepool serving can also ask it how it is. Its commands run
	 * only from the main loop, once the workers are up. */
	if (d->cfg->control_path != NULL) {
		d->control = control_open(d->cfg, d->base, d->workers,
		    d->cfg->workers, err, sizeof(err));
		if (d->control == NULL) {
			log_error("%s", err);
			goto out;
		}
	}
	if (open_listeners(d) == -1)
		goto out;
	mask_signals(SIG_BLOCK);
	int started = start_workers(d);
	mask_signals(SIG_UNBLOCK);
	if (started == -1)
		goto out;
	log_notice("sidepool %s started: %u worker(s), %zu listener(s)",
	    PACKAGE_VERSION, d->cfg->workers, d->nlisteners);
	notify_send("READY=1\nMAINPID=%ld\nSTATUS=serving %zu listener(s) "
	    "with %u worker(s)", (long)getpid(), d->nlisteners,
	    d->cfg->workers);
	event_base_dispatch(d->base);
	rc = 0;
out:
	stop_workers(d);
	control_close(d->control);
	close_listeners(d);
	free_main_loop(d);
	if (d->cfg->pid_file != NULL)
		unlink(d->cfg->pid_file);
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
	struct daemon d = { 0 };
	d.cfg = load_config(path);
	if (d.cfg == NULL) {
		fprintf(stderr, "sidepool: configuration file %s is not valid\n",
		    path);
		return 1;
	}
	if (test_only) {
		printf("sidepool: configuration file %s is valid\n", path);
		config_free(d.cfg);
		return 0;
	}
	int rc = run(&d);
	config_free(d.cfg);
	libevent_global_shutdown();
	return rc;
}
