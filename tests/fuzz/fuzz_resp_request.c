/*
 * fuzz_resp_request.c - libFuzzer harness for the RESP request parser
 * (resp_req_feed), the inline splitter (resp_inline_split) and resp_argv.
 *
 * Input: byte 0 picks how the stream is cut into chunks, byte 1 picks the
 * limits (redis-server's defaults, or small ones that the limit checks
 * fire on); the rest is a client's byte stream. It is parsed as pipelined
 * requests twice, in one piece and in chunks, and both runs must say the
 * same thing. Every request that parses is split again with resp_argv,
 * which must agree with the parser. Every line of the stream also goes
 * through resp_inline_split, whose output is quoted back and split again.
 * A broken invariant is a __builtin_trap().
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- chunking ---- */

/* Chunk sizes from a seed: whole, bytewise, 0..7 (0: an empty feed), or
 * 1..512 bytes, pseudo-random but the same for the same input. */
struct chunker {
	unsigned mode;
	uint32_t x;
	unsigned empty; /* empty feeds so far: bounded */
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

/* ---- a transcript of what the parser said, for the differential ---- */

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
t_record(struct transcript *t, const struct resp_req_parser *p,
    enum resp_status st)
{
	int s = (int)st;

	t_add(t, &s, sizeof(s));
	t_add(t, &p->total, sizeof(p->total));
	if (st == RESP_OK) {
		t_add(t, &p->argc, sizeof(p->argc));
		t_add(t, p->name, p->namelen + 1);
		t_add(t, &p->name_truncated, sizeof(p->name_truncated));
		t_add(t, p->arg1, p->arg1len);
		t_add(t, &p->arg1_truncated, sizeof(p->arg1_truncated));
	}
	if (st == RESP_ERROR)
		t_add(t, p->err, strlen(p->err) + 1);
}

/* ---- invariants of one parsed request ---- */

static char
lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* req[0..len) is what the parser just called a whole request. */
static void
check_request(const struct resp_req_parser *p, const char *req, size_t len)
{
	const char **argv;
	size_t *argvlen, i, n;
	int argc;

	CHECK(p->argc >= 0);
	/* the shortest request is "*0\r\n", the shortest argument "$0\r\n\r\n" */
	CHECK(len >= 4 && (uint64_t)p->argc <= (len - 4) / 6);
	CHECK(p->namelen <= RESP_NAME_MAX && p->name[p->namelen] == '\0');
	CHECK(p->arg1len <= RESP_ARG_MAX);

	argv = malloc(sizeof(*argv) * ((size_t)p->argc + 1));
	argvlen = malloc(sizeof(*argvlen) * ((size_t)p->argc + 1));
	CHECK(argv != NULL && argvlen != NULL);
	argc = resp_argv(req, len, argv, argvlen, (int)p->argc);
	CHECK(argc == p->argc);
	for (i = 0; i < (size_t)argc; i++)
		CHECK(argv[i] >= req && argv[i] + argvlen[i] <= req + len);
	if (argc >= 1) {
		n = argvlen[0] < RESP_NAME_MAX ? argvlen[0] : RESP_NAME_MAX;
		CHECK(p->namelen == n);
		CHECK(p->name_truncated == (argvlen[0] > RESP_NAME_MAX));
		for (i = 0; i < n; i++)
			CHECK(p->name[i] == lower(argv[0][i]));
		/* one argument fewer than the request has is "too many" */
		CHECK(resp_argv(req, len, argv, argvlen, argc - 1) == -1);
	} else {
		CHECK(p->namelen == 0);
	}
	if (argc >= 2) {
		n = argvlen[1] < RESP_ARG_MAX ? argvlen[1] : RESP_ARG_MAX;
		CHECK(p->arg1len == n);
		CHECK(p->arg1_truncated == (argvlen[1] > RESP_ARG_MAX));
		CHECK(memcmp(p->arg1, argv[1], n) == 0);
	} else {
		CHECK(p->arg1len == 0);
	}
	/* a request cut short is not a request */
	CHECK(resp_argv(req, len - 1, argv, argvlen, argc + 1) == -1);
	free(argv);
	free(argvlen);
}

/*
 * Parse s[0..len) as pipelined requests, cut as the chunker says, until
 * the stream ends or the parser fails. Writes what it saw to t.
 */
static void
run(const struct resp_limits *lim, const char *s, size_t len, uint8_t seed,
    struct transcript *t)
{
	struct resp_req_parser p;
	struct chunker ch;
	size_t pos = 0, start = 0, fed = 0, used;
	enum resp_status st;

	resp_req_init(&p);
	chunker_init(&ch, seed);
	while (pos < len) {
		size_t n = chunker_next(&ch, len - pos), off = 0;

		do {
			st = resp_req_feed(&p, lim, s + pos + off, n - off,
			    &used);
			CHECK(used <= n - off);
			off += used;
			fed += used;
			CHECK(p.total == fed);
			if (st == RESP_NEED_MORE) {
				/* all of a chunk that ends no request is kept */
				CHECK(off == n);
				break;
			}
			t_record(t, &p, st);
			if (st == RESP_ERROR) {
				CHECK(p.err != NULL && p.err[0] != '\0');
				/* failed stays failed, and eats nothing */
				st = resp_req_feed(&p, lim, s, len, &used);
				CHECK(st == RESP_ERROR && used == 0);
				return;
			}
			CHECK(used > 0);
			check_request(&p, s + start, fed);
			start += fed;
			fed = 0;
		} while (off < n);
		pos += n;
	}
	t_add(t, "end", 3);
	t_add(t, &fed, sizeof(fed));
}

/* ---- inline requests ---- */

static const char hexdigits[] = "0123456789abcdef";

/*
 * Split one line as the Redis protocol glue does; then write every
 * argument back as "\xHH..." and split that: the same arguments must
 * come out.
 */
static void
check_inline(const char *line, size_t len, uint8_t knob)
{
	size_t cap = len + 1, qlen = 0, total = 0, i, j;
	int max_args = (int)(len / 2 + 1), argc, argc2;
	char *out = malloc(cap), *quoted, *out2;
	const char **argv = malloc(sizeof(*argv) * (size_t)max_args);
	const char **argv2 = malloc(sizeof(*argv2) * (size_t)max_args);
	size_t *argvlen = malloc(sizeof(*argvlen) * (size_t)max_args);
	size_t *argvlen2 = malloc(sizeof(*argvlen2) * (size_t)max_args);

	CHECK(out && argv && argv2 && argvlen && argvlen2);
	argc = resp_inline_split(line, len, out, len, argv, argvlen, max_args);
	/* len bytes of room and len/2+1 arguments are always enough */
	CHECK(argc >= -1 && argc <= max_args);
	if (argc < 0)
		goto done;
	for (i = 0; i < (size_t)argc; i++) {
		CHECK(argv[i] >= out && argv[i] + argvlen[i] <= out + len);
		CHECK(i == 0 || argv[i] >= argv[i - 1] + argvlen[i - 1]);
		total += argvlen[i];
	}
	CHECK(total <= len);
	if (argc > 0) {
		/* one argument fewer allowed, or one byte less room: -2 */
		CHECK(resp_inline_split(line, len, out, len, argv, argvlen,
		    argc - 1) == -2);
		if (total > 0)
			CHECK(resp_inline_split(line, len, out, total - 1,
			    argv, argvlen, max_args) == -2);
		argc = resp_inline_split(line, len, out, cap, argv, argvlen,
		    max_args);
	}

	quoted = malloc(total * 4 + (size_t)argc * 3 + 1);
	out2 = malloc(total + 1);
	CHECK(quoted != NULL && out2 != NULL);
	for (i = 0; i < (size_t)argc; i++) {
		/* alternate separators: any blank will do */
		if (i > 0)
			quoted[qlen++] = (knob >> (i % 8)) & 1 ? '\t' : ' ';
		quoted[qlen++] = '"';
		for (j = 0; j < argvlen[i]; j++) {
			unsigned char c = (unsigned char)argv[i][j];

			quoted[qlen++] = '\\';
			quoted[qlen++] = 'x';
			quoted[qlen++] = hexdigits[c >> 4];
			quoted[qlen++] = hexdigits[c & 15];
		}
		quoted[qlen++] = '"';
	}
	argc2 = resp_inline_split(quoted, qlen, out2, total + 1, argv2,
	    argvlen2, max_args);
	CHECK(argc2 == argc);
	for (i = 0; i < (size_t)argc; i++)
		CHECK(argvlen2[i] == argvlen[i] &&
		    memcmp(argv2[i], argv[i], argvlen[i]) == 0);
	free(quoted);
	free(out2);
done:
	free(out);
	free(argv);
	free(argv2);
	free(argvlen);
	free(argvlen2);
}

static void
check_inline_lines(const char *s, size_t len, uint8_t knob)
{
	size_t start = 0;

	while (start <= len) {
		const char *nl = memchr(s + start, '\n', len - start);
		size_t end = nl != NULL ? (size_t)(nl - s) : len;
		size_t n = end - start;

		if (n > 0 && s[start + n - 1] == '\r')
			n--;
		check_inline(s + start, n, knob);
		if (nl == NULL)
			break;
		start = end + 1;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct resp_limits small, *lim = NULL;
	struct transcript whole = { 0 }, chunked = { 0 };
	const char *s;
	size_t len;

	if (size < 2)
		return 0;
	if (data[1] & 1) {
		small.max_bulk_len = (data[1] >> 1) & 31;
		small.max_multibulk_len = (uint64_t)(data[1] >> 6) + 1;
		small.max_inline_len = 64;
		lim = &small;
	}
	s = (const char *)data + 2;
	len = size - 2;

	run(lim, s, len, 0, &whole);
	run(lim, s, len, data[0], &chunked);
	CHECK(whole.len == chunked.len &&
	    memcmp(whole.buf, chunked.buf, whole.len) == 0);
	free(whole.buf);
	free(chunked.buf);

	check_inline_lines(s, len, data[0]);
	return 0;
}
