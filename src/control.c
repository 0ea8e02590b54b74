/*
 * control.c - the control socket: accept, read one command line, gather
 * the workers' counters when the command needs them, answer, close.
 *
 * Wire format: the client sends one line, "[json ]COMMAND\n"; the answer is
 * text (aligned columns for people) or one JSON object (for programs), and
 * the connection closes after it. An answer that starts with "error: " (or
 * the JSON object {"error": ...}) means the command failed. `status`
 * answers "ok: ..." or "degraded: ..." on its first line.
 */
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "build_config.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "stats.h"
#include "worker.h"

#define CTL_LINE_MAX 1024
#define CTL_TIMEOUT_S 10
#define TABLE_COLS 64

struct ctl_conn;
typedef void ctl_handler(struct ctl_conn *cc);

struct ctl_command {
	const char *name;
	bool gather;            /* needs every worker's counters */
	ctl_handler *handler;
	const char *help;
};

struct ctl_conn {
	TAILQ_ENTRY(ctl_conn) link;
	struct control *ctl;
	int fd;
	struct event *rev;
	struct event *wev;
	struct event *gathered; /* activated by the last worker to answer */
	struct evbuffer *in;
	struct evbuffer *out;
	const struct ctl_command *cmd;
	bool json;
	bool http;              /* a Prometheus scrape, not a command line */
	bool gathering;
	atomic_uint pending;
	struct worker_snapshot *snaps;
};

struct control {
	const struct config *cfg;   /* the generation in force */
	unsigned gen_id;
	control_reload_fn *reload;
	void *reload_arg;
	struct event_base *base;
	struct worker *workers;
	unsigned nworkers;
	int fd;
	struct cfg_addr addr;       /* as opened: a reload does not move it */
	dev_t dev;
	ino_t ino;
	struct event *accept_ev;
	int metrics_fd;             /* -1: no metrics endpoint */
	struct event *metrics_ev;
	struct event *resume_ev;    /* accepts paused after EMFILE */
	TAILQ_HEAD(, ctl_conn) conns;
};

static const struct ctl_command *find_command(const char *name);
static void finish(struct ctl_conn *cc);

/* ---- output helpers ------------------------------------------------------ */

static void
json_string(struct evbuffer *out, const char *s)
{
	evbuffer_add(out, "\"", 1);
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(out, "\\%c", ch);
		else if (ch < 0x20)
			evbuffer_add_printf(out, "\\u%04x", ch);
		else
			evbuffer_add(out, s, 1);
	}
	evbuffer_add(out, "\"", 1);
}

/* A text table: cells are collected, then printed with aligned columns.
 * A cell that could not be kept would shift every later one into the wrong
 * column: then the whole answer becomes an error instead. */
struct table {
	char **cells;
	size_t ncells, cap;
	int ncols;
	bool lost;
};

static void table_cell(struct table *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
table_cell(struct table *t, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	if (t->ncells == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		char **c = realloc(t->cells, cap * sizeof(*c));
		if (c == NULL) {
			t->lost = true;
			return;
		}
		t->cells = c;
		t->cap = cap;
	}
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) == -1)
		s = NULL;
	va_end(ap);
	t->cells[t->ncells++] = s;
}

static void
table_print(struct table *t, struct evbuffer *out)
{
	size_t width[TABLE_COLS] = { 0 };
	int cols = t->ncols;

	if (cols <= 0 || cols > TABLE_COLS)
		abort(); /* a table wider than TABLE_COLS is a bug here */
	if (t->lost) {
		for (size_t i = 0; i < t->ncells; i++)
			free(t->cells[i]);
		free(t->cells);
		memset(t, 0, sizeof(*t));
		evbuffer_drain(out, evbuffer_get_length(out));
		evbuffer_add_printf(out, "error: out of memory while building "
		    "the answer; try again\n");
		return;
	}
	for (size_t i = 0; i < t->ncells; i++) {
		size_t len = t->cells[i] ? strlen(t->cells[i]) : 0;
		if (len > width[i % (size_t)cols])
			width[i % (size_t)cols] = len;
	}
	for (size_t i = 0; i < t->ncells; i++) {
		int col = (int)(i % (size_t)cols);
		const char *s = t->cells[i] ? t->cells[i] : "?";
		if (col == cols - 1)
			evbuffer_add_printf(out, "%s\n", s);
		else
			evbuffer_add_printf(out, "%-*s  ", (int)width[col], s);
		free(t->cells[i]);
	}
	free(t->cells);
	memset(t, 0, sizeof(*t));
}

static void
reply_error(struct ctl_conn *cc, const char *msg)
{
	if (cc->json) {
		evbuffer_add_printf(cc->out, "{\"error\": ");
		json_string(cc->out, msg);
		evbuffer_add_printf(cc->out, "}\n");
	} else {
		evbuffer_add_printf(cc->out, "error: %s\n", msg);
	}
}

/* ---- merged views of the workers' snapshots ------------------------------ */

static void
merge_pool(struct ctl_conn *cc, size_t index, struct pool_snapshot *m,
    unsigned *down_workers)
{
	stats_merge_pool(cc->snaps, cc->ctl->nworkers, index, m, down_workers);
}

static void
merge_workers(struct ctl_conn *cc, struct worker_stats *t, unsigned *nclients)
{
	stats_merge_workers(cc->snaps, cc->ctl->nworkers, t, nclients);
}

/* Call fn for every (upstream, server) pair, with its pool index. */
#define FOREACH_POOL(cfg, u, s, index)					\
	for (size_t u = 0, index = 0; u < (cfg)->nupstreams; u++)	\
		for (size_t s = 0; s < (cfg)->upstreams[u].nservers;	\
		    s++, index++)

static const double quantiles[] = { 0.5, 0.9, 0.99, 0.999 };
static const char *const quantile_names[] = { "p50", "p90", "p99", "p999" };

/* ---- commands ------------------------------------------------------------ */

static void
cmd_help(struct ctl_conn *cc);

static void
cmd_version(struct ctl_conn *cc)
{
	if (cc->json)
		evbuffer_add_printf(cc->out, "{\"version\": \"%s\"}\n",
		    PACKAGE_VERSION);
	else
		evbuffer_add_printf(cc->out, "sidepool %s\n", PACKAGE_VERSION);
}

static void
stats_json(struct ctl_conn *cc, const struct worker_stats *t,
    unsigned nclients)
{
	const struct config *cfg = cc->ctl->cfg;
	struct evbuffer *o = cc->out;

	evbuffer_add_printf(o, "{\"clients\": {\"current\": %u, \"accepted\": "
	    "%llu, \"closed\": %llu, \"rejected\": %llu}, \"requests\": %llu, "
	    "\"local_replies\": %llu, \"protocol_errors\": %llu, "
	    "\"bytes_in\": %llu, \"bytes_out\": %llu, \"servers\": [", nclients,
	    (unsigned long long)t->clients_accepted,
	    (unsigned long long)t->clients_closed,
	    (unsigned long long)t->clients_rejected,
	    (unsigned long long)t->requests,
	    (unsigned long long)t->local_replies,
	    (unsigned long long)t->protocol_errors,
	    (unsigned long long)t->bytes_in, (unsigned long long)t->bytes_out);
	FOREACH_POOL(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned down;
		merge_pool(cc, i, &m, &down);
		evbuffer_add_printf(o, "%s{\"upstream\": ", i ? ", " : "");
		json_string(o, cfg->upstreams[u].name);
		evbuffer_add_printf(o, ", \"server\": ");
		json_string(o, cfg->upstreams[u].servers[s].addr.text);
		evbuffer_add_printf(o, ", \"requests\": %llu, \"replies\": %llu, "
		    "\"errors\": %llu, \"fast_failures\": %llu, \"bytes_sent\": "
		    "%llu, \"bytes_received\": %llu, \"connections_opened\": %llu, "
		    "\"probes\": %llu, \"marked_down\": %llu, \"sessions\": %llu, "
		    "\"sessions_refused\": %llu, \"latency_us\": {",
		    (unsigned long long)m.stats.requests,
		    (unsigned long long)m.stats.replies,
		    (unsigned long long)m.stats.errors,
		    (unsigned long long)m.stats.fast_failures,
		    (unsigned long long)m.stats.bytes_sent,
		    (unsigned long long)m.stats.bytes_received,
		    (unsigned long long)m.stats.opened,
		    (unsigned long long)m.stats.probes,
		    (unsigned long long)m.stats.marked_down,
		    (unsigned long long)m.stats.sessions,
		    (unsigned long long)m.stats.exhausted);
		for (int q = 0; q < 4; q++)
			evbuffer_add_printf(o, "%s\"%s\": %llu", q ? ", " : "",
			    quantile_names[q], (unsigned long long)
			    latency_percentile(m.stats.latency, quantiles[q]));
		evbuffer_add_printf(o, "}, \"connections_closed\": {");
		for (int r = 0; r < CLOSE_REASON_COUNT; r++)
			evbuffer_add_printf(o, "%s\"%s\": %llu", r ? ", " : "",
			    close_reason_names[r],
			    (unsigned long long)m.stats.closed[r]);
		evbuffer_add_printf(o, "}}");
	}
	evbuffer_add_printf(o, "]}\n");
}

static void
cmd_stats(struct ctl_conn *cc)
{
	const struct config *cfg = cc->ctl->cfg;
	struct worker_stats t;
	unsigned nclients;
	struct table tb = { .ncols = 12 };

	merge_workers(cc, &t, &nclients);
	if (cc->json) {
		stats_json(cc, &t, nclients);
		return;
	}
	evbuffer_add_printf(cc->out, "clients: %u connected, %llu accepted, "
	    "%llu closed, %llu rejected (max_clients)\n"
	    "requests: %llu forwarded, %llu answered by sidepool, %llu "
	    "protocol errors\nbytes: %llu from clients, %llu to clients\n\n",
	    nclients, (unsigned long long)t.clients_accepted,
	    (unsigned long long)t.clients_closed,
	    (unsigned long long)t.clients_rejected,
	    (unsigned long long)t.requests,
	    (unsigned long long)t.local_replies,
	    (unsigned long long)t.protocol_errors,
	    (unsigned long long)t.bytes_in, (unsigned long long)t.bytes_out);
	const char *hdr[] = { "UPSTREAM", "SERVER", "REQUESTS", "REPLIES",
	    "ERRORS", "FAST_FAILS", "SENT", "RECEIVED", "P50_US", "P90_US",
	    "P99_US", "P999_US" };
	for (int c = 0; c < 12; c++)
		table_cell(&tb, "%s", hdr[c]);
	FOREACH_POOL(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned down;
		merge_pool(cc, i, &m, &down);
		table_cell(&tb, "%s", cfg->upstreams[u].name);
		table_cell(&tb, "%s", cfg->upstreams[u].servers[s].addr.text);
		table_cell(&tb, "%llu", (unsigned long long)m.stats.requests);
		table_cell(&tb, "%llu", (unsigned long long)m.stats.replies);
		table_cell(&tb, "%llu", (unsigned long long)m.stats.errors);
		table_cell(&tb, "%llu",
		    (unsigned long long)m.stats.fast_failures);
		table_cell(&tb, "%llu", (unsigned long long)m.stats.bytes_sent);
		table_cell(&tb, "%llu",
		    (unsigned long long)m.stats.bytes_received);
		for (int q = 0; q < 4; q++)
			table_cell(&tb, "%llu", (unsigned long long)
			    latency_percentile(m.stats.latency, quantiles[q]));
	}
	table_print(&tb, cc->out);
}

static void
cmd_pools(struct ctl_conn *cc)
{
	const struct config *cfg = cc->ctl->cfg;
	struct evbuffer *o = cc->out;
	struct table tb = { .ncols = 10 + CLOSE_REASON_COUNT };
	bool first = true;

	if (cc->json)
		evbuffer_add_printf(o, "{\"pools\": [");
	else {
		const char *hdr[] = { "WORKER", "UPSTREAM", "SERVER", "IDLE",
		    "ACTIVE", "DEDICATED", "CONNECTING", "PROBING", "IN_FLIGHT",
		    "OPENED" };
		for (int c = 0; c < 10; c++)
			table_cell(&tb, "%s", hdr[c]);
		for (int r = 0; r < CLOSE_REASON_COUNT; r++)
			table_cell(&tb, "%s", close_reason_names[r]);
	}
	for (unsigned w = 0; w < cc->ctl->nworkers; w++) {
		FOREACH_POOL(cfg, u, s, i) {
			const struct pool_snapshot *p = &cc->snaps[w].pools[i];
			const char *up = cfg->upstreams[u].name;
			const char *addr = cfg->upstreams[u].servers[s].addr.text;
			if (!cc->json) {
				table_cell(&tb, "%u", w);
				table_cell(&tb, "%s", up);
				table_cell(&tb, "%s", addr);
				table_cell(&tb, "%u", p->counts[1]);
				table_cell(&tb, "%u", p->counts[2]);
				table_cell(&tb, "%u", p->counts[4]);
				table_cell(&tb, "%u", p->counts[0]);
				table_cell(&tb, "%u", p->counts[3]);
				table_cell(&tb, "%u", p->inflight);
				table_cell(&tb, "%llu",
				    (unsigned long long)p->stats.opened);
				for (int r = 0; r < CLOSE_REASON_COUNT; r++)
					table_cell(&tb, "%llu", (unsigned long long)
					    p->stats.closed[r]);
				continue;
			}
			evbuffer_add_printf(o, "%s{\"worker\": %u, \"upstream\": ",
			    first ? "" : ", ", w);
			first = false;
			json_string(o, up);
			evbuffer_add_printf(o, ", \"server\": ");
			json_string(o, addr);
			evbuffer_add_printf(o, ", \"idle\": %u, \"active\": %u, "
			    "\"dedicated\": %u, \"connecting\": %u, \"probing\": "
			    "%u, \"in_flight\": %u, \"opened\": %llu, \"closed\": {",
			    p->counts[1], p->counts[2], p->counts[4], p->counts[0],
			    p->counts[3],
			    p->inflight, (unsigned long long)p->stats.opened);
			for (int r = 0; r < CLOSE_REASON_COUNT; r++)
				evbuffer_add_printf(o, "%s\"%s\": %llu",
				    r ? ", " : "", close_reason_names[r],
				    (unsigned long long)p->stats.closed[r]);
			evbuffer_add_printf(o, "}}");
		}
	}
	if (cc->json)
		evbuffer_add_printf(o, "]}\n");
	else
		table_print(&tb, o);
}

static void
cmd_servers(struct ctl_conn *cc)
{
	const struct config *cfg = cc->ctl->cfg;
	struct evbuffer *o = cc->out;
	struct table tb = { .ncols = 7 };

	if (cc->json)
		evbuffer_add_printf(o, "{\"servers\": [");
	else {
		const char *hdr[] = { "UPSTREAM", "SERVER", "STATE",
		    "DOWN_IN_WORKERS", "DOWN_FOR_MS", "FAILURES", "LAST_ERROR" };
		for (int c = 0; c < 7; c++)
			table_cell(&tb, "%s", hdr[c]);
	}
	FOREACH_POOL(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned down;
		merge_pool(cc, i, &m, &down);
		const char *state = down == 0 ? "up" : "down";
		if (!cc->json) {
			table_cell(&tb, "%s", cfg->upstreams[u].name);
			table_cell(&tb, "%s",
			    cfg->upstreams[u].servers[s].addr.text);
			table_cell(&tb, "%s", state);
			table_cell(&tb, "%u/%u", down, cc->ctl->nworkers);
			table_cell(&tb, "%llu", (unsigned long long)m.down_for_ms);
			table_cell(&tb, "%u", m.failures);
			table_cell(&tb, "%s", m.last_error[0] ? m.last_error : "-");
			continue;
		}
		evbuffer_add_printf(o, "%s{\"upstream\": ", i ? ", " : "");
		json_string(o, cfg->upstreams[u].name);
		evbuffer_add_printf(o, ", \"server\": ");
		json_string(o, cfg->upstreams[u].servers[s].addr.text);
		evbuffer_add_printf(o, ", \"state\": \"%s\", \"down_in_workers\": "
		    "%u, \"workers\": %u, \"down_for_ms\": %llu, \"failures\": "
		    "%u, \"marked_down\": %llu, \"last_error\": ", state, down,
		    cc->ctl->nworkers, (unsigned long long)m.down_for_ms,
		    m.failures, (unsigned long long)m.stats.marked_down);
		json_string(o, m.last_error);
		evbuffer_add_printf(o, "}");
	}
	if (cc->json)
		evbuffer_add_printf(o, "]}\n");
	else
		table_print(&tb, o);
}

static void
cmd_clients(struct ctl_conn *cc)
{
	const struct config *cfg = cc->ctl->cfg;
	struct evbuffer *o = cc->out;
	struct table tb = { .ncols = 6 };
	bool first = true;

	if (cc->json)
		evbuffer_add_printf(o, "{\"clients\": [");
	else {
		const char *hdr[] = { "LISTENER", "WORKER", "CLIENTS",
		    "OLDEST_MS", "BIGGEST_INPUT", "BIGGEST_OUTPUT" };
		for (int c = 0; c < 6; c++)
			table_cell(&tb, "%s", hdr[c]);
	}
	for (size_t l = 0; l < cfg->nlisteners; l++) {
		for (unsigned w = 0; w < cc->ctl->nworkers; w++) {
			const struct worker_snapshot *ws = &cc->snaps[w];
			unsigned n = ws->clients_per_listener[l];
			if (!cc->json) {
				table_cell(&tb, "%s", cfg->listeners[l].addr.text);
				table_cell(&tb, "%u", w);
				table_cell(&tb, "%u", n);
				table_cell(&tb, "%llu",
				    (unsigned long long)ws->oldest_client_ms);
				table_cell(&tb, "%llu",
				    (unsigned long long)ws->biggest_input);
				table_cell(&tb, "%llu",
				    (unsigned long long)ws->biggest_output);
				continue;
			}
			evbuffer_add_printf(o, "%s{\"listener\": ",
			    first ? "" : ", ");
			first = false;
			json_string(o, cfg->listeners[l].addr.text);
			evbuffer_add_printf(o, ", \"worker\": %u, \"clients\": %u, "
			    "\"oldest_ms\": %llu, \"biggest_input\": %llu, "
			    "\"biggest_output\": %llu}", w, n,
			    (unsigned long long)ws->oldest_client_ms,
			    (unsigned long long)ws->biggest_input,
			    (unsigned long long)ws->biggest_output);
		}
	}
	if (cc->json)
		evbuffer_add_printf(o, "]}\n");
	else
		table_print(&tb, o);
}

static void
cmd_workers(struct ctl_conn *cc)
{
	struct evbuffer *o = cc->out;
	struct table tb = { .ncols = 6 };

	if (cc->json)
		evbuffer_add_printf(o, "{\"workers\": [");
	else {
		const char *hdr[] = { "WORKER", "CLIENTS", "ACCEPTED",
		    "REQUESTS", "CONNECTIONS", "IN_FLIGHT" };
		for (int c = 0; c < 6; c++)
			table_cell(&tb, "%s", hdr[c]);
	}
	for (unsigned w = 0; w < cc->ctl->nworkers; w++) {
		const struct worker_snapshot *ws = &cc->snaps[w];
		unsigned conns = 0, inflight = 0;
		for (size_t i = 0; i < ws->npools; i++) {
			for (int k = 0; k < 5; k++)
				conns += ws->pools[i].counts[k];
			inflight += ws->pools[i].inflight;
		}
		if (cc->json) {
			evbuffer_add_printf(o, "%s{\"worker\": %u, \"clients\": %u, "
			    "\"accepted\": %llu, \"requests\": %llu, "
			    "\"connections\": %u, \"in_flight\": %u}", w ? ", " : "",
			    w, ws->nclients,
			    (unsigned long long)ws->stats.clients_accepted,
			    (unsigned long long)ws->stats.requests, conns,
			    inflight);
			continue;
		}
		table_cell(&tb, "%u", w);
		table_cell(&tb, "%u", ws->nclients);
		table_cell(&tb, "%llu",
		    (unsigned long long)ws->stats.clients_accepted);
		table_cell(&tb, "%llu", (unsigned long long)ws->stats.requests);
		table_cell(&tb, "%u", conns);
		table_cell(&tb, "%u", inflight);
	}
	if (cc->json)
		evbuffer_add_printf(o, "]}\n");
	else
		table_print(&tb, o);
}

/* One line a script can act on: are all servers up in every worker? */
static void
cmd_status(struct ctl_conn *cc)
{
	const struct config *cfg = cc->ctl->cfg;
	struct evbuffer *o = cc->out;
	size_t total = 0, down = 0;
	char first_down[512] = "";

	FOREACH_POOL(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned dw;
		merge_pool(cc, i, &m, &dw);
		total++;
		if (dw == 0)
			continue;
		if (down++ == 0)
			snprintf(first_down, sizeof(first_down), "%s of upstream "
			    "%s down in %u/%u workers (%s)",
			    cfg->upstreams[u].servers[s].addr.text,
			    cfg->upstreams[u].name, dw, cc->ctl->nworkers,
			    m.last_error);
	}
	if (cc->json) {
		evbuffer_add_printf(o, "{\"healthy\": %s, \"servers\": %zu, "
		    "\"down\": %zu, \"upstreams\": %zu, \"detail\": ",
		    down ? "false" : "true", total, down, cfg->nupstreams);
		json_string(o, first_down);
		evbuffer_add_printf(o, "}\n");
	} else if (down == 0) {
		evbuffer_add_printf(o, "ok: all %zu servers of %zu upstreams "
		    "up\n", total, cfg->nupstreams);
	} else {
		evbuffer_add_printf(o, "degraded: %zu of %zu servers down; "
		    "server %s\n", down, total, first_down);
	}
}

static void
cmd_config(struct ctl_conn *cc)
{
	const struct config *cfg = cc->ctl->cfg;
	struct evbuffer *o = cc->out;

	if (!cc->json) {
		evbuffer_add_printf(o, "file: %s\nworkers: %u\n"
		    "shutdown_timeout_ms: %llu\n", cfg->path ? cfg->path : "-",
		    cfg->workers, (unsigned long long)cfg->shutdown_timeout_ms);
		for (size_t l = 0; l < cfg->nlisteners; l++)
			evbuffer_add_printf(o, "listener %s -> %s\n",
			    cfg->listeners[l].addr.text,
			    cfg->listeners[l].upstream->name);
		for (size_t u = 0; u < cfg->nupstreams; u++) {
			const struct cfg_upstream *up = &cfg->upstreams[u];
			evbuffer_add_printf(o, "upstream %s: protocol %s, pool "
			    "size %u, max_connections %u, idle_timeout_ms %llu, "
			    "connect_timeout_ms %llu, request_timeout_ms %llu\n",
			    up->name, proto_kind_name(up->protocol),
			    up->pool.size, up->pool.max_connections,
			    (unsigned long long)up->pool.idle_timeout_ms,
			    (unsigned long long)up->connect_timeout_ms,
			    (unsigned long long)up->request_timeout_ms);
			for (size_t s = 0; s < up->nservers; s++)
				evbuffer_add_printf(o, "  server %s\n",
				    up->servers[s].addr.text);
			if (up->auth_password != NULL)
				evbuffer_add_printf(o, "  auth: user %s, password "
				    "********\n", up->auth_user ? up->auth_user :
				    "(default)");
			for (size_t k = 0; k < up->nusers; k++)
				evbuffer_add_printf(o, "  client_auth: user %s, "
				    "password ********\n", up->users[k].user);
		}
		return;
	}
	evbuffer_add_printf(o, "{\"file\": ");
	json_string(o, cfg->path ? cfg->path : "");
	evbuffer_add_printf(o, ", \"workers\": %u, \"shutdown_timeout_ms\": "
	    "%llu, \"listeners\": [", cfg->workers,
	    (unsigned long long)cfg->shutdown_timeout_ms);
	for (size_t l = 0; l < cfg->nlisteners; l++) {
		evbuffer_add_printf(o, "%s{\"listen\": ", l ? ", " : "");
		json_string(o, cfg->listeners[l].addr.text);
		evbuffer_add_printf(o, ", \"upstream\": ");
		json_string(o, cfg->listeners[l].upstream->name);
		evbuffer_add_printf(o, ", \"max_clients\": %u}",
		    cfg->listeners[l].max_clients);
	}
	evbuffer_add_printf(o, "], \"upstreams\": [");
	for (size_t u = 0; u < cfg->nupstreams; u++) {
		const struct cfg_upstream *up = &cfg->upstreams[u];
		evbuffer_add_printf(o, "%s{\"name\": ", u ? ", " : "");
		json_string(o, up->name);
		evbuffer_add_printf(o, ", \"protocol\": \"%s\", \"pool\": "
		    "{\"size\": %u, \"max_connections\": %u, \"idle_timeout_ms\": "
		    "%llu, \"min_idle\": %u, \"probe_interval_ms\": %llu}, "
		    "\"connect_timeout_ms\": %llu, \"request_timeout_ms\": %llu, "
		    "\"servers\": [", proto_kind_name(up->protocol),
		    up->pool.size, up->pool.max_connections,
		    (unsigned long long)up->pool.idle_timeout_ms,
		    up->pool.min_idle,
		    (unsigned long long)up->pool.probe_interval_ms,
		    (unsigned long long)up->connect_timeout_ms,
		    (unsigned long long)up->request_timeout_ms);
		for (size_t s = 0; s < up->nservers; s++) {
			evbuffer_add_printf(o, "%s", s ? ", " : "");
			json_string(o, up->servers[s].addr.text);
		}
		/* Secrets are never shown: only that they are set. */
		evbuffer_add_printf(o, "], \"auth\": ");
		if (up->auth_password == NULL) {
			evbuffer_add_printf(o, "null");
		} else {
			evbuffer_add_printf(o, "{\"user\": ");
			json_string(o, up->auth_user ? up->auth_user : "default");
			evbuffer_add_printf(o, ", \"password\": \"********\"}");
		}
		evbuffer_add_printf(o, ", \"client_auth\": [");
		for (size_t k = 0; k < up->nusers; k++) {
			evbuffer_add_printf(o, "%s{\"user\": ", k ? ", " : "");
			json_string(o, up->users[k].user);
			evbuffer_add_printf(o, ", \"password\": \"********\"}");
		}
		evbuffer_add_printf(o, "], \"databases\": %u}", up->databases);
	}
	evbuffer_add_printf(o, "]}\n");
}

static void
cmd_reload(struct ctl_conn *cc)
{
	char msg[2048];
	struct control *ctl = cc->ctl;

	if (ctl->reload(ctl->reload_arg, msg, sizeof(msg)) == -1) {
		char full[sizeof(msg) + 80];
		snprintf(full, sizeof(full), "reload failed, the previous "
		    "configuration stays in force: %s", msg);
		reply_error(cc, full);
		return;
	}
	if (cc->json) {
		evbuffer_add_printf(cc->out, "{\"reloaded\": true, \"generation\": "
		    "%u, \"message\": ", ctl->gen_id);
		json_string(cc->out, msg);
		evbuffer_add_printf(cc->out, "}\n");
	} else {
		evbuffer_add_printf(cc->out, "%s\n", msg);
	}
}

static void
cmd_metrics(struct ctl_conn *cc)
{
	metrics_format(cc->out, cc->ctl->cfg, cc->snaps, cc->ctl->nworkers);
}

static const struct ctl_command metrics_command = {
	"metrics", true, cmd_metrics, "Prometheus text"
};

static const struct ctl_command commands[] = {
	{ "help", false, cmd_help, "this list" },
	{ "version", false, cmd_version, "the running version" },
	{ "status", true, cmd_status, "one line: are all servers up?" },
	{ "stats", true, cmd_stats, "requests, errors, bytes, latency "
	    "percentiles per server" },
	{ "pools", true, cmd_pools, "connections per worker per server, "
	    "opened and closed by reason" },
	{ "servers", true, cmd_servers, "up/down state, failures, last error" },
	{ "clients", true, cmd_clients, "clients per listener and worker, "
	    "oldest, biggest buffers" },
	{ "workers", true, cmd_workers, "clients, requests and connections per "
	    "worker" },
	{ "config", false, cmd_config, "the running configuration" },
	{ "metrics", true, cmd_metrics, "the counters as Prometheus text" },
	{ "reload", false, cmd_reload, "apply the configuration file again "
	    "(as SIGHUP): clients stay connected" },
};

static void
cmd_help(struct ctl_conn *cc)
{
	size_t n = sizeof(commands) / sizeof(commands[0]);

	if (cc->json)
		evbuffer_add_printf(cc->out, "{\"commands\": [");
	for (size_t i = 0; i < n; i++) {
		if (!cc->json) {
			evbuffer_add_printf(cc->out, "%-8s  %s\n",
			    commands[i].name, commands[i].help);
			continue;
		}
		evbuffer_add_printf(cc->out, "%s{\"name\": \"%s\", \"help\": ",
		    i ? ", " : "", commands[i].name);
		json_string(cc->out, commands[i].help);
		evbuffer_add_printf(cc->out, "}");
	}
	if (cc->json)
		evbuffer_add_printf(cc->out, "]}\n");
	else
		evbuffer_add_printf(cc->out, "Prefix a command with \"json \" "
		    "for JSON.\n");
}

static const struct ctl_command *
find_command(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* ---- connections --------------------------------------------------------- */

static void
free_conn(struct ctl_conn *cc)
{
	TAILQ_REMOVE(&cc->ctl->conns, cc, link);
	if (cc->fd != -1)
		close(cc->fd);
	if (cc->rev != NULL)
		event_free(cc->rev);
	if (cc->wev != NULL)
		event_free(cc->wev);
	if (cc->gathered != NULL)
		event_free(cc->gathered);
	if (cc->snaps != NULL) {
		for (unsigned w = 0; w < cc->ctl->nworkers; w++)
			worker_snapshot_free(&cc->snaps[w]);
		free(cc->snaps);
	}
	if (cc->in != NULL)
		evbuffer_free(cc->in);
	if (cc->out != NULL)
		evbuffer_free(cc->out);
	free(cc);
}

static void
on_conn_write(evutil_socket_t fd, short what, void *arg)
{
	struct ctl_conn *cc = arg;

	if (what & EV_TIMEOUT) {
		free_conn(cc);
		return;
	}
	while (evbuffer_get_length(cc->out) > 0) {
		int n = evbuffer_write(cc->out, cc->fd);
		if (n > 0)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			return;
		break;
	}
	free_conn(cc);
}

/* An HTTP answer: status line and headers go in front of the body. */
static void
wrap_http(struct ctl_conn *cc, int status, const char *reason)
{
	struct evbuffer *head = evbuffer_new();

	if (head == NULL)
		return;
	evbuffer_add_printf(head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, reason,
	    status == 200 ? "text/plain; version=0.0.4; charset=utf-8" :
	    "text/plain; charset=utf-8", evbuffer_get_length(cc->out));
	evbuffer_prepend_buffer(cc->out, head);
	evbuffer_free(head);
}

/* The answer is complete: write it, then close. */
static void
finish(struct ctl_conn *cc)
{
	struct timeval tv = { CTL_TIMEOUT_S, 0 };

	if (cc->http && cc->cmd == &metrics_command)
		wrap_http(cc, 200, "OK");

	event_del(cc->rev);
	if (event_add(cc->wev, &tv) == -1) {
		/* Without the event the rest of a long answer would never be
		 * written nor the connection freed: write what fits now. */
		(void)evbuffer_write(cc->out, cc->fd);
		free_conn(cc);
		return;
	}
	on_conn_write(cc->fd, EV_WRITE, cc);
}

static void
job_gather(struct worker *w, void *arg)
{
	struct ctl_conn *cc = arg;

	if (worker_fill_snapshot(w, &cc->snaps[w->id]) == -1)
		log_error("out of memory while gathering stats");
	if (atomic_fetch_sub(&cc->pending, 1) == 1)
		event_active(cc->gathered, EV_READ, 0);
}

/* A worker that could not be asked: count it as answered, with nothing.
 * Its counters belong to its own thread, so they are not read from here. */
static void
skip_gather(struct ctl_conn *cc)
{
	log_error("out of memory while gathering stats");
	if (atomic_fetch_sub(&cc->pending, 1) == 1)
		event_active(cc->gathered, EV_READ, 0);
}

static void
on_gathered(evutil_socket_t fd, short what, void *arg)
{
	struct ctl_conn *cc = arg;

	for (unsigned w = 0; w < cc->ctl->nworkers; w++) {
		if (cc->snaps[w].pools == NULL) {
			reply_error(cc, "out of memory while gathering stats");
			finish(cc);
			return;
		}
		/* Counters and names must describe the same configuration. */
		if (cc->snaps[w].gen_id != cc->ctl->gen_id) {
			reply_error(cc, "a reload is being applied; ask again");
			finish(cc);
			return;
		}
	}
	cc->cmd->handler(cc);
	finish(cc);
}

static void
start_gather(struct ctl_conn *cc)
{
	struct control *ctl = cc->ctl;

	cc->snaps = calloc(ctl->nworkers, sizeof(*cc->snaps));
	cc->gathered = event_new(ctl->base, -1, 0, on_gathered, cc);
	if (cc->snaps == NULL || cc->gathered == NULL) {
		reply_error(cc, "out of memory");
		finish(cc);
		return;
	}
	cc->gathering = true;
	atomic_store(&cc->pending, ctl->nworkers);
	for (unsigned w = 0; w < ctl->nworkers; w++)
		if (worker_post(&ctl->workers[w], job_gather, cc) == -1)
			skip_gather(cc); /* its snapshot stays empty: "oom" */
}

static void
run_line(struct ctl_conn *cc, char *line)
{
	char *cmd = line;

	line[strcspn(line, "\r\n")] = '\0';
	while (*cmd == ' ')
		cmd++;
	if (strncmp(cmd, "json ", 5) == 0 || strcmp(cmd, "json") == 0) {
		cc->json = true;
		cmd += 4;
		while (*cmd == ' ')
			cmd++;
	}
	cmd[strcspn(cmd, " ")] = '\0';
	cc->cmd = find_command(cmd[0] ? cmd : "help");
	if (cc->cmd == NULL) {
		char msg[128];
		snprintf(msg, sizeof(msg), "unknown command '%.40s' (try help)",
		    cmd);
		reply_error(cc, msg);
		finish(cc);
		return;
	}
	log_debug("control: %s%s", cc->json ? "json " : "", cc->cmd->name);
	if (cc->cmd->gather) {
		start_gather(cc);
		return;
	}
	cc->cmd->handler(cc);
	finish(cc);
}

/* A scrape: "GET /metrics HTTP/1.x", headers, an empty line. Anything
 * else gets a short HTTP error; the connection closes after one answer. */
static void
run_http(struct ctl_conn *cc, const char *req)
{
	char method[8], path[64];

	event_del(cc->rev);
	if (sscanf(req, "%7s %63s", method, path) != 2 ||
	    (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)) {
		evbuffer_add_printf(cc->out, "only GET /metrics here\n");
		wrap_http(cc, 405, "Method Not Allowed");
		finish(cc);
		return;
	}
	path[strcspn(path, "?")] = '\0';
	if (strcmp(path, "/metrics") != 0) {
		evbuffer_add_printf(cc->out, "try /metrics\n");
		wrap_http(cc, 404, "Not Found");
		finish(cc);
		return;
	}
	cc->cmd = &metrics_command;
	start_gather(cc);
}

static void
on_http_read(struct ctl_conn *cc, ssize_t n)
{
	struct evbuffer_ptr end = evbuffer_search(cc->in, "\r\n\r\n", 4, NULL);

	if (end.pos < 0)
		end = evbuffer_search(cc->in, "\n\n", 2, NULL);
	if (end.pos < 0) {
		if (n <= 0 || evbuffer_get_length(cc->in) >= CTL_LINE_MAX * 8)
			free_conn(cc);
		return;
	}
	size_t len = evbuffer_get_length(cc->in);
	char *req = (char *)evbuffer_pullup(cc->in, (ev_ssize_t)len);
	req[end.pos] = '\0';
	run_http(cc, req);
}

static void
on_conn_read(evutil_socket_t fd, short what, void *arg)
{
	struct ctl_conn *cc = arg;
	size_t len;

	if (what & EV_TIMEOUT) {
		free_conn(cc);
		return;
	}
	ssize_t n = net_read(cc->in, cc->fd, CTL_LINE_MAX);
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return;
	if (cc->http) {
		on_http_read(cc, n);
		return;
	}
	char *line = evbuffer_readln(cc->in, &len, EVBUFFER_EOL_LF);
	if (line == NULL && evbuffer_search(cc->in, "\n", 1, NULL).pos >= 0) {
		/* the line is there: copying it out needed memory */
		reply_error(cc, "out of memory; try again");
		finish(cc);
		return;
	}
	if (line == NULL && n > 0 && evbuffer_get_length(cc->in) < CTL_LINE_MAX)
		return; /* no newline yet */
	if (line == NULL && evbuffer_get_length(cc->in) > 0 &&
	    evbuffer_get_length(cc->in) < CTL_LINE_MAX) {
		/* end of stream without a newline: take what came */
		len = evbuffer_get_length(cc->in);
		line = calloc(1, len + 1);
		if (line != NULL)
			evbuffer_remove(cc->in, line, len);
	}
	if (line == NULL) {
		if (evbuffer_get_length(cc->in) >= CTL_LINE_MAX) {
			reply_error(cc, "command line too long");
			finish(cc);
		} else {
			free_conn(cc);
		}
		return;
	}
	event_del(cc->rev);
	run_line(cc, line);
	free(line);
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct control *ctl = arg;

	if (ctl->accept_ev != NULL)
		event_add(ctl->accept_ev, NULL);
	if (ctl->metrics_ev != NULL)
		event_add(ctl->metrics_ev, NULL);
}

static void
on_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct control *ctl = arg;
	struct timeval tv = { CTL_TIMEOUT_S, 0 };
	int fd;

	if (net_accept(lfd, &fd) == -1) {
		if (net_local_shortage(errno)) {
			/* Out of descriptors: pause instead of spinning on a
			 * socket that stays readable. */
			struct timeval pause = { 0, 100 * 1000 };
			static struct log_limit ll; /* main thread only */
			log_limited(&ll, LOG_WARN, "control: cannot accept: "
			    "%s (raise the open files limit, LimitNOFILE=)",
			    strerror(errno));
			if (ctl->accept_ev != NULL)
				event_del(ctl->accept_ev);
			if (ctl->metrics_ev != NULL)
				event_del(ctl->metrics_ev);
			event_add(ctl->resume_ev, &pause);
		}
		return;
	}
	struct ctl_conn *cc = calloc(1, sizeof(*cc));
	if (cc == NULL) {
		log_warn("control: out of memory, closed a connection (check "
		    "the memory limits of the service)");
		close(fd);
		return;
	}
	cc->ctl = ctl;
	cc->fd = fd;
	cc->http = lfd == ctl->metrics_fd;
	TAILQ_INSERT_TAIL(&ctl->conns, cc, link);
	cc->in = evbuffer_new();
	cc->out = evbuffer_new();
	cc->rev = event_new(ctl->base, fd, EV_READ | EV_PERSIST, on_conn_read,
	    cc);
	cc->wev = event_new(ctl->base, fd, EV_WRITE | EV_PERSIST,
	    on_conn_write, cc);
	if (cc->in == NULL || cc->out == NULL || cc->rev == NULL ||
	    cc->wev == NULL || event_add(cc->rev, &tv) == -1) {
		log_warn("control: out of memory, closed a connection (check "
		    "the memory limits of the service)");
		free_conn(cc);
	}
}

static int
open_control(struct control *ctl, char *err, size_t errlen)
{
	const struct config *cfg = ctl->cfg;
	struct cfg_addr *addr = &ctl->addr;
	char why[256] = "not a unix socket path";

	if (config_parse_addr(cfg->control_path, addr, why, sizeof(why)) ==
	    -1 || addr->family != AF_UNIX) {
		snprintf(err, errlen, "control socket %s: %s",
		    cfg->control_path, why);
		return -1;
	}
	ctl->fd = net_listen(addr, 16, cfg->control_mode, err, errlen);
	if (ctl->fd == -1)
		return -1;
	if (net_unix_identity(addr, &ctl->dev, &ctl->ino) == -1)
		ctl->dev = 0;
	ctl->accept_ev = event_new(ctl->base, ctl->fd, EV_READ | EV_PERSIST,
	    on_accept, ctl);
	if (ctl->accept_ev == NULL || event_add(ctl->accept_ev, NULL) == -1) {
		snprintf(err, errlen, "control socket %s: out of memory "
		    "(check the memory limits of the service)", addr->text);
		return -1;
	}
	log_info("control socket on %s (mode %04o)", addr->text,
	    (unsigned)cfg->control_mode);
	return 0;
}

/* Prometheus scrapes: plain HTTP on a loopback address, the same data. */
static int
open_metrics(struct control *ctl, char *err, size_t errlen)
{
	ctl->metrics_fd = net_listen(&ctl->cfg->metrics_addr, 64, 0, err,
	    errlen);
	if (ctl->metrics_fd == -1)
		return -1;
	ctl->metrics_ev = event_new(ctl->base, ctl->metrics_fd,
	    EV_READ | EV_PERSIST, on_accept, ctl);
	if (ctl->metrics_ev == NULL || event_add(ctl->metrics_ev, NULL) == -1) {
		snprintf(err, errlen, "metrics endpoint %s: out of memory "
		    "(check the memory limits of the service)",
		    ctl->cfg->metrics_addr.text);
		return -1;
	}
	log_info("Prometheus metrics on http://%s/metrics",
	    ctl->cfg->metrics_addr.text);
	return 0;
}

void
control_set_config(struct control *ctl, const struct config *cfg,
    unsigned gen_id)
{
	if (ctl == NULL)
		return;
	ctl->cfg = cfg;
	ctl->gen_id = gen_id;
}

struct control *
control_open(const struct config *cfg, struct event_base *base,
    struct worker *workers, unsigned nworkers, control_reload_fn *reload,
    void *reload_arg, char *err, size_t errlen)
{
	struct control *ctl = calloc(1, sizeof(*ctl));

	if (ctl == NULL) {
		snprintf(err, errlen, "control socket: out of memory (check "
		    "the memory limits of the service)");
		return NULL;
	}
	ctl->cfg = cfg;
	ctl->fd = -1;
	ctl->metrics_fd = -1;
	ctl->reload = reload;
	ctl->reload_arg = reload_arg;
	ctl->base = base;
	ctl->workers = workers;
	ctl->nworkers = nworkers;
	TAILQ_INIT(&ctl->conns);
	if ((ctl->resume_ev = evtimer_new(base, on_accept_resume, ctl)) == NULL) {
		snprintf(err, errlen, "control socket: out of memory (check "
		    "the memory limits of the service)");
		free(ctl);
		return NULL;
	}
	if ((cfg->control_path != NULL && open_control(ctl, err, errlen) == -1) ||
	    (cfg->has_metrics && open_metrics(ctl, err, errlen) == -1)) {
		control_close(ctl);
		return NULL;
	}
	return ctl;
}

/* After the workers are gone: any gathering left simply ends. */
void
control_close(struct control *ctl)
{
	struct ctl_conn *cc;

	if (ctl == NULL)
		return;
	while ((cc = TAILQ_FIRST(&ctl->conns)) != NULL)
		free_conn(cc);
	if (ctl->accept_ev != NULL)
		event_free(ctl->accept_ev);
	if (ctl->metrics_ev != NULL)
		event_free(ctl->metrics_ev);
	if (ctl->resume_ev != NULL)
		event_free(ctl->resume_ev);
	if (ctl->metrics_fd != -1)
		close(ctl->metrics_fd);
	if (ctl->fd != -1) {
		net_unlink_unix(&ctl->addr, ctl->dev, ctl->ino);
		close(ctl->fd);
	}
	free(ctl);
}
