/*
 * fuzz_redis_proto.c - libFuzzer harness for the Redis protocol table
 * (redis.c): parse_request driven through an evbuffer the way client.c's
 * process_input drives it (inline commands rewritten to multibulk, PING,
 * ECHO and QUIT answered here, stateful and refused commands answered with
 * errors), parse_reply driven the way backend.c's parse_replies drives it,
 * and error_reply.
 *
 * Input: byte 0 picks how the stream is cut into reads, bytes 1 and 2 pick
 * the limits (the protocol's defaults, or small ones); the rest is used
 * both as what a client sends and as what a server sends. Each is run
 * twice, in one read and in many, and the transcripts must be the same.
 * What is forwarded must be exactly one multibulk request with at least
 * one argument (the server answers it exactly once); what is answered here
 * must be exactly one RESP reply. A request larger than max_request_size
 * or an inline line longer than max_line_length must be refused by the
 * protocol itself, however it arrived (findings K1 and K2 were such
 * requests served when they came in one read): client.c's own bound on an
 * incomplete request is never left to act. A broken invariant is a
 * __builtin_trap().
 */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config.h"
#include "proto.h"
#include "resp.h"

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

static const struct proto *P = &redis_proto;

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

static void
pick_limits(uint8_t a, uint8_t b, struct cfg_limits *lim)
{
	memset(lim, 0, sizeof(*lim));
	if (a & 1) {
		/* any value >= 1 is a valid configuration */
		lim->max_line_length = 1 + (uint64_t)(b & 0x3f) * 2;
		lim->max_value_size = 1 + (uint64_t)((a >> 1) & 0x1f);
		lim->max_args = 1 + (uint64_t)((a >> 6) & 3);
		lim->max_request_size = 16 + (uint64_t)(b >> 6) * 32;
	}
	P->default_limits(lim);
}

/*
 * b holds exactly one whole RESP reply; returns its type byte. (K8 was an
 * error quoting the client's argument with its CR LF: several lines.)
 */
static char
one_reply(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b), used;
	const char *s = (const char *)evbuffer_pullup(b, -1);
	struct resp_reply_parser p;

	resp_reply_init(&p);
	CHECK(n > 0 && resp_reply_feed(&p, s, n, &used) == RESP_OK);
	CHECK(used == n);
	return p.type;
}

/* ---- requests: client.c's process_input without the sockets ---- */

/*
 * The server, as far as the session logic sees it: the reply to the k-th
 * request forwarded is replies[(k + shift) % NREPLIES], whatever the
 * request was (a server may answer anything, an error above all).
 */
static const char *const replies[] = {
	"+OK\r\n",
	"-ERR no\r\n",
	":1\r\n",
	"$-1\r\n",
	"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
	"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
	"*-1\r\n",
	"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n",
	"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nm\r\n",
	"+PONG\r\n",
};
#define NREPLIES (sizeof(replies) / sizeof(replies[0]))
#define MAX_INFLIGHT 4096

struct req_run {
	const struct cfg_limits *lim;
	const struct cfg_upstream *up;
	void *state;
	struct evbuffer *in;
	struct evbuffer *scratch; /* client.c reuses one for every reply */
	struct evbuffer *log;
	bool closed;

	/* client.c's view of the client's server connections */
	void *shared_conn;        /* parser state of a pooled connection */
	void *own_conn;           /* of the client's own connection */
	bool has_dedicated;
	bool stream;
	uint32_t inflight[MAX_INFLIGHT]; /* pflags of requests sent */
	size_t ninflight;         /* nsent */
	size_t nstream;           /* stream requests whose reply is owed */
	size_t stream_waits;      /* PV_WAITs for a stream's replies */
	size_t nforwarded;        /* replies handed out so far */
	size_t nfwd;              /* requests forwarded so far */
	size_t nforwarded_points; /* PV_FORWARD verdicts so far */
	unsigned shift;
	unsigned flags;           /* byte 3 of the input */
};

/* What goes to the server: one multibulk request, at least one argument. */
static void
check_forwarded(const struct cfg_limits *lim, struct evbuffer *fwd)
{
	size_t n = evbuffer_get_length(fwd), used;
	const char *s = (const char *)evbuffer_pullup(fwd, -1);
	struct resp_limits rl = {
		.max_bulk_len = lim->max_value_size,
		.max_multibulk_len = lim->max_args,
		.max_inline_len = lim->max_line_length,
	};
	struct resp_req_parser p;

	resp_req_init(&p);
	CHECK(resp_req_feed(&p, &rl, s, n, &used) == RESP_OK);
	CHECK(used == n && p.argc >= 1);
}

/* b holds exactly n whole requests (internal commands: SELECT, AUTH...). */
static void
check_requests(struct evbuffer *b, int n)
{
	size_t len = evbuffer_get_length(b), off = 0, used;
	const char *s = (const char *)evbuffer_pullup(b, -1);
	struct resp_req_parser p;
	int i;

	for (i = 0; i < n; i++) {
		resp_req_init(&p);
		CHECK(off < len);
		CHECK(resp_req_feed(&p, NULL, s + off, len - off, &used) ==
		    RESP_OK && p.argc >= 1);
		off += used;
	}
	CHECK(off == len);
	evbuffer_drain(b, len);
}

static void
log_reply(struct req_run *r, const char *tag)
{
	evbuffer_add_printf(r->log, "%s%zu:", tag,
	    evbuffer_get_length(r->scratch));
	evbuffer_add_buffer(r->log, r->scratch);
	evbuffer_add(r->log, "|", 1);
}

/*
 * An inline line (the head is not a '*') already whole in the buffer that
 * is longer than max_line_length, or that with its "\n" is larger than
 * max_request_size: it must be refused before it is rewritten (K2), as
 * must a multibulk request larger than max_request_size (req_drive; K1).
 */
static bool
inline_too_big(struct req_run *r)
{
	struct evbuffer_ptr nl;
	char first;

	if (evbuffer_copyout(r->in, &first, 1) != 1 || first == '*')
		return false;
	nl = evbuffer_search(r->in, "\n", 1, NULL);
	return nl.pos >= 0 && ((uint64_t)nl.pos > r->lim->max_line_length ||
	    (uint64_t)nl.pos + 1 > r->lim->max_request_size);
}

/* The reply is one of the two errors of the size limits. */
static bool
size_error(struct evbuffer *reply)
{
	static const char too_large[] =
	    "-ERR sidepool: request larger than max_request_size\r\n";
	static const char too_long[] =
	    "-ERR Protocol error: too big inline request\r\n";
	size_t n = evbuffer_get_length(reply);
	const char *s = (const char *)evbuffer_pullup(reply, -1);

	return (n == sizeof(too_large) - 1 && memcmp(s, too_large, n) == 0) ||
	    (n == sizeof(too_long) - 1 && memcmp(s, too_long, n) == 0);
}

/* client.c's release_dedicated / maybe_release. */
static void
maybe_release(struct req_run *r)
{
	if (!r->has_dedicated || r->ninflight > 0 || r->stream)
		return;
	if (P->session_active != NULL && P->session_active(r->state))
		return;
	r->has_dedicated = false;
}

static void
reply_seen(struct req_run *r, uint32_t pflags)
{
	const char *rep = replies[(r->nforwarded++ + r->shift) % NREPLIES];
	struct evbuffer *b = evbuffer_new();

	CHECK(b != NULL);
	evbuffer_add(b, rep, strlen(rep));
	if (P->reply_seen != NULL)
		P->reply_seen(r->state, pflags, b, evbuffer_get_length(b));
	evbuffer_free(b);
}

/* Every reply owed arrives: on_request_done and on_stream_reply. */
static void
deliver(struct req_run *r)
{
	size_t i;

	for (i = 0; i < r->ninflight; i++)
		reply_seen(r, r->inflight[i]);
	r->ninflight = 0;
	for (; r->stream && r->nstream > 0; r->nstream--) {
		reply_seen(r, 0);
		if (P->session_active != NULL && !P->session_active(r->state))
			r->stream = false;
	}
	r->nstream = 0;
	maybe_release(r);
}

/* A request on its way: what the connection is told first, and the
 * request itself (client.c's forward_request). False: it failed. */
static bool
forward(struct req_run *r, const struct reqinfo *ri)
{
	struct evbuffer *out;
	void *conn;

	/*
	 * With flag 8, every fifth request finds no connection (pool
	 * exhausted, server down): forward_request answers an error, and a
	 * session that needed one is reset. The client's own connection,
	 * once it has one, is always there.
	 */
	if ((r->flags & 8) && !r->has_dedicated &&
	    (r->nfwd++ + r->shift) % 5 == 4) {
		if (ri->need != NEED_SHARED && P->session_reset != NULL)
			P->session_reset(r->state);
		return false;
	}
	out = evbuffer_new();
	CHECK(out != NULL);
	if (!r->has_dedicated && ri->need != NEED_SHARED)
		r->has_dedicated = true;
	conn = r->has_dedicated ? r->own_conn : r->shared_conn;
	if (P->prepare != NULL)
		check_requests(out, (int)P->prepare(conn, r->state, ri->pflags,
		    out));
	evbuffer_free(out);
	if (ri->need == NEED_STREAM || r->stream) {
		r->stream = true;
		r->nstream++;
		return true;
	}
	CHECK(r->ninflight < MAX_INFLIGHT);
	r->inflight[r->ninflight++] = ri->pflags;
	return true;
}

static void
req_drive(struct req_run *r)
{
	while (!r->closed && evbuffer_get_length(r->in) > 0) {
		struct reqinfo ri = {
			.reply = r->scratch,
			.upstream = r->up,
			.client_id = 7,
			.has_dedicated = r->has_dedicated,
			.can_switch = r->ninflight == 0,
		};
		enum proto_verdict v;
		bool too_big, sent;

		CHECK(evbuffer_get_length(r->scratch) == 0);
		too_big = inline_too_big(r);
		v = P->parse_request(r->state, r->in, r->lim, &ri);
		if (ri.drop_session) {
			r->has_dedicated = false;
			r->stream = false;
			r->nstream = 0;
		}
		if (v != PV_NEED_MORE && v != PV_ERROR_CLOSE && v != PV_WAIT &&
		    ri.len > r->lim->max_request_size)
			too_big = true;
		/* K1, K2: too big is refused, never served nor waiting */
		CHECK(!too_big || v == PV_ERROR_CLOSE);
		switch (v) {
		case PV_NEED_MORE:
			CHECK(evbuffer_get_length(r->scratch) == 0);
			/* client.c's bound on a request still incomplete is
			 * the protocol's to apply, in the same words */
			CHECK(evbuffer_get_length(r->in) <=
			    r->lim->max_request_size);
			return;
		case PV_WAIT:
			CHECK(evbuffer_get_length(r->scratch) == 0);
			if (!ri.can_switch) {
				deliver(r);
				break;
			}
			/* With nothing in flight only a stream's owed replies
			 * may hold a request (QUIT, RESET behind SUBSCRIBE);
			 * waiting on nothing waits forever. One more reply
			 * of the stream arrives, and it asks again. */
			CHECK(r->stream);
			CHECK(++r->stream_waits < 100000);
			reply_seen(r, 0);
			if (P->session_active != NULL &&
			    !P->session_active(r->state))
				r->stream = false;
			maybe_release(r);
			break;
		case PV_FORWARD: {
			struct evbuffer *fwd = evbuffer_new();

			CHECK(fwd != NULL);
			CHECK(evbuffer_get_length(r->scratch) == 0);
			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			CHECK(evbuffer_remove_buffer(r->in, fwd, ri.len) ==
			    (int)ri.len);
			check_forwarded(r->lim, fwd);
			sent = forward(r, &ri);
			evbuffer_add_printf(r->log, "F%zu:%d%s:", ri.len,
			    (int)ri.need, sent ? "" : "!");
			evbuffer_add_buffer(r->log, fwd);
			evbuffer_add(r->log, "|", 1);
			evbuffer_free(fwd);
			/*
			 * Replies come at points fixed by the sequence of
			 * requests (here and at PV_WAIT), never by how the
			 * bytes were cut, so both runs see the same.
			 */
			if (r->nforwarded_points++ % 3 == (r->shift % 3))
				deliver(r);
			break;
		}
		case PV_LOCAL:
			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			(void)one_reply(r->scratch);
			evbuffer_drain(r->in, ri.len);
			log_reply(r, "L");
			break;
		case PV_SKIP:
			CHECK(evbuffer_get_length(r->scratch) == 0);
			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			evbuffer_drain(r->in, ri.len);
			evbuffer_add_printf(r->log, "S%zu|", ri.len);
			break;
		case PV_LOCAL_CLOSE:
			if (evbuffer_get_length(r->scratch) > 0)
				(void)one_reply(r->scratch);
			log_reply(r, "Q");
			r->closed = true;
			break;
		case PV_ERROR_CLOSE:
			CHECK(one_reply(r->scratch) == '-');
			CHECK(!too_big || size_error(r->scratch));
			log_reply(r, "X");
			r->closed = true;
			break;
		default:
			CHECK(0);
		}
	}
}

/* The client goes: client.c's client_close (abandon_session, req_free). */
static void
leave(struct req_run *r)
{
	struct evbuffer *out = evbuffer_new();
	int n;

	CHECK(out != NULL);
	if (r->has_dedicated && P->abandon != NULL) {
		n = r->stream ? -1 : P->abandon(r->state, out);
		CHECK(n >= -1);
		if (n >= 0)
			check_requests(out, n);
		else
			CHECK(evbuffer_get_length(out) == 0);
	}
	evbuffer_free(out);
	if (P->req_free != NULL)
		P->req_free(r->state);
}

static void *
new_conn(const struct cfg_upstream *up)
{
	void *conn = calloc(1, P->reply_state_size);
	struct evbuffer *out = evbuffer_new();

	CHECK(conn != NULL && out != NULL);
	P->reply_init(conn);
	if (P->handshake != NULL)
		check_requests(out, (int)P->handshake(conn, up, out));
	evbuffer_free(out);
	return conn;
}

static struct req_run
req_run(const struct cfg_upstream *up, const char *s, size_t len,
    uint8_t seed, unsigned shift, unsigned flags)
{
	struct req_run r = { .lim = &up->limits, .up = up, .shift = shift,
	    .flags = flags };
	struct chunker ch;
	size_t pos = 0;

	r.state = calloc(1, P->req_state_size);
	r.in = evbuffer_new();
	r.scratch = evbuffer_new();
	r.log = evbuffer_new();
	CHECK(r.state && r.in && r.scratch && r.log);
	r.shared_conn = new_conn(up);
	r.own_conn = new_conn(up);
	P->req_init(r.state);
	chunker_init(&ch, seed);
	while (pos < len && !r.closed) {
		size_t n = chunker_next(&ch, len - pos);

		evbuffer_add(r.in, s + pos, n);
		pos += n;
		req_drive(&r);
	}
	if (!r.closed)
		evbuffer_add_printf(r.log, "N%zu", evbuffer_get_length(r.in));
	leave(&r);
	evbuffer_free(r.in);
	evbuffer_free(r.scratch);
	free(r.state);
	free(r.shared_conn);
	free(r.own_conn);
	r.in = r.scratch = NULL;
	r.state = r.shared_conn = r.own_conn = NULL;
	return r;
}

/* ---- replies: backend.c's parse_replies without the socket ---- */

struct reply_run {
	void *state;
	struct evbuffer *in;
	struct evbuffer *log;
	bool closed;
};

static void
reply_drive(struct reply_run *r)
{
	while (!r->closed && evbuffer_get_length(r->in) > 0) {
		struct replyinfo ri = { 0 };
		enum reply_verdict v;
		const char *rep;
		struct resp_reply_parser p;
		size_t used;

		v = P->parse_reply(r->state, r->in, 0, &ri);
		switch (v) {
		case RV_NEED_MORE:
			return;
		case RV_ERROR:
			CHECK(ri.err != NULL && ri.err[0] != '\0');
			evbuffer_add_printf(r->log, "E:%s|", ri.err);
			r->closed = true;
			return;
		case RV_REPLY:
			CHECK(ri.len > 0 && ri.len <= evbuffer_get_length(r->in));
			rep = (const char *)evbuffer_pullup(r->in,
			    (ev_ssize_t)ri.len);
			resp_reply_init(&p);
			CHECK(resp_reply_feed(&p, rep, ri.len, &used) ==
			    RESP_OK && used == ri.len);
			CHECK(ri.push == p.push && !ri.drop);
			CHECK(!ri.busy_error || p.type == '-');
			evbuffer_add_printf(r->log, "R%zu%s%s|", ri.len,
			    ri.push ? "p" : "", ri.busy_error ? "b" : "");
			evbuffer_drain(r->in, ri.len);
			break;
		default:
			CHECK(0);
		}
	}
}

static struct evbuffer *
reply_run(const char *s, size_t len, uint8_t seed)
{
	struct reply_run r = { 0 };
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
		reply_drive(&r);
	}
	if (!r.closed)
		evbuffer_add_printf(r.log, "N%zu", evbuffer_get_length(r.in));
	evbuffer_free(r.in);
	free(r.state);
	return r.log;
}

static void
same(struct evbuffer *a, struct evbuffer *b)
{
	size_t n = evbuffer_get_length(a);

	if (n != evbuffer_get_length(b) ||
	    memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), n) != 0) {
		dump("whole  ", a);
		dump("chunked", b);
	}
	CHECK(n == evbuffer_get_length(b));
	CHECK(memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), n) == 0);
	evbuffer_free(a);
	evbuffer_free(b);
}

/* The proxy's own error, whatever the message holds: one error reply. */
static void
check_error_reply(const char *s, size_t len)
{
	struct evbuffer *out = evbuffer_new();
	char msg[256];

	CHECK(out != NULL);
	if (len >= sizeof(msg))
		len = sizeof(msg) - 1;
	memcpy(msg, s, len);
	msg[len] = '\0';
	P->error_reply(out, 0, msg);
	CHECK(one_reply(out) == '-');
	evbuffer_free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char user0[] = "default", pw0[] = "pw", user1[] = "app",
	    pw1[] = "secret", ref0[] = "flushall", ref1[] = "keys",
	    auth_pw[] = "serverpw", name[] = "fuzz";
	static struct cfg_user users[] = { { user0, pw0 }, { user1, pw1 } };
	static char *refused[] = { ref0, ref1 };
	struct cfg_upstream up;
	const char *s;
	size_t len;

	if (size < 4)
		return 0;
	memset(&up, 0, sizeof(up));
	up.name = name;
	up.protocol = PROTO_REDIS;
	up.databases = 16;
	pick_limits(data[1], data[2], &up.limits);
	/* byte 3: clients must AUTH, refused commands, AUTH to the server,
	 * connections that fail (forward); the high nibble shifts replies */
	if (data[3] & 1) {
		up.users = users;
		up.nusers = 2;
	}
	if (data[3] & 2) {
		up.refused = refused;
		up.nrefused = 2;
	}
	if (data[3] & 4)
		up.auth_password = auth_pw;
	s = (const char *)data + 4;
	len = size - 4;

	same(req_run(&up, s, len, 0, data[3] >> 4, data[3] & 15).log,
	    req_run(&up, s, len, data[0], data[3] >> 4, data[3] & 15).log);
	same(reply_run(s, len, 0), reply_run(s, len, data[0]));
	check_error_reply(s, len);
	return 0;
}
