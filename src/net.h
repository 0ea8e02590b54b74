/*
 * net.h - socket helpers: listen, connect, read into an evbuffer.
 *
 * Like redis's anet.c these never log: they return -1 and write what went
 * wrong, and what to do about it, into the caller's err buffer.
 */
#ifndef SIDEPOOL_NET_H
#define SIDEPOOL_NET_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <event2/buffer.h>

#include "config.h"

enum net_connect_result { NET_CONNECTED, NET_IN_PROGRESS, NET_FAILED };

int net_listen(const struct cfg_addr *addr, int backlog, mode_t mode,
    char *err, size_t errlen);
int net_chmod_unix(const struct cfg_addr *addr, mode_t mode);
int net_unix_identity(const struct cfg_addr *addr, dev_t *dev, ino_t *ino);
void net_unlink_unix(const struct cfg_addr *addr, dev_t dev, ino_t ino);
enum net_connect_result net_connect(const struct cfg_addr *addr, int *fdp,
    char *err, size_t errlen);
int net_socket_error(int fd);
int net_accept(int lfd, int *fdp);
void net_tune_stream(int fd);
bool net_local_shortage(int err);
struct event;
int net_flush(struct evbuffer *out, int fd, struct event *wev, bool *armed,
    uint64_t *bytes);

/* Read what is ready, up to max bytes, into buf. Returns bytes read (> 0),
 * 0 at end of stream, -1 on error (errno set; EAGAIN when nothing ready). */
ssize_t net_read(struct evbuffer *buf, int fd, size_t max);

#endif
