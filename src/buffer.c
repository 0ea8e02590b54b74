/*
 * buffer.c - what sidepool needs of byte buffers beyond libevent: moves
 * that are all or nothing (an allocation that fails must not leave a
 * request or a reply cut short in a stream), and one-line replies (an
 * error that quotes a client's bytes or a unix path stays one line)
 * written in one piece, so that a failure leaves no half reply; and a
 * count of libevent's failed allocations, per thread, so that a reply
 * built by many calls can be known to be whole.
 */
#include "buffer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

/*
 * A reply sidepool builds itself (HELLO's map, PING's message) takes
 * several evbuffer_add calls, any of which may fail; checking each at
 * every call site would double the code that builds replies. libevent
 * allocates through these instead, and the caller compares the count
 * before and after. Per thread: each worker asks about its own.
 */
static _Thread_local unsigned long alloc_failures;

static void *
counting_malloc(size_t n)
{
	void *p = malloc(n);

	if (p == NULL)
		alloc_failures++;
	return p;
}

static void *
counting_realloc(void *old, size_t n)
{
	void *p = realloc(old, n);

	if (p == NULL && n > 0)
		alloc_failures++;
	return p;
}

void
buffer_count_failures(void)
{
	event_set_mem_functions(counting_malloc, counting_realloc, free);
}

unsigned long
buffer_alloc_failures(void)
{
	return alloc_failures;
}

/*
 * evbuffer_remove_buffer, all or nothing: libevent 2.1 drops the bytes it
 * could not copy (an allocation) and still counts them moved. The len
 * bytes leave src either way; -1: nothing was added to dst. The common
 * cases cost what evbuffer_remove_buffer does: whole chains move by
 * pointer, and a part of src's first chain is copied by one evbuffer_add,
 * which allocates before it copies anything. Only a part spanning chains
 * goes through a scratch buffer kept per thread (evbuffer_move_done frees
 * it).
 */
static _Thread_local struct evbuffer *move_scratch;

int
evbuffer_move(struct evbuffer *src, struct evbuffer *dst, size_t len)
{
	size_t first = evbuffer_get_contiguous_space(src);

	if (first == len) {
		evbuffer_remove_buffer(src, dst, len); /* moves the chain */
		return 0;
	}
	if (first > len) {
		/* one evbuffer_add, which allocates before it copies */
		size_t before = evbuffer_get_length(dst);
		evbuffer_remove_buffer(src, dst, len);
		return evbuffer_get_length(dst) - before == len ? 0 : -1;
	}
	if (len == evbuffer_get_length(src))
		return evbuffer_add_buffer(dst, src); /* moves chains */
	if (move_scratch == NULL && (move_scratch = evbuffer_new()) == NULL) {
		evbuffer_drain(src, len);
		return -1;
	}
	evbuffer_remove_buffer(src, move_scratch, len);
	if (evbuffer_get_length(move_scratch) == len &&
	    evbuffer_add_buffer(dst, move_scratch) == 0)
		return 0;
	evbuffer_drain(move_scratch, evbuffer_get_length(move_scratch));
	return -1;
}

void
evbuffer_move_done(void)
{
	if (move_scratch != NULL)
		evbuffer_free(move_scratch);
	move_scratch = NULL;
}

/*
 * prefix, then fmt, then CR LF, with any CR or LF of the formatted text
 * blanked; cut at a bound no sidepool message reaches. -1: out of memory,
 * nothing was added.
 */
int
buffer_add_vline(struct evbuffer *out, const char *prefix, const char *fmt,
    va_list ap)
{
	char line[1024];
	size_t plen = strlen(prefix);
	int n;

	if (plen > sizeof(line) - 3)
		return -1;
	memcpy(line, prefix, plen);
	n = vsnprintf(line + plen, sizeof(line) - 2 - plen, fmt, ap);
	if (n < 0)
		return -1;
	size_t len = plen + (size_t)n;
	if (len > sizeof(line) - 3)
		len = sizeof(line) - 3;
	for (size_t i = 0; i < len; i++)
		if (line[i] == '\r' || line[i] == '\n')
			line[i] = ' ';
	memcpy(line + len, "\r\n", 2);
	return evbuffer_add(out, line, len + 2);
}

int
buffer_add_line(struct evbuffer *out, const char *prefix, const char *fmt,
    ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = buffer_add_vline(out, prefix, fmt, ap);
	va_end(ap);
	return rc;
}
