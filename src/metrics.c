/*
 * metrics.c - format counters as Prometheus text (version 0.0.4): one
 * HELP/TYPE block per metric family, labels for upstream, server, worker
 * and close reason, and the reply latency as a histogram in seconds.
 */
#include "metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define FOREACH_SERVER(cfg, u, s, i)					\
	for (size_t u = 0, i = 0; u < (cfg)->nupstreams; u++)		\
		for (size_t s = 0; s < (cfg)->upstreams[u].nservers;	\
		    s++, i++)

static void
family(struct evbuffer *out, const char *name, const char *type,
    const char *help)
{
	evbuffer_add_printf(out, "# HELP sidepool_%s %s\n# TYPE sidepool_%s %s\n",
	    name, help, name, type);
}

/* Label values here are names and addresses from the config: the config
 * loader allows no quotes, backslashes or newlines in them. */
static void
server_labels(struct evbuffer *out, const struct config *cfg, size_t u,
    size_t s)
{
	evbuffer_add_printf(out, "upstream=\"%s\",server=\"%s\"",
	    cfg->upstreams[u].name, cfg->upstreams[u].servers[s].addr.text);
}

/*
 * The per-server counters and gauges, as data: each is a field of the
 * pool snapshot merged over the workers (server_up is computed).
 */
enum metric_value { MV_U64, MV_UNSIGNED, MV_UP };

struct server_metric {
	const char *name;
	const char *type;
	const char *help;
	enum metric_value value;
	size_t off;             /* in struct pool_snapshot */
};

#define COUNTER(n, h, f) \
	{ n, "counter", h, MV_U64, offsetof(struct pool_snapshot, stats.f) }

static const struct server_metric server_metrics[] = {
	{ "server_up", "gauge", "1 when no worker considers the server down.",
	    MV_UP, 0 },
	COUNTER("server_requests_total", "Requests sent to the server.",
	    requests),
	COUNTER("server_replies_total", "Replies read from the server.",
	    replies),
	COUNTER("server_errors_total", "Requests answered with a sidepool "
	    "error (connection lost, timeout).", errors),
	COUNTER("server_fast_failures_total", "Requests refused at once "
	    "because the server was down.", fast_failures),
	COUNTER("server_bytes_sent_total", "Bytes written to the server.",
	    bytes_sent),
	COUNTER("server_bytes_received_total", "Bytes read from the server.",
	    bytes_received),
	COUNTER("server_connections_opened_total", "Connections opened to "
	    "the server.", opened),
	COUNTER("server_probes_total", "Health probes sent on idle "
	    "connections.", probes),
	COUNTER("server_marked_down_total", "Times a worker marked the "
	    "server down.", marked_down),
	COUNTER("server_sessions_total", "Connections given to one client "
	    "for a session (MULTI, SUBSCRIBE, blocking commands).", sessions),
	COUNTER("server_sessions_queued_total", "Sessions that waited in the "
	    "pool's queue for a connection.", queued),
	COUNTER("server_sessions_refused_total", "Sessions refused: every "
	    "connection was in use.", exhausted),
	{ "server_requests_in_flight", "gauge", "Requests waiting for the "
	    "server's reply.", MV_UNSIGNED,
	    offsetof(struct pool_snapshot, inflight) },
};

static unsigned long long
metric_value(const struct server_metric *sm, const struct pool_snapshot *m,
    unsigned down)
{
	const char *p = (const char *)m + sm->off;

	switch (sm->value) {
	case MV_U64:
		return *(const uint64_t *)(const void *)p;
	case MV_UNSIGNED:
		return *(const unsigned *)(const void *)p;
	case MV_UP:
		break;
	}
	return down == 0;
}

static void
format_server_metrics(struct evbuffer *out, const struct config *cfg,
    const struct worker_snapshot *snaps, unsigned n)
{
	for (size_t k = 0; k < sizeof(server_metrics) /
	    sizeof(server_metrics[0]); k++) {
		const struct server_metric *sm = &server_metrics[k];

		family(out, sm->name, sm->type, sm->help);
		FOREACH_SERVER(cfg, u, s, i) {
			struct pool_snapshot m;
			unsigned down;
			stats_merge_pool(snaps, n, i, &m, &down);
			evbuffer_add_printf(out, "sidepool_%s{", sm->name);
			server_labels(out, cfg, u, s);
			evbuffer_add_printf(out, "} %llu\n",
			    metric_value(sm, &m, down));
		}
	}
}

static void
format_connections(struct evbuffer *out, const struct config *cfg,
    const struct worker_snapshot *snaps, unsigned n)
{
	static const char *const states[] = { "connecting", "idle", "active",
	    "probing", "dedicated" };

	family(out, "server_connections", "gauge",
	    "Open connections to the server, all workers, by state.");
	FOREACH_SERVER(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned down;
		stats_merge_pool(snaps, n, i, &m, &down);
		for (int k = 0; k < 5; k++) {
			evbuffer_add_printf(out, "sidepool_server_connections{");
			server_labels(out, cfg, u, s);
			evbuffer_add_printf(out, ",state=\"%s\"} %u\n", states[k],
			    m.counts[k]);
		}
	}
	family(out, "server_connections_closed_total", "counter",
	    "Connections to the server closed, by reason.");
	FOREACH_SERVER(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned down;
		stats_merge_pool(snaps, n, i, &m, &down);
		for (int r = 0; r < CLOSE_REASON_COUNT; r++) {
			evbuffer_add_printf(out,
			    "sidepool_server_connections_closed_total{");
			server_labels(out, cfg, u, s);
			evbuffer_add_printf(out, ",reason=\"%s\"} %llu\n",
			    close_reason_names[r],
			    (unsigned long long)m.stats.closed[r]);
		}
	}
}

static void
format_latency(struct evbuffer *out, const struct config *cfg,
    const struct worker_snapshot *snaps, unsigned n)
{
	family(out, "server_reply_seconds", "histogram",
	    "Time from writing a request to the server to the end of its "
	    "reply.");
	FOREACH_SERVER(cfg, u, s, i) {
		struct pool_snapshot m;
		unsigned down;
		uint64_t cum = 0;
		stats_merge_pool(snaps, n, i, &m, &down);
		/* Bucket k counts replies under 2^k µs: cumulative "le". */
		for (int k = 0; k < LATENCY_BUCKETS - 1; k++) {
			cum += m.stats.latency[k];
			if (k < 4)
				continue; /* below 16 µs: nothing happens there */
			evbuffer_add_printf(out, "sidepool_server_reply_seconds_"
			    "bucket{");
			server_labels(out, cfg, u, s);
			evbuffer_add_printf(out, ",le=\"%.6f\"} %llu\n",
			    (double)((uint64_t)1 << k) / 1e6,
			    (unsigned long long)cum);
		}
		cum += m.stats.latency[LATENCY_BUCKETS - 1];
		evbuffer_add_printf(out, "sidepool_server_reply_seconds_bucket{");
		server_labels(out, cfg, u, s);
		evbuffer_add_printf(out, ",le=\"+Inf\"} %llu\n",
		    (unsigned long long)cum);
		evbuffer_add_printf(out, "sidepool_server_reply_seconds_sum{");
		server_labels(out, cfg, u, s);
		evbuffer_add_printf(out, "} %.6f\n",
		    (double)m.stats.latency_sum_us / 1e6);
		evbuffer_add_printf(out, "sidepool_server_reply_seconds_count{");
		server_labels(out, cfg, u, s);
		evbuffer_add_printf(out, "} %llu\n", (unsigned long long)cum);
	}
}

static void
format_clients(struct evbuffer *out, const struct worker_snapshot *snaps,
    unsigned n)
{
	struct worker_stats t;
	unsigned nclients;

	stats_merge_workers(snaps, n, &t, &nclients);
	family(out, "clients", "gauge", "Clients connected now.");
	evbuffer_add_printf(out, "sidepool_clients %u\n", nclients);
	family(out, "worker_clients", "gauge", "Clients connected now, per "
	    "worker.");
	for (unsigned w = 0; w < n; w++)
		evbuffer_add_printf(out, "sidepool_worker_clients{worker=\"%u\"} "
		    "%u\n", w, snaps[w].nclients);
	struct { const char *name, *help; uint64_t v; } totals[] = {
		{ "clients_accepted_total", "Clients accepted.",
		    t.clients_accepted },
		{ "clients_closed_total", "Clients gone.", t.clients_closed },
		{ "clients_rejected_total", "Clients refused over max_clients.",
		    t.clients_rejected },
		{ "requests_total", "Requests forwarded to servers.",
		    t.requests },
		{ "local_replies_total", "Requests answered by sidepool itself.",
		    t.local_replies },
		{ "protocol_errors_total", "Clients closed for malformed "
		    "requests.", t.protocol_errors },
		{ "client_bytes_received_total", "Bytes read from clients.",
		    t.bytes_in },
		{ "client_bytes_sent_total", "Bytes written to clients.",
		    t.bytes_out },
	};
	for (size_t i = 0; i < sizeof(totals) / sizeof(totals[0]); i++) {
		family(out, totals[i].name, "counter", totals[i].help);
		evbuffer_add_printf(out, "sidepool_%s %llu\n", totals[i].name,
		    (unsigned long long)totals[i].v);
	}
}

void
metrics_format(struct evbuffer *out, const struct config *cfg,
    const struct worker_snapshot *snaps, unsigned n)
{
	format_clients(out, snaps, n);
	format_server_metrics(out, cfg, snaps, n);
	format_connections(out, cfg, snaps, n);
	format_latency(out, cfg, snaps, n);
}
