/*
 * fuzz_resp_reply.c - libFuzzer harness for the RESP2/RESP3 reply parser
 * (resp_reply_feed).
 *
 * Input: byte 0 picks how the stream is cut into chunks; the rest is a
 * server's byte stream, parsed as pipelined replies twice, in one piece
 * and in chunks: both runs must frame the same replies, with the same
 * type, push flag, error code and error text (a differential within the
 * parser). Each framed reply is parsed again on its own and must come out
 * whole. A broken invariant is a __builtin_trap().
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

struct transcript {
	char *buf;
	size_t len, cap;
};

static void
t_add(struct transcript *t, const void *p, size_t n)
{
	if (t->len + n > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 1024;

		while (cap < t->len + n)
			cap *= 2;
		t->buf = realloc(t->buf, cap);
		CHECK(t->buf != NULL);
		t->cap = cap;
	}
	memcpy(t->buf + t->len, p, n);
	t->len += n;
}

static void
t_record(struct transcript *t, const struct resp_reply_parser *p,
    enum resp_status st)
{
	int s = (int)st;

	t_add(t, &s, sizeof(s));
	t_add(t, &p->total, sizeof(p->total));
	if (st == RESP_OK) {
		t_add(t, &p->type, 1);
		t_add(t, &p->push, sizeof(p->push));
		t_add(t, p->errcode, p->errcodelen + 1);
	}
	if (st == RESP_ERROR)
		t_add(t, p->err, strlen(p->err) + 1);
}

/* rep[0..len) is what the parser just called one whole reply. */
static void
check_reply(const struct resp_reply_parser *p, const char *rep, size_t len)
{
	struct resp_reply_parser q;
	size_t used, i, n;

	CHECK(len >= 3); /* "_\r\n" */
	CHECK(p->depth == 0);
	CHECK(p->errcodelen < RESP_ERRCODE_MAX &&
	    p->errcode[p->errcodelen] == '\0');
	for (i = 0; i < p->errcodelen; i++)
		CHECK(p->errcode[i] != ' ' && p->errcode[i] != '\r' &&
		    p->errcode[i] != '\n');
	CHECK(p->type != '|' && p->type != '.' && p->type != ';');
	if (rep[0] != '|')
		CHECK(p->type == rep[0]);
	CHECK(p->push == (p->type == '>'));
	if (p->errcodelen > 0)
		CHECK(p->type == '-' || p->type == '!');
	if (rep[0] == '-') {
		/* the first word of the line, at most RESP_ERRCODE_MAX - 1 */
		for (n = 1; n < len && rep[n] != ' ' && rep[n] != '\r' &&
		    rep[n] != '\n' && n - 1 < RESP_ERRCODE_MAX - 1; n++)
			;
		CHECK(p->errcodelen == n - 1 &&
		    memcmp(p->errcode, rep + 1, n - 1) == 0);
	}
	CHECK(rep[len - 2] == '\r' && rep[len - 1] == '\n');

	/* on its own, the reply is whole, and one byte less is not */
	resp_reply_init(&q);
	CHECK(resp_reply_feed(&q, rep, len, &used) == RESP_OK && used == len);
	resp_reply_init(&q);
	CHECK(resp_reply_feed(&q, rep, len - 1, &used) == RESP_NEED_MORE &&
	    used == len - 1);
}

static void
run(const char *s, size_t len, uint8_t seed, struct transcript *t)
{
	struct resp_reply_parser p;
	struct chunker ch;
	size_t pos = 0, start = 0, fed = 0, used;
	enum resp_status st;

	resp_reply_init(&p);
	chunker_init(&ch, seed);
	while (pos < len) {
		size_t n = chunker_next(&ch, len - pos), off = 0;

		do {
			st = resp_reply_feed(&p, s + pos + off, n - off, &used);
			CHECK(used <= n - off);
			off += used;
			fed += used;
			CHECK(p.total == fed);
			CHECK(p.depth >= 0 && p.depth <= RESP_MAX_DEPTH);
			if (st == RESP_NEED_MORE) {
				CHECK(off == n);
				break;
			}
			t_record(t, &p, st);
			if (st == RESP_ERROR) {
				CHECK(p.err != NULL && p.err[0] != '\0');
				st = resp_reply_feed(&p, s, len, &used);
				CHECK(st == RESP_ERROR && used == 0);
				return;
			}
			CHECK(used > 0);
			check_reply(&p, s + start, fed);
			start += fed;
			fed = 0;
		} while (off < n);
		pos += n;
	}
	t_add(t, "end", 3);
	t_add(t, &fed, sizeof(fed));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct transcript whole = { 0 }, chunked = { 0 };

	if (size < 1)
		return 0;
	run((const char *)data + 1, size - 1, 0, &whole);
	run((const char *)data + 1, size - 1, data[0], &chunked);
	CHECK(whole.len == chunked.len &&
	    memcmp(whole.buf, chunked.buf, whole.len) == 0);
	free(whole.buf);
	free(chunked.buf);
	return 0;
}
