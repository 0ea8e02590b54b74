/*
 * stats.c - the arithmetic of counters: latency histograms, and merging
 * the workers' snapshots into one view.
 */
#include "stats.h"

#include <stdio.h>
#include <string.h>

void
latency_record(uint64_t *buckets, uint64_t us)
{
	/* the bucket is the bit length of us: 0 for 0, 1 for 1, 2 for 2-3... */
	unsigned i = us == 0 ? 0 : 64 - (unsigned)__builtin_clzll(us);

	buckets[i < LATENCY_BUCKETS ? i : LATENCY_BUCKETS - 1]++;
}

/* The upper bound (in µs) of the bucket holding quantile q (0 < q < 1). */
uint64_t
latency_percentile(const uint64_t *buckets, double q)
{
	uint64_t total = 0, seen = 0;

	for (unsigned i = 0; i < LATENCY_BUCKETS; i++)
		total += buckets[i];
	if (total == 0)
		return 0;
	for (unsigned i = 0; i < LATENCY_BUCKETS; i++) {
		seen += buckets[i];
		if ((double)seen >= q * (double)total)
			return i == 0 ? 1 : (uint64_t)1 << i;
	}
	return (uint64_t)1 << (LATENCY_BUCKETS - 1);
}

/* The same pool (by its index in the configuration) across all workers. */
void
stats_merge_pool(const struct worker_snapshot *snaps, unsigned n,
    size_t index, struct pool_snapshot *m, unsigned *down_workers)
{
	memset(m, 0, sizeof(*m));
	*down_workers = 0;
	for (unsigned w = 0; w < n; w++) {
		const struct pool_snapshot *p = &snaps[w].pools[index];
		for (int i = 0; i < 5; i++)
			m->counts[i] += p->counts[i];
		m->inflight += p->inflight;
		m->stats.opened += p->stats.opened;
		for (int i = 0; i < CLOSE_REASON_COUNT; i++)
			m->stats.closed[i] += p->stats.closed[i];
		m->stats.requests += p->stats.requests;
		m->stats.replies += p->stats.replies;
		m->stats.errors += p->stats.errors;
		m->stats.probes += p->stats.probes;
		m->stats.marked_down += p->stats.marked_down;
		m->stats.fast_failures += p->stats.fast_failures;
		m->stats.exhausted += p->stats.exhausted;
		m->stats.sessions += p->stats.sessions;
		m->stats.bytes_sent += p->stats.bytes_sent;
		m->stats.bytes_received += p->stats.bytes_received;
		m->stats.latency_sum_us += p->stats.latency_sum_us;
		for (int i = 0; i < LATENCY_BUCKETS; i++)
			m->stats.latency[i] += p->stats.latency[i];
		if (p->down) {
			(*down_workers)++;
			if (p->down_for_ms > m->down_for_ms)
				m->down_for_ms = p->down_for_ms;
			m->down = true;
		}
		if (p->failures > m->failures)
			m->failures = p->failures;
		if (p->last_error[0] != '\0')
			snprintf(m->last_error, sizeof(m->last_error), "%s",
			    p->last_error);
	}
}

void
stats_merge_workers(const struct worker_snapshot *snaps, unsigned n,
    struct worker_stats *t, unsigned *nclients)
{
	memset(t, 0, sizeof(*t));
	*nclients = 0;
	for (unsigned w = 0; w < n; w++) {
		const struct worker_stats *s = &snaps[w].stats;
		t->clients_accepted += s->clients_accepted;
		t->clients_closed += s->clients_closed;
		t->clients_rejected += s->clients_rejected;
		t->requests += s->requests;
		t->local_replies += s->local_replies;
		t->protocol_errors += s->protocol_errors;
		t->bytes_in += s->bytes_in;
		t->bytes_out += s->bytes_out;
		*nclients += snaps[w].nclients;
	}
}
