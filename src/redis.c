/*
 * redis.c - the Redis protocol table: where RESP requests and replies end,
 * what sidepool answers itself (PING, ECHO, QUIT), what it refuses, and its
 * own errors in Redis's words. Parsing proper is resp.c; which command is
 * which is command.c.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "proto.h"
#include "resp.h"

#define PEEK_VECS 16

struct redis_req_state {
	struct resp_req_parser p;
	size_t off;  /* bytes of the current request already fed */
	bool mid;    /* a request has been started */
};

struct redis_reply_state {
	struct resp_reply_parser p;
	size_t off;
	bool mid;
};

static void
req_init(void *state)
{
	struct redis_req_state *st = state;

	resp_req_init(&st->p);
	st->off = 0;
	st->mid = false;
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

	evbuffer_add(out, "-ERR ", 5);
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static void
add_bulk(struct evbuffer *out, const char *s, size_t len)
{
	evbuffer_add_printf(out, "$%zu\r\n", len);
	evbuffer_add(out, s, len);
	evbuffer_add(out, "\r\n", 2);
}

static void
upper_name(const struct resp_req_parser *p, char *buf, size_t size)
{
	size_t n = p->namelen < size - 1 ? p->namelen : size - 1;

	for (size_t i = 0; i < n; i++)
		buf[i] = (char)toupper((unsigned char)p->name[i]);
	buf[n] = '\0';
}

/* Feed the parser the bytes of `in` it has not seen yet. */
static enum resp_status
feed_request(struct redis_req_state *st, struct evbuffer *in,
    const struct resp_limits *rl)
{
	enum resp_status s = RESP_NEED_MORE;

	while (st->off < evbuffer_get_length(in)) {
		struct evbuffer_ptr pos;
		struct evbuffer_iovec v[PEEK_VECS];
		evbuffer_ptr_set(in, &pos, st->off, EVBUFFER_PTR_SET);
		int n = evbuffer_peek(in, -1, &pos, v, PEEK_VECS);
		if (n > PEEK_VECS)
			n = PEEK_VECS;
		for (int i = 0; i < n; i++) {
			size_t used = 0;
			s = resp_req_feed(&st->p, rl, v[i].iov_base,
			    v[i].iov_len, &used);
			st->off += used;
			if (s != RESP_NEED_MORE)
				return s;
		}
	}
	return s;
}

/*
 * An inline command ("SET k v\r\n", as typed in telnet) becomes multibulk
 * at the head of the buffer, so the server sees exactly the arguments we
 * parsed and never its own idea of the quoting.
 */
static enum proto_verdict
convert_inline(struct evbuffer *in, const struct cfg_limits *lim,
    struct reqinfo *ri)
{
	size_t eol_len;
	struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len,
	    EVBUFFER_EOL_LF);

	if (eol.pos < 0) {
		if (evbuffer_get_length(in) > lim->max_line_length) {
			add_error(ri->reply, "Protocol error: %s",
			    "too big inline request");
			return PV_ERROR_CLOSE;
		}
		return PV_NEED_MORE;
	}
	size_t linelen = (size_t)eol.pos;
	const char *line = (const char *)evbuffer_pullup(in,
	    (ev_ssize_t)(linelen + eol_len));
	size_t textlen = linelen > 0 && line[linelen - 1] == '\r' ?
	    linelen - 1 : linelen;
	int max_args = lim->max_args > (uint64_t)(textlen / 2 + 1) ?
	    (int)(textlen / 2 + 1) : (int)lim->max_args;
	char *buf = malloc(textlen + 1);
	const char **argv = malloc(sizeof(*argv) * ((size_t)max_args + 1));
	size_t *argvlen = malloc(sizeof(*argvlen) * ((size_t)max_args + 1));
	enum proto_verdict v = PV_FORWARD;

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

/* XREAD and XREADGROUP block only when asked to: look for BLOCK. */
static bool
asks_to_block(struct evbuffer *in, size_t len)
{
	const char *req = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
	const char *argv[64];
	size_t argvlen[64];
	int argc = resp_argv(req, len, argv, argvlen, 64);

	if (argc < 0)
		return true; /* too many options to be sure: assume it blocks */
	for (int i = 1; i < argc; i++) {
		if (argvlen[i] == 7 && strncasecmp(argv[i], "streams", 7) == 0)
			return false;
		if (argvlen[i] == 5 && strncasecmp(argv[i], "block", 5) == 0)
			return true;
	}
	return false;
}

static enum proto_verdict
answer_locally(const struct resp_req_parser *p, struct evbuffer *in,
    struct reqinfo *ri)
{
	const char *req = (const char *)evbuffer_pullup(in,
	    (ev_ssize_t)ri->len);
	const char *argv[3];
	size_t argvlen[3];
	int argc = resp_argv(req, ri->len, argv, argvlen, 3);
	bool ping = p->namelen == 4 && memcmp(p->name, "ping", 4) == 0;

	if (p->namelen == 4 && memcmp(p->name, "quit", 4) == 0) {
		evbuffer_add(ri->reply, "+OK\r\n", 5);
		return PV_LOCAL_CLOSE;
	}
	if (ping && argc == 1) {
		evbuffer_add(ri->reply, "+PONG\r\n", 7);
	} else if (argc == 2) {
		add_bulk(ri->reply, argv[1], argvlen[1]);
	} else {
		add_error(ri->reply, "wrong number of arguments for '%s' "
		    "command", ping ? "ping" : "echo");
	}
	return PV_LOCAL;
}

static enum proto_verdict
classify(struct redis_req_state *st, struct evbuffer *in, struct reqinfo *ri)
{
	const struct resp_req_parser *p = &st->p;
	char name[RESP_NAME_MAX + 1], arg1[RESP_ARG_MAX];

	if (p->argc <= 0)
		return PV_SKIP;
	if (p->name_truncated)
		return PV_FORWARD; /* no such command: the server will say so */
	const struct command *cmd = command_lookup(p->name, p->namelen);
	if (cmd == NULL)
		return PV_FORWARD;
	ri->name = cmd->name;
	for (size_t i = 0; i < p->arg1len; i++)
		arg1[i] = (char)tolower((unsigned char)p->arg1[i]);
	enum cmd_policy policy = command_policy(cmd, arg1, p->arg1len);
	if ((cmd->flags & CMDF_MAY_BLOCK) && policy == CMD_FORWARD &&
	    asks_to_block(in, ri->len))
		policy = CMD_STATEFUL;
	upper_name(p, name, sizeof(name));
	switch (policy) {
	case CMD_FORWARD:
		return PV_FORWARD;
	case CMD_LOCAL:
		return answer_locally(p, in, ri);
	case CMD_STATEFUL:
		add_error(ri->reply, "sidepool: %s would change the state of a "
		    "shared server connection; it is not supported yet", name);
		return PV_LOCAL;
	case CMD_REFUSED:
		add_error(ri->reply, "sidepool: %s is not allowed through the "
		    "proxy", name);
		return PV_LOCAL;
	}
	abort();
}

static enum proto_verdict
parse_request(void *state, struct evbuffer *in, const struct cfg_limits *lim,
    struct reqinfo *ri)
{
	struct redis_req_state *st = state;
	struct resp_limits rl;
	char first;

	if (!st->mid) {
		if (evbuffer_copyout(in, &first, 1) != 1)
			return PV_NEED_MORE;
		if (first != '*') {
			enum proto_verdict v = convert_inline(in, lim, ri);
			if (v != PV_FORWARD)
				return v;
		}
		req_init(st);
		st->mid = true;
	}
	to_resp_limits(lim, &rl);
	switch (feed_request(st, in, &rl)) {
	case RESP_NEED_MORE:
		return PV_NEED_MORE;
	case RESP_ERROR:
		add_error(ri->reply, "Protocol error: %s", st->p.err);
		st->mid = false;
		return PV_ERROR_CLOSE;
	case RESP_OK:
		break;
	}
	st->mid = false;
	ri->len = st->off;
	return classify(st, in, ri);
}

static void
reply_init(void *state)
{
	struct redis_reply_state *st = state;

	resp_reply_init(&st->p);
	st->off = 0;
	st->mid = false;
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
		reply_init(st);
		st->mid = true;
	}
	while (st->off < evbuffer_get_length(in)) {
		struct evbuffer_ptr pos;
		struct evbuffer_iovec v[PEEK_VECS];
		evbuffer_ptr_set(in, &pos, st->off, EVBUFFER_PTR_SET);
		int n = evbuffer_peek(in, -1, &pos, v, PEEK_VECS);
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
			return RV_REPLY;
		}
	}
	return RV_NEED_MORE;
}

static void
error_reply(struct evbuffer *out, uint32_t pflags, const char *msg)
{
	evbuffer_add(out, "-ERR sidepool: ", 15);
	for (const char *s = msg; *s != '\0'; s++) {
		char ch = *s == '\r' || *s == '\n' ? ' ' : *s;
		evbuffer_add(out, &ch, 1);
	}
	evbuffer_add(out, "\r\n", 2);
}

static void
probe(struct evbuffer *out)
{
	evbuffer_add(out, "*1\r\n$4\r\nPING\r\n", 14);
}

/* +PONG; an error (LOADING, NOAUTH...) means the server cannot serve. */
static bool
probe_ok(struct evbuffer *in, size_t len)
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
	.probe_ok = probe_ok,
	.default_limits = default_limits,
};
