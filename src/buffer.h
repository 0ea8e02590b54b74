/*
 * buffer.h - what sidepool needs of byte buffers beyond libevent: moves
 * that are all or nothing, and one-line replies written in one piece.
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

#endif
