/*
 * stats.h - counters. Each worker owns its own and only it writes them;
 * readers (the control socket, later) merge them on demand. Plain
 * uint64_t: a reader on another thread may see a slightly old value,
 * never a torn one on the 64-bit targets sidepool supports.
 */
#ifndef SIDEPOOL_STATS_H
#define SIDEPOOL_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why a backend connection was closed. One close path, one reason. */
enum close_reason {
	CLOSE_EVICTED,        /* LRU: more idle connections than the pool size */
	CLOSE_IDLE_TIMEOUT,   /* idle longer than pool.idle_timeout */
	CLOSE_SERVER_EOF,     /* the server closed it */
	CLOSE_SERVER_ERROR,   /* read/write error on the socket */
	CLOSE_UNEXPECTED_DATA,/* bytes from the server with no request waiting */
	CLOSE_PROTOCOL_ERROR, /* a reply we could not parse: dubious state */
	CLOSE_CONNECT_FAILED,
	CLOSE_CONNECT_TIMEOUT,
	CLOSE_REQUEST_TIMEOUT,
	CLOSE_PROBE_FAILED,   /* an idle probe got no answer, or a wrong one */
	CLOSE_MAX_LIFETIME,   /* retired after pool.max_lifetime */
	CLOSE_SETUP_FAILED,   /* the server refused our AUTH: misconfigured */
	CLOSE_REFUSED,        /* the server refused our SELECT, DISCARD...: the
			         connection's state is unknown */
	CLOSE_ABANDONED,      /* its client left mid-session (blocked, subscribed) */
	CLOSE_RESET,          /* its client sent RESET */
	CLOSE_SHUTDOWN,
	CLOSE_REASON_COUNT
};

extern const char *const close_reason_names[CLOSE_REASON_COUNT];

/* Reply latency, as the proxy sees it from the write of a request to the
 * end of its reply: bucket i counts replies that took < 2^i microseconds. */
#define LATENCY_BUCKETS 32

struct pool_stats {
	uint64_t opened;
	uint64_t closed[CLOSE_REASON_COUNT];
	uint64_t requests;
	uint64_t errors;        /* requests answered with a proxy error */
	uint64_t probes;
	uint64_t marked_down;   /* times the server was marked down */
	uint64_t fast_failures; /* requests refused at once: server down */
	uint64_t exhausted;     /* sessions refused: no connection to dedicate */
	uint64_t queued;        /* sessions that had to wait for one */
	uint64_t sessions;      /* connections dedicated to a client's session */
	uint64_t replies;
	uint64_t bytes_sent;    /* to the server */
	uint64_t bytes_received;
	uint64_t latency[LATENCY_BUCKETS];
	uint64_t latency_sum_us;
};

void latency_record(uint64_t *buckets, uint64_t us);
uint64_t latency_percentile(const uint64_t *buckets, double q);

struct worker_stats {
	uint64_t clients_accepted;
	uint64_t clients_closed;
	uint64_t clients_rejected; /* over max_clients */
	uint64_t requests;
	uint64_t local_replies;
	uint64_t protocol_errors;
	uint64_t bytes_in;
	uint64_t bytes_out;
};

/* What one worker tells the control socket about one of its pools. */
struct pool_snapshot {
	unsigned counts[5];        /* connecting, idle, active, probing, dedicated */
	unsigned inflight;         /* requests waiting for a reply */
	struct pool_stats stats;
	bool down;
	uint64_t down_for_ms;
	unsigned failures;
	char last_error[160];
};

/* A copy of a worker's counters, taken on the worker's own thread. */
struct worker_snapshot {
	unsigned id;
	unsigned gen_id;                /* the configuration it describes */
	struct worker_stats stats;
	unsigned nclients;
	unsigned *clients_per_listener; /* one per listener, then removed ones */
	uint64_t oldest_client_ms;      /* age of the oldest client */
	uint64_t biggest_input;         /* bytes buffered, largest client */
	uint64_t biggest_output;
	struct pool_snapshot *pools;    /* upstream by upstream, server by server */
	size_t npools;
};


void stats_merge_pool(const struct worker_snapshot *snaps, unsigned n,
    size_t index, struct pool_snapshot *m, unsigned *down_workers);
void stats_merge_workers(const struct worker_snapshot *snaps, unsigned n,
    struct worker_stats *t, unsigned *nclients);

#endif
