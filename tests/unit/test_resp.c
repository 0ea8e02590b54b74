/*
 * test_resp.c - the RESP parsers: requests as redis-server takes them
 * (with its error texts), every reply type of RESP2 and RESP3, input split
 * at every byte, pipelining, limits, inline splitting and resp_argv; and
 * the request limits of the Redis protocol table (redis.c), which must not
 * depend on how TCP cut the bytes.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config.h"
#include "proto.h"
#include "resp.h"

#define S(x) x, sizeof(x) - 1
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ */
/* Request vectors                                                    */
/* ------------------------------------------------------------------ */

struct req_vec {
	const char *in;
	size_t len;
	enum resp_status st;
	int64_t argc;
	const char *name; /* expected lowercased argv[0] on RESP_OK */
	const char *arg1;
	const char *err;  /* expected text on RESP_ERROR */
};

static const struct req_vec req_vectors[] = {
	{ S("*1\r\n$4\r\nPING\r\n"), RESP_OK, 1, "ping", "", NULL },
	{ S("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"), RESP_OK, 3,
	    "set", "key", NULL },
	{ S("*2\r\n$6\r\nCLIENT\r\n$7\r\nSetName\r\n"), RESP_OK, 2, "client",
	    "SetName", NULL },
	{ S("*0\r\n"), RESP_OK, 0, "", "", NULL },
	{ S("*-1\r\n"), RESP_OK, 0, "", "", NULL },
	{ S("*-10\r\n"), RESP_OK, 0, "", "", NULL },
	{ S("*1\r\n$0\r\n\r\n"), RESP_OK, 1, "", "", NULL },
	{ S("*2\r\n$4\r\necho\r\n$0\r\n\r\n"), RESP_OK, 2, "echo", "", NULL },
	/* Bulks are binary: CR, LF and NUL inside are data. */
	{ S("*2\r\n$3\r\nGET\r\n$5\r\na\r\n\0b\r\n"), RESP_OK, 2, "get",
	    "a\r\n\0b", NULL },
	{ S("*2\r\n$3\r\nGET\r\n$6\r\n$1\r\n*1\r\n"), RESP_OK, 2, "get",
	    "$1\r\n*1", NULL },

	/* "*N" that redis's string2ll refuses */
	{ S("*x\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*+1\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*01\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*-0\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("* 1\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*1 \r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*1\n\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*1\0\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid multibulk length" },
	{ S("*2147483648\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid multibulk length" },
	{ S("*99999999999999999999\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid multibulk length" },
	/* redis takes any byte after the '\r' as the '\n'; we do not. */
	{ S("*1\rX$4\r\nPING\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid multibulk length" },

	{ S("*1\r\nX"), RESP_ERROR, 0, NULL, NULL, "expected '$', got 'X'" },
	{ S("*2\r\n$4\r\nPING\r\n:1\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "expected '$', got ':'" },
	{ S("*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"), RESP_ERROR, 0, NULL,
	    NULL, "expected '$', got 'f'" },
	/* redis blanks CR and LF in error texts, to keep them one line */
	{ S("*1\r\n\r\n"), RESP_ERROR, 0, NULL, NULL, "expected '$', got ' '" },

	{ S("*1\r\n$-1\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid bulk length" },
	{ S("*1\r\n$04\r\nPING\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid bulk length" },
	{ S("*1\r\n$+4\r\nPING\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid bulk length" },
	{ S("*1\r\n$ 4\r\nPING\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid bulk length" },
	{ S("*1\r\n$\r\n"), RESP_ERROR, 0, NULL, NULL, "invalid bulk length" },
	{ S("*1\r\n$4\r\rPING\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid bulk length" },
	{ S("*1\r\n$536870913\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid bulk length" },

	/* redis silently skips two bytes, whatever they are; we refuse. */
	{ S("*1\r\n$4\r\nPINGxx"), RESP_ERROR, 0, NULL, NULL,
	    "expected CRLF after bulk" },
	{ S("*1\r\n$4\r\nPING\rx"), RESP_ERROR, 0, NULL, NULL,
	    "expected CRLF after bulk" },
	{ S("*1\r\n$4\r\nPING\n\n"), RESP_ERROR, 0, NULL, NULL,
	    "expected CRLF after bulk" },

	/* Header lines: RESP_LINE_MAX bytes are read, one more is too many. */
	{ S("*0000000000000000000000000000001\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "invalid multibulk length" },
	{ S("*00000000000000000000000000000001\r\n"), RESP_ERROR, 0, NULL, NULL,
	    "too big mbulk count string" },
	{ S("*1\r\n$0000000000000000000000000000004\r\nPING\r\n"), RESP_ERROR,
	    0, NULL, NULL, "invalid bulk length" },
	{ S("*1\r\n$00000000000000000000000000000004\r\nPING\r\n"), RESP_ERROR,
	    0, NULL, NULL, "too big bulk count string" },

	/* Inline requests are the caller's: the parser wants multibulk. */
	{ S("PING\r\n"), RESP_ERROR, 0, NULL, NULL, "expected '*', got 'P'" },
};

struct req_result {
	enum resp_status st;
	size_t used;
	uint64_t total;
	int64_t argc;
	char name[RESP_NAME_MAX + 1];
	size_t namelen;
	bool name_truncated;
	char arg1[RESP_ARG_MAX];
	size_t arg1len;
	bool arg1_truncated;
	char err[64];
};

static void
save_req(const struct resp_req_parser *p, enum resp_status st, size_t used,
    struct req_result *r)
{
	memset(r, 0, sizeof(*r));
	r->st = st;
	r->used = used;
	r->total = p->total;
	if (st == RESP_OK) {
		r->argc = p->argc;
		memcpy(r->name, p->name, sizeof(r->name));
		r->namelen = p->namelen;
		r->name_truncated = p->name_truncated;
		memcpy(r->arg1, p->arg1, p->arg1len);
		r->arg1len = p->arg1len;
		r->arg1_truncated = p->arg1_truncated;
	}
	if (st == RESP_ERROR)
		snprintf(r->err, sizeof(r->err), "%s", p->err);
}

/*
 * Feed in[0..len) in chunks ending at each of cuts[] (ascending, inside
 * the input) and then at len, stopping at the first answer that is not
 * RESP_NEED_MORE. used is counted over the whole input.
 */
static void
parse_req_chunks(const struct resp_limits *lim, const char *in, size_t len,
    const size_t *cuts, size_t ncuts, struct req_result *r)
{
	struct resp_req_parser p;
	enum resp_status st = RESP_NEED_MORE;
	size_t start = 0, i, used = 0, consumed = 0;

	resp_req_init(&p);
	for (i = 0; i <= ncuts && st == RESP_NEED_MORE; i++) {
		size_t end = i < ncuts ? cuts[i] : len;

		st = resp_req_feed(&p, lim, in + start, end - start, &used);
		consumed += used;
		if (st == RESP_NEED_MORE)
			ck_assert_uint_eq(used, end - start);
		start = end;
	}
	save_req(&p, st, consumed, r);
}

static void
parse_req(const struct resp_limits *lim, const char *in, size_t len,
    struct req_result *r)
{
	parse_req_chunks(lim, in, len, NULL, 0, r);
}

static void
assert_req_equal(const struct req_result *a, const struct req_result *b,
    const char *what, size_t at)
{
	ck_assert_msg(a->st == b->st, "%s %zu: status %d vs %d", what, at,
	    a->st, b->st);
	ck_assert_msg(a->used == b->used, "%s %zu: used", what, at);
	ck_assert_msg(a->total == b->total, "%s %zu: total", what, at);
	ck_assert_msg(a->argc == b->argc, "%s %zu: argc", what, at);
	ck_assert_msg(a->namelen == b->namelen &&
	    memcmp(a->name, b->name, a->namelen) == 0, "%s %zu: name", what, at);
	ck_assert_msg(a->arg1len == b->arg1len &&
	    memcmp(a->arg1, b->arg1, a->arg1len) == 0, "%s %zu: arg1", what, at);
	ck_assert_msg(a->name_truncated == b->name_truncated &&
	    a->arg1_truncated == b->arg1_truncated, "%s %zu: truncation", what,
	    at);
	ck_assert_msg(strcmp(a->err, b->err) == 0, "%s %zu: err '%s' vs '%s'",
	    what, at, a->err, b->err);
}

START_TEST(request_vectors_parse_as_redis_does)
{
	const struct req_vec *v = &req_vectors[_i];
	struct req_result r;

	parse_req(NULL, v->in, v->len, &r);
	ck_assert_msg(r.st == v->st, "vector %d: status %d", _i, r.st);
	if (v->st == RESP_OK) {
		ck_assert_uint_eq(r.used, v->len);
		ck_assert_uint_eq(r.total, v->len);
		ck_assert_int_eq(r.argc, v->argc);
		ck_assert_uint_eq(r.namelen, strlen(v->name));
		ck_assert_str_eq(r.name, v->name);
		ck_assert(!r.name_truncated && !r.arg1_truncated);
		if (v->argc >= 2)
			ck_assert(memcmp(r.arg1, v->arg1, r.arg1len) == 0);
	} else {
		ck_assert_str_eq(r.err, v->err);
		ck_assert_uint_le(r.used, v->len);
	}
}
END_TEST

START_TEST(request_vectors_split_at_every_byte)
{
	const struct req_vec *v = &req_vectors[_i];
	struct req_result whole, split;
	size_t *cuts = malloc(v->len * sizeof(*cuts));
	size_t i;

	parse_req(NULL, v->in, v->len, &whole);
	/* one byte at a time */
	for (i = 1; i < v->len; i++)
		cuts[i - 1] = i;
	parse_req_chunks(NULL, v->in, v->len, cuts, v->len - 1, &split);
	assert_req_equal(&whole, &split, "bytewise", 0);
	/* two chunks, split at every position */
	for (i = 0; i <= v->len; i++) {
		parse_req_chunks(NULL, v->in, v->len, &i, 1, &split);
		assert_req_equal(&whole, &split, "split at", i);
	}
	free(cuts);
}
END_TEST

START_TEST(request_error_is_sticky_until_init)
{
	struct resp_req_parser p;
	size_t used = 99;

	resp_req_init(&p);
	ck_assert_int_eq(resp_req_feed(&p, NULL, S("*x\r\n"), &used),
	    RESP_ERROR);
	ck_assert_int_eq(resp_req_feed(&p, NULL, S("*1\r\n$4\r\nPING\r\n"),
	    &used), RESP_ERROR);
	ck_assert_uint_eq(used, 0);
	ck_assert_str_eq(p.err, "invalid multibulk length");
	resp_req_init(&p);
	ck_assert_int_eq(resp_req_feed(&p, NULL, S("*1\r\n$4\r\nPING\r\n"),
	    &used), RESP_OK);
}
END_TEST

START_TEST(request_empty_feed_needs_more)
{
	struct resp_req_parser p;
	size_t used = 99;

	resp_req_init(&p);
	ck_assert_int_eq(resp_req_feed(&p, NULL, "", 0, &used), RESP_NEED_MORE);
	ck_assert_uint_eq(used, 0);
	ck_assert_uint_eq(p.total, 0);
}
END_TEST

START_TEST(requests_pipelined_back_to_back)
{
	static const char in[] = "*1\r\n$4\r\nPING\r\n"
	    "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" "*0\r\n"
	    "*3\r\n$3\r\nset\r\n$1\r\na\r\n$1\r\nb\r\n" "*1\r\n$4\r\nPI";
	static const char *const names[] = { "ping", "get", "", "set" };
	static const size_t lens[] = { 14, 20, 4, 27 };
	struct resp_req_parser p;
	size_t pos = 0, used, i;

	resp_req_init(&p);
	for (i = 0; i < NELEM(names); i++) {
		ck_assert_int_eq(resp_req_feed(&p, NULL, in + pos,
		    sizeof(in) - 1 - pos, &used), RESP_OK);
		ck_assert_uint_eq(used, lens[i]);
		ck_assert_uint_eq(p.total, lens[i]);
		ck_assert_str_eq(p.name, names[i]);
		pos += used;
	}
	/* The parser reset itself: the tail is the start of a new one. */
	ck_assert_int_eq(resp_req_feed(&p, NULL, in + pos,
	    sizeof(in) - 1 - pos, &used), RESP_NEED_MORE);
	ck_assert_uint_eq(used, sizeof(in) - 1 - pos);
	ck_assert_int_eq(resp_req_feed(&p, NULL, S("NG\r\n*0"), &used),
	    RESP_OK);
	ck_assert_uint_eq(used, 4);
	ck_assert_str_eq(p.name, "ping");
	ck_assert_uint_eq(p.total, 14);
}
END_TEST

/* Build "*2\r\n$<n>\r\n<name>\r\n$<m>\r\n<arg>\r\n" into buf. */
static size_t
build_request(char *buf, size_t cap, const char *name, size_t namelen,
    const char *arg, size_t arglen)
{
	int n = snprintf(buf, cap, "*2\r\n$%zu\r\n%.*s\r\n$%zu\r\n%.*s\r\n",
	    namelen, (int)namelen, name, arglen, (int)arglen, arg);

	ck_assert(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

START_TEST(request_name_and_arg1_kept_up_to_their_bounds)
{
	char name[RESP_NAME_MAX + 2], arg[RESP_ARG_MAX + 2], buf[512];
	struct req_result r;
	size_t len;

	memset(name, 'X', sizeof(name));
	memset(arg, 'Y', sizeof(arg));

	len = build_request(buf, sizeof(buf), name, RESP_NAME_MAX, arg,
	    RESP_ARG_MAX);
	parse_req(NULL, buf, len, &r);
	ck_assert_int_eq(r.st, RESP_OK);
	ck_assert_uint_eq(r.namelen, RESP_NAME_MAX);
	ck_assert(!r.name_truncated);
	ck_assert_uint_eq(strlen(r.name), RESP_NAME_MAX);
	ck_assert_int_eq(r.name[0], 'x');
	ck_assert_uint_eq(r.arg1len, RESP_ARG_MAX);
	ck_assert(!r.arg1_truncated);
	ck_assert_int_eq(r.arg1[0], 'Y'); /* argv[1] is kept as sent */

	len = build_request(buf, sizeof(buf), name, RESP_NAME_MAX + 1, arg,
	    RESP_ARG_MAX + 1);
	parse_req(NULL, buf, len, &r);
	ck_assert_int_eq(r.st, RESP_OK);
	ck_assert_uint_eq(r.namelen, RESP_NAME_MAX);
	ck_assert(r.name_truncated);
	ck_assert_uint_eq(r.arg1len, RESP_ARG_MAX);
	ck_assert(r.arg1_truncated);
	ck_assert_uint_eq(r.total, len);
}
END_TEST

START_TEST(request_limits_at_and_just_over)
{
	const struct resp_limits lim = { .max_bulk_len = 10,
	    .max_multibulk_len = 3, .max_inline_len = 100 };
	struct req_result r;

	parse_req(&lim, S("*3\r\n$10\r\n0123456789\r\n$0\r\n\r\n$0\r\n\r\n"),
	    &r);
	ck_assert_int_eq(r.st, RESP_OK);
	ck_assert_int_eq(r.argc, 3);
	parse_req(&lim, S("*4\r\n"), &r);
	ck_assert_int_eq(r.st, RESP_ERROR);
	ck_assert_str_eq(r.err, "invalid multibulk length");
	parse_req(&lim, S("*1\r\n$11\r\n"), &r);
	ck_assert_int_eq(r.st, RESP_ERROR);
	ck_assert_str_eq(r.err, "invalid bulk length");

	/* redis-server's defaults */
	parse_req(NULL, S("*2147483647\r\n"), &r);
	ck_assert_int_eq(r.st, RESP_NEED_MORE);
	parse_req(NULL, S("*1\r\n$536870912\r\n"), &r);
	ck_assert_int_eq(r.st, RESP_NEED_MORE);
}
END_TEST

START_TEST(request_large_bulk_fed_in_chunks)
{
	enum { CHUNK = 16 * 1024, BULK = 10 * 1024 * 1024 };
	static char chunk[CHUNK];
	static const char head[] = "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$10485760\r\n";
	struct resp_req_parser p;
	size_t used, left = BULK, feeds = 0;

	memset(chunk, 'v', sizeof(chunk));
	resp_req_init(&p);
	ck_assert_int_eq(resp_req_feed(&p, NULL, S(head), &used),
	    RESP_NEED_MORE);
	while (left > 0) {
		size_t n = left < CHUNK ? left : CHUNK;

		ck_assert_int_eq(resp_req_feed(&p, NULL, chunk, n, &used),
		    RESP_NEED_MORE);
		ck_assert_uint_eq(used, n);
		left -= n;
		feeds++;
	}
	ck_assert_uint_eq(feeds, BULK / CHUNK);
	ck_assert_int_eq(resp_req_feed(&p, NULL, S("\r\n"), &used), RESP_OK);
	ck_assert_uint_eq(p.total, sizeof(head) - 1 + BULK + 2);
	ck_assert_int_eq(p.argc, 3);
	ck_assert_str_eq(p.name, "set");
	ck_assert(memcmp(p.arg1, "big", 3) == 0 && p.arg1len == 3);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Reply vectors                                                      */
/* ------------------------------------------------------------------ */

struct reply_vec {
	const char *in;
	size_t len;
	enum resp_status st;
	char type;
	bool push;
	const char *errcode; /* expected on RESP_OK ("" when none) */
	const char *err;     /* expected on RESP_ERROR */
};

static const struct reply_vec reply_vectors[] = {
	/* RESP2 */
	{ S("+OK\r\n"), RESP_OK, '+', false, "", NULL },
	{ S("+\r\n"), RESP_OK, '+', false, "", NULL },
	{ S("-ERR unknown command 'foo'\r\n"), RESP_OK, '-', false, "ERR",
	    NULL },
	{ S("-MOVED 3999 127.0.0.1:6381\r\n"), RESP_OK, '-', false, "MOVED",
	    NULL },
	{ S("-LOADING\r\n"), RESP_OK, '-', false, "LOADING", NULL },
	{ S("-\r\n"), RESP_OK, '-', false, "", NULL },
	{ S("-ABCDEFGHIJKLMNOPQRSTUVWXYZ long code\r\n"), RESP_OK, '-', false,
	    "ABCDEFGHIJKLMNO", NULL },
	{ S(":1000\r\n"), RESP_OK, ':', false, "", NULL },
	{ S(":-1\r\n"), RESP_OK, ':', false, "", NULL },
	{ S("$5\r\nhello\r\n"), RESP_OK, '$', false, "", NULL },
	{ S("$0\r\n\r\n"), RESP_OK, '$', false, "", NULL },
	{ S("$-1\r\n"), RESP_OK, '$', false, "", NULL },
	{ S("$6\r\na\r\n\0b\n\r\n"), RESP_OK, '$', false, "", NULL },
	{ S("*0\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("*-1\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("*2\r\n$3\r\nfoo\r\n:1\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("*3\r\n$-1\r\n*-1\r\n*0\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n+x\r\n"), RESP_OK, '*', false, "",
	    NULL },
	{ S("*2\r\n-ERR a\r\n-WRONGTYPE b\r\n"), RESP_OK, '*', false, "",
	    NULL },
	/* RESP3 */
	{ S("_\r\n"), RESP_OK, '_', false, "", NULL },
	{ S(",3.14\r\n"), RESP_OK, ',', false, "", NULL },
	{ S(",-inf\r\n"), RESP_OK, ',', false, "", NULL },
	{ S("#t\r\n"), RESP_OK, '#', false, "", NULL },
	{ S("(3492890328409238509324850943850943825024385\r\n"), RESP_OK, '(',
	    false, "", NULL },
	{ S("!21\r\nSYNTAX invalid syntax\r\n"), RESP_OK, '!', false,
	    "SYNTAX", NULL },
	{ S("!3\r\nERR\r\n"), RESP_OK, '!', false, "ERR", NULL },
	{ S("!0\r\n\r\n"), RESP_OK, '!', false, "", NULL },
	{ S("=15\r\ntxt:Some string\r\n"), RESP_OK, '=', false, "", NULL },
	{ S("%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n"), RESP_OK, '%', false,
	    "", NULL },
	{ S("%0\r\n"), RESP_OK, '%', false, "", NULL },
	{ S("%1\r\n*1\r\n:1\r\n%1\r\n+a\r\n~1\r\n_\r\n"), RESP_OK, '%',
	    false, "", NULL },
	{ S("~2\r\n+a\r\n+b\r\n"), RESP_OK, '~', false, "", NULL },
	{ S(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"), RESP_OK, '>',
	    true, "", NULL },
	{ S("*1\r\n>1\r\n:1\r\n"), RESP_OK, '*', false, "", NULL },
	/* attributes belong to the reply after them */
	{ S("|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n"
	    ",0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n"), RESP_OK, '*', false,
	    "", NULL },
	{ S("|1\r\n+a\r\n+b\r\n+OK\r\n"), RESP_OK, '+', false, "", NULL },
	{ S("|0\r\n:1\r\n"), RESP_OK, ':', false, "", NULL },
	{ S("|1\r\n+a\r\n+b\r\n-ERR x\r\n"), RESP_OK, '-', false, "ERR",
	    NULL },
	{ S("|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n>1\r\n+e\r\n"), RESP_OK, '>',
	    true, "", NULL },
	{ S("*2\r\n|1\r\n+ttl\r\n:3600\r\n+v\r\n:2\r\n"), RESP_OK, '*', false,
	    "", NULL },
	{ S("|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n:1\r\n"), RESP_OK, ':', false,
	    "", NULL },
	/* streamed strings and aggregates */
	{ S("$?\r\n;4\r\nHell\r\n;6\r\no worl\r\n;1\r\nd\r\n;0\r\n"), RESP_OK,
	    '$', false, "", NULL },
	{ S("$?\r\n;0\r\n"), RESP_OK, '$', false, "", NULL },
	{ S("*?\r\n:1\r\n:2\r\n.\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("*?\r\n.\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("~?\r\n+a\r\n.\r\n"), RESP_OK, '~', false, "", NULL },
	{ S("%?\r\n+a\r\n:1\r\n.\r\n"), RESP_OK, '%', false, "", NULL },
	{ S("*?\r\n*?\r\n:1\r\n.\r\n$?\r\n;1\r\na\r\n;0\r\n*1\r\n.\r\n"
	    ".\r\n"), RESP_ERROR, 0, false, NULL, "unexpected '.'" },
	{ S("*?\r\n*?\r\n:1\r\n.\r\n$?\r\n;1\r\na\r\n;0\r\n*1\r\n:1\r\n"
	    ".\r\n"), RESP_OK, '*', false, "", NULL },
	{ S("*2\r\n*?\r\n.\r\n%?\r\n.\r\n"), RESP_OK, '*', false, "", NULL },

	/* malformed */
	{ S("?x\r\n"), RESP_ERROR, 0, false, NULL, "unknown reply type '?'" },
	{ S("\r\n"), RESP_ERROR, 0, false, NULL, "unknown reply type ' '" },
	{ S(".\r\n"), RESP_ERROR, 0, false, NULL, "unexpected '.'" },
	{ S("*1\r\n.\r\n"), RESP_ERROR, 0, false, NULL, "unexpected '.'" },
	{ S("*?\r\n.x\r\n"), RESP_ERROR, 0, false, NULL, "expected CRLF" },
	{ S("$5\r\nhelloXX"), RESP_ERROR, 0, false, NULL, "expected CRLF" },
	{ S("+OK\rX"), RESP_ERROR, 0, false, NULL, "expected CRLF" },
	{ S("$1\rX"), RESP_ERROR, 0, false, NULL, "expected CRLF" },
	{ S("$abc\r\n"), RESP_ERROR, 0, false, NULL, "invalid bulk length" },
	{ S("$-2\r\n"), RESP_ERROR, 0, false, NULL, "invalid bulk length" },
	{ S("$01\r\nx\r\n"), RESP_ERROR, 0, false, NULL,
	    "invalid bulk length" },
	{ S("*-2\r\n"), RESP_ERROR, 0, false, NULL,
	    "invalid aggregate length" },
	{ S("*.\r\n"), RESP_ERROR, 0, false, NULL,
	    "invalid aggregate length" },
	{ S("|-1\r\n"), RESP_ERROR, 0, false, NULL,
	    "invalid aggregate length" },
	{ S(">?\r\n"), RESP_ERROR, 0, false, NULL,
	    "invalid aggregate length" },
	{ S("%4611686018427387904\r\n"), RESP_ERROR, 0, false, NULL,
	    "aggregate too large" },
	{ S("$?\r\nX"), RESP_ERROR, 0, false, NULL, "expected ';', got 'X'" },
	{ S("$?\r\n;-1\r\n"), RESP_ERROR, 0, false, NULL,
	    "invalid chunk length" },
	{ S("$?\r\n;2\r\nab;0\r\n"), RESP_ERROR, 0, false, NULL,
	    "expected CRLF" },
	/* header lines: RESP_LINE_MAX bytes are read, one more is too many */
	{ S("$0000000000000000000000000000001\r\nx\r\n"), RESP_ERROR, 0, false,
	    NULL, "invalid bulk length" },
	{ S("$00000000000000000000000000000001\r\nx\r\n"), RESP_ERROR, 0,
	    false, NULL, "header line too long" },
};

struct reply_result {
	enum resp_status st;
	size_t used;
	uint64_t total;
	char type;
	bool push;
	char errcode[RESP_ERRCODE_MAX];
	char err[64];
};

static void
save_reply(const struct resp_reply_parser *p, enum resp_status st,
    size_t used, struct reply_result *r)
{
	memset(r, 0, sizeof(*r));
	r->st = st;
	r->used = used;
	r->total = p->total;
	if (st == RESP_OK) {
		r->type = p->type;
		r->push = p->push;
		memcpy(r->errcode, p->errcode, p->errcodelen);
	}
	if (st == RESP_ERROR)
		snprintf(r->err, sizeof(r->err), "%s", p->err);
}

static void
parse_reply_chunks(const char *in, size_t len, const size_t *cuts,
    size_t ncuts, struct reply_result *r)
{
	struct resp_reply_parser p;
	enum resp_status st = RESP_NEED_MORE;
	size_t start = 0, i, used = 0, consumed = 0;

	resp_reply_init(&p);
	for (i = 0; i <= ncuts && st == RESP_NEED_MORE; i++) {
		size_t end = i < ncuts ? cuts[i] : len;

		st = resp_reply_feed(&p, in + start, end - start, &used);
		consumed += used;
		if (st == RESP_NEED_MORE)
			ck_assert_uint_eq(used, end - start);
		start = end;
	}
	save_reply(&p, st, consumed, r);
}

static void
parse_reply(const char *in, size_t len, struct reply_result *r)
{
	parse_reply_chunks(in, len, NULL, 0, r);
}

static void
assert_reply_equal(const struct reply_result *a, const struct reply_result *b,
    const char *what, size_t at)
{
	ck_assert_msg(a->st == b->st, "%s %zu: status %d vs %d", what, at,
	    a->st, b->st);
	ck_assert_msg(a->used == b->used && a->total == b->total,
	    "%s %zu: length", what, at);
	ck_assert_msg(a->type == b->type && a->push == b->push, "%s %zu: type",
	    what, at);
	ck_assert_msg(strcmp(a->errcode, b->errcode) == 0, "%s %zu: errcode",
	    what, at);
	ck_assert_msg(strcmp(a->err, b->err) == 0, "%s %zu: err '%s' vs '%s'",
	    what, at, a->err, b->err);
}

START_TEST(reply_vectors_parse)
{
	const struct reply_vec *v = &reply_vectors[_i];
	struct reply_result r;

	parse_reply(v->in, v->len, &r);
	ck_assert_msg(r.st == v->st, "vector %d: status %d (%s)", _i, r.st,
	    r.err);
	if (v->st == RESP_OK) {
		ck_assert_uint_eq(r.used, v->len);
		ck_assert_uint_eq(r.total, v->len);
		ck_assert_int_eq(r.type, v->type);
		ck_assert_int_eq(r.push, v->push);
		ck_assert_str_eq(r.errcode, v->errcode);
	} else {
		ck_assert_str_eq(r.err, v->err);
	}
}
END_TEST

START_TEST(reply_vectors_split_at_every_byte)
{
	const struct reply_vec *v = &reply_vectors[_i];
	struct reply_result whole, split;
	size_t *cuts = malloc(v->len * sizeof(*cuts));
	size_t i;

	parse_reply(v->in, v->len, &whole);
	for (i = 1; i < v->len; i++)
		cuts[i - 1] = i;
	parse_reply_chunks(v->in, v->len, cuts, v->len - 1, &split);
	assert_reply_equal(&whole, &split, "bytewise", 0);
	for (i = 0; i <= v->len; i++) {
		parse_reply_chunks(v->in, v->len, &i, 1, &split);
		assert_reply_equal(&whole, &split, "split at", i);
	}
	free(cuts);
}
END_TEST

START_TEST(replies_pipelined_back_to_back)
{
	static const char in[] = "+OK\r\n" ":1\r\n" "$3\r\nfoo\r\n"
	    "-ERR no\r\n" "*2\r\n:1\r\n:2\r\n" ">1\r\n+p\r\n" "$3\r\nba";
	static const char types[] = { '+', ':', '$', '-', '*', '>' };
	static const size_t lens[] = { 5, 4, 9, 9, 12, 8 };
	struct resp_reply_parser p;
	size_t pos = 0, used, i;

	resp_reply_init(&p);
	for (i = 0; i < NELEM(types); i++) {
		ck_assert_int_eq(resp_reply_feed(&p, in + pos,
		    sizeof(in) - 1 - pos, &used), RESP_OK);
		ck_assert_uint_eq(used, lens[i]);
		ck_assert_int_eq(p.type, types[i]);
		ck_assert_int_eq(p.push, types[i] == '>');
		pos += used;
	}
	ck_assert_int_eq(resp_reply_feed(&p, in + pos, sizeof(in) - 1 - pos,
	    &used), RESP_NEED_MORE);
	ck_assert_int_eq(resp_reply_feed(&p, S("r\r\n+x"), &used), RESP_OK);
	ck_assert_uint_eq(used, 3);
	ck_assert_uint_eq(p.total, 9);
	ck_assert_uint_eq(p.errcodelen, 0); /* reset after the error reply */
}
END_TEST

START_TEST(reply_error_is_sticky_until_init)
{
	struct resp_reply_parser p;
	size_t used;

	resp_reply_init(&p);
	ck_assert_int_eq(resp_reply_feed(&p, S("@\r\n"), &used), RESP_ERROR);
	ck_assert_uint_eq(used, 1);
	ck_assert_int_eq(resp_reply_feed(&p, S("+OK\r\n"), &used), RESP_ERROR);
	ck_assert_uint_eq(used, 0);
	resp_reply_init(&p);
	ck_assert_int_eq(resp_reply_feed(&p, S("+OK\r\n"), &used), RESP_OK);
}
END_TEST

/* "*1\r\n" repeated depth times around ":1\r\n". */
static char *
build_nested(int depth, size_t *len)
{
	char *buf = malloc((size_t)depth * 4 + 5);
	int i;

	for (i = 0; i < depth; i++)
		memcpy(buf + i * 4, "*1\r\n", 4);
	memcpy(buf + depth * 4, ":1\r\n", 5);
	*len = (size_t)depth * 4 + 4;
	return buf;
}

START_TEST(reply_nesting_at_and_over_max_depth)
{
	struct reply_result r;
	size_t len;
	char *buf;

	buf = build_nested(RESP_MAX_DEPTH, &len);
	parse_reply(buf, len, &r);
	ck_assert_int_eq(r.st, RESP_OK);
	ck_assert_uint_eq(r.total, len);
	free(buf);

	buf = build_nested(RESP_MAX_DEPTH + 1, &len);
	parse_reply(buf, len, &r);
	ck_assert_int_eq(r.st, RESP_ERROR);
	ck_assert_str_eq(r.err, "aggregates nested too deep");
	free(buf);

	/* Streamed aggregates count against the same depth. */
	buf = build_nested(RESP_MAX_DEPTH + 1, &len);
	buf[(RESP_MAX_DEPTH) * 4 + 1] = '?';
	parse_reply(buf, len, &r);
	ck_assert_int_eq(r.st, RESP_ERROR);
	ck_assert_str_eq(r.err, "aggregates nested too deep");
	free(buf);
}
END_TEST

START_TEST(reply_long_simple_line_is_not_stored)
{
	enum { LINE = 1024 * 1024, CHUNK = 4096 };
	char *buf = malloc(LINE);
	struct resp_reply_parser p;
	size_t pos = 0, used;
	enum resp_status st = RESP_NEED_MORE;

	/* "-EEEEEEEE EEE...\r\n", LINE bytes in all */
	buf[0] = '-';
	memset(buf + 1, 'E', LINE - 3);
	buf[9] = ' ';
	memcpy(buf + LINE - 2, "\r\n", 2);
	resp_reply_init(&p);
	while (st == RESP_NEED_MORE) {
		size_t n = LINE - pos < CHUNK ? LINE - pos : CHUNK;

		st = resp_reply_feed(&p, buf + pos, n, &used);
		pos += used;
	}
	ck_assert_int_eq(st, RESP_OK);
	ck_assert_uint_eq(p.total, LINE);
	ck_assert_str_eq(p.errcode, "EEEEEEEE");
	ck_assert_int_eq(p.type, '-');
	free(buf);
}
END_TEST

START_TEST(reply_large_bulk_fed_in_chunks)
{
	enum { CHUNK = 16 * 1024, BULK = 10 * 1024 * 1024 };
	static char chunk[CHUNK];
	struct resp_reply_parser p;
	size_t used, left = BULK, feeds = 0;

	memset(chunk, '\r', sizeof(chunk)); /* data, not line ends */
	resp_reply_init(&p);
	ck_assert_int_eq(resp_reply_feed(&p, S("*2\r\n:7\r\n$10485760\r\n"),
	    &used), RESP_NEED_MORE);
	while (left > 0) {
		size_t n = left < CHUNK ? left : CHUNK;

		ck_assert_int_eq(resp_reply_feed(&p, chunk, n, &used),
		    RESP_NEED_MORE);
		ck_assert_uint_eq(used, n);
		left -= n;
		feeds++;
	}
	ck_assert_uint_eq(feeds, BULK / CHUNK);
	ck_assert_int_eq(resp_reply_feed(&p, S("\r\n+next\r\n"), &used),
	    RESP_OK);
	ck_assert_uint_eq(used, 2);
	ck_assert_uint_eq(p.total, 19 + BULK + 2);
	ck_assert_int_eq(p.type, '*');
}
END_TEST

/* ------------------------------------------------------------------ */
/* Inline requests                                                    */
/* ------------------------------------------------------------------ */

struct inline_vec {
	const char *line;
	size_t len;
	int argc;                  /* or -1 unbalanced quotes */
	const char *argv[4];
	size_t argvlen[4];         /* 0: strlen(argv[i]) */
};

static const struct inline_vec inline_vectors[] = {
	{ S(""), 0, { NULL }, { 0 } },
	{ S("   \t "), 0, { NULL }, { 0 } },
	{ S("PING"), 1, { "PING" }, { 0 } },
	{ S("set key value"), 3, { "set", "key", "value" }, { 0 } },
	{ S("  set   key\tvalue  "), 3, { "set", "key", "value" }, { 0 } },
	{ S("\"hello world\""), 1, { "hello world" }, { 0 } },
	{ S("\"a\\nb\\r\\t\\b\\a\\\\\\\"\""), 1, { "a\nb\r\t\b\a\\\"" }, { 0 } },
	{ S("\"\\x41\\x4a\\x4A\\x00\""), 1, { "AJJ\0" }, { 4 } },
	{ S("\"\\x4g\""), 1, { "x4g" }, { 0 } },   /* not hex: plain escape */
	{ S("\"\\q\""), 1, { "q" }, { 0 } },
	{ S("'it\\'s'"), 1, { "it's" }, { 0 } },
	{ S("'a\\\\b\\n'"), 1, { "a\\\\b\\n" }, { 0 } },
	{ S("'a\"b' \"a'b\""), 2, { "a\"b", "a'b" }, { 0 } },
	{ S("foo\"bar\" baz"), 2, { "foobar", "baz" }, { 0 } },
	{ S("\"\" x ''"), 3, { "", "x", "" }, { 0 } },
	{ S("a\vb"), 1, { "a\vb" }, { 0 } },       /* \v does not end a word */
	{ S("\v\fa"), 1, { "a" }, { 0 } },         /* but is skipped between */
	{ S("\"a\"\vb"), 2, { "a", "b" }, { 0 } }, /* and may follow a quote */
	{ S("a\0b c"), 2, { "a\0b", "c" }, { 3 } },
	{ S("\"abc"), -1, { NULL }, { 0 } },
	{ S("'abc"), -1, { NULL }, { 0 } },
	{ S("\"a\"b"), -1, { NULL }, { 0 } },
	{ S("'a'b"), -1, { NULL }, { 0 } },
	{ S("\"abc\\"), -1, { NULL }, { 0 } },
	{ S("\"abc\\\""), -1, { NULL }, { 0 } },
	{ S("x \"\\x4"), -1, { NULL }, { 0 } },
};

START_TEST(inline_split_as_sdssplitargs)
{
	const struct inline_vec *v = &inline_vectors[_i];
	char out[64];
	const char *argv[8];
	size_t argvlen[8];
	int i, argc;

	argc = resp_inline_split(v->line, v->len, out, v->len, argv, argvlen,
	    8);
	ck_assert_msg(argc == v->argc, "vector %d: argc %d", _i, argc);
	for (i = 0; i < argc; i++) {
		size_t want = v->argvlen[i] ? v->argvlen[i] : strlen(v->argv[i]);

		ck_assert_uint_eq(argvlen[i], want);
		ck_assert(memcmp(argv[i], v->argv[i], want) == 0);
		ck_assert(argv[i] >= out && argv[i] + want <= out + v->len);
	}
}
END_TEST

START_TEST(inline_split_bounds_arguments_and_output)
{
	char out[16];
	const char *argv[4];
	size_t argvlen[4];

	ck_assert_int_eq(resp_inline_split(S("a b c"), out, sizeof(out), argv,
	    argvlen, 3), 3);
	ck_assert_int_eq(resp_inline_split(S("a b c"), out, sizeof(out), argv,
	    argvlen, 2), -2);
	ck_assert_int_eq(resp_inline_split(S("a b c   "), out, sizeof(out),
	    argv, argvlen, 3), 3);
	ck_assert_int_eq(resp_inline_split(S("abcd"), out, 3, argv, argvlen,
	    4), -2);
	ck_assert_int_eq(resp_inline_split(S("abcd"), out, 4, argv, argvlen,
	    4), 1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* resp_argv                                                          */
/* ------------------------------------------------------------------ */

START_TEST(argv_splits_complete_request)
{
	static const char req[] = "*3\r\n$3\r\nSET\r\n$4\r\nk\r\nk\r\n$0\r\n\r\n";
	const char *argv[4];
	size_t argvlen[4];

	ck_assert_int_eq(resp_argv(S(req), argv, argvlen, 4), 3);
	ck_assert_uint_eq(argvlen[0], 3);
	ck_assert(argv[0] == req + 8);
	ck_assert(memcmp(argv[0], "SET", 3) == 0);
	ck_assert_uint_eq(argvlen[1], 4);
	ck_assert(memcmp(argv[1], "k\r\nk", 4) == 0);
	ck_assert_uint_eq(argvlen[2], 0);
	ck_assert_int_eq(resp_argv(S(req), argv, argvlen, 3), 3);
	ck_assert_int_eq(resp_argv(S(req), argv, argvlen, 2), -1);
	ck_assert_int_eq(resp_argv(S("*0\r\n"), argv, argvlen, 4), 0);
	ck_assert_int_eq(resp_argv(S("*-1\r\n"), argv, argvlen, 4), 0);
}
END_TEST

START_TEST(argv_refuses_what_is_not_a_whole_request)
{
	static const char req[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
	const char *argv[4];
	size_t argvlen[4];
	size_t i;

	/* every proper prefix */
	for (i = 0; i < sizeof(req) - 1; i++)
		ck_assert_msg(resp_argv(req, i, argv, argvlen, 4) == -1,
		    "prefix %zu", i);
	ck_assert_int_eq(resp_argv(S("PING\r\n"), argv, argvlen, 4), -1);
	ck_assert_int_eq(resp_argv(S("*1\r\n:1\r\n"), argv, argvlen, 4), -1);
	ck_assert_int_eq(resp_argv(S("*1\r\n$1\r\nab\r\n"), argv, argvlen, 4),
	    -1);
	ck_assert_int_eq(resp_argv(S("*1\r\n$-1\r\n"), argv, argvlen, 4), -1);
	ck_assert_int_eq(resp_argv(S("*1\r\n$99\r\nab\r\n"), argv, argvlen,
	    4), -1);
}
END_TEST

START_TEST(argv_agrees_with_the_feed_parser)
{
	const struct req_vec *v = &req_vectors[_i];
	const char *argv[8];
	size_t argvlen[8];
	struct req_result r;
	int argc;
	size_t i;

	parse_req(NULL, v->in, v->len, &r);
	if (r.st != RESP_OK)
		return;
	argc = resp_argv(v->in, v->len, argv, argvlen, 8);
	ck_assert_int_eq(argc, r.argc);
	if (argc >= 1) {
		ck_assert_uint_eq(argvlen[0], r.namelen);
		for (i = 0; i < r.namelen; i++)
			ck_assert_int_eq(r.name[i] | 0x20, argv[0][i] | 0x20);
	}
	if (argc >= 2)
		ck_assert(argvlen[1] == r.arg1len &&
		    memcmp(argv[1], r.arg1, r.arg1len) == 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* The protocol table's limits, whole or in pieces                    */
/* ------------------------------------------------------------------ */

static const struct proto *const RP = &redis_proto;

/* The daemon's defaults but for the limits given (0: the default). */
static struct cfg_upstream
upstream_with(uint64_t max_request_size, uint64_t max_line_length)
{
	struct cfg_upstream up;

	memset(&up, 0, sizeof(up));
	up.name = (char *)"t";
	up.protocol = PROTO_REDIS;
	up.databases = 16;
	up.limits.max_request_size = max_request_size;
	up.limits.max_line_length = max_line_length;
	RP->default_limits(&up.limits);
	return up;
}

/*
 * The bytes of one client, fed as client.c's process_input takes them:
 * "F<len>|" forwarded, "L:<reply>|" answered here, "S<len>|" skipped,
 * "W|" waited (the replies of what is in flight then arrive), "X:<reply>|"
 * closed, "N<n>" n bytes waiting for more. An incomplete request over
 * max_request_size is the protocol's to refuse, not left to client.c.
 */
struct table_run {
	const struct cfg_upstream *up;
	void *state;
	struct evbuffer *in, *log;
	size_t inflight;
	bool closed;
};

static void
table_drive(struct table_run *r)
{
	while (!r->closed && evbuffer_get_length(r->in) > 0) {
		struct evbuffer *reply = evbuffer_new();
		struct reqinfo ri;
		enum proto_verdict v;

		memset(&ri, 0, sizeof(ri));
		ri.reply = reply;
		ri.upstream = r->up;
		ri.can_switch = r->inflight == 0;
		v = RP->parse_request(r->state, r->in, &r->up->limits, &ri);
		switch (v) {
		case PV_NEED_MORE:
			ck_assert_msg(evbuffer_get_length(r->in) <=
			    r->up->limits.max_request_size, "%zu bytes "
			    "waiting, max_request_size %llu: left to client.c",
			    evbuffer_get_length(r->in), (unsigned long long)
			    r->up->limits.max_request_size);
			evbuffer_free(reply);
			return;
		case PV_FORWARD:
			evbuffer_add_printf(r->log, "F%zu|", ri.len);
			evbuffer_drain(r->in, ri.len);
			r->inflight++;
			break;
		case PV_LOCAL:
			evbuffer_add(r->log, "L:", 2);
			evbuffer_add_buffer(r->log, reply);
			evbuffer_add(r->log, "|", 1);
			evbuffer_drain(r->in, ri.len);
			break;
		case PV_SKIP:
			evbuffer_add_printf(r->log, "S%zu|", ri.len);
			evbuffer_drain(r->in, ri.len);
			break;
		case PV_WAIT:
			ck_assert_uint_gt(r->inflight, 0);
			evbuffer_add(r->log, "W|", 2);
			for (; r->inflight > 0; r->inflight--) {
				struct evbuffer *ok = evbuffer_new();

				evbuffer_add(ok, "+OK\r\n", 5);
				RP->reply_seen(r->state, 0, ok, 5);
				evbuffer_free(ok);
			}
			break;
		case PV_LOCAL_CLOSE:
		case PV_ERROR_CLOSE:
			evbuffer_add(r->log, "X:", 2);
			evbuffer_add_buffer(r->log, reply);
			evbuffer_add(r->log, "|", 1);
			r->closed = true;
			break;
		}
		evbuffer_free(reply);
	}
}

/* data in pieces of chunk bytes (0: one piece); the transcript, as a
 * string the caller frees. */
static char *
table_run(const struct cfg_upstream *up, const char *data, size_t len,
    size_t chunk)
{
	struct table_run r = { .up = up };
	size_t off = 0, n;
	char *out;

	r.state = calloc(1, RP->req_state_size);
	r.in = evbuffer_new();
	r.log = evbuffer_new();
	RP->req_init(r.state);
	while (off < len && !r.closed) {
		n = chunk == 0 || len - off < chunk ? len - off : chunk;
		evbuffer_add(r.in, data + off, n);
		off += n;
		table_drive(&r);
	}
	if (!r.closed && evbuffer_get_length(r.in) > 0)
		evbuffer_add_printf(r.log, "N%zu", evbuffer_get_length(r.in));
	n = evbuffer_get_length(r.log);
	out = malloc(n + 1);
	evbuffer_remove(r.log, out, n);
	out[n] = '\0';
	RP->req_free(r.state);
	free(r.state);
	evbuffer_free(r.in);
	evbuffer_free(r.log);
	return out;
}

/* One piece, one byte at a time and in 2..7-byte pieces: all say want. */
static void
check_table(const struct cfg_upstream *up, const char *in, const char *want)
{
	for (size_t chunk = 0; chunk < 8; chunk++) {
		char *got = table_run(up, in, strlen(in), chunk);

		ck_assert_msg(strcmp(got, want) == 0, "pieces of %zu (0: one "
		    "piece) of \"%s\":\n  got  %s\n  want %s", chunk, in, got,
		    want);
		free(got);
	}
}

/* client.c's words for an incomplete request over the limit. */
#define X_TOO_LARGE \
	"X:-ERR sidepool: request larger than max_request_size\r\n|"
#define X_TOO_LONG "X:-ERR Protocol error: too big inline request\r\n|"

START_TEST(request_over_max_request_size_is_refused_whole_or_in_pieces)
{
	struct cfg_upstream up = upstream_with(16, 0);

	/* K1: forwarded when it came in one read */
	check_table(&up, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n",
	    X_TOO_LARGE);
	/* answered here when whole (the fuzzer's input) */
	check_table(&up, "*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n", X_TOO_LARGE);
	/* a request that fits still goes, and the next one is refused */
	check_table(&up, "*1\r\n$3\r\nGET\r\n*2\r\n$3\r\nGET\r\n$2\r\nkk\r\n",
	    "F13|" X_TOO_LARGE);
}
END_TEST

START_TEST(request_of_exactly_max_request_size_is_served)
{
	/* "*1\r\n$4\r\nPING\r\n" is 14 bytes */
	struct cfg_upstream at = upstream_with(14, 0);
	struct cfg_upstream under = upstream_with(13, 0);

	check_table(&at, "*1\r\n$4\r\nPING\r\n", "L:+PONG\r\n|");
	check_table(&under, "*1\r\n$4\r\nPING\r\n", X_TOO_LARGE);
}
END_TEST

START_TEST(request_error_past_max_request_size_is_the_size)
{
	struct cfg_upstream up = upstream_with(16, 0);

	/* In pieces, the client is closed once 17 bytes wait, before the
	 * bad header after them is read: whole, the same. */
	check_table(&up, "*2\r\n$10\r\n0123456789\r\nx\r\n", X_TOO_LARGE);
	/* A bad header within the limit is the protocol error. */
	check_table(&up, "*2\r\nx\r\n", "X:-ERR Protocol error: expected "
	    "'$', got 'x'\r\n|");
}
END_TEST

START_TEST(inline_line_over_max_line_length_is_refused_whole)
{
	struct cfg_upstream up = upstream_with(0, 8);

	/* K2: 9 bytes before the "\n", served when they came at once */
	check_table(&up, "PING abc\r\n", X_TOO_LONG);
	check_table(&up, "PING abcdef\r\n", X_TOO_LONG);
	/* 8 bytes with the "\r" are within the limit */
	check_table(&up, "PING ab\r\n", "L:$2\r\nab\r\n|");
	check_table(&up, "PING abc\n", "L:$3\r\nabc\r\n|");
	/* after a good line, a long one */
	check_table(&up, "PING\r\nPING abcdef\r\n", "L:+PONG\r\n|" X_TOO_LONG);
	/* an empty line is a line too */
	check_table(&up, "         \r\n", X_TOO_LONG);
}
END_TEST

START_TEST(inline_line_meets_the_smaller_limit_first)
{
	/* In pieces a line without its "\n" passes the smaller limit first;
	 * whole, it must get the same answer. */
	struct cfg_upstream req_smaller = upstream_with(8, 10);
	struct cfg_upstream line_smaller = upstream_with(10, 8);
	struct cfg_upstream equal = upstream_with(8, 8);

	check_table(&req_smaller, "xxxxxxxxxxx", X_TOO_LARGE);
	check_table(&req_smaller, "PING abcd\n", X_TOO_LARGE);
	check_table(&req_smaller, "PING abcdefgh\n", X_TOO_LARGE);
	check_table(&line_smaller, "xxxxxxxxxxx", X_TOO_LONG);
	check_table(&line_smaller, "PING abcdefgh\n", X_TOO_LONG);
	check_table(&equal, "PING abcdefgh\n", X_TOO_LONG);
	/* 8 bytes and the "\n" are 9, one over max_request_size */
	check_table(&equal, "PING abc\n", X_TOO_LARGE);
	/* and an unfinished line within both limits waits */
	check_table(&req_smaller, "PING abc", "N8");
}
END_TEST

START_TEST(inline_line_rewritten_then_waiting_is_served_after_the_wait)
{
	/* BLPOP needs the client's own connection: with the GET in flight
	 * it waits, rewritten to multibulk already (longer than the line
	 * limit); when it is parsed again only the line counted. */
	struct cfg_upstream up = upstream_with(0, 10);

	check_table(&up, "GET a\r\nBLPOP k 0\r\n", "F20|W|F29|");
}
END_TEST

static Suite *
resp_suite(void)
{
	Suite *s = suite_create("resp");
	TCase *tc;

	tc = tcase_create("request");
	tcase_add_loop_test(tc, request_vectors_parse_as_redis_does, 0,
	    NELEM(req_vectors));
	tcase_add_loop_test(tc, request_vectors_split_at_every_byte, 0,
	    NELEM(req_vectors));
	tcase_add_test(tc, request_error_is_sticky_until_init);
	tcase_add_test(tc, request_empty_feed_needs_more);
	tcase_add_test(tc, requests_pipelined_back_to_back);
	tcase_add_test(tc, request_name_and_arg1_kept_up_to_their_bounds);
	tcase_add_test(tc, request_limits_at_and_just_over);
	tcase_add_test(tc, request_large_bulk_fed_in_chunks);
	suite_add_tcase(s, tc);

	tc = tcase_create("reply");
	tcase_add_loop_test(tc, reply_vectors_parse, 0, NELEM(reply_vectors));
	tcase_add_loop_test(tc, reply_vectors_split_at_every_byte, 0,
	    NELEM(reply_vectors));
	tcase_add_test(tc, replies_pipelined_back_to_back);
	tcase_add_test(tc, reply_error_is_sticky_until_init);
	tcase_add_test(tc, reply_nesting_at_and_over_max_depth);
	tcase_add_test(tc, reply_long_simple_line_is_not_stored);
	tcase_add_test(tc, reply_large_bulk_fed_in_chunks);
	suite_add_tcase(s, tc);

	tc = tcase_create("split");
	tcase_add_loop_test(tc, inline_split_as_sdssplitargs, 0,
	    NELEM(inline_vectors));
	tcase_add_test(tc, inline_split_bounds_arguments_and_output);
	tcase_add_test(tc, argv_splits_complete_request);
	tcase_add_test(tc, argv_refuses_what_is_not_a_whole_request);
	tcase_add_loop_test(tc, argv_agrees_with_the_feed_parser, 0,
	    NELEM(req_vectors));
	suite_add_tcase(s, tc);

	tc = tcase_create("limits");
	tcase_add_test(tc,
	    request_over_max_request_size_is_refused_whole_or_in_pieces);
	tcase_add_test(tc, request_of_exactly_max_request_size_is_served);
	tcase_add_test(tc, request_error_past_max_request_size_is_the_size);
	tcase_add_test(tc, inline_line_over_max_line_length_is_refused_whole);
	tcase_add_test(tc, inline_line_meets_the_smaller_limit_first);
	tcase_add_test(tc,
	    inline_line_rewritten_then_waiting_is_served_after_the_wait);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(resp_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
