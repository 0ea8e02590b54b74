/*
 * buffer.h - what sidepool needs of byte buffers beyond libevent: moves
 * that are all or nothing, one-line replies written in one piece, and
 * whether an allocation inside libevent failed.
 */
#ifndef SIDEPOOL_BUFFER_H
#define SIDEPOOL_BUFFER_H

#include <stdarg.h>
#include <stddef.h>

#include <event2/buffer.h>

int evbuffer_move(struct evbuffer *src, struct evbuffer *dst, size_t len);
void evbuffer_move_done(void);
int buffer_add_line(struct evbuffer *out, const char *prefix,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int buffer_add_vline(struct evbuffer *out, const char *prefix,
    const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
/* Before any other libevent call: count libevent's failed allocations. */
void buffer_count_failures(void);
/* This thread's count so far: unchanged across a reply's building means
 * the reply is whole. */
unsigned long buffer_alloc_failures(void);

#endif
