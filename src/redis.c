/*
 * redis.c - the Redis protocol table: where RESP requests and replies end,
 * what sidepool answers itself (PING, ECHO, QUIT), what it refuses, and its
 * own errors in Redis's words. Parsing proper is resp.c; which command is
 * which is command.c.
 *
 * The request limits give the same answer however TCP cut the bytes: a
 * request is judged on its first max_request_size + 1 bytes and an inline
 * line on the bytes before its "\n", whether they came in one read or in
 * many (client.c only ever sees a verdict).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "command.h"
#include "proto.h"
#include "redis_session.h"
#include "resp.h"

#define PEEK_VECS 16

struct redis_req_state {
	struct resp_req_parser p;
	size_t off;  /* bytes of the current request already fed */
	bool mid;    /* a request has been started */
	size_t line_seen; /* bytes of an inline line searched for its "\n" */
	struct redis_session session;
};

struct redis_reply_state {
	struct resp_reply_parser p;
	size_t off;
	bool mid;
	struct redis_conn conn;
};

static void
start_request(struct redis_req_state *st)
{
	resp_req_init(&st->p);
	st->off = 0;
	st->mid = false;
}

static void
req_init(void *state)
{
	struct redis_req_state *st = state;

	start_request(st);
	session_init(&st->session);
}

static void
req_free(void *state)
{
	session_free(&((struct redis_req_state *)state)->session);
}

static void
to_resp_limits(const struct cfg_limits *lim, struct resp_limits *rl)
{
	rl->max_bulk_len = lim->max_value_size;
	rl->max_multibulk_len = lim->max_args;
	rl->max_inline_len = lim->max_line_length;
}

static void add_error(struct evbuffer *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
add_error(struct evbuffer *out, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)buffer_add_vline(out, "-ERR ", fmt, ap);
	va_end(ap);
}

static int error_reply(struct evbuffer *out, uint32_t pflags,
    const char *msg);

/* client.c's words for an incomplete request that outgrew the limit, so
 * that the client cannot tell which of the two refused it. */
static enum proto_verdict
refuse_too_large(struct reqinfo *ri)
{
	error_reply(ri->reply, 0, "request larger than max_request_size");
	return PV_ERROR_CLOSE;
}

static void
add_bulk(struct evbuffer *out, const char *s, size_t len)
{
	evbuffer_add_printf(out, "$%zu\r\n", len);
	evbuffer_add(out, s, len);
	evbuffer_add(out, "\r\n", 2);
}

/*
 * Feed the parser the bytes of `in` it has not seen yet, but never more
 * than max + 1 of one request: arriving in pieces, a request is refused
 * as soon as max + 1 bytes of it wait, so whatever follows them (a parse
 * error, the end of the request) must not decide when they arrive at once.
 */
static enum resp_status
feed_request(struct redis_req_state *st, struct evbuffer *in,
    const struct resp_limits *rl, uint64_t max)
{
	enum resp_status s = RESP_NEED_MORE;

	while (st->off < evbuffer_get_length(in) && st->off <= max) {
		struct evbuffer_ptr pos;
		struct evbuffer_iovec v[PEEK_VECS];
		int n;
		/* The common case starts at the head: no position to find. */
		if (st->off == 0) {
			n = evbuffer_peek(in, -1, NULL, v, PEEK_VECS);
		} else {
			evbuffer_ptr_set(in, &pos, st->off, EVBUFFER_PTR_SET);
			n = evbuffer_peek(in, -1, &pos, v, PEEK_VECS);
		}
		if (n > PEEK_VECS)
			n = PEEK_VECS;
		for (int i = 0; i < n; i++) {
			size_t used = 0, len = v[i].iov_len;
			if (len > max - st->off)
				len = (size_t)(max - st->off) + 1;
			s = resp_req_feed(&st->p, rl, v[i].iov_base, len,
			    &used);
			st->off += used;
			if (s != RESP_NEED_MORE || len < v[i].iov_len)
				return s;
		}
	}
	return s;
}

/*
 * The limits of an inline line, on the `seen` bytes before its "\n"
 * (whole: the "\n" has come too, and counts for max_request_size).
 * Arriving in pieces, a line too long for both limits meets the smaller
 * one first (the line limit when they are equal), so that one speaks
 * when it arrives at once too. PV_FORWARD: whole and within both.
 */
static enum proto_verdict
check_inline(size_t seen, bool whole, const struct cfg_limits *lim,
    struct reqinfo *ri)
{
	if (seen > lim->max_request_size &&
	    lim->max_request_size < lim->max_line_length)
		return refuse_too_large(ri);
	if (seen > lim->max_line_length) {
		add_error(ri->reply, "Protocol error: %s",
		    "too big inline request");
		return PV_ERROR_CLOSE;
	}
	if (whole && seen + 1 > lim->max_request_size)
		return refuse_too_large(ri);
	return whole ? PV_FORWARD : PV_NEED_MORE;
}

/*
 * An inline command ("SET k v\r\n", as typed in telnet) becomes multibulk
 * at the head of the buffer, so the server sees exactly the arguments we
 * parsed and never its own idea of the quoting. The line limits are
 * checked here, before the rewrite: once rewritten (and perhaps waiting,
 * PV_WAIT) it is a multibulk request like any other, bound only by
 * max_request_size.
 */
static enum proto_verdict
convert_inline(struct redis_req_state *st, struct evbuffer *in,
    const struct cfg_limits *lim, struct reqinfo *ri)
{
	size_t avail = evbuffer_get_length(in), eol_len;
	struct evbuffer_ptr from, eol;

	/* Search only the bytes not searched yet: a line trickling in a
	 * byte per read would cost O(n^2) otherwise. */
	if (st->line_seen > avail)
		st->line_seen = 0;
	evbuffer_ptr_set(in, &from, st->line_seen, EVBUFFER_PTR_SET);
	eol = evbuffer_search_eol(in, &from, &eol_len, EVBUFFER_EOL_LF);
	if (eol.pos < 0) {
		st->line_seen = avail;
		return check_inline(avail, false, lim, ri);
	}
	st->line_seen = 0;
	size_t linelen = (size_t)eol.pos;
	enum proto_verdict v = check_inline(linelen, true, lim, ri);
	if (v != PV_FORWARD)
		return v;
	const char *line = (const char *)evbuffer_pullup(in,
	    (ev_ssize_t)(linelen + eol_len));
	size_t textlen = linelen > 0 && line[linelen - 1] == '\r' ?
	    linelen - 1 : linelen;
	int max_args = lim->max_args > (uint64_t)(textlen / 2 + 1) ?
	    (int)(textlen / 2 + 1) : (int)lim->max_args;
	char *buf = malloc(textlen + 1);
	const char **argv = malloc(sizeof(*argv) * ((size_t)max_args + 1));
	size_t *argvlen = malloc(sizeof(*argvlen) * ((size_t)max_args + 1));

	if (buf == NULL || argv == NULL || argvlen == NULL) {
		add_error(ri->reply, "%s", "sidepool: out of memory");
		v = PV_ERROR_CLOSE;
		goto done;
	}
	int argc = resp_inline_split(line, textlen, buf, textlen + 1, argv,
	    argvlen, max_args);
	if (argc < 0) {
		add_error(ri->reply, "Protocol error: %s", argc == -1 ?
		    "unbalanced quotes in request" : "too many arguments");
		v = PV_ERROR_CLOSE;
		goto done;
	}
	if (argc == 0) {
		ri->len = linelen + eol_len;
		v = PV_SKIP;
		goto done;
	}
	struct evbuffer *mb = evbuffer_new();
	if (mb == NULL) {
		add_error(ri->reply, "%s", "sidepool: out of memory");
		v = PV_ERROR_CLOSE;
		goto done;
	}
	evbuffer_add_printf(mb, "*%d\r\n", argc);
	for (int i = 0; i < argc; i++)
		add_bulk(mb, argv[i], argvlen[i]);
	evbuffer_drain(in, linelen + eol_len);
	evbuffer_prepend_buffer(in, mb);
	evbuffer_free(mb);
done:
	free(buf);
	free(argv);
	free(argvlen);
	return v;
}

static enum proto_verdict
classify(struct redis_req_state *st, struct evbuffer *in, struct reqinfo *ri)
{
	const struct resp_req_parser *p = &st->p;
	const struct command *cmd = NULL;
	char arg1[RESP_ARG_MAX];

	if (p->argc <= 0)
		return PV_SKIP;
	if (!p->name_truncated)
		cmd = command_lookup(p->name, p->namelen);
	if (cmd != NULL)
		ri->name = cmd->name;
	size_t arg1len = 0;
	if (cmd != NULL && (cmd->flags & CMDF_SUBCOMMANDS)) {
		for (; arg1len < p->arg1len; arg1len++)
			arg1[arg1len] = (char)tolower(
			    (unsigned char)p->arg1[arg1len]);
	}
	/* A name too long to be a command is unknown: the server says so. */
	return session_dispatch(&st->session, cmd, p->name,
	    p->name_truncated ? 0 : p->namelen, arg1, arg1len, in, ri);
}

static enum proto_verdict
parse_request(void *state, struct evbuffer *in, const struct cfg_limits *lim,
    struct reqinfo *ri)
{
	struct redis_req_state *st = state;
	struct resp_limits rl;

	if (!st->mid) {
		struct evbuffer_iovec head;
		if (evbuffer_peek(in, 1, NULL, &head, 1) < 1 || head.iov_len == 0)
			return PV_NEED_MORE;
		if (*(const char *)head.iov_base != '*') {
			enum proto_verdict v = convert_inline(st, in, lim,
			    ri);
			if (v != PV_FORWARD)
				return v;
		}
		start_request(st);
		st->mid = true;
	}
	to_resp_limits(lim, &rl);
	switch (feed_request(st, in, &rl, lim->max_request_size)) {
	case RESP_NEED_MORE:
		if (st->off <= lim->max_request_size)
			return PV_NEED_MORE;
		st->mid = false;
		return refuse_too_large(ri);
	case RESP_ERROR:
		add_error(ri->reply, "Protocol error: %s", st->p.err);
		st->mid = false;
		return PV_ERROR_CLOSE;
	case RESP_OK:
		break;
	}
	/* Before it is dispatched: a refused MULTI must not open one. */
	if (st->off > lim->max_request_size) {
		st->mid = false;
		return refuse_too_large(ri);
	}
	ri->len = st->off;
	enum proto_verdict v = classify(st, in, ri);
	/* The next call starts afresh: a new request, or this one again
	 * after PV_WAIT (it is still at the head of in). */
	start_request(st);
	return v;
}

static void
start_reply(struct redis_reply_state *st)
{
	resp_reply_init(&st->p);
	st->off = 0;
	st->mid = false;
}

static void
reply_init(void *state)
{
	struct redis_reply_state *st = state;

	start_reply(st);
	st->conn.db = 0;
	st->conn.in_multi = false;
}

static bool
is_busy_error(const struct resp_reply_parser *p)
{
	static const char *const codes[] = { "LOADING", "MASTERDOWN", "BUSY" };

	if (p->type != '-')
		return false;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (p->errcodelen == strlen(codes[i]) &&
		    memcmp(p->errcode, codes[i], p->errcodelen) == 0)
			return true;
	return false;
}

static enum reply_verdict
parse_reply(void *state, struct evbuffer *in, uint32_t pflags,
    struct replyinfo *ri)
{
	struct redis_reply_state *st = state;

	if (!st->mid) {
		start_reply(st);
		st->mid = true;
	}
	while (st->off < evbuffer_get_length(in)) {
		struct evbuffer_ptr pos;
		struct evbuffer_iovec v[PEEK_VECS];
		int n;
		if (st->off == 0) {
			n = evbuffer_peek(in, -1, NULL, v, PEEK_VECS);
		} else {
			evbuffer_ptr_set(in, &pos, st->off, EVBUFFER_PTR_SET);
			n = evbuffer_peek(in, -1, &pos, v, PEEK_VECS);
		}
		if (n > PEEK_VECS)
			n = PEEK_VECS;
		for (int i = 0; i < n; i++) {
			size_t used = 0;
			enum resp_status s = resp_reply_feed(&st->p,
			    v[i].iov_base, v[i].iov_len, &used);
			st->off += used;
			if (s == RESP_NEED_MORE)
				continue;
			st->mid = false;
			if (s == RESP_ERROR) {
				ri->err = st->p.err;
				return RV_ERROR;
			}
			ri->len = st->off;
			ri->push = st->p.push;
			ri->busy_error = is_busy_error(&st->p);
			if (pflags & RPF_EXECABORT)
				ri->replace = "-EXECABORT Transaction discarded "
				    "because of previous errors.\r\n";
			return RV_REPLY;
		}
	}
	return RV_NEED_MORE;
}

static int
error_reply(struct evbuffer *out, uint32_t pflags, const char *msg)
{
	(void)pflags;
	return buffer_add_line(out, "-ERR sidepool: ", "%s", msg);
}

static void
probe(struct evbuffer *out)
{
	evbuffer_add(out, "*1\r\n$4\r\nPING\r\n", 14);
}

/* +PONG; an error (LOADING, NOAUTH...) means the server cannot serve. */
static bool
reply_ok(struct evbuffer *in, size_t len)
{
	char first;

	return evbuffer_copyout(in, &first, 1) == 1 && first == '+';
}

static void
default_limits(struct cfg_limits *lim)
{
	if (lim->max_request_size == 0)
		lim->max_request_size = 1ULL << 30;
	if (lim->max_value_size == 0)
		lim->max_value_size = 512ULL << 20;
	if (lim->max_args == 0)
		lim->max_args = 2147483647;
	if (lim->max_line_length == 0)
		lim->max_line_length = 64 << 10;
	if (lim->max_pending == 0)
		lim->max_pending = 1024;
	if (lim->max_output == 0)
		lim->max_output = 64ULL << 20;
}

static bool
session_active_hook(const void *state)
{
	return session_active(&((const struct redis_req_state *)state)->session);
}

static bool
session_binding_hook(const void *state)
{
	return session_binding(&((const struct redis_req_state *)state)->session);
}

static void
session_reset_hook(void *state)
{
	session_reset(&((struct redis_req_state *)state)->session);
}

static void
reply_seen_hook(void *state, uint32_t pflags, struct evbuffer *in, size_t len)
{
	session_reply_seen(&((struct redis_req_state *)state)->session, pflags,
	    in, len);
}

static unsigned
prepare_hook(void *conn_state, void *state, uint32_t pflags,
    struct evbuffer *out)
{
	return session_prepare(&((struct redis_reply_state *)conn_state)->conn,
	    &((struct redis_req_state *)state)->session, pflags, out);
}

static unsigned
handshake_hook(void *conn_state, const struct cfg_upstream *up,
    struct evbuffer *out)
{
	return session_handshake(
	    &((struct redis_reply_state *)conn_state)->conn, up, out);
}

static int
abandon_hook(void *state, struct evbuffer *out)
{
	return session_abandon(&((struct redis_req_state *)state)->session, out);
}

const struct proto redis_proto = {
	.name = "redis",
	.req_state_size = sizeof(struct redis_req_state),
	.reply_state_size = sizeof(struct redis_reply_state),
	.req_init = req_init,
	.parse_request = parse_request,
	.reply_init = reply_init,
	.parse_reply = parse_reply,
	.error_reply = error_reply,
	.probe = probe,
	.reply_ok = reply_ok,
	.default_limits = default_limits,
	.req_free = req_free,
	.session_active = session_active_hook,
	.session_reset = session_reset_hook,
	.session_binding = session_binding_hook,
	.reply_seen = reply_seen_hook,
	.prepare = prepare_hook,
	.handshake = handshake_hook,
	.abandon = abandon_hook,
};
