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

/* Apply the configuration file again; 0 on success. msg says what
 * happened either way. */
typedef int control_reload_fn(void *arg, char *msg, size_t msglen);

struct control *control_open(const struct config *cfg,
    struct event_base *base, struct worker *workers, unsigned nworkers,
    control_reload_fn *reload, void *reload_arg, char *err, size_t errlen);
void control_set_config(struct control *ctl, const struct config *cfg,
    unsigned gen_id);
void control_close(struct control *ctl);

#endif
