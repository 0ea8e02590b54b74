/*
 * fuzz_memcache_reply.c - libFuzzer harness for the Memcached reply side:
 * memcache_proto.parse_reply driven through an evbuffer the way backend.c's
 * parse_replies drives it, and mc_reply_classify.
 *
 * Input: byte 0 picks how the stream is cut into reads; bytes 1..4 are the
 * pflags of the requests in flight, used in turn (shape in the low bits,
 * noreply/quiet drops above); the rest is what a server sends. The stream
 * is run twice, in one read and in many, and the replies framed (length,
 * drop) and the error, if any, must be the same: a line over
 * MC_REPLY_LINE_MAX too is refused whether or not its end came with it
 * (K6). A broken invariant is a __builtin_trap().
 */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "memcache.h"
#include "proto.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_DEBUG
/* -DFUZZ_DEBUG: print a transcript, escaped, when two runs disagree. */
static void
dump(const char *what, struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b), i;
	const unsigned char *s = evbuffer_pullup(b, -1);

	fprintf(stderr, "%s (%zu): ", what, n);
	for (i = 0; i < n; i++)
		fprintf(stderr, isprint(s[i]) ? "%c" : "\\x%02x", s[i]);
	fprintf(stderr, "\n");
}
#else
#define dump(what, b) ((void)0)
#endif

static const struct proto *P = &memcache_proto;

#define NPFLAGS 4

/* ---- chunking (as in fuzz_resp_request.c) ---- */

struct chunker {
	unsigned mode;
	uint32_t x;
	unsigned empty;
};

static void
chunker_init(struct chunker *c, uint8_t seed)
{
	c->mode = seed & 3;
	c->x = ((uint32_t)seed << 16) ^ 0x9e3779b9u;
	c->empty = 0;
}

static size_t
chunker_next(struct chunker *c, size_t left)
{
	size_t n;

	c->x ^= c->x << 13;
	c->x ^= c->x >> 17;
	c->x ^= c->x << 5;
	switch (c->mode) {
	case 0:
		return left;
	case 1:
		n = 1;
		break;
	case 2:
		n = c->x % 8;
		if (n == 0 && ++c->empty > 64)
			n = 1;
		break;
	default:
		n = 1 + c->x % 512;
		break;
	}
	return n < left ? n : left;
}

/* ---- the driver: backend.c's parse_replies without the socket ---- */

struct run {
	const uint32_t *pflags;
	unsigned next;        /* index of the request being answered */
	void *state;
	struct evbuffer *in;
	struct evbuffer *log; /* transcript */
	bool closed;
};

/* One reply of rep[0..len) for a request with these pflags. */
static void
check_reply(const char *rep, size_t len, uint32_t pflags, bool drop)
{
	CHECK(len >= 1 && rep[len - 1] == '\n');
	if (pflags & MC_PF_NOREPLY)
		CHECK(drop);
	if ((pflags & (MC_PF_NOREPLY | MC_PF_DROP_EN | MC_PF_DROP_HD |
	    MC_PF_DROP_VA)) == 0)
		CHECK(!drop);
	/* a one-line reply is one line, and not over the line limit */
	if ((pflags & MC_PF_SHAPE_MASK) == MC_SHAPE_LINE) {
		CHECK(memchr(rep, '\n', len - 1) == NULL);
		CHECK(len - 1 <= MC_REPLY_LINE_MAX);
	}
}

static void
drive(struct run *r)
{
	while (!r->closed && evbuffer_get_length(r->in) > 0) {
		uint32_t pf = r->pflags[r->next % NPFLAGS];
		struct replyinfo ri;
		enum reply_verdict v;

		memset(&ri, 0, sizeof(ri));
		v = P->parse_reply(r->state, r->in, pf, &ri);
		switch (v) {
		case RV_NEED_MORE:
			return;
		case RV_ERROR:
			CHECK(ri.err != NULL && ri.err[0] != '\0');
			evbuffer_add_printf(r->log, "E:%s|", ri.err);
			r->closed = true;
			return;
		case RV_REPLY: {
			const char *rep;

			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			CHECK(!ri.push && !ri.busy_error);
			rep = (const char *)evbuffer_pullup(r->in,
			    (ev_ssize_t)ri.len);
			check_reply(rep, ri.len, pf, ri.drop);
			/* an evicted set is answered "object too large" */
			CHECK((ri.replace != NULL) ==
			    ((pf & MC_PF_EVICTED) && !ri.drop));
			if (ri.replace != NULL) {
				size_t n = strlen(ri.replace);

				CHECK(n >= 2 && ri.replace[n - 2] == '\r' &&
				    ri.replace[n - 1] == '\n');
			}
			evbuffer_add_printf(r->log, "R%zu%s%s|", ri.len,
			    ri.drop ? "d" : "", ri.replace ? "r" : "");
			evbuffer_drain(r->in, ri.len);
			r->next++;
			break;
		}
		default:
			CHECK(0);
		}
	}
}

static struct run
run(const uint32_t *pflags, const char *s, size_t len, uint8_t seed)
{
	struct run r = { .pflags = pflags };
	struct chunker ch;
	size_t pos = 0;

	r.state = calloc(1, P->reply_state_size);
	r.in = evbuffer_new();
	r.log = evbuffer_new();
	CHECK(r.state && r.in && r.log);
	P->reply_init(r.state);
	chunker_init(&ch, seed);
	while (pos < len && !r.closed) {
		size_t n = chunker_next(&ch, len - pos);

		evbuffer_add(r.in, s + pos, n);
		pos += n;
		drive(&r);
	}
	if (!r.closed)
		evbuffer_add_printf(r.log, "N%zu", evbuffer_get_length(r.in));
	evbuffer_free(r.in);
	free(r.state);
	r.in = NULL;
	r.state = NULL;
	return r;
}

/* The two runs must frame the same replies and stop on the same error. */
static void
same_runs(struct run a, struct run b)
{
	size_t na = evbuffer_get_length(a.log), nb = evbuffer_get_length(b.log);
	const char *sa = (const char *)evbuffer_pullup(a.log, -1);
	const char *sb = (const char *)evbuffer_pullup(b.log, -1);

	if (!(na == nb && memcmp(sa, sb, na) == 0)) {
		dump("whole  ", a.log);
		dump("chunked", b.log);
		CHECK(0);
	}
	evbuffer_free(a.log);
	evbuffer_free(b.log);
}

static void
check_classify(const char *s, size_t len)
{
	size_t start = 0;

	while (start < len) {
		const char *nl = memchr(s + start, '\n', len - start);
		size_t end = nl != NULL ? (size_t)(nl - s) : len;
		struct mc_reply_line rl;

		mc_reply_classify(s + start, end - start, &rl);
		CHECK(rl.code >= MC_R_OTHER && rl.code <= MC_R_ERROR);
		CHECK(!rl.has_len || rl.code == MC_R_VALUE ||
		    rl.code == MC_R_VA);
		start = end + 1;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t pflags[NPFLAGS];
	const char *s;
	size_t len, i;

	if (size < 1 + NPFLAGS)
		return 0;
	/* the four shapes that exist (0..3), any of the drop bits, and bit 2
	 * for MC_PF_EVICTED */
	for (i = 0; i < NPFLAGS; i++)
		pflags[i] = (data[1 + i] & 0xf3u) |
		    (data[1 + i] & 0x04u ? MC_PF_EVICTED : 0);
	s = (const char *)data + 1 + NPFLAGS;
	len = size - 1 - NPFLAGS;

	same_runs(run(pflags, s, len, 0), run(pflags, s, len, data[0]));

	check_classify(s, len);
	return 0;
}
