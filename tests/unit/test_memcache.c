/*
 * test_memcache.c - the Memcached text protocol module: request framing,
 * validation with memcached 1.6.18's exact bytes, noreply and quiet-mode
 * rewrites, reply framing and drops, on real evbuffers.
 *
 * Most checks run a whole input through the parser as the proxy would and
 * compare a transcript of what happened; each input is fed in one piece,
 * one byte at a time and split at every position, and every way must give
 * the same transcript.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <event2/buffer.h>

#include "memcache.h"
#include "proto.h"

static const struct proto *P = &memcache_proto;

static struct cfg_limits
limits_default(void)
{
	struct cfg_limits lim;

	memset(&lim, 0, sizeof(lim));
	P->default_limits(&lim);
	return lim;
}

/* ---- the request driver ---- */

struct req_run {
	void *state;
	struct evbuffer *in;
	struct evbuffer *log; /* transcript */
	size_t skipped;       /* PV_SKIP bytes not yet logged */
	bool closed;
};

static void
log_bytes(struct evbuffer *log, const char *tag, struct evbuffer *b)
{
	evbuffer_add_printf(log, "%s", tag);
	evbuffer_add_buffer(log, b);
	evbuffer_add(log, "|", 1);
}

static void
log_skipped(struct req_run *r)
{
	if (r->skipped > 0)
		evbuffer_add_printf(r->log, "S%zu|", r->skipped);
	r->skipped = 0;
}

/* Parse what is in r->in until the parser needs more, as client.c would. */
static void
req_drive(struct req_run *r, const struct cfg_limits *lim)
{
	while (!r->closed) {
		struct evbuffer *reply = evbuffer_new();
		struct evbuffer *fwd = evbuffer_new();
		struct reqinfo ri;
		enum proto_verdict v;
		char tag[64];

		memset(&ri, 0, sizeof(ri));
		ri.reply = reply;
		v = P->parse_request(r->state, r->in, lim, &ri);
		if (v != PV_NEED_MORE && v != PV_ERROR_CLOSE &&
		    v != PV_LOCAL_CLOSE)
			ck_assert_uint_le(ri.len, evbuffer_get_length(r->in));
		if (v != PV_SKIP && v != PV_NEED_MORE)
			log_skipped(r);
		switch (v) {
		case PV_NEED_MORE:
			ck_assert_uint_eq(evbuffer_get_length(reply), 0);
			/* client.c closes a client whose incomplete request
			 * outgrew max_request_size; the parser must have said
			 * so itself, with the same bytes, whole or not */
			ck_assert_msg(evbuffer_get_length(r->in) <=
			    lim->max_request_size,
			    "%zu bytes waiting, max_request_size %llu: left to "
			    "client.c", evbuffer_get_length(r->in),
			    (unsigned long long)lim->max_request_size);
			break;
		case PV_FORWARD:
			ck_assert_uint_gt(ri.len, 0);
			ck_assert_int_eq(evbuffer_remove_buffer(r->in, fwd,
			    ri.len), (int)ri.len);
			snprintf(tag, sizeof(tag), "F%x:%s:", ri.pflags,
			    ri.name);
			log_bytes(r->log, tag, fwd);
			break;
		case PV_LOCAL:
			evbuffer_drain(r->in, ri.len);
			log_bytes(r->log, "L:", reply);
			break;
		case PV_SKIP:
			ck_assert_uint_gt(ri.len, 0);
			evbuffer_drain(r->in, ri.len);
			r->skipped += ri.len;
			break;
		case PV_LOCAL_CLOSE:
			log_bytes(r->log, "Q:", reply);
			r->closed = true;
			break;
		case PV_ERROR_CLOSE:
			log_bytes(r->log, "X:", reply);
			r->closed = true;
			break;
		case PV_WAIT:
			/* memcached has no connection state: never a session */
			ck_abort_msg("memcache asked to wait");
			break;
		}
		evbuffer_free(reply);
		evbuffer_free(fwd);
		if (v == PV_NEED_MORE)
			break;
	}
}

/* A fresh parser with empty input and transcript. */
static void
req_run_open(struct req_run *r)
{
	memset(r, 0, sizeof(*r));
	r->state = calloc(1, P->req_state_size);
	ck_assert_ptr_nonnull(r->state);
	P->req_init(r->state);
	r->in = evbuffer_new();
	r->log = evbuffer_new();
}

/* Free the parser; its transcript, ending "N<n>" if n bytes wait for more. */
static struct evbuffer *
req_run_close(struct req_run *r)
{
	log_skipped(r);
	if (!r->closed && evbuffer_get_length(r->in) > 0)
		evbuffer_add_printf(r->log, "N%zu", evbuffer_get_length(r->in));
	evbuffer_free(r->in);
	free(r->state);
	return r->log;
}

/*
 * Run data through a fresh parser, in pieces of chunk bytes (0: one piece),
 * or in two pieces split at split (when nonzero). Returns the transcript:
 * "F<pflags>:<name>:<bytes>|" forwarded, "L:<reply>|" answered here,
 * "S<n>|" bytes skipped, "Q:|" quit, "X:<reply>|" closed on an error, and
 * "N<n>" if n bytes are left waiting for more.
 */
static struct evbuffer *
req_run_pieces(const char *data, size_t len, size_t chunk, size_t split,
    const struct cfg_limits *lim)
{
	struct req_run r;
	size_t off = 0, n;

	req_run_open(&r);
	while (off < len && !r.closed) {
		if (split != 0)
			n = off == 0 ? split : len - off;
		else
			n = chunk == 0 ? len : (len - off < chunk ? len - off : chunk);
		evbuffer_add(r.in, data + off, n);
		off += n;
		req_drive(&r, lim);
	}
	return req_run_close(&r);
}

static bool
log_equals(struct evbuffer *log, const char *want, size_t wantlen)
{
	size_t n = evbuffer_get_length(log);
	const char *got = n ? (const char *)evbuffer_pullup(log, -1) : "";

	if (n == wantlen && memcmp(got, want, n) == 0)
		return true;
	fprintf(stderr, "transcript mismatch\n  want: ");
	fwrite(want, 1, wantlen, stderr);
	fprintf(stderr, "\n  got:  ");
	fwrite(got, 1, n, stderr);
	fprintf(stderr, "\n");
	return false;
}

/* One piece, one byte at a time, and every two-piece split. */
static void
check_req_lim(const char *in, size_t inlen, const char *want, size_t wantlen,
    const struct cfg_limits *lim)
{
	struct evbuffer *log;
	size_t at;

	log = req_run_pieces(in, inlen, 0, 0, lim);
	ck_assert_msg(log_equals(log, want, wantlen), "one piece");
	evbuffer_free(log);
	log = req_run_pieces(in, inlen, 1, 0, lim);
	ck_assert_msg(log_equals(log, want, wantlen), "byte by byte");
	evbuffer_free(log);
	for (at = 1; at < inlen; at++) {
		log = req_run_pieces(in, inlen, 0, at, lim);
		ck_assert_msg(log_equals(log, want, wantlen), "split at %zu", at);
		evbuffer_free(log);
	}
}

static void
check_req(const char *in, size_t inlen, const char *want, size_t wantlen)
{
	struct cfg_limits lim = limits_default();

	check_req_lim(in, inlen, want, wantlen, &lim);
}

/* literals may hold NUL bytes: their length comes from sizeof */
/* a request built at run time, a transcript without NUL bytes */
static void
check_req_str(const char *in, size_t inlen, const char *want)
{
	check_req(in, inlen, want, strlen(want));
}

#define CHECK_REQ(in, want) check_req(in, sizeof(in) - 1, want, sizeof(want) - 1)
#define CHECK_REQ_LIM(in, want, lim) \
	check_req_lim(in, sizeof(in) - 1, want, sizeof(want) - 1, lim)

/* client.c's close for a request over max_request_size (reply_error(c, 0,
 * ...) through error_reply), which the parser gives itself */
#define X_REQUEST_SIZE \
	"X:SERVER_ERROR sidepool: request larger than max_request_size\r\n|"
#define X_LINE "X:CLIENT_ERROR sidepool: command line too long\r\n|"

/* pflags as the transcript prints them */
#define PF_LINE "0"
#define PF_VALUES "1"
#define PF_META "2"
#define PF_STATS "3"
#define PF_NOREPLY "10"

/* ---- the reply driver ---- */

/*
 * Run server bytes through a fresh reply parser; the i-th reply is parsed
 * with pflags[i]. Transcript: "R:<bytes>|" shown, "D:<bytes>|" dropped,
 * "E:<why>|" desync, "N<n>" bytes left waiting.
 */
static struct evbuffer *
reply_run_pieces(const char *data, size_t len, const uint32_t *pflags,
    size_t npflags, size_t chunk, size_t split)
{
	void *state = calloc(1, P->reply_state_size);
	struct evbuffer *in = evbuffer_new(), *log = evbuffer_new();
	size_t off = 0, n, i = 0;
	bool dead = false;

	ck_assert_ptr_nonnull(state);
	P->reply_init(state);
	while (off < len && !dead) {
		if (split != 0)
			n = off == 0 ? split : len - off;
		else
			n = chunk == 0 ? len : (len - off < chunk ? len - off : chunk);
		evbuffer_add(in, data + off, n);
		off += n;
		for (;;) {
			struct replyinfo ri;
			struct evbuffer *msg = evbuffer_new();
			enum reply_verdict v;

			memset(&ri, 0, sizeof(ri));
			ck_assert_uint_lt(i, npflags);
			v = P->parse_reply(state, in, pflags[i], &ri);
			if (v == RV_REPLY) {
				ck_assert_uint_gt(ri.len, 0);
				ck_assert_uint_le(ri.len, evbuffer_get_length(in));
				evbuffer_remove_buffer(in, msg, ri.len);
				log_bytes(log, ri.drop ? "D:" : "R:", msg);
				i++;
			} else if (v == RV_ERROR) {
				ck_assert_ptr_nonnull(ri.err);
				evbuffer_add_printf(log, "E:%s|", ri.err);
				dead = true;
			}
			evbuffer_free(msg);
			if (v != RV_REPLY || i == npflags ||
			    evbuffer_get_length(in) == 0)
				break;
		}
	}
	if (!dead && evbuffer_get_length(in) > 0)
		evbuffer_add_printf(log, "N%zu", evbuffer_get_length(in));
	evbuffer_free(in);
	free(state);
	return log;
}

static void
check_reply(const char *in, size_t inlen, const uint32_t *pflags,
    size_t npflags, const char *want, size_t wantlen)
{
	struct evbuffer *log;
	size_t at;

	log = reply_run_pieces(in, inlen, pflags, npflags, 0, 0);
	ck_assert_msg(log_equals(log, want, wantlen), "one piece");
	evbuffer_free(log);
	log = reply_run_pieces(in, inlen, pflags, npflags, 1, 0);
	ck_assert_msg(log_equals(log, want, wantlen), "byte by byte");
	evbuffer_free(log);
	for (at = 1; at < inlen; at++) {
		log = reply_run_pieces(in, inlen, pflags, npflags, 0, at);
		ck_assert_msg(log_equals(log, want, wantlen), "split at %zu", at);
		evbuffer_free(log);
	}
}

#define CHECK_REPLY(in, pf, want) \
	check_reply(in, sizeof(in) - 1, pf, sizeof(pf) / sizeof(pf[0]), \
	    want, sizeof(want) - 1)

/* pflags of a single request, as parse_request gives them */
static uint32_t
pflags_of(const char *req)
{
	struct cfg_limits lim = limits_default();
	struct evbuffer *in = evbuffer_new(), *reply = evbuffer_new();
	void *state = calloc(1, P->req_state_size);
	struct reqinfo ri;
	enum proto_verdict v;

	P->req_init(state);
	memset(&ri, 0, sizeof(ri));
	ri.reply = reply;
	evbuffer_add(in, req, strlen(req));
	v = P->parse_request(state, in, &lim, &ri);
	ck_assert_int_eq(v, PV_FORWARD);
	free(state);
	evbuffer_free(in);
	evbuffer_free(reply);
	return ri.pflags;
}

/* ===================================================================== */
/* pure helpers */

START_TEST(tokenizer_splits_on_spaces_only)
{
	const char line[] = "  get a\tb  c\x01 d\r";
	struct mc_token tok[8];
	size_t argc, n;

	n = mc_tokenize(line, sizeof(line) - 1, tok, 8, &argc);
	ck_assert_uint_eq(n, 4);
	ck_assert_uint_eq(argc, 4);
	ck_assert_uint_eq(tok[0].len, 3);
	ck_assert(memcmp(tok[1].p, "a\tb", 3) == 0 && tok[1].len == 3);
	ck_assert(memcmp(tok[2].p, "c\x01", 2) == 0 && tok[2].len == 2);
	ck_assert(memcmp(tok[3].p, "d\r", 2) == 0 && tok[3].len == 2);
}
END_TEST

START_TEST(tokenizer_stops_at_nul_and_counts_beyond_max)
{
	const char line[] = "get a b\0c d";
	const char many[] = "a b c d e f";
	struct mc_token tok[3];
	size_t argc, n;

	n = mc_tokenize(line, sizeof(line) - 1, tok, 3, &argc);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(argc, 3);
	ck_assert_uint_eq(tok[2].len, 1);
	n = mc_tokenize(many, sizeof(many) - 1, tok, 3, &argc);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(argc, 6);
}
END_TEST

START_TEST(numbers_parse_like_memcached_safe_strtol)
{
	static const struct {
		const char *s;
		bool ok;
		int32_t v;
	} cases[] = {
		{ "5", true, 5 }, { "+5", true, 5 }, { "05", true, 5 },
		{ "-0", true, 0 }, { "\t5", true, 5 }, { "\x0c" "5", true, 5 },
		{ "5\t", true, 5 }, { "5\x0bz", true, 5 }, { "-1", true, -1 },
		{ "4294967301", true, 5 },            /* long stored in 32 bits */
		{ "2147483648", true, INT32_MIN },
		{ "-4294967291", true, 5 },
		{ "9223372036854775807", true, -1 },
		{ "-9223372036854775808", true, 0 },
		{ "9223372036854775808", false, 0 },  /* ERANGE */
		{ "-9223372036854775809", false, 0 },
		{ "", false, 0 }, { "+", false, 0 }, { "-", false, 0 },
		{ "5x", false, 0 }, { "abc", false, 0 }, { "0x10", false, 0 },
		{ "\t", false, 0 },
	};
	size_t i;
	int32_t v;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		v = 12345;
		ck_assert_msg(mc_parse_i32(cases[i].s, strlen(cases[i].s), &v) ==
		    cases[i].ok, "case %s", cases[i].s);
		if (cases[i].ok)
			ck_assert_int_eq(v, cases[i].v);
	}
}
END_TEST

START_TEST(numbers_parse_like_memcached_safe_strtoul)
{
	uint32_t v32;
	uint64_t v;

	ck_assert(mc_parse_u32("4294967296", 10, &v32) && v32 == 0);
	ck_assert(mc_parse_u32("18446744073709551615", 20, &v32) &&
	    v32 == UINT32_MAX);
	ck_assert(!mc_parse_u32("18446744073709551616", 20, &v32));
	ck_assert(!mc_parse_u32("-1", 2, &v32));
	ck_assert(mc_parse_u32("-0", 2, &v32) && v32 == 0);
	ck_assert(!mc_parse_u64("-5", 2, &v));
	/* negated past 2^63 it is positive again: memcached lets it through */
	ck_assert(mc_parse_u64("-18446744073709551615", 21, &v) && v == 1);
	ck_assert(!mc_parse_u64("-18446744073709551616", 21, &v));
	ck_assert(mc_parse_u64("9223372036854775808", 19, &v) &&
	    v == 9223372036854775808ull);
	/* a '-' anywhere in the token counts, even after the number */
	ck_assert(!mc_parse_u64("9223372036854775808\t-", 21, &v));
	ck_assert(mc_parse_u64("5\t-", 3, &v) && v == 5);
	ck_assert(!mc_parse_u64("5-", 2, &v));
}
END_TEST

START_TEST(long_line_allowed_only_for_get_and_gets)
{
	char buf[200];

	ck_assert_int_eq(mc_long_line("get k", 5), MC_LONG_YES);
	ck_assert_int_eq(mc_long_line("gets k", 6), MC_LONG_YES);
	ck_assert_int_eq(mc_long_line("get ", 4), MC_LONG_YES);
	ck_assert_int_eq(mc_long_line("gat 0 k", 7), MC_LONG_NO);
	ck_assert_int_eq(mc_long_line("bget k", 6), MC_LONG_NO);
	ck_assert_int_eq(mc_long_line("getx k", 6), MC_LONG_NO);
	ck_assert_int_eq(mc_long_line("gex", 3), MC_LONG_NO);
	ck_assert_int_eq(mc_long_line("x", 1), MC_LONG_NO);
	/* a head that may still grow into "get " or "gets " is undecided */
	ck_assert_int_eq(mc_long_line("", 0), MC_LONG_MAYBE);
	ck_assert_int_eq(mc_long_line("ge", 2), MC_LONG_MAYBE);
	ck_assert_int_eq(mc_long_line("get", 3), MC_LONG_MAYBE);
	ck_assert_int_eq(mc_long_line("gets", 4), MC_LONG_MAYBE);
	memset(buf, ' ', sizeof(buf));
	ck_assert_int_eq(mc_long_line(buf, 100), MC_LONG_MAYBE);
	ck_assert_int_eq(mc_long_line(buf, 101), MC_LONG_NO);
	memcpy(buf + 100, "get k", 5);
	ck_assert_int_eq(mc_long_line(buf, 103), MC_LONG_MAYBE);
	ck_assert_int_eq(mc_long_line(buf, 105), MC_LONG_YES);
	memcpy(buf + 101, "get k", 5);
	buf[100] = ' ';
	ck_assert_int_eq(mc_long_line(buf, 106), MC_LONG_NO);
}
END_TEST

START_TEST(plan_of_a_line_is_pure)
{
	struct cfg_limits lim = limits_default();
	struct mc_plan plan;
	const char line[] = "set k 0 0 5 noreply\r";

	mc_plan_line(line, sizeof(line) - 1, &lim, &plan);
	ck_assert_int_eq(plan.action, MC_ACT_FORWARD);
	ck_assert_str_eq(plan.name, "set");
	ck_assert(plan.noreply);
	ck_assert(plan.has_data);
	ck_assert_uint_eq(plan.data_len, 7);
	ck_assert_uint_eq(plan.strip_from, 11);
	ck_assert_uint_eq(plan.strip_to, 19);
	ck_assert_uint_eq(plan.pflags, MC_PF_NOREPLY | MC_SHAPE_LINE);

	mc_plan_line("bogus", 5, &lim, &plan);
	ck_assert_int_eq(plan.action, MC_ACT_REPLY);
	ck_assert_str_eq(plan.reply, "ERROR\r\n");
}
END_TEST

START_TEST(reply_lines_are_classified)
{
	struct mc_reply_line rl;

	mc_reply_classify("VALUE k 0 5", 11, &rl);
	ck_assert_int_eq(rl.code, MC_R_VALUE);
	ck_assert(rl.has_len && rl.len == 5);
	mc_reply_classify("VALUE k 0 5 99", 14, &rl);
	ck_assert(rl.has_len && rl.len == 5);
	mc_reply_classify("VALUE k 0", 9, &rl);
	ck_assert(rl.code == MC_R_VALUE && !rl.has_len);
	mc_reply_classify("VALUE k 0 5x", 12, &rl);
	ck_assert(!rl.has_len);
	mc_reply_classify("VALUE k 0 2147483647", 20, &rl);
	ck_assert(rl.has_len && rl.len == INT32_MAX);
	mc_reply_classify("VALUE k 0 2147483648", 20, &rl);
	ck_assert(!rl.has_len);
	mc_reply_classify("VA 12 f0 c3", 11, &rl);
	ck_assert(rl.code == MC_R_VA && rl.has_len && rl.len == 12);
	mc_reply_classify("END", 3, &rl);
	ck_assert_int_eq(rl.code, MC_R_END);
	mc_reply_classify("ENDX", 4, &rl);
	ck_assert_int_eq(rl.code, MC_R_OTHER);
	mc_reply_classify("EN", 2, &rl);
	ck_assert_int_eq(rl.code, MC_R_EN);
	mc_reply_classify("HD c5", 5, &rl);
	ck_assert_int_eq(rl.code, MC_R_HD);
	mc_reply_classify("STAT pid 1", 10, &rl);
	ck_assert_int_eq(rl.code, MC_R_STAT);
	mc_reply_classify("ITEM k [1 b; 0 s]", 17, &rl);
	ck_assert_int_eq(rl.code, MC_R_STAT);
	mc_reply_classify("SERVER_ERROR out of memory", 26, &rl);
	ck_assert_int_eq(rl.code, MC_R_ERROR);
	mc_reply_classify("CLIENT_ERROR bad", 16, &rl);
	ck_assert_int_eq(rl.code, MC_R_ERROR);
	mc_reply_classify("ERROR", 5, &rl);
	ck_assert_int_eq(rl.code, MC_R_ERROR);
	mc_reply_classify("STORED", 6, &rl);
	ck_assert_int_eq(rl.code, MC_R_OTHER);
	mc_reply_classify("", 0, &rl);
	ck_assert_int_eq(rl.code, MC_R_OTHER);
}
END_TEST

/* ===================================================================== */
/* retrieval */

START_TEST(get_single_and_multi_key_forwarded_as_is)
{
	CHECK_REQ("get k\r\n", "F1:get:get k\r\n|");
	CHECK_REQ("get a b c\r\n", "F1:get:get a b c\r\n|");
	CHECK_REQ("gets a b\r\n", "F1:gets:gets a b\r\n|");
	CHECK_REQ("bget k\r\n", "F1:bget:bget k\r\n|");
	CHECK_REQ("  get   a  b \r\n", "F1:get:  get   a  b \r\n|");
}
END_TEST

START_TEST(bare_newline_ends_a_line)
{
	CHECK_REQ("get k\n", "F1:get:get k\n|");
	CHECK_REQ("set k 0 0 1\nx\r\n", "F0:set:set k 0 0 1\nx\r\n|");
}
END_TEST

START_TEST(get_without_key_is_error)
{
	CHECK_REQ("get\r\n", "L:ERROR\r\n|");
	CHECK_REQ("get \r\n", "L:ERROR\r\n|");
	CHECK_REQ("gets\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(get_with_many_keys_beyond_tokenizer_window)
{
	char line[4096], want[4200];
	size_t n, i;

	n = (size_t)snprintf(line, sizeof(line), "get");
	for (i = 0; i < 100; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " k%zu", i);
	n += (size_t)snprintf(line + n, sizeof(line) - n, "\r\n");
	snprintf(want, sizeof(want), "F1:get:%s|", line);
	check_req(line, n, want, strlen(want));
}
END_TEST

START_TEST(gat_and_gats_forwarded)
{
	CHECK_REQ("gat 100 a b\r\n", "F1:gat:gat 100 a b\r\n|");
	CHECK_REQ("gats -1 a\r\n", "F1:gats:gats -1 a\r\n|");
	/* memcached answers "END" to an exptime without keys */
	CHECK_REQ("gat 0\r\n", "F1:gat:gat 0\r\n|");
	CHECK_REQ("gat\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(gat_bad_exptime_answered)
{
	CHECK_REQ("gat abc k\r\n", "L:CLIENT_ERROR invalid exptime argument\r\n|");
	CHECK_REQ("gats 5x k\r\n", "L:CLIENT_ERROR invalid exptime argument\r\n|");
}
END_TEST

START_TEST(key_of_250_bytes_accepted_251_refused)
{
	char req[600], want[700];
	char k250[251], k251[252];

	memset(k250, 'a', 250);
	k250[250] = '\0';
	memset(k251, 'a', 251);
	k251[251] = '\0';
	snprintf(req, sizeof(req), "get %s\r\n", k250);
	snprintf(want, sizeof(want), "F1:get:%s|", req);
	check_req(req, strlen(req), want, strlen(want));

	snprintf(req, sizeof(req), "get k %s k\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");

	snprintf(req, sizeof(req), "set %s 0 0 1\r\nx\r\n", k251);
	/* no data swallowed: "x" is read as a command */
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	snprintf(req, sizeof(req), "set %s 0 0 1 noreply\r\nx\r\n", k251);
	check_req_str(req, strlen(req), "L:|L:ERROR\r\n|");

	snprintf(req, sizeof(req), "incr %s 1\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "touch %s 1\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "delete %s\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "delete %s noreply\r\n", k251);
	check_req_str(req, strlen(req), "L:|");
	snprintf(req, sizeof(req), "gat 0 %s\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "mg %s v\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "md %s\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "ma %s\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "me %s\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|");
	snprintf(req, sizeof(req), "ms %s 1\r\nx\r\n", k251);
	check_req_str(req, strlen(req),
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
}
END_TEST

START_TEST(keys_with_control_bytes_are_keys)
{
	/* memcached splits on ' ' only: tabs and control bytes are key bytes */
	CHECK_REQ("get a\tb\r\n", "F1:get:get a\tb\r\n|");
	CHECK_REQ("set a\x01" "b 0 0 1\r\nx\r\n",
	    "F0:set:set a\x01" "b 0 0 1\r\nx\r\n|");
	CHECK_REQ("get\tb\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(get_with_too_many_keys_refused)
{
	struct cfg_limits lim = limits_default();

	lim.max_args = 3;
	CHECK_REQ_LIM("get a b c\r\n", "F1:get:get a b c\r\n|", &lim);
	CHECK_REQ_LIM("get a b c d\r\nget a\r\n",
	    "L:CLIENT_ERROR sidepool: too many keys (max 3)\r\n|"
	    "F1:get:get a\r\n|", &lim);
	CHECK_REQ_LIM("gat 0 a b c\r\n", "F1:gat:gat 0 a b c\r\n|", &lim);
}
END_TEST

/* ===================================================================== */
/* storage */

START_TEST(storage_commands_forwarded_with_their_data)
{
	CHECK_REQ("set k 0 0 5\r\nhello\r\n", "F0:set:set k 0 0 5\r\nhello\r\n|");
	CHECK_REQ("add k 1 2 5\r\nhello\r\n", "F0:add:add k 1 2 5\r\nhello\r\n|");
	CHECK_REQ("replace k 0 0 0\r\n\r\n", "F0:replace:replace k 0 0 0\r\n\r\n|");
	CHECK_REQ("append k 0 0 2\r\nab\r\n", "F0:append:append k 0 0 2\r\nab\r\n|");
	CHECK_REQ("prepend k 0 0 2\r\nab\r\n",
	    "F0:prepend:prepend k 0 0 2\r\nab\r\n|");
	CHECK_REQ("cas k 0 0 1 99\r\nx\r\n", "F0:cas:cas k 0 0 1 99\r\nx\r\n|");
	/* an extra sixth token is ignored by memcached: pass it on */
	CHECK_REQ("set k 0 0 1 foo\r\nx\r\n", "F0:set:set k 0 0 1 foo\r\nx\r\n|");
}
END_TEST

START_TEST(data_is_binary_safe_by_length)
{
	CHECK_REQ("set k 0 0 12\r\nEND\r\nget x\r\n\r\n",
	    "F0:set:set k 0 0 12\r\nEND\r\nget x\r\n\r\n|");
	CHECK_REQ("set k 0 0 3\r\n\0\n\r\r\n", "F0:set:set k 0 0 3\r\n\0\n\r\r\n|");
}
END_TEST

START_TEST(storage_noreply_stripped_and_reply_dropped)
{
	CHECK_REQ("set k 0 0 5 noreply\r\nhello\r\n",
	    "F10:set:set k 0 0 5\r\nhello\r\n|");
	CHECK_REQ("cas k 0 0 1 7 noreply\r\nx\r\n", "F10:cas:cas k 0 0 1 7\r\nx\r\n|");
	CHECK_REQ("add k 0 0 1   noreply  \r\nx\r\n",
	    "F10:add:add k 0 0 1  \r\nx\r\n|");
	CHECK_REQ("set k 0 0 1 noreply\nx\r\n", "F10:set:set k 0 0 1\nx\r\n|");
}
END_TEST

/* A key may end in '\r' when the line ends in a bare '\n': stripping
 * noreply must not turn that '\r' into the line's end (fuzzer K7). */
START_TEST(noreply_strip_keeps_key_ending_in_cr)
{
	CHECK_REQ("delete a\r noreply\n", "F10:delete:delete a\r \n|");
}
END_TEST

START_TEST(storage_wrong_token_count_is_error)
{
	/* ERROR comes before noreply is looked at: never suppressed */
	CHECK_REQ("set k 0 0\r\nhello\r\n", "L:ERROR\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 5 noreply x\r\nhello\r\n", "L:ERROR\r\n|L:ERROR\r\n|");
	CHECK_REQ("cas k 0 0 1\r\na\r\n", "L:ERROR\r\n|L:ERROR\r\n|");
	CHECK_REQ("cas k 0 0 1 99 x y\r\na\r\n", "L:ERROR\r\n|L:ERROR\r\n|");
}
END_TEST

START_TEST(storage_bad_numbers_answered_and_data_read_as_command)
{
	CHECK_REQ("set k 0 0 abc\r\nhello\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 -1\r\nhello\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k -1 0 1\r\na\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k 0 abc 5\r\nhello\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 5x\r\nhello\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k 18446744073709551616 0 1\r\nx\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 2147483646\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|");
	CHECK_REQ("cas k 0 0 1 abc\r\na\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("cas k 0 0 1 -1\r\na\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
}
END_TEST

START_TEST(storage_numbers_memcached_accepts_are_forwarded)
{
	CHECK_REQ("set k 0 0 +5\r\nhello\r\n", "F0:set:set k 0 0 +5\r\nhello\r\n|");
	CHECK_REQ("set k 0 0 5\t\r\nhello\r\n", "F0:set:set k 0 0 5\t\r\nhello\r\n|");
	CHECK_REQ("set k -0 -0 05\r\nhello\r\n",
	    "F0:set:set k -0 -0 05\r\nhello\r\n|");
	/* 4294967301 is 5 once memcached stores it in an int */
	CHECK_REQ("set k 0 0 4294967301\r\nhello\r\n",
	    "F0:set:set k 0 0 4294967301\r\nhello\r\n|");
	CHECK_REQ("set k 4294967296 0 1\r\na\r\n",
	    "F0:set:set k 4294967296 0 1\r\na\r\n|");
}
END_TEST

START_TEST(noreply_suppresses_local_errors_like_memcached)
{
	CHECK_REQ("set k 0 0 abc noreply\r\nhello\r\n", "L:|L:ERROR\r\n|");
	/* "noreply" as the length token still asks for no reply */
	CHECK_REQ("set k 0 0 noreply\r\nhello\r\n", "L:|L:ERROR\r\n|");
	CHECK_REQ("incr k abc noreply\r\n", "L:|");
	CHECK_REQ("touch k abc noreply\r\n", "L:|");
	CHECK_REQ("flush_all abc noreply\r\n", "L:|");
	CHECK_REQ("verbosity noreply\r\n", "L:|");
	CHECK_REQ("delete k 1 noreply\r\n", "L:|");
}
END_TEST

START_TEST(bad_data_chunk_forwarded_for_the_server_to_answer)
{
	/*
	 * memcached reads exactly <bytes>+2 and answers one line, "bad data
	 * chunk" or an error it finds first (a bad meta flag, its own item
	 * size limit); then the rest is a command.
	 */
	CHECK_REQ("set k 0 0 3\r\nabcde\r\n",
	    "F0:set:set k 0 0 3\r\nabcde|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 3\r\nabcdefgh\r\nget k\r\n",
	    "F0:set:set k 0 0 3\r\nabcde|L:ERROR\r\n|F1:get:get k\r\n|");
	CHECK_REQ("set k 0 0 1\r\nx\r\r\n", "F0:set:set k 0 0 1\r\nx\r\r|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 3\r\nabc\nget k\r\n",
	    "F0:set:set k 0 0 3\r\nabc\ng|L:ERROR\r\n|");
	CHECK_REQ("set k 0 0 3 noreply\r\nabcde\r\nget k\r\n",
	    "F10:set:set k 0 0 3\r\nabcde|L:ERROR\r\n|F1:get:get k\r\n|");
	CHECK_REQ("ms k 3 q z\r\nabcde\r\n",
	    "F40:ms:ms k 3 z\r\nabcde|L:ERROR\r\n|");
}
END_TEST

START_TEST(data_block_waits_for_all_its_bytes)
{
	CHECK_REQ("set k 0 0 1\r\nx\n", "N15");
	CHECK_REQ("set k 0 0 10\r\n0123", "N18");
}
END_TEST

START_TEST(too_large_value_answered_and_swallowed)
{
	struct cfg_limits lim = limits_default();

	lim.max_value_size = 10;
	/* set and ms: the old item is deleted, as memcached deletes it, and
	 * the delete's reply stands for "object too large" (MC_PF_EVICTED) */
	CHECK_REQ_LIM("set k 0 0 11\r\n01234567890\r\nget k\r\n",
	    "F100:set:delete k\r\n|S13|F1:get:get k\r\n|", &lim);
	/* swallowed unread: even a bad chunk end does not matter */
	CHECK_REQ_LIM("set k 0 0 11\r\n0123456789xyz\r\n",
	    "F100:set:delete k\r\n|S13|L:ERROR\r\n|", &lim);
	CHECK_REQ_LIM("set k 0 0 11 noreply\r\n01234567890\r\nmn\r\n",
	    "F110:set:delete k\r\n|S13|F0:mn:mn\r\n|", &lim);
	CHECK_REQ_LIM("set k 0 0 10\r\n0123456789\r\n",
	    "F0:set:set k 0 0 10\r\n0123456789\r\n|", &lim);
	CHECK_REQ_LIM("ms k 11 q T0\r\n01234567890\r\nmn\r\n",
	    "F100:ms:md k\r\n|S13|F0:mn:mn\r\n|", &lim);
	CHECK_REQ_LIM("ms a2V5 11 b\r\n01234567890\r\n",
	    "F100:ms:md a2V5 b\r\n|S13|", &lim);
	/* the others leave the old item alone, as memcached does */
	CHECK_REQ_LIM("add k 0 0 11\r\n01234567890\r\n",
	    "L:SERVER_ERROR object too large for cache\r\n|S13|", &lim);
	/* the whole request must fit too */
	lim = limits_default();
	lim.max_request_size = 30;
	CHECK_REQ_LIM("set k 0 0 15\r\n012345678901234\r\n",
	    "F100:set:delete k\r\n|S17|", &lim);
	CHECK_REQ_LIM("set k 0 0 14\r\n01234567890123\r\n",
	    "F0:set:set k 0 0 14\r\n01234567890123\r\n|", &lim);
}
END_TEST

START_TEST(too_large_default_swallows_without_buffering)
{
	struct cfg_limits lim = limits_default();
	struct evbuffer *log;
	size_t n, len = 3 * 1024 * 1024;
	char *req = malloc(len + 64);
	const char want[] =
	    "F100:set:delete k\r\n|S3145730|"
	    "F1:get:get k\r\n|";

	n = (size_t)sprintf(req, "set k 0 0 %zu\r\n", len);
	memset(req + n, 'x', len);
	n += len;
	n += (size_t)sprintf(req + n, "\r\nget k\r\n");
	/* 16 KB at a time: each piece is dropped as it comes */
	log = req_run_pieces(req, n, 16384, 0, &lim);
	ck_assert(log_equals(log, want, sizeof(want) - 1));
	evbuffer_free(log);
	free(req);
}
END_TEST

/* ===================================================================== */
/* other classic commands */

START_TEST(incr_decr_forwarded_and_noreply_stripped)
{
	CHECK_REQ("incr k 1\r\n", "F0:incr:incr k 1\r\n|");
	CHECK_REQ("decr k 18446744073709551615\r\n",
	    "F0:decr:decr k 18446744073709551615\r\n|");
	CHECK_REQ("incr k 1 noreply\r\n", "F10:incr:incr k 1\r\n|");
	CHECK_REQ("incr k 1 foo\r\n", "F0:incr:incr k 1 foo\r\n|");
	CHECK_REQ("incr k\r\n", "L:ERROR\r\n|");
	CHECK_REQ("incr k 1 2 3\r\n", "L:ERROR\r\n|");
	CHECK_REQ("incr k abc\r\n",
	    "L:CLIENT_ERROR invalid numeric delta argument\r\n|");
	CHECK_REQ("incr k -1\r\n",
	    "L:CLIENT_ERROR invalid numeric delta argument\r\n|");
	CHECK_REQ("decr k 18446744073709551616\r\n",
	    "L:CLIENT_ERROR invalid numeric delta argument\r\n|");
}
END_TEST

START_TEST(delete_forms)
{
	CHECK_REQ("delete k\r\n", "F0:delete:delete k\r\n|");
	CHECK_REQ("delete k 0\r\n", "F0:delete:delete k 0\r\n|");
	CHECK_REQ("delete k noreply\r\n", "F10:delete:delete k\r\n|");
	CHECK_REQ("delete k 0 noreply\r\n", "F10:delete:delete k 0\r\n|");
	/* a key named noreply is a key */
	CHECK_REQ("delete noreply\r\n", "F0:delete:delete noreply\r\n|");
	CHECK_REQ("delete\r\n", "L:ERROR\r\n|");
	CHECK_REQ("delete k 0 noreply x\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(delete_with_hold_time_answered_with_usage)
{
	CHECK_REQ("delete k 1\r\n", "L:CLIENT_ERROR bad command line format.  "
	    "Usage: delete <key> [noreply]\r\n|");
	CHECK_REQ("delete k noreply 0\r\n", "L:CLIENT_ERROR bad command line "
	    "format.  Usage: delete <key> [noreply]\r\n|");
	CHECK_REQ("delete k 0 0\r\n", "L:CLIENT_ERROR bad command line format.  "
	    "Usage: delete <key> [noreply]\r\n|");
}
END_TEST

START_TEST(touch_forms)
{
	CHECK_REQ("touch k 10\r\n", "F0:touch:touch k 10\r\n|");
	CHECK_REQ("touch k 10 noreply\r\n", "F10:touch:touch k 10\r\n|");
	CHECK_REQ("touch k 10 foo\r\n", "F0:touch:touch k 10 foo\r\n|");
	CHECK_REQ("touch k\r\n", "L:ERROR\r\n|");
	CHECK_REQ("touch k abc\r\n", "L:CLIENT_ERROR invalid exptime argument\r\n|");
}
END_TEST

START_TEST(verbosity_forwarded)
{
	CHECK_REQ("verbosity 1\r\n", "F0:verbosity:verbosity 1\r\n|");
	CHECK_REQ("verbosity 0 foo\r\n", "F0:verbosity:verbosity 0 foo\r\n|");
	CHECK_REQ("verbosity 1 noreply\r\n", "F10:verbosity:verbosity 1\r\n|");
	CHECK_REQ("verbosity\r\n", "L:ERROR\r\n|");
	CHECK_REQ("verbosity 1 2 3\r\n", "L:ERROR\r\n|");
	CHECK_REQ("verbosity abc\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|");
}
END_TEST

START_TEST(flush_all_forwarded)
{
	CHECK_REQ("flush_all\r\n", "F0:flush_all:flush_all\r\n|");
	CHECK_REQ("flush_all 0\r\n", "F0:flush_all:flush_all 0\r\n|");
	CHECK_REQ("flush_all noreply\r\n", "F10:flush_all:flush_all\r\n|");
	CHECK_REQ("flush_all 10 noreply\r\n", "F10:flush_all:flush_all 10\r\n|");
	CHECK_REQ("flush_all 0 foo\r\n", "F0:flush_all:flush_all 0 foo\r\n|");
	CHECK_REQ("flush_all abc\r\n",
	    "L:CLIENT_ERROR invalid exptime argument\r\n|");
	CHECK_REQ("flush_all foo 0\r\n",
	    "L:CLIENT_ERROR invalid exptime argument\r\n|");
	CHECK_REQ("flush_all 1 2 3\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(version_stats_and_mn_forwarded)
{
	CHECK_REQ("version\r\n", "F0:version:version\r\n|");
	CHECK_REQ("version x\r\n", "F0:version:version x\r\n|");
	CHECK_REQ("stats\r\n", "F3:stats:stats\r\n|");
	CHECK_REQ("stats slabs\r\n", "F3:stats:stats slabs\r\n|");
	CHECK_REQ("stats reset\r\n", "F3:stats:stats reset\r\n|");
	CHECK_REQ("mn\r\n", "F0:mn:mn\r\n|");
	CHECK_REQ("mn a b\r\n", "F0:mn:mn a b\r\n|");
}
END_TEST

START_TEST(quit_closes_without_reply)
{
	CHECK_REQ("quit\r\n", "Q:|");
	CHECK_REQ("quit x y\r\nget k\r\n", "Q:|");
	CHECK_REQ("get k\r\nquit\r\nget j\r\n", "F1:get:get k\r\n|Q:|");
}
END_TEST

START_TEST(admin_commands_refused_in_memcached_words)
{
	static const char *const names[] = {
		"shutdown", "cache_memlimit", "slabs", "lru_crawler", "lru",
		"watch", "extstore", "refresh_certs", "misbehave", "debugtime",
	};
	char req[64], want[160];
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(req, sizeof(req), "%s x\r\nget k\r\n", names[i]);
		snprintf(want, sizeof(want), "L:CLIENT_ERROR sidepool: '%s' is "
		    "not supported through the proxy\r\n|F1:get:get k\r\n|",
		    names[i]);
		check_req(req, strlen(req), want, strlen(want));
	}
	CHECK_REQ("shutdown\r\n", "L:CLIENT_ERROR sidepool: 'shutdown' is not "
	    "supported through the proxy\r\n|");
	/* a client that said noreply is not sent an answer it will not read */
	CHECK_REQ("cache_memlimit 100 noreply\r\n", "L:|");
	CHECK_REQ("watch noreply\r\n", "L:|");
	CHECK_REQ("shutdown noreply\r\n", "L:CLIENT_ERROR sidepool: 'shutdown' "
	    "is not supported through the proxy\r\n|");
}
END_TEST

START_TEST(unknown_and_empty_lines_are_error)
{
	CHECK_REQ("bogus\r\n", "L:ERROR\r\n|");
	CHECK_REQ("GET k\r\n", "L:ERROR\r\n|");
	CHECK_REQ("x\r\n", "L:ERROR\r\n|");
	/* memcached answers ERROR to an empty line; it does not skip it */
	CHECK_REQ("\r\n", "L:ERROR\r\n|");
	CHECK_REQ("\n", "L:ERROR\r\n|");
	CHECK_REQ(" \r\n", "L:ERROR\r\n|");
	CHECK_REQ("mx k\r\n", "L:ERROR\r\n|");
	CHECK_REQ("\0get k\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(nul_byte_ends_the_command_line)
{
	/* memcached sees "set k 0 0 1": no noreply, so nothing is stripped */
	CHECK_REQ("set k 0 0 1\0 noreply\r\nx\r\n",
	    "F0:set:set k 0 0 1\0 noreply\r\nx\r\n|");
	CHECK_REQ("set k 0 0 1 noreply\0junk\r\nx\r\n",
	    "F10:set:set k 0 0 1\0junk\r\nx\r\n|");
	CHECK_REQ("get a\0b\r\n", "F1:get:get a\0b\r\n|");
}
END_TEST

START_TEST(binary_protocol_refused_and_closed)
{
	CHECK_REQ("\x80\x0b\x00\x00\x00\x00\x00\x00",
	    "X:CLIENT_ERROR sidepool: binary protocol not supported, use the "
	    "text protocol\r\n|");
	CHECK_REQ("get k\r\n\x80\x00",
	    "F1:get:get k\r\n|X:CLIENT_ERROR sidepool: binary protocol not "
	    "supported, use the text protocol\r\n|");
}
END_TEST

START_TEST(line_over_2048_bytes_closes_unless_multiget)
{
	char *req, want[8200];
	size_t n;

	req = malloc(8192);
	/* 2048 bytes before the "\n" is still a line */
	memset(req, 'x', 2048);
	req[2048] = '\n';
	check_req_str(req, 2049, "L:ERROR\r\n|");
	/* one more, with or without its end in sight: closed */
	memset(req, 'x', 2049);
	check_req_str(req, 2049,
	    "X:CLIENT_ERROR sidepool: command line too long\r\n|");
	req[2049] = '\n';
	check_req_str(req, 2050,
	    "X:CLIENT_ERROR sidepool: command line too long\r\n|");
	memcpy(req, "gat 0 ", 6);
	check_req_str(req, 2050,
	    "X:CLIENT_ERROR sidepool: command line too long\r\n|");
	/* a get line may be longer */
	memcpy(req, "get ", 4);
	memset(req + 4, 'k', 4000);
	for (n = 4 + 200; n < 4004; n += 200)
		req[n] = ' ';
	req[4004] = '\r';
	req[4005] = '\n';
	snprintf(want, sizeof(want), "F1:get:%.*s|", 4006, req);
	check_req(req, 4006, want, strlen(want));
	/* "gets" too: a space, then the same 4000 key bytes */
	memmove(req + 5, req + 4, 4002);
	memcpy(req, "gets ", 5);
	snprintf(want, sizeof(want), "F1:gets:%.*s|", 4007, req);
	check_req(req, 4007, want, strlen(want));
	free(req);
}
END_TEST

START_TEST(get_line_over_max_request_size_closes)
{
	struct cfg_limits lim = limits_default();

	lim.max_request_size = 20;
	lim.max_line_length = 10;
	CHECK_REQ_LIM("get a b c d e f g\r\n", "F1:get:get a b c d e f g\r\n|", &lim);
	CHECK_REQ_LIM("get a b c d e f g h\r\n", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("get a b c d e f g h i", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("set k 0 0 1 noreply\r\nx\r\n",
	    "X:CLIENT_ERROR sidepool: command line too long\r\n|", &lim);
}
END_TEST

/* Fuzz finding K4: which limit closed a line depended on the reads. */
START_TEST(line_and_request_limits_close_the_same_however_the_bytes_arrive)
{
	struct cfg_limits lim = limits_default();

	/* max_request_size below max_line_length: the request limit is
	 * reached first, whole or trickled */
	lim.max_line_length = 10;
	lim.max_request_size = 8;
	CHECK_REQ_LIM("xxxxxxxxxxx", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("xxxxxxxxxxx\r\n", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("xxxxxxxx\n", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("xxxxxxx\n", "L:ERROR\r\n|", &lim);
	CHECK_REQ_LIM("get a b c d e", X_REQUEST_SIZE, &lim);
	/* the other way round: the line limit first */
	lim.max_line_length = 4;
	CHECK_REQ_LIM("xxxxxxxxxxx", X_LINE, &lim);
	CHECK_REQ_LIM("xxxxxxxxxxx\r\n", X_LINE, &lim);
	CHECK_REQ_LIM("get a b c d e", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("get ab\r\n", "F1:get:get ab\r\n|", &lim);
	/* both at the same byte: the line limit, always */
	lim.max_line_length = 8;
	CHECK_REQ_LIM("xxxxxxxxx", X_LINE, &lim);
	CHECK_REQ_LIM("xxxxxxxxx\n", X_LINE, &lim);
}
END_TEST

/* Fuzz finding K5: the long-get rule looked at a head that could still
 * become "<spaces>get ". */
START_TEST(long_get_is_recognised_however_the_bytes_arrive)
{
	struct cfg_limits lim = limits_default();
	char req[128], want[160];
	size_t n;

	lim.max_line_length = 50;
	memset(req, ' ', 60);
	n = 60 + (size_t)snprintf(req + 60, sizeof(req) - 60,
	    "get k1 k2 k3 k4 k5 k6 k7 k8 k9\r\n");
	snprintf(want, sizeof(want), "F1:get:%.*s|", (int)n, req);
	check_req_lim(req, n, want, strlen(want), &lim);
	/* 101 spaces are too many, with or without the end of the line */
	memset(req, ' ', 101);
	check_req_lim(req, 101, X_LINE, strlen(X_LINE), &lim);
	memcpy(req + 101, "get k\r\n", 7);
	check_req_lim(req, 108, X_LINE, strlen(X_LINE), &lim);
	/* the smallest form: a 2-byte limit, "get" still undecided */
	lim.max_line_length = 2;
	CHECK_REQ_LIM("get VAL", "N7", &lim);
	CHECK_REQ_LIM("get VAL\r\n", "F1:get:get VAL\r\n|", &lim);
	CHECK_REQ_LIM("gets VAL\r\n", "F1:gets:gets VAL\r\n|", &lim);
	CHECK_REQ_LIM("  ge", "N4", &lim);
	/* a line that ended before "get " was complete is too long */
	CHECK_REQ_LIM("get\r\n", X_LINE, &lim);
	CHECK_REQ_LIM("gets\n", X_LINE, &lim);
	CHECK_REQ_LIM("   \n", X_LINE, &lim);
	CHECK_REQ_LIM("gex", X_LINE, &lim);
}
END_TEST

/* Fuzz finding K1, memcache side: a line over max_request_size gets
 * client.c's words and is closed, whole or trickled. */
START_TEST(request_over_max_request_size_closes_with_client_c_words)
{
	struct cfg_limits lim = limits_default();
	struct evbuffer *out = evbuffer_new();
	const char *want = X_REQUEST_SIZE;
	size_t n;

	/* the bytes client.c sends for an incomplete one */
	P->error_reply(out, 0, "request larger than max_request_size");
	n = evbuffer_get_length(out);
	ck_assert_uint_eq(n, strlen(want) - 3);
	ck_assert(memcmp(evbuffer_pullup(out, -1), want + 2, n) == 0);
	evbuffer_free(out);
	/* a request exactly max_request_size long, "\n" included, passes */
	lim.max_request_size = 16;
	CHECK_REQ_LIM("get a b c d ef\r\n", "F1:get:get a b c d ef\r\n|",
	    &lim);
	CHECK_REQ_LIM("get a b c d efg\r\n", X_REQUEST_SIZE, &lim);
	CHECK_REQ_LIM("get a b c d e f g h\r\nget a\r\n", X_REQUEST_SIZE,
	    &lim);
	CHECK_REQ_LIM("get a\r\nget a b c d e f g h\r\n",
	    "F1:get:get a\r\n|" X_REQUEST_SIZE, &lim);
	/* a storage request over the limit is refused by its line, as
	 * memcached refuses a value too large, and its data swallowed (never
	 * buffered): the client stays, whole or trickled */
	CHECK_REQ_LIM("add k 0 0 5\r\nhello\r\nmn\r\n",
	    "L:SERVER_ERROR object too large for cache\r\n|S7|F0:mn:mn\r\n|",
	    &lim);
	CHECK_REQ_LIM("set k 0 0 5\r\nhello\r\nmn\r\n",
	    "F100:set:delete k\r\n|S7|F0:mn:mn\r\n|", &lim);
}
END_TEST

/* ===================================================================== */
/* meta commands */

START_TEST(meta_get_flags_pass_through)
{
	CHECK_REQ("mg k v k O123 f t s c\r\n", "F2:mg:mg k v k O123 f t s c\r\n|");
	CHECK_REQ("mg k\r\n", "F2:mg:mg k\r\n|");
	/* the server checks the flags and answers one error line */
	CHECK_REQ("mg k z\r\n", "F2:mg:mg k z\r\n|");
	CHECK_REQ("mg\r\n", "L:ERROR\r\n|");
}
END_TEST

START_TEST(meta_quiet_flag_stripped_with_drop_rules)
{
	/* mg q hides EN, ms q HD, md q HD, ma q HD and VA */
	CHECK_REQ("mg k v q\r\n", "F22:mg:mg k v\r\n|");
	CHECK_REQ("mg k q v O1 k\r\n", "F22:mg:mg k v O1 k\r\n|");
	CHECK_REQ("ms k 3 q\r\nabc\r\n", "F40:ms:ms k 3\r\nabc\r\n|");
	CHECK_REQ("ms k 3 T0 q F5\r\nabc\r\n", "F40:ms:ms k 3 T0 F5\r\nabc\r\n|");
	CHECK_REQ("md k q\r\n", "F40:md:md k\r\n|");
	CHECK_REQ("ma k q v D2\r\n", "Fc2:ma:ma k v D2\r\n|");
	/* a key named q is a key */
	CHECK_REQ("mg q v\r\n", "F2:mg:mg q v\r\n|");
}
END_TEST

START_TEST(meta_duplicate_quiet_left_for_the_server)
{
	/* memcached refuses "q q" with an error that is never hidden */
	CHECK_REQ("mg k q q\r\n", "F2:mg:mg k q q\r\n|");
	CHECK_REQ("md k q qx\r\n", "F0:md:md k q qx\r\n|");
}
END_TEST

START_TEST(meta_too_many_flags_answered)
{
	CHECK_REQ("mg k 1 2 3 4 5 6 7 8 9 a b c d e f g h\r\n",
	    "F2:mg:mg k 1 2 3 4 5 6 7 8 9 a b c d e f g h\r\n|");
	CHECK_REQ("mg k 1 2 3 4 5 6 7 8 9 a b c d e f g h i\r\n",
	    "L:CLIENT_ERROR options flags are too long\r\n|");
	CHECK_REQ("md k 1 2 3 4 5 6 7 8 9 a b c d e f g h i\r\n",
	    "L:CLIENT_ERROR options flags too long\r\n|");
	CHECK_REQ("ma k 1 2 3 4 5 6 7 8 9 a b c d e f g h i\r\n",
	    "L:CLIENT_ERROR options flags too long\r\n|");
	/* counted before q is stripped, as the server would count them */
	CHECK_REQ("mg k q 2 3 4 5 6 7 8 9 a b c d e f g h i\r\n",
	    "L:CLIENT_ERROR options flags are too long\r\n|");
	/* ms: too long before its data: the data is read as a command */
	CHECK_REQ("ms k 1 1 2 3 4 5 6 7 8 9 a b c d e f g h\r\nx\r\n",
	    "L:CLIENT_ERROR options flags too long\r\n|L:ERROR\r\n|");
	/* me has no flags to count */
	CHECK_REQ("me k 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n\r\n",
	    "F0:me:me k 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n\r\n|");
}
END_TEST

START_TEST(meta_set_forms)
{
	CHECK_REQ("ms k 5\r\nhello\r\n", "F0:ms:ms k 5\r\nhello\r\n|");
	CHECK_REQ("ms k 5 T10 F3 c k O9\r\nhello\r\n",
	    "F0:ms:ms k 5 T10 F3 c k O9\r\nhello\r\n|");
	CHECK_REQ("ms k 5 MZ\r\nhello\r\n", "F0:ms:ms k 5 MZ\r\nhello\r\n|");
	CHECK_REQ("ms\r\nabc\r\n", "L:ERROR\r\n|L:ERROR\r\n|");
	CHECK_REQ("ms k\r\nabc\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("ms k abc\r\nabc\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("ms k -1\r\nabc\r\n",
	    "L:CLIENT_ERROR bad command line format\r\n|L:ERROR\r\n|");
	CHECK_REQ("ms k 3\r\nabcde\r\n", "F0:ms:ms k 3\r\nabcde|L:ERROR\r\n|");
}
END_TEST

START_TEST(meta_delete_arith_debug_forms)
{
	CHECK_REQ("md k C5 I T30\r\n", "F0:md:md k C5 I T30\r\n|");
	CHECK_REQ("md\r\n", "L:ERROR\r\n|");
	CHECK_REQ("ma k v D5 MD N0 J7\r\n", "F2:ma:ma k v D5 MD N0 J7\r\n|");
	CHECK_REQ("ma\r\n", "L:ERROR\r\n|");
	CHECK_REQ("me k\r\n", "F0:me:me k\r\n|");
	CHECK_REQ("me\r\n", "L:CLIENT_ERROR bad command line format\r\n|");
}
END_TEST

/* ===================================================================== */
/* pipelines and big requests */

START_TEST(pipelined_requests_each_get_a_verdict)
{
	CHECK_REQ("set a 0 0 1 noreply\r\n1\r\nget a b\r\nbogus\r\n"
	    "mg a v q\r\nincr a 1\r\nms b 2 q\r\nxy\r\ndelete a noreply\r\n"
	    "mn\r\nversion\r\n",
	    "F10:set:set a 0 0 1\r\n1\r\n|F1:get:get a b\r\n|L:ERROR\r\n|"
	    "F22:mg:mg a v\r\n|F0:incr:incr a 1\r\n|F40:ms:ms b 2\r\nxy\r\n|"
	    "F10:delete:delete a\r\n|F0:mn:mn\r\n|F0:version:version\r\n|");
}
END_TEST

START_TEST(incomplete_line_waits)
{
	CHECK_REQ("get k", "N5");
	CHECK_REQ("get k\r", "N6");
	CHECK_REQ("get k\r\nget", "F1:get:get k\r\n|N3");
}
END_TEST

START_TEST(one_megabyte_value_in_16k_chunks_is_counted_not_scanned)
{
	size_t vlen = 1024 * 1024 - 512, n, off;
	struct cfg_limits lim = limits_default();
	struct evbuffer *in = evbuffer_new(), *reply = evbuffer_new();
	void *state = calloc(1, P->req_state_size);
	struct reqinfo ri;
	enum proto_verdict v = PV_NEED_MORE;
	char *req = malloc(vlen + 64);
	unsigned char *fwd;

	n = (size_t)sprintf(req, "set big 0 0 %zu noreply\r\n", vlen);
	memset(req + n, '\n', vlen); /* newlines everywhere: must not matter */
	n += vlen;
	memcpy(req + n, "\r\n", 2);
	n += 2;
	P->req_init(state);
	for (off = 0; off < n; off += 16384) {
		evbuffer_add(in, req + off, n - off < 16384 ? n - off : 16384);
		memset(&ri, 0, sizeof(ri));
		ri.reply = reply;
		v = P->parse_request(state, in, &lim, &ri);
		if (off + 16384 < n)
			ck_assert_int_eq(v, PV_NEED_MORE);
	}
	ck_assert_int_eq(v, PV_FORWARD);
	ck_assert_uint_eq(ri.pflags, MC_PF_NOREPLY);
	ck_assert_uint_eq(ri.len, n - 8);
	ck_assert_uint_eq(evbuffer_get_length(in), n - 8);
	fwd = evbuffer_pullup(in, -1);
	ck_assert(memcmp(fwd, "set big 0 0 1048064\r\n\n\n", 23) == 0);
	ck_assert(memcmp(fwd + (n - 8) - 4, "\n\n\r\n", 4) == 0);
	/* only the line and the final CRLF were looked at */
	ck_assert_uint_lt(mc_req_examined(state), 100);
	free(req);
	free(state);
	evbuffer_free(in);
	evbuffer_free(reply);
}
END_TEST

START_TEST(long_get_line_is_searched_once)
{
	struct cfg_limits lim = limits_default();
	struct evbuffer *in = evbuffer_new(), *reply = evbuffer_new();
	void *state = calloc(1, P->req_state_size);
	struct reqinfo ri;
	enum proto_verdict v = PV_NEED_MORE;
	size_t n = 0, i;
	char *req = malloc(600000);

	n = (size_t)sprintf(req, "get");
	for (i = 0; n < 500000; i++)
		n += (size_t)sprintf(req + n, " key:%zu", i);
	n += (size_t)sprintf(req + n, "\r\n");
	P->req_init(state);
	for (i = 0; i < n; i += 1000) {
		evbuffer_add(in, req + i, n - i < 1000 ? n - i : 1000);
		memset(&ri, 0, sizeof(ri));
		ri.reply = reply;
		v = P->parse_request(state, in, &lim, &ri);
	}
	ck_assert_int_eq(v, PV_FORWARD);
	ck_assert_uint_eq(ri.len, n);
	/* searched once for the newline, copied once to check the keys */
	ck_assert_uint_le(mc_req_examined(state), 2 * n + 200);
	free(req);
	free(state);
	evbuffer_free(in);
	evbuffer_free(reply);
}
END_TEST

/* ===================================================================== */
/* replies */

static const uint32_t pf_line[] = { MC_SHAPE_LINE };
static const uint32_t pf_values[] = { MC_SHAPE_VALUES };
static const uint32_t pf_meta[] = { MC_SHAPE_META };
static const uint32_t pf_stats[] = { MC_SHAPE_STATS };

START_TEST(reply_single_lines)
{
	CHECK_REPLY("STORED\r\n", pf_line, "R:STORED\r\n|");
	CHECK_REPLY("NOT_FOUND\r\n", pf_line, "R:NOT_FOUND\r\n|");
	CHECK_REPLY("42\r\n", pf_line, "R:42\r\n|");
	CHECK_REPLY("0   \r\n", pf_line, "R:0   \r\n|");
	CHECK_REPLY("VERSION 1.6.18\r\n", pf_line, "R:VERSION 1.6.18\r\n|");
	CHECK_REPLY("SERVER_ERROR out of memory\r\n", pf_line,
	    "R:SERVER_ERROR out of memory\r\n|");
	CHECK_REPLY("ERROR\r\n", pf_line, "R:ERROR\r\n|");
	CHECK_REPLY("MN\r\n", pf_line, "R:MN\r\n|");
	CHECK_REPLY("STORED", pf_line, "N6");
	CHECK_REPLY("STORED\r", pf_line, "N7");
}
END_TEST

START_TEST(reply_values_then_end)
{
	CHECK_REPLY("END\r\n", pf_values, "R:END\r\n|");
	CHECK_REPLY("VALUE a 0 1\r\n1\r\nVALUE bb 5 2 77\r\n22\r\nVALUE c 0 0\r\n"
	    "\r\nEND\r\n", pf_values,
	    "R:VALUE a 0 1\r\n1\r\nVALUE bb 5 2 77\r\n22\r\nVALUE c 0 0\r\n"
	    "\r\nEND\r\n|");
	CHECK_REPLY("VALUE a 0 1\r\n1\r\n", pf_values, "N16");
}
END_TEST

START_TEST(reply_data_containing_end_and_crlf_framed_by_length)
{
	CHECK_REPLY("VALUE k 0 13\r\nEND\r\nVALUE \r\n\r\nEND\r\n", pf_values,
	    "R:VALUE k 0 13\r\nEND\r\nVALUE \r\n\r\nEND\r\n|");
	CHECK_REPLY("VALUE k 0 5\r\n\0\n\r\n\0\r\nEND\r\n", pf_values,
	    "R:VALUE k 0 5\r\n\0\n\r\n\0\r\nEND\r\n|");
	CHECK_REPLY("VA 4 f0\r\nEN\r\n\r\n", pf_meta, "R:VA 4 f0\r\nEN\r\n\r\n|");
}
END_TEST

START_TEST(reply_error_line_ends_a_get)
{
	CHECK_REPLY("CLIENT_ERROR bad command line format\r\n", pf_values,
	    "R:CLIENT_ERROR bad command line format\r\n|");
	CHECK_REPLY("SERVER_ERROR out of memory writing get response\r\n",
	    pf_values, "R:SERVER_ERROR out of memory writing get response\r\n|");
}
END_TEST

START_TEST(reply_meta_va_block_and_lines)
{
	CHECK_REPLY("VA 1 kk O123 f0 t-1 s1 c27\r\n5\r\n", pf_meta,
	    "R:VA 1 kk O123 f0 t-1 s1 c27\r\n5\r\n|");
	CHECK_REPLY("HD c5\r\n", pf_meta, "R:HD c5\r\n|");
	CHECK_REPLY("EN\r\n", pf_meta, "R:EN\r\n|");
	CHECK_REPLY("NF\r\n", pf_meta, "R:NF\r\n|");
	CHECK_REPLY("CLIENT_ERROR invalid flag\r\n", pf_meta,
	    "R:CLIENT_ERROR invalid flag\r\n|");
	CHECK_REPLY("ME k exp=-1 la=1 cas=2 fetch=no cls=1 size=63\r\n", pf_line,
	    "R:ME k exp=-1 la=1 cas=2 fetch=no cls=1 size=63\r\n|");
}
END_TEST

START_TEST(reply_quiet_drops_what_memcached_would_hide)
{
	uint32_t mg = pflags_of("mg k v q\r\n");
	uint32_t ms = pflags_of("ms k 1 q\r\nx\r\n");
	uint32_t md = pflags_of("md k q\r\n");
	uint32_t ma = pflags_of("ma k q v\r\n");
	const uint32_t pf[] = {
		mg, mg, mg, mg, ms, ms, ms, ms, md, md, md, ma, ma, ma, ma, ma,
	};

	/* as memcached 1.6.18 does: checked against the real server */
	CHECK_REPLY("EN\r\n" "VA 1\r\nx\r\n" "HD\r\n" "CLIENT_ERROR bad\r\n"
	    "HD\r\n" "NS\r\n" "EX\r\n" "NF\r\n"
	    "HD\r\n" "NF\r\n" "EX\r\n"
	    "HD\r\n" "VA 1\r\n8\r\n" "NF\r\n" "EX\r\n" "SERVER_ERROR x\r\n", pf,
	    "D:EN\r\n|R:VA 1\r\nx\r\n|R:HD\r\n|R:CLIENT_ERROR bad\r\n|"
	    "D:HD\r\n|R:NS\r\n|R:EX\r\n|R:NF\r\n|"
	    "D:HD\r\n|R:NF\r\n|R:EX\r\n|"
	    "D:HD\r\n|D:VA 1\r\n8\r\n|R:NF\r\n|R:EX\r\n|R:SERVER_ERROR x\r\n|");
}
END_TEST

START_TEST(reply_noreply_drops_everything)
{
	uint32_t set = pflags_of("set k 0 0 1 noreply\r\nx\r\n");
	uint32_t get = pflags_of("get k\r\n");
	const uint32_t pf[] = { set, set, get };

	ck_assert_uint_eq(set, MC_PF_NOREPLY);
	CHECK_REPLY("STORED\r\nCLIENT_ERROR bad data chunk\r\n"
	    "END\r\n", pf,
	    "D:STORED\r\n|D:CLIENT_ERROR bad data chunk\r\n|"
	    "R:END\r\n|");
}
END_TEST

START_TEST(reply_stats_lines_then_end)
{
	CHECK_REPLY("STAT pid 1\r\nSTAT uptime 5\r\nEND\r\n", pf_stats,
	    "R:STAT pid 1\r\nSTAT uptime 5\r\nEND\r\n|");
	CHECK_REPLY("ITEM k [1 b; 0 s]\r\nEND\r\n", pf_stats,
	    "R:ITEM k [1 b; 0 s]\r\nEND\r\n|");
	CHECK_REPLY("PREFIX a get 1 hit 0 set 0 del 0\r\nEND\r\n", pf_stats,
	    "R:PREFIX a get 1 hit 0 set 0 del 0\r\nEND\r\n|");
	CHECK_REPLY("END\r\n", pf_stats, "R:END\r\n|");
	CHECK_REPLY("RESET\r\n", pf_stats, "R:RESET\r\n|");
	CHECK_REPLY("ERROR\r\n", pf_stats, "R:ERROR\r\n|");
	CHECK_REPLY("CLIENT_ERROR usage: stats detail on|off|dump\r\n", pf_stats,
	    "R:CLIENT_ERROR usage: stats detail on|off|dump\r\n|");
}
END_TEST

START_TEST(reply_desync_is_an_error)
{
	CHECK_REPLY("VALUE k 0\r\nx\r\nEND\r\n", pf_values,
	    "E:unexpected reply line from the server|");
	CHECK_REPLY("VALUE k 0 1\r\nxy\r\nEND\r\n", pf_values,
	    "E:data block not followed by \\r\\n|");
	CHECK_REPLY("STORED\r\n", pf_values,
	    "E:unexpected reply line from the server|");
	CHECK_REPLY("VALUE k 0 1\r\nx\r\nSTORED\r\n", pf_values,
	    "E:unexpected reply line from the server|");
	CHECK_REPLY("VA x\r\n", pf_meta,
	    "E:unexpected reply line from the server|");
	CHECK_REPLY("VA 1\r\nxyz", pf_meta, "E:data block not followed by \\r\\n|");
	CHECK_REPLY("STAT a 1\r\nSTORED\r\n", pf_stats,
	    "E:unexpected reply line from the server|");
}
END_TEST

START_TEST(reply_line_without_end_is_bounded)
{
	char *buf = malloc(MC_REPLY_LINE_MAX + 2);
	struct evbuffer *log;

	memset(buf, 'x', MC_REPLY_LINE_MAX + 1);
	log = reply_run_pieces(buf, MC_REPLY_LINE_MAX, pf_line, 1, 1000, 0);
	ck_assert(log_equals(log, "N8192", 5));
	evbuffer_free(log);
	log = reply_run_pieces(buf, MC_REPLY_LINE_MAX + 1, pf_line, 1, 1000, 0);
	ck_assert(log_equals(log, "E:reply line too long|", 22));
	evbuffer_free(log);
	free(buf);
}
END_TEST

/* Fuzz finding K6: a line over MC_REPLY_LINE_MAX was taken when whole. */
START_TEST(reply_line_over_8k_is_refused_however_it_arrives)
{
	const uint32_t pf[] = { MC_SHAPE_LINE, MC_SHAPE_LINE };
	const char *err = "E:reply line too long|";
	const uint32_t pf_stats1[] = { MC_SHAPE_STATS };
	char *buf = malloc(MC_REPLY_LINE_MAX + 1024), *want;
	size_t n;

	/* 9000 bytes and a reply after them */
	ck_assert_uint_ge(MC_REPLY_LINE_MAX + 1024, 9010);
	memset(buf, 'X', 9000);
	memcpy(buf + 9000, "\r\nSTORED\r\n", 10);
	check_reply(buf, 9010, pf, 2, err, strlen(err));
	/* the limit counts the bytes before the "\n", "\r" included */
	memset(buf, 'X', MC_REPLY_LINE_MAX);
	buf[MC_REPLY_LINE_MAX - 1] = '\r';
	buf[MC_REPLY_LINE_MAX] = '\n';
	want = malloc(MC_REPLY_LINE_MAX + 16);
	snprintf(want, MC_REPLY_LINE_MAX + 16, "R:%.*s|",
	    MC_REPLY_LINE_MAX + 1, buf);
	check_reply(buf, MC_REPLY_LINE_MAX + 1, pf, 1, want, strlen(want));
	buf[MC_REPLY_LINE_MAX - 1] = 'X';
	buf[MC_REPLY_LINE_MAX] = '\r';
	buf[MC_REPLY_LINE_MAX + 1] = '\n';
	check_reply(buf, MC_REPLY_LINE_MAX + 2, pf, 1, err, strlen(err));
	/* in a multi-line reply too: a STAT line */
	n = (size_t)sprintf(buf, "STAT a ");
	memset(buf + n, 'x', MC_REPLY_LINE_MAX);
	n += MC_REPLY_LINE_MAX;
	memcpy(buf + n, "\r\nEND\r\n", 7);
	n += 7;
	check_reply(buf, n, pf_stats1, 1, err, strlen(err));
	free(want);
	free(buf);
}
END_TEST

START_TEST(reply_value_line_with_longest_key)
{
	char buf[400], want[420];
	size_t n;

	n = (size_t)snprintf(buf, sizeof(buf), "VALUE ");
	memset(buf + n, 'k', 250);
	n += 250;
	n += (size_t)snprintf(buf + n, sizeof(buf) - n,
	    " 4294967295 3 18446744073709551615\r\nabc\r\nEND\r\n");
	snprintf(want, sizeof(want), "R:%s|", buf);
	check_reply(buf, n, pf_values, 1, want, strlen(want));
}
END_TEST

START_TEST(reply_pipelined_back_to_back)
{
	const uint32_t pf[] = {
		MC_SHAPE_LINE, MC_SHAPE_VALUES, MC_SHAPE_META, MC_SHAPE_STATS,
		MC_SHAPE_LINE | MC_PF_NOREPLY, MC_SHAPE_LINE,
	};

	CHECK_REPLY("STORED\r\nVALUE a 1 2\r\nab\r\nEND\r\nVA 2\r\nxy\r\n"
	    "STAT x 1\r\nEND\r\nDELETED\r\nMN\r\n", pf,
	    "R:STORED\r\n|R:VALUE a 1 2\r\nab\r\nEND\r\n|R:VA 2\r\nxy\r\n|"
	    "R:STAT x 1\r\nEND\r\n|D:DELETED\r\n|R:MN\r\n|");
}
END_TEST

START_TEST(reply_one_megabyte_value_in_16k_chunks)
{
	size_t vlen = 1024 * 1024, n, off;
	struct evbuffer *in = evbuffer_new();
	void *state = calloc(1, P->reply_state_size);
	struct replyinfo ri;
	enum reply_verdict v = RV_NEED_MORE;
	char *buf = malloc(2 * vlen + 200);

	n = (size_t)sprintf(buf, "VALUE a 0 %zu\r\n", vlen);
	memset(buf + n, '\n', vlen);
	memcpy(buf + n, "END\r\n", 5);
	n += vlen;
	n += (size_t)sprintf(buf + n, "\r\nVALUE b 0 %zu 9\r\n", vlen);
	memset(buf + n, 'E', vlen);
	n += vlen;
	n += (size_t)sprintf(buf + n, "\r\nEND\r\n");
	P->reply_init(state);
	for (off = 0; off < n; off += 16384) {
		evbuffer_add(in, buf + off, n - off < 16384 ? n - off : 16384);
		memset(&ri, 0, sizeof(ri));
		v = P->parse_reply(state, in, MC_SHAPE_VALUES, &ri);
		if (off + 16384 < n)
			ck_assert_int_eq(v, RV_NEED_MORE);
	}
	ck_assert_int_eq(v, RV_REPLY);
	ck_assert(!ri.drop);
	ck_assert_uint_eq(ri.len, n);
	/* three lines and two CRLF checks, not two megabytes */
	ck_assert_uint_lt(mc_reply_examined(state), 100);
	free(buf);
	free(state);
	evbuffer_free(in);
}
END_TEST

/* ===================================================================== */
/* random input: however it is split, the same transcript */

static uint32_t rng_state;

static uint32_t
rng(uint32_t n)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return (rng_state >> 8) % n;
}

/* Lines made of real commands, flags and bad numbers, data blocks of
 * roughly the right length, and the odd raw byte. */
static size_t
random_requests(char *buf, size_t cap)
{
	static const char *const words[] = {
		"get", "gets", "gat", "set", "add", "cas", "incr", "delete",
		"touch", "mg", "ms", "md", "ma", "mn", "me", "stats", "version",
		"verbosity", "flush_all", "watch", "quit", "k", "noreply", "q",
		"v", "O1", "T0", "0", "1", "3", "-1", "+2", "4294967299", "abc",
		"2147483646", "\t", "qq",
	};
	size_t n = 0;

	while (n + 64 < cap) {
		uint32_t i, nw = 1 + rng(6);

		if (rng(4) == 0) {
			/* a well-formed storage line, sometimes over the limit */
			n += (size_t)snprintf(buf + n, cap - n, "%s %u%s\r\n",
			    rng(2) ? "set k 0 0" : "ms k", rng(9),
			    rng(3) == 0 ? (rng(2) ? " noreply" : " q") : "");
			nw = 0;
		}
		for (i = 0; i < nw && n + 32 < cap; i++) {
			const char *w = words[rng(sizeof(words) / sizeof(words[0]))];

			if (i > 0)
				buf[n++] = ' ';
			memcpy(buf + n, w, strlen(w));
			n += strlen(w);
		}
		if (rng(25) == 0)
			buf[n++] = (char)rng(256);
		if (rng(4) != 0)
			buf[n++] = '\r';
		buf[n++] = '\n';
		for (i = rng(3) == 0 ? rng(7) : 0; i > 0 && n + 8 < cap; i--)
			buf[n++] = "xy\r\n"[rng(4)];
		if (rng(2) == 0 && n + 8 < cap) {
			buf[n++] = '\r';
			buf[n++] = '\n';
		}
		if (rng(3) == 0)
			break;
	}
	return n;
}

static struct evbuffer *
req_run_random_pieces(const char *data, size_t len,
    const struct cfg_limits *lim)
{
	struct req_run r;
	size_t off = 0, n;

	req_run_open(&r);
	while (off < len && !r.closed) {
		n = 1 + rng(9);
		if (n > len - off)
			n = len - off;
		evbuffer_add(r.in, data + off, n);
		off += n;
		req_drive(&r, lim);
	}
	return req_run_close(&r);
}

START_TEST(random_requests_split_anywhere_give_the_same_verdicts)
{
	struct cfg_limits lim = limits_default();
	char buf[1024];
	int iter;

	lim.max_value_size = 5;
	lim.max_line_length = 40;
	lim.max_request_size = 120;
	rng_state = 20230118;
	for (iter = 0; iter < 3000; iter++) {
		size_t n = random_requests(buf, sizeof(buf));
		struct evbuffer *one = req_run_pieces(buf, n, 0, 0, &lim);
		struct evbuffer *many = req_run_random_pieces(buf, n, &lim);
		size_t len = evbuffer_get_length(one);

		ck_assert_msg(log_equals(many,
		    len ? (const char *)evbuffer_pullup(one, -1) : "", len),
		    "iteration %d", iter);
		evbuffer_free(one);
		evbuffer_free(many);
	}
}
END_TEST

START_TEST(random_replies_split_anywhere_give_the_same_framing)
{
	static const char *const lines[] = {
		"STORED", "END", "VALUE k 0 3", "VALUE k 0 x", "VA 2 f0", "VA x",
		"HD", "EN", "NF", "STAT a 1", "ITEM k", "RESET", "ERROR",
		"SERVER_ERROR x", "MN", "42",
	};
	uint32_t pf[64];
	char buf[2048];
	int iter;
	size_t i;

	rng_state = 424242;
	for (iter = 0; iter < 3000; iter++) {
		struct evbuffer *one, *two, *small;
		size_t n = 0, len;
		const char *want;

		for (i = 0; i < 64; i++)
			pf[i] = rng(4) | (rng(4) == 0 ? MC_PF_DROP_EN |
			    MC_PF_DROP_HD : 0) | (rng(8) == 0 ? MC_PF_NOREPLY : 0);
		while (n + 40 < sizeof(buf) && rng(12) != 0) {
			const char *l = lines[rng(sizeof(lines) / sizeof(lines[0]))];

			memcpy(buf + n, l, strlen(l));
			n += strlen(l);
			memcpy(buf + n, "\r\n", 2);
			n += 2;
			while (rng(3) == 0 && n + 1 < sizeof(buf))
				buf[n++] = "ab\r\nE"[rng(5)];
		}
		one = reply_run_pieces(buf, n, pf, 64, 0, 0);
		len = evbuffer_get_length(one);
		want = len ? (const char *)evbuffer_pullup(one, -1) : "";
		if (n > 1) {
			two = reply_run_pieces(buf, n, pf, 64, 0,
			    1 + rng((uint32_t)n - 1));
			ck_assert_msg(log_equals(two, want, len), "iter %d", iter);
			evbuffer_free(two);
		}
		small = reply_run_pieces(buf, n, pf, 64, 1 + rng(5), 0);
		ck_assert_msg(log_equals(small, want, len), "iter %d", iter);
		evbuffer_free(small);
		evbuffer_free(one);
	}
}
END_TEST

/* ===================================================================== */
/* the rest of the table */

START_TEST(error_reply_in_memcached_words)
{
	struct evbuffer *out = evbuffer_new();
	const char want[] = "SERVER_ERROR sidepool: backend down\r\n";
	size_t n;

	P->error_reply(out, MC_SHAPE_VALUES, "backend down");
	n = evbuffer_get_length(out);
	ck_assert_uint_eq(n, sizeof(want) - 1);
	ck_assert(memcmp(evbuffer_pullup(out, -1), want, n) == 0);
	evbuffer_drain(out, n);
	/* noreply: nothing; quiet meta requests do get it */
	P->error_reply(out, MC_PF_NOREPLY, "backend down");
	ck_assert_uint_eq(evbuffer_get_length(out), 0);
	P->error_reply(out, pflags_of("mg k q\r\n"), "backend down");
	ck_assert_uint_eq(evbuffer_get_length(out), sizeof(want) - 1);
	evbuffer_drain(out, sizeof(want) - 1);
	/* a message holding CR or LF (a unix path) stays one line */
	const char want2[] = "SERVER_ERROR sidepool: cannot connect to /a b c\r\n";
	P->error_reply(out, 0, "cannot connect to /a\rb\nc");
	n = evbuffer_get_length(out);
	ck_assert_uint_eq(n, sizeof(want2) - 1);
	ck_assert(memcmp(evbuffer_pullup(out, -1), want2, n) == 0);
	evbuffer_free(out);
}
END_TEST

START_TEST(probe_is_mn_and_its_reply_is_one_line)
{
	struct evbuffer *out = evbuffer_new();
	const uint32_t pf[] = { 0 };

	P->probe(out);
	ck_assert_uint_eq(evbuffer_get_length(out), 4);
	ck_assert(memcmp(evbuffer_pullup(out, -1), "mn\r\n", 4) == 0);
	evbuffer_free(out);
	CHECK_REPLY("MN\r\n", pf, "R:MN\r\n|");
}
END_TEST

START_TEST(default_limits_fill_only_zeros)
{
	struct cfg_limits lim;

	memset(&lim, 0, sizeof(lim));
	P->default_limits(&lim);
	ck_assert_uint_eq(lim.max_request_size, 2 * 1024 * 1024);
	ck_assert_uint_eq(lim.max_value_size, 1024 * 1024);
	ck_assert_uint_eq(lim.max_args, 65536);
	ck_assert_uint_eq(lim.max_line_length, 2048);
	ck_assert_uint_eq(lim.max_pending, 1024);
	ck_assert_uint_eq(lim.max_output, 64 * 1024 * 1024);
	lim.max_value_size = 7;
	lim.max_pending = 3;
	P->default_limits(&lim);
	ck_assert_uint_eq(lim.max_value_size, 7);
	ck_assert_uint_eq(lim.max_pending, 3);
}
END_TEST

START_TEST(proto_table_is_complete)
{
	ck_assert_str_eq(P->name, "memcache");
	ck_assert_uint_gt(P->req_state_size, 0);
	ck_assert_uint_gt(P->reply_state_size, 0);
	ck_assert_ptr_nonnull(P->req_init);
	ck_assert_ptr_nonnull(P->parse_request);
	ck_assert_ptr_nonnull(P->reply_init);
	ck_assert_ptr_nonnull(P->parse_reply);
	ck_assert_ptr_nonnull(P->error_reply);
	ck_assert_ptr_nonnull(P->probe);
	ck_assert_ptr_nonnull(P->default_limits);
	/* no connection state to keep: none of the session hooks, and any
	 * well-formed answer to "mn" is healthy (1.4/1.5 say ERROR to it) */
	ck_assert_ptr_null(P->reply_ok);
	ck_assert_ptr_null(P->req_free);
	ck_assert_ptr_null(P->session_active);
	ck_assert_ptr_null(P->prepare);
	ck_assert_ptr_null(P->handshake);
	ck_assert_ptr_null(P->abandon);
}
END_TEST

static Suite *
memcache_suite(void)
{
	Suite *s = suite_create("memcache");
	TCase *helpers = tcase_create("helpers");
	TCase *retrieval = tcase_create("retrieval");
	TCase *storage = tcase_create("storage");
	TCase *classic = tcase_create("classic");
	TCase *meta = tcase_create("meta");
	TCase *stream = tcase_create("stream");
	TCase *replies = tcase_create("replies");
	TCase *table = tcase_create("table");

	tcase_add_test(helpers, tokenizer_splits_on_spaces_only);
	tcase_add_test(helpers, tokenizer_stops_at_nul_and_counts_beyond_max);
	tcase_add_test(helpers, numbers_parse_like_memcached_safe_strtol);
	tcase_add_test(helpers, numbers_parse_like_memcached_safe_strtoul);
	tcase_add_test(helpers, long_line_allowed_only_for_get_and_gets);
	tcase_add_test(helpers, plan_of_a_line_is_pure);
	tcase_add_test(helpers, reply_lines_are_classified);
	suite_add_tcase(s, helpers);

	tcase_add_test(retrieval, get_single_and_multi_key_forwarded_as_is);
	tcase_add_test(retrieval, bare_newline_ends_a_line);
	tcase_add_test(retrieval, get_without_key_is_error);
	tcase_add_test(retrieval, get_with_many_keys_beyond_tokenizer_window);
	tcase_add_test(retrieval, gat_and_gats_forwarded);
	tcase_add_test(retrieval, gat_bad_exptime_answered);
	tcase_add_test(retrieval, key_of_250_bytes_accepted_251_refused);
	tcase_add_test(retrieval, keys_with_control_bytes_are_keys);
	tcase_add_test(retrieval, get_with_too_many_keys_refused);
	suite_add_tcase(s, retrieval);

	tcase_add_test(storage, storage_commands_forwarded_with_their_data);
	tcase_add_test(storage, data_is_binary_safe_by_length);
	tcase_add_test(storage, storage_noreply_stripped_and_reply_dropped);
	tcase_add_test(storage, noreply_strip_keeps_key_ending_in_cr);
	tcase_add_test(storage, storage_wrong_token_count_is_error);
	tcase_add_test(storage,
	    storage_bad_numbers_answered_and_data_read_as_command);
	tcase_add_test(storage, storage_numbers_memcached_accepts_are_forwarded);
	tcase_add_test(storage, noreply_suppresses_local_errors_like_memcached);
	tcase_add_test(storage, bad_data_chunk_forwarded_for_the_server_to_answer);
	tcase_add_test(storage, data_block_waits_for_all_its_bytes);
	tcase_add_test(storage, too_large_value_answered_and_swallowed);
	tcase_add_test(storage, too_large_default_swallows_without_buffering);
	suite_add_tcase(s, storage);

	tcase_add_test(classic, incr_decr_forwarded_and_noreply_stripped);
	tcase_add_test(classic, delete_forms);
	tcase_add_test(classic, delete_with_hold_time_answered_with_usage);
	tcase_add_test(classic, touch_forms);
	tcase_add_test(classic, verbosity_forwarded);
	tcase_add_test(classic, flush_all_forwarded);
	tcase_add_test(classic, version_stats_and_mn_forwarded);
	tcase_add_test(classic, quit_closes_without_reply);
	tcase_add_test(classic, admin_commands_refused_in_memcached_words);
	tcase_add_test(classic, unknown_and_empty_lines_are_error);
	tcase_add_test(classic, nul_byte_ends_the_command_line);
	tcase_add_test(classic, binary_protocol_refused_and_closed);
	tcase_add_test(classic, line_over_2048_bytes_closes_unless_multiget);
	tcase_add_test(classic, get_line_over_max_request_size_closes);
	tcase_add_test(classic,
	    line_and_request_limits_close_the_same_however_the_bytes_arrive);
	tcase_add_test(classic, long_get_is_recognised_however_the_bytes_arrive);
	tcase_add_test(classic,
	    request_over_max_request_size_closes_with_client_c_words);
	suite_add_tcase(s, classic);

	tcase_add_test(meta, meta_get_flags_pass_through);
	tcase_add_test(meta, meta_quiet_flag_stripped_with_drop_rules);
	tcase_add_test(meta, meta_duplicate_quiet_left_for_the_server);
	tcase_add_test(meta, meta_too_many_flags_answered);
	tcase_add_test(meta, meta_set_forms);
	tcase_add_test(meta, meta_delete_arith_debug_forms);
	suite_add_tcase(s, meta);

	tcase_add_test(stream, pipelined_requests_each_get_a_verdict);
	tcase_add_test(stream, incomplete_line_waits);
	tcase_add_test(stream,
	    one_megabyte_value_in_16k_chunks_is_counted_not_scanned);
	tcase_add_test(stream, long_get_line_is_searched_once);
	tcase_add_test(stream,
	    random_requests_split_anywhere_give_the_same_verdicts);
	tcase_add_test(stream,
	    random_replies_split_anywhere_give_the_same_framing);
	tcase_set_timeout(stream, 60);
	suite_add_tcase(s, stream);

	tcase_add_test(replies, reply_single_lines);
	tcase_add_test(replies, reply_values_then_end);
	tcase_add_test(replies, reply_data_containing_end_and_crlf_framed_by_length);
	tcase_add_test(replies, reply_error_line_ends_a_get);
	tcase_add_test(replies, reply_meta_va_block_and_lines);
	tcase_add_test(replies, reply_quiet_drops_what_memcached_would_hide);
	tcase_add_test(replies, reply_noreply_drops_everything);
	tcase_add_test(replies, reply_stats_lines_then_end);
	tcase_add_test(replies, reply_desync_is_an_error);
	tcase_add_test(replies, reply_line_without_end_is_bounded);
	tcase_add_test(replies, reply_line_over_8k_is_refused_however_it_arrives);
	tcase_add_test(replies, reply_value_line_with_longest_key);
	tcase_add_test(replies, reply_pipelined_back_to_back);
	tcase_add_test(replies, reply_one_megabyte_value_in_16k_chunks);
	tcase_set_timeout(replies, 60);
	suite_add_tcase(s, replies);

	tcase_add_test(table, error_reply_in_memcached_words);
	tcase_add_test(table, probe_is_mn_and_its_reply_is_one_line);
	tcase_add_test(table, default_limits_fill_only_zeros);
	tcase_add_test(table, proto_table_is_complete);
	suite_add_tcase(s, table);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(memcache_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
