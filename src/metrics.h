/*
 * metrics.h - the Prometheus text exposition of sidepool's counters, made
 * from the same worker snapshots the control socket answers from.
 */
#ifndef SIDEPOOL_METRICS_H
#define SIDEPOOL_METRICS_H

#include <event2/buffer.h>

#include "config.h"
#include "stats.h"

void metrics_format(struct evbuffer *out, const struct config *cfg,
    const struct worker_snapshot *snaps, unsigned nworkers);

#endif
