/*
 * stats.c - the arithmetic of counters: latency histograms.
 */
#include "stats.h"

void
latency_record(uint64_t *buckets, uint64_t us)
{
	unsigned i = 0;

	while (i < LATENCY_BUCKETS - 1 && (us >> i) != 0)
		i++;
	buckets[i]++;
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
