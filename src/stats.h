/*
 * stats.h - counters. Each worker owns its own and only it writes them;
 * readers (the control socket, later) merge them on demand. Plain
 * uint64_t: a reader on another thread may see a slightly old value,
 * never a torn one on the 64-bit targets sidepool supports.
 */
#ifndef SIDEPOOL_STATS_H
#define SIDEPOOL_STATS_H

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
	CLOSE_SHUTDOWN,
	CLOSE_REASON_COUNT
};

extern const char *const close_reason_names[CLOSE_REASON_COUNT];

struct pool_stats {
	uint64_t opened;
	uint64_t closed[CLOSE_REASON_COUNT];
	uint64_t requests;
	uint64_t errors;        /* requests answered with a proxy error */
	uint64_t probes;
	uint64_t marked_down;   /* times the server was marked down */
	uint64_t fast_failures; /* requests refused at once: server down */
};

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

#endif
