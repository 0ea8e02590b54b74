/*
 * fuzz_memcache_request.c - libFuzzer harness for the Memcached request
 * side: memcache_proto.parse_request driven through an evbuffer the way
 * client.c's process_input drives it, and the pure helpers of memcache.h
 * (tokenizer, number parsers, mc_plan_line).
 *
 * Input: byte 0 picks how the stream is cut into reads, bytes 1 and 2 pick
 * the limits (the protocol's defaults, or small ones); the rest is what a
 * client sends. The stream is run twice, in one read and in many, and the
 * two transcripts (bytes forwarded with their pflags, local replies, bytes
 * skipped, close and its message) must be the same: the size limits too
 * are decided the same however the bytes arrived (K4, K5), and the parser
 * refuses a request over max_request_size itself, so that client.c's
 * bound on an incomplete one never has to (K1). Every forwarded request,
 * parsed again by a fresh parser, must be exactly one request that asks
 * for a reply. The number parsers are checked against
 * strtoull/strtoul/strtol with memcached's safe_strto* rules, the long-get
 * rule for never changing its mind as a line grows. A broken invariant is
 * a __builtin_trap().
 */
#include <ctype.h>
#include <errno.h>
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

/* ---- limits ---- */

static void
pick_limits(uint8_t a, uint8_t b, struct cfg_limits *lim)
{
	memset(lim, 0, sizeof(*lim));
	if (a & 1) {
		/*
		 * Any value >= 1 is a valid configuration, and these go
		 * below 105, where the long-get rule must wait for a head
		 * that may still grow into "<100 spaces>get " (K5), and on
		 * either side of max_request_size (K4).
		 */
		lim->max_line_length = 2 + (uint64_t)(b & 0x3f) * 4;
		lim->max_value_size = 1 + (uint64_t)((a >> 1) & 0x1f) * 3;
		lim->max_args = 1 + (uint64_t)((a >> 1) & 7);
		lim->max_request_size = 8 + (uint64_t)(b >> 6) * 64 +
		    (uint64_t)(a >> 6) * 16;
	}
	P->default_limits(lim);
}

/* ---- the driver: client.c's process_input without the sockets ---- */

struct run {
	const struct cfg_limits *lim;
	void *state;
	struct evbuffer *in;
	struct evbuffer *scratch; /* client.c reuses one for every reply */
	struct evbuffer *log;     /* transcript */
	size_t skipped;
	bool closed;
};

static void
log_skipped(struct run *r)
{
	if (r->skipped > 0)
		evbuffer_add_printf(r->log, "S%zu|", r->skipped);
	r->skipped = 0;
}

static void
log_bytes(struct run *r, const char *tag, struct evbuffer *b)
{
	log_skipped(r);
	evbuffer_add_printf(r->log, "%s%zu:", tag, evbuffer_get_length(b));
	evbuffer_add_buffer(r->log, b);
	evbuffer_add(r->log, "|", 1);
}

/*
 * A forwarded request, on its own: one request, which wants a reply (and,
 * parsed again, the same request: K7 was a stripped noreply that turned
 * "delete a\r noreply\n" into "delete a\r\n", key "a").
 */
static void
check_forwarded(struct run *r, struct evbuffer *fwd, uint32_t pflags)
{
	size_t len = evbuffer_get_length(fwd);
	struct evbuffer *in = evbuffer_new(), *reply = evbuffer_new();
	void *st = calloc(1, P->req_state_size);
	struct reqinfo ri = { .reply = reply };
	const char *bytes = (const char *)evbuffer_pullup(fwd, -1);

	CHECK(in != NULL && reply != NULL && st != NULL);
	CHECK((pflags & MC_PF_SHAPE_MASK) <= MC_SHAPE_STATS);
	CHECK((pflags & ~(MC_PF_SHAPE_MASK | MC_PF_NOREPLY | MC_PF_DROP_EN |
	    MC_PF_DROP_HD | MC_PF_DROP_VA | MC_PF_EVICTED)) == 0);
	/* a data block need not end in "\r\n" (the server says so) */
	CHECK(len > 0);
	evbuffer_add(in, bytes, len);
	P->req_init(st);
	CHECK(P->parse_request(st, in, r->lim, &ri) == PV_FORWARD);
	CHECK(ri.len == len);
	CHECK(evbuffer_get_length(reply) == 0);
	/* what the server gets never asks it to keep quiet */
	CHECK((ri.pflags & MC_PF_SHAPE_MASK) == (pflags & MC_PF_SHAPE_MASK));
	CHECK((ri.pflags & (MC_PF_NOREPLY | MC_PF_DROP_EN | MC_PF_DROP_HD |
	    MC_PF_DROP_VA | MC_PF_EVICTED)) == 0);
	evbuffer_free(in);
	evbuffer_free(reply);
	free(st);
}

static void
drive(struct run *r)
{
	while (!r->closed && evbuffer_get_length(r->in) > 0) {
		struct reqinfo ri = { .reply = r->scratch };
		enum proto_verdict v;
		char tag[64];

		CHECK(evbuffer_get_length(r->scratch) == 0);
		v = P->parse_request(r->state, r->in, r->lim, &ri);
		switch (v) {
		case PV_NEED_MORE:
			CHECK(evbuffer_get_length(r->scratch) == 0);
			/*
			 * client.c closes a client whose incomplete request
			 * outgrew max_request_size, with its own words; the
			 * parser must have refused it already, with the same
			 * words, or a request that arrives whole would be
			 * answered differently (K1).
			 */
			CHECK(evbuffer_get_length(r->in) <=
			    r->lim->max_request_size);
			return;
		case PV_FORWARD: {
			struct evbuffer *fwd = evbuffer_new();

			CHECK(fwd != NULL);
			CHECK(evbuffer_get_length(r->scratch) == 0);
			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			CHECK(ri.name != NULL);
			CHECK(evbuffer_remove_buffer(r->in, fwd, ri.len) ==
			    (int)ri.len);
			check_forwarded(r, fwd, ri.pflags);
			snprintf(tag, sizeof(tag), "F%x:%s:", ri.pflags,
			    ri.name);
			log_bytes(r, tag, fwd);
			evbuffer_free(fwd);
			break;
		}
		case PV_LOCAL: {
			size_t n = evbuffer_get_length(r->scratch);
			char two[2];

			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			if (n > 0) {
				struct evbuffer_ptr p;

				evbuffer_ptr_set(r->scratch, &p, n - 2,
				    EVBUFFER_PTR_SET);
				CHECK(n >= 2 && evbuffer_copyout_from(r->scratch,
				    &p, two, 2) == 2 && two[0] == '\r' &&
				    two[1] == '\n');
			}
			evbuffer_drain(r->in, ri.len);
			log_bytes(r, "L:", r->scratch);
			break;
		}
		case PV_SKIP:
			CHECK(evbuffer_get_length(r->scratch) == 0);
			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			evbuffer_drain(r->in, ri.len);
			r->skipped += ri.len;
			break;
		case PV_LOCAL_CLOSE:
			log_bytes(r, "Q:", r->scratch);
			r->closed = true;
			break;
		case PV_ERROR_CLOSE:
			CHECK(evbuffer_get_length(r->scratch) > 0);
			log_bytes(r, "X:", r->scratch);
			r->closed = true;
			break;
		default:
			CHECK(0);
		}
	}
}

static struct run
run(const struct cfg_limits *lim, const char *s, size_t len, uint8_t seed)
{
	struct run r = { .lim = lim };
	struct chunker ch;
	size_t pos = 0;

	r.state = calloc(1, P->req_state_size);
	r.in = evbuffer_new();
	r.scratch = evbuffer_new();
	r.log = evbuffer_new();
	CHECK(r.state && r.in && r.scratch && r.log);
	P->req_init(r.state);
	chunker_init(&ch, seed);
	while (pos < len && !r.closed) {
		size_t n = chunker_next(&ch, len - pos);

		evbuffer_add(r.in, s + pos, n);
		pos += n;
		drive(&r);
	}
	log_skipped(&r);
	if (!r.closed)
		evbuffer_add_printf(r.log, "N%zu", evbuffer_get_length(r.in));
	evbuffer_free(r.in);
	evbuffer_free(r.scratch);
	free(r.state);
	r.in = r.scratch = NULL;
	r.state = NULL;
	return r;
}

/* The two runs must say the same, byte for byte, close messages included. */
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

/* ---- the pure helpers ---- */

/*
 * memcached's safe_strtoull / safe_strtoul / safe_strtol on a 64-bit
 * host, written from their documented behaviour: strtoull/strtoul/strtol
 * in base 10; fail on ERANGE or when nothing was converted; accept when
 * the conversion stopped at white space or at the end; the unsigned ones
 * fail a value that is negative as signed if the token holds a '-'.
 */
static bool
ref_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE || end == s)
		return false;
	if (!(isspace((unsigned char)*end) || *end == '\0'))
		return false;
	if ((long long)v < 0 && strchr(s, '-') != NULL)
		return false;
	*out = v;
	return true;
}

static bool
ref_u32(const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno == ERANGE || end == s)
		return false;
	if (!(isspace((unsigned char)*end) || *end == '\0'))
		return false;
	if ((long)v < 0 && strchr(s, '-') != NULL)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool
ref_i32(const char *s, int32_t *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno == ERANGE || end == s)
		return false;
	if (!(isspace((unsigned char)*end) || *end == '\0'))
		return false;
	*out = (int32_t)v;
	return true;
}

/* s[0..len) holds no NUL: it is what a token can be. */
static void
check_numbers(const char *s, size_t len)
{
	char buf[64];
	uint64_t a64 = 0, b64 = 0;
	uint32_t a32 = 0, b32 = 0;
	int32_t ai = 0, bi = 0;
	bool a, b;

	if (len >= sizeof(buf))
		len = sizeof(buf) - 1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	a = mc_parse_u64(buf, len, &a64);
	b = ref_u64(buf, &b64);
	CHECK(a == b && (!a || a64 == b64));
	a = mc_parse_u32(buf, len, &a32);
	b = ref_u32(buf, &b32);
	CHECK(a == b && (!a || a32 == b32));
	a = mc_parse_i32(buf, len, &ai);
	b = ref_i32(buf, &bi);
	CHECK(a == b && (!a || ai == bi));
}

/*
 * The long-get rule on the heads of the line: once it says yes or no, more
 * bytes never change its answer (the parser relies on it to decide the
 * same whether the line came whole or not), and MC_LONG_HEAD bytes always
 * decide.
 */
static void
check_long_rule(const char *line, size_t len)
{
	size_t n = 0, end = len < MC_LONG_HEAD ? len : MC_LONG_HEAD;
	enum mc_long first;

	/* n: the shortest head that decides, if any */
	while ((first = mc_long_line(line, n)) == MC_LONG_MAYBE && n < end)
		n++;
	CHECK(end < MC_LONG_HEAD || first != MC_LONG_MAYBE);
	if (first != MC_LONG_MAYBE) {
		CHECK(mc_long_line(line, n + (end - n) / 2) == first);
		CHECK(mc_long_line(line, end) == first);
		CHECK(mc_long_line(line, len) == first);
	}
}

static void
check_line(const char *line, size_t len, const struct cfg_limits *lim)
{
	struct mc_token tok[8], t;
	struct mc_plan plan;
	size_t argc, kept, i, pos = 0, count = 0;
	const char *nul = memchr(line, '\0', len);

	kept = mc_tokenize(line, len, tok, 8, &argc);
	CHECK(kept <= 8 && kept == (argc < 8 ? argc : 8));
	while (mc_next_token(line, len, &pos, &t)) {
		CHECK(pos <= len);
		count++;
	}
	CHECK(count == argc && pos == len);
	for (i = 0; i < kept; i++) {
		CHECK(tok[i].len > 0);
		CHECK(tok[i].p >= line && tok[i].p + tok[i].len <= line + len);
		CHECK(nul == NULL || tok[i].p + tok[i].len <= nul);
		CHECK(memchr(tok[i].p, ' ', tok[i].len) == NULL);
		CHECK(memchr(tok[i].p, '\0', tok[i].len) == NULL);
		CHECK(i == 0 || tok[i].p > tok[i - 1].p + tok[i - 1].len);
		check_numbers(tok[i].p, tok[i].len);
	}
	check_long_rule(line, len);

	mc_plan_line(line, len, lim, &plan);
	CHECK(plan.name != NULL);
	CHECK(memchr(plan.reply, '\0', sizeof(plan.reply)) != NULL);
	switch (plan.action) {
	case MC_ACT_FORWARD:
		CHECK(plan.strip_from <= plan.strip_to && plan.strip_to <= len);
		CHECK(plan.reply[0] == '\0' && !plan.swallow);
		CHECK(!plan.has_data || plan.data_len >= 2);
		CHECK((plan.pflags & MC_PF_SHAPE_MASK) <= MC_SHAPE_STATS);
		CHECK(plan.noreply == ((plan.pflags & MC_PF_NOREPLY) != 0));
		break;
	case MC_ACT_REPLY: {
		size_t n = strlen(plan.reply);

		CHECK(n == 0 || (n >= 2 && plan.reply[n - 2] == '\r' &&
		    plan.reply[n - 1] == '\n'));
		CHECK(!plan.swallow || plan.data_len >= 2);
		break;
	}
	case MC_ACT_QUIT:
		break;
	case MC_ACT_EVICT: {
		/* a value too large for set/ms: "delete <key>" or "md <key>"
		 * goes out instead, the data block is dropped */
		size_t n = strnlen(plan.evict, sizeof(plan.evict));

		CHECK(n < sizeof(plan.evict));
		CHECK(n >= 4 && plan.evict[n - 2] == '\r' &&
		    plan.evict[n - 1] == '\n');
		CHECK(memchr(plan.evict, '\n', n - 1) == NULL);
		CHECK(strncmp(plan.evict, "delete ", 7) == 0 ||
		    strncmp(plan.evict, "md ", 3) == 0);
		CHECK(plan.pflags & MC_PF_EVICTED);
		CHECK(plan.data_len >= 2);
		break;
	}
	default:
		CHECK(0);
	}
}

static void
check_lines(const char *s, size_t len, const struct cfg_limits *lim)
{
	size_t start = 0;

	while (start < len) {
		const char *nl = memchr(s + start, '\n', len - start);
		size_t end = nl != NULL ? (size_t)(nl - s) : len;

		check_line(s + start, end - start, lim);
		start = end + 1;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg_limits lim;
	const char *s;
	size_t len;

	if (size < 3)
		return 0;
	pick_limits(data[1], data[2], &lim);
	s = (const char *)data + 3;
	len = size - 3;

	same_runs(run(&lim, s, len, 0), run(&lim, s, len, data[0]));

	check_lines(s, len, &lim);
	return 0;
}
