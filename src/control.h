/*
 * control.h - the control socket: a unix socket, private by default, that
 * answers one command per connection (stats, pools, servers, clients,
 * workers, config, status, version, help) as aligned text or as JSON.
 *
 * It lives on the main thread. Counters stay with the workers that own
 * them: a command that needs them posts a job to every worker, each copies
 * its own counters on its own thread, and the last one to finish wakes the
 * main thread, which merges and answers. Nothing is sampled: every answer
 * is as fresh as the moment it was asked.
 */
#ifndef SIDEPOOL_CONTROL_H
#define SIDEPOOL_CONTROL_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "config.h"

struct worker;
struct control;

struct control *control_open(const struct config *cfg,
    struct event_base *base, struct worker *workers, unsigned nworkers,
    char *err, size_t errlen);
void control_close(struct control *ctl);

#endif
