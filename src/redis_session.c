/*
 * redis_session.c - per-client Redis state, so that nothing one client
 * sets on a server connection is ever seen by another.
 *
 * The rule, command by command:
 * - AUTH, HELLO, SELECT, CLIENT SETNAME/GETNAME/ID/INFO/SETINFO, RESET,
 *   PING, ECHO and QUIT are answered here. The database is the client's:
 *   a pooled connection gets "SELECT n" in front of a request whenever its
 *   database differs from the client's (session_prepare).
 * - MULTI, WATCH and blocking commands take the client's own connection
 *   (NEED_DEDICATED) until EXEC/DISCARD/UNWATCH or the reply; SUBSCRIBE
 *   and MONITOR take it as a stream (NEED_STREAM) until every
 *   subscription is gone. A client that leaves mid-session gets DISCARD or
 *   UNWATCH sent for it, or its connection closed when that is not enough.
 * - Commands a proxy cannot run for a client (CLIENT TRACKING, CLIENT
 *   REPLY, CLIENT KILL/PAUSE, replication, SHUTDOWN...) are refused with
 *   an error naming them, as is anything in the upstream's refuse_commands.
 */
#include "redis_session.h"

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "config.h"
#include "log.h"

#define REDIS_VERSION_SHOWN "7.0.0"

enum chan_kind { CHAN_PLAIN, CHAN_PATTERN, CHAN_SHARD };

/* What sidepool does with a command beyond forwarding it: looked up once
 * per command (by its index in the command table), not by comparing names
 * on every request. */
enum cmd_kind {
	K_PLAIN, K_AUTH, K_HELLO, K_CLIENT, K_RESET, K_QUIT, K_SELECT, K_PING,
	K_ECHO, K_MULTI, K_EXEC, K_DISCARD, K_WATCH, K_UNWATCH, K_MONITOR,
	K_SUBSCRIBE, K_UNSUBSCRIBE, K_PSUBSCRIBE, K_PUNSUBSCRIBE,
	K_SSUBSCRIBE, K_SUNSUBSCRIBE,
};

static const struct { const char *name; enum cmd_kind kind; } special[] = {
	{ "auth", K_AUTH }, { "hello", K_HELLO }, { "client", K_CLIENT },
	{ "reset", K_RESET }, { "quit", K_QUIT }, { "select", K_SELECT },
	{ "ping", K_PING }, { "echo", K_ECHO }, { "multi", K_MULTI },
	{ "exec", K_EXEC }, { "discard", K_DISCARD }, { "watch", K_WATCH },
	{ "unwatch", K_UNWATCH }, { "monitor", K_MONITOR },
	{ "subscribe", K_SUBSCRIBE }, { "unsubscribe", K_UNSUBSCRIBE },
	{ "psubscribe", K_PSUBSCRIBE }, { "punsubscribe", K_PUNSUBSCRIBE },
	{ "ssubscribe", K_SSUBSCRIBE }, { "sunsubscribe", K_SUNSUBSCRIBE },
};

static uint8_t *kinds;
static pthread_once_t kinds_once = PTHREAD_ONCE_INIT;

static void
build_kinds(void)
{
	kinds = calloc(command_count(), 1);
	if (kinds == NULL)
		return;
	for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++) {
		const struct command *c = command_lookup(special[i].name,
		    strlen(special[i].name));
		if (c != NULL)
			kinds[command_index(c)] = (uint8_t)special[i].kind;
	}
}

static enum cmd_kind
kind_of(const struct command *cmd)
{
	pthread_once(&kinds_once, build_kinds);
	return cmd != NULL && kinds != NULL ? (enum cmd_kind)
	    kinds[command_index(cmd)] : K_PLAIN;
}

/* ---- small helpers ------------------------------------------------------- */

static void add_error(struct evbuffer *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Some errors echo the client's argument: CR and LF in it become spaces
 * (as redis-server does) so that one request still gets one reply line.
 */
static void
add_error(struct evbuffer *out, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)buffer_add_vline(out, "", fmt, ap);
	va_end(ap);
}

static void
add_bulk(struct evbuffer *out, const char *s, size_t len)
{
	evbuffer_add_printf(out, "$%zu\r\n", len);
	evbuffer_add(out, s, len);
	evbuffer_add(out, "\r\n", 2);
}

static void
add_bulk_str(struct evbuffer *out, const char *s)
{
	add_bulk(out, s, strlen(s));
}

static void
add_command(struct evbuffer *out, int argc, ...)
{
	va_list ap;

	evbuffer_add_printf(out, "*%d\r\n", argc);
	va_start(ap, argc);
	for (int i = 0; i < argc; i++)
		add_bulk_str(out, va_arg(ap, const char *));
	va_end(ap);
}

static bool
arg_is(const char *arg, size_t len, const char *word)
{
	return len == strlen(word) && strncasecmp(arg, word, len) == 0;
}

static bool
name_is(const char *name, size_t len, const char *word)
{
	return len == strlen(word) && memcmp(name, word, len) == 0;
}

/* argv of the whole request, pulled up: only for the (small) commands
 * sidepool looks into. */
struct args {
	int argc;
	const char **v;
	size_t *len;
};

static bool
split_args(struct evbuffer *in, size_t reqlen, struct args *a)
{
	const char *req = (const char *)evbuffer_pullup(in, (ev_ssize_t)reqlen);
	int max = 0;

	/* the count is on the first line: "*N\r\n" */
	for (size_t i = 1; i < reqlen && req[i] >= '0' && req[i] <= '9'; i++)
		max = max * 10 + (req[i] - '0');
	a->v = calloc((size_t)max + 1, sizeof(*a->v));
	a->len = calloc((size_t)max + 1, sizeof(*a->len));
	if (a->v == NULL || a->len == NULL)
		return false;
	a->argc = resp_argv(req, reqlen, a->v, a->len, max);
	return a->argc > 0;
}

static void
free_args(struct args *a)
{
	free(a->v);
	free(a->len);
}

/*
 * An integer as redis-server reads one (string2ll): an optional '-', then
 * digits with no leading zero ("0" itself, but not "-0", "007", "+1" or
 * " 1"), within a long long.
 */
static bool
parse_index(const char *s, size_t len, long long *out)
{
	bool neg = len > 0 && s[0] == '-';
	size_t i = neg ? 1 : 0;
	unsigned long long v = 0;
	unsigned long long max = neg ? (unsigned long long)LLONG_MAX + 1 :
	    (unsigned long long)LLONG_MAX;

	if (len == 1 && s[0] == '0') {
		*out = 0;
		return true;
	}
	if (i >= len || s[i] < '1' || s[i] > '9')
		return false;
	for (; i < len; i++) {
		if (s[i] < '0' || s[i] > '9' ||
		    v > (max - (unsigned long long)(s[i] - '0')) / 10)
			return false;
		v = v * 10 + (unsigned long long)(s[i] - '0');
	}
	*out = neg ? (long long)(0 - v) : (long long)v;
	return true;
}

/* The command table's arity (redis' convention: N exactly, -N at least N). */
static bool
arity_ok(const struct command *cmd, int argc)
{
	return cmd == NULL || (cmd->arity >= 0 ? argc == cmd->arity :
	    argc >= -cmd->arity);
}

/* ---- channel sets -------------------------------------------------------- */

static bool
chanset_has(const struct chanset *cs, const char *s, size_t len)
{
	for (size_t i = 0; i < cs->n; i++)
		if (strlen(cs->names[i]) == len && memcmp(cs->names[i], s, len) == 0)
			return true;
	return false;
}

static void
chanset_add(struct chanset *cs, const char *s, size_t len)
{
	if (chanset_has(cs, s, len))
		return;
	if (cs->n == cs->cap) {
		size_t cap = cs->cap ? cs->cap * 2 : 4;
		char **v = realloc(cs->names, cap * sizeof(*v));
		if (v == NULL)
			return;
		cs->names = v;
		cs->cap = cap;
	}
	char *copy = strndup(s, len);
	if (copy != NULL)
		cs->names[cs->n++] = copy;
}

static void
chanset_remove(struct chanset *cs, const char *s, size_t len)
{
	for (size_t i = 0; i < cs->n; i++)
		if (strlen(cs->names[i]) == len &&
		    memcmp(cs->names[i], s, len) == 0) {
			free(cs->names[i]);
			cs->names[i] = cs->names[--cs->n];
			return;
		}
}

static void
chanset_clear(struct chanset *cs)
{
	for (size_t i = 0; i < cs->n; i++)
		free(cs->names[i]);
	free(cs->names);
	memset(cs, 0, sizeof(*cs));
}

/* ---- life cycle ---------------------------------------------------------- */

void
session_init(struct redis_session *s)
{
	memset(s, 0, sizeof(*s));
	s->multi_db = -1;
}

static void
clear_subscriptions(struct redis_session *s)
{
	for (int k = 0; k < 3; k++)
		chanset_clear(&s->subs[k]);
}

void
session_free(struct redis_session *s)
{
	clear_subscriptions(s);
	free(s->name);
	s->name = NULL;
}

/* The client's own connection is gone (or about to be): so is everything
 * that lived on it. Database, name and authentication are ours and stay. */
void
session_reset(struct redis_session *s)
{
	s->in_multi = false;
	s->watching = false;
	s->monitor = false;
	s->blocking = 0;
	s->expect = 0;
	s->multi_db = -1;
	if (s->db_pending)
		s->db = s->old_db;
	s->db_pending = false;
	clear_subscriptions(s);
}

static bool
subscribed(const struct redis_session *s)
{
	return s->subs[0].n + s->subs[1].n + s->subs[2].n > 0;
}

/*
 * A transaction being queued, keys being watched, subscriptions or MONITOR:
 * the server's side of it dies with the connection, and nothing here can
 * rebuild it. A subscriber told of the loss by one error could not tell it
 * from the answer to a request of its own in flight (a PING): one reply too
 * many, and every later one shifted; closed, it resubscribes as after any
 * lost connection.
 */
bool
session_binding(const struct redis_session *s)
{
	return s->in_multi || s->watching || s->monitor || subscribed(s);
}

bool
session_active(const struct redis_session *s)
{
	return s->in_multi || s->watching || s->monitor || s->blocking > 0 ||
	    s->expect > 0 || s->db_pending || subscribed(s);
}

static bool
streaming(const struct redis_session *s)
{
	return s->monitor || subscribed(s) || s->expect > 0;
}

/* ---- authentication ------------------------------------------------------ */

static bool
auth_required(const struct cfg_upstream *up)
{
	return up->nusers > 0;
}

/* 0 ok, -1 wrong, and the exact errors redis-server gives. */
static int
check_credentials(const struct cfg_upstream *up, const char *user,
    size_t ulen, const char *pw, size_t pwlen, struct evbuffer *out)
{
	if (!auth_required(up)) {
		if (user == NULL) {
			add_error(out, "-ERR AUTH <password> called without any "
			    "password configured for the default user. Are you "
			    "sure your configuration is correct?");
			return -1;
		}
		if (arg_is(user, ulen, "default"))
			return 0;
	} else {
		for (size_t i = 0; i < up->nusers; i++) {
			const struct cfg_user *u = &up->users[i];
			bool user_ok = user == NULL ?
			    strcmp(u->user, "default") == 0 :
			    (strlen(u->user) == ulen &&
			    memcmp(u->user, user, ulen) == 0);
			if (user_ok && strlen(u->password) == pwlen &&
			    memcmp(u->password, pw, pwlen) == 0)
				return 0;
		}
	}
	add_error(out, "-WRONGPASS invalid username-password pair or user is "
	    "disabled.");
	return -1;
}

static enum proto_verdict
cmd_auth(struct redis_session *s, const struct args *a, struct reqinfo *ri)
{
	int rc;

	if (a->argc == 2)
		rc = check_credentials(ri->upstream, NULL, 0, a->v[1],
		    a->len[1], ri->reply);
	else if (a->argc == 3)
		rc = check_credentials(ri->upstream, a->v[1], a->len[1],
		    a->v[2], a->len[2], ri->reply);
	else {
		add_error(ri->reply, a->argc > 3 ? "-ERR syntax error" :
		    "-ERR wrong number of arguments for 'auth' command");
		return PV_LOCAL;
	}
	if (rc == 0) {
		s->authed = true;
		evbuffer_add(ri->reply, "+OK\r\n", 5);
	}
	return PV_LOCAL;
}

/* ---- local answers ------------------------------------------------------- */

static bool
valid_client_name(const char *n, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (n[i] < '!' || n[i] > '~')
			return false;
	return true;
}

static bool
set_name(struct redis_session *s, const char *n, size_t len,
    struct evbuffer *out)
{
	if (!valid_client_name(n, len)) {
		add_error(out, "-ERR Client names cannot contain spaces, "
		    "newlines or special characters.");
		return false;
	}
	free(s->name);
	s->name = len > 0 ? strndup(n, len) : NULL;
	return true;
}

static void
hello_reply(const struct redis_session *s, const struct reqinfo *ri)
{
	struct evbuffer *o = ri->reply;

	evbuffer_add(o, "*14\r\n", 5);
	add_bulk_str(o, "server");
	add_bulk_str(o, "redis");
	add_bulk_str(o, "version");
	add_bulk_str(o, REDIS_VERSION_SHOWN);
	add_bulk_str(o, "proto");
	evbuffer_add(o, ":2\r\n", 4);
	add_bulk_str(o, "id");
	evbuffer_add_printf(o, ":%llu\r\n", (unsigned long long)ri->client_id);
	add_bulk_str(o, "mode");
	add_bulk_str(o, "standalone");
	add_bulk_str(o, "role");
	add_bulk_str(o, "master");
	add_bulk_str(o, "modules");
	evbuffer_add(o, "*0\r\n", 4);
	(void)s;
}

/*
 * HELLO [protover [AUTH user pass] [SETNAME name]]. Protocol 2 only:
 * version 3 gets -NOPROTO, as a server without RESP3 answers, and clients
 * (redis-py, go-redis, Lettuce, ioredis) fall back to RESP2.
 */
static enum proto_verdict
cmd_hello(struct redis_session *s, const struct args *a, struct reqinfo *ri)
{
	const char *user = NULL, *pw = NULL, *name = NULL;
	size_t ulen = 0, pwlen = 0, namelen = 0;
	long long ver = 2;
	int i = 1;

	if (a->argc >= 2) {
		if (!parse_index(a->v[1], a->len[1], &ver)) {
			add_error(ri->reply, "-ERR Protocol version is not an "
			    "integer or out of range");
			return PV_LOCAL;
		}
		if (ver < 2 || ver > 3) { /* before the options, as redis */
			add_error(ri->reply, "-NOPROTO unsupported protocol "
			    "version");
			return PV_LOCAL;
		}
		i = 2;
	}
	for (; i < a->argc; i++) {
		bool more = i + 1 < a->argc;
		if (arg_is(a->v[i], a->len[i], "auth") && i + 2 < a->argc) {
			user = a->v[i + 1], ulen = a->len[i + 1];
			pw = a->v[i + 2], pwlen = a->len[i + 2];
			i += 2;
		} else if (arg_is(a->v[i], a->len[i], "setname") && more) {
			name = a->v[i + 1], namelen = a->len[i + 1];
			i++;
		} else {
			add_error(ri->reply, "-ERR Syntax error in HELLO option "
			    "'%.*s'", (int)a->len[i], a->v[i]);
			return PV_LOCAL;
		}
	}
	/* As redis-server: the version is checked before any AUTH, so a
	 * refused HELLO 3 authenticates nobody. */
	if (ver == 3) { /* RESP3 is not spoken to clients (docs/redis.md) */
		add_error(ri->reply, "-NOPROTO unsupported protocol version");
		return PV_LOCAL;
	}
	if (user != NULL && check_credentials(ri->upstream, user, ulen, pw,
	    pwlen, ri->reply) == -1)
		return PV_LOCAL;
	if (user != NULL)
		s->authed = true;
	if (auth_required(ri->upstream) && !s->authed) {
		add_error(ri->reply, "-NOAUTH HELLO must be called with the client "
		    "already authenticated, otherwise the HELLO AUTH <user> "
		    "<pass> option can be used to authenticate the client and "
		    "select the RESP protocol version at the same time");
		return PV_LOCAL;
	}
	if (name != NULL && !set_name(s, name, namelen, ri->reply))
		return PV_LOCAL;
	hello_reply(s, ri);
	return PV_LOCAL;
}

static enum proto_verdict
cmd_select(struct redis_session *s, const struct args *a, struct reqinfo *ri)
{
	long long db;

	if (a->argc != 2) {
		add_error(ri->reply, "-ERR wrong number of arguments for "
		    "'select' command");
		return PV_LOCAL;
	}
	if (!parse_index(a->v[1], a->len[1], &db)) {
		add_error(ri->reply, "-ERR value is not an integer or out of "
		    "range");
		return PV_LOCAL;
	}
	if (db < INT_MIN || db > INT_MAX) {
		add_error(ri->reply, "-ERR value is out of range, value must "
		    "between %d and %d", INT_MIN, INT_MAX);
		return PV_LOCAL;
	}
	if (db < 0 || db >= (long long)ri->upstream->databases) {
		add_error(ri->reply, "-ERR DB index is out of range");
		return PV_LOCAL;
	}
	/* After an EXEC that SELECTs, the client's database is known only
	 * once its reply says whether it ran: this SELECT must come after. */
	if (s->db_pending && !ri->can_switch)
		return PV_WAIT;
	if (s->in_multi) {
		/* Queued like any command: the database changes at EXEC. */
		s->multi_db = (int)db;
		ri->pflags |= RPF_TXN_SELECT;
		return PV_FORWARD;
	}
	s->db = (int)db;
	evbuffer_add(ri->reply, "+OK\r\n", 5);
	return PV_LOCAL;
}

static void
client_info_line(const struct redis_session *s, const struct reqinfo *ri)
{
	char line[512];
	int n = snprintf(line, sizeof(line), "id=%llu addr=sidepool laddr=sidepool "
	    "name=%s db=%d sub=%zu psub=%zu ssub=%zu multi=%d watch=%d "
	    "user=default resp=2 lib-name= lib-ver=\n",
	    (unsigned long long)ri->client_id, s->name ? s->name : "", s->db,
	    s->subs[0].n, s->subs[1].n, s->subs[2].n, s->in_multi ? 0 : -1,
	    s->watching ? 1 : 0);
	add_bulk(ri->reply, line, (size_t)n);
}

static enum proto_verdict
cmd_client(struct redis_session *s, const struct args *a, struct reqinfo *ri)
{
	const char *sub = a->argc > 1 ? a->v[1] : "";
	size_t len = a->argc > 1 ? a->len[1] : 0;
	const struct command *sc;

	if (arg_is(sub, len, "setname") && a->argc == 3) {
		if (set_name(s, a->v[2], a->len[2], ri->reply))
			evbuffer_add(ri->reply, "+OK\r\n", 5);
	} else if (arg_is(sub, len, "getname") && a->argc == 2) {
		if (s->name != NULL)
			add_bulk_str(ri->reply, s->name);
		else
			evbuffer_add(ri->reply, "$-1\r\n", 5);
	} else if (arg_is(sub, len, "id") && a->argc == 2) {
		evbuffer_add_printf(ri->reply, ":%llu\r\n",
		    (unsigned long long)ri->client_id);
	} else if ((arg_is(sub, len, "info") || arg_is(sub, len, "list")) &&
	    a->argc == 2) {
		client_info_line(s, ri);
	} else if (arg_is(sub, len, "setinfo") && a->argc == 4) {
		evbuffer_add(ri->reply, "+OK\r\n", 5);
	} else if (arg_is(sub, len, "help")) {
		return PV_FORWARD;
	} else if (a->argc < 2) {
		add_error(ri->reply, "-ERR wrong number of arguments for "
		    "'client' command");
	} else if ((sc = command_subcommand(command_lookup("client", 6), sub,
	    len)) == NULL) {
		add_error(ri->reply, "-ERR unknown subcommand '%.*s'. Try CLIENT "
		    "HELP.", (int)len, sub);
	} else if (!arity_ok(sc, a->argc)) {
		add_error(ri->reply, "-ERR wrong number of arguments for '%s' "
		    "command", sc->name);
	} else {
		char up[32];
		size_t n = len < sizeof(up) - 1 ? len : sizeof(up) - 1;
		for (size_t i = 0; i < n; i++)
			up[i] = (char)toupper((unsigned char)sub[i]);
		up[n] = '\0';
		add_error(ri->reply, "-ERR sidepool: CLIENT %s is not supported "
		    "through the proxy (it needs the client's own server "
		    "connection, or acts on other clients)", up);
	}
	return PV_LOCAL;
}

static enum proto_verdict
cmd_ping_echo(const struct redis_session *s, bool ping, const struct args *a,
    struct reqinfo *ri)
{
	if (ping && a->argc == 1)
		evbuffer_add(ri->reply, "+PONG\r\n", 7);
	else if (a->argc == 2)
		add_bulk(ri->reply, a->v[1], a->len[1]);
	else
		add_error(ri->reply, "-ERR wrong number of arguments for '%s' "
		    "command", ping ? "ping" : "echo");
	(void)s;
	return PV_LOCAL;
}

/* RESET: as a new connection, but authentication is only kept when none
 * is required. The client's own connection, if any, is closed. */
static enum proto_verdict
cmd_reset(struct redis_session *s, const struct args *a, struct reqinfo *ri)
{
	if (a->argc != 1) { /* refused before it resets anything */
		add_error(ri->reply, "-ERR wrong number of arguments for "
		    "'reset' command");
		return PV_LOCAL;
	}
	ri->drop_session = true;
	session_reset(s);
	s->db = 0;
	free(s->name);
	s->name = NULL;
	s->authed = false;
	evbuffer_add(ri->reply, "+RESET\r\n", 8);
	return PV_LOCAL;
}

/* ---- sessions ------------------------------------------------------------ */

/* How many replies a subscribe-family command gets: one per argument, or
 * for an UNSUBSCRIBE without arguments one per subscription (at least 1). */
static unsigned
track_subscription(struct redis_session *s, enum chan_kind kind, bool on,
    const struct args *a)
{
	struct chanset *cs = &s->subs[kind];

	if (!on && a->argc == 1) {
		unsigned n = cs->n > 0 ? (unsigned)cs->n : 1;
		chanset_clear(cs);
		return n;
	}
	for (int i = 1; i < a->argc; i++) {
		if (on)
			chanset_add(cs, a->v[i], a->len[i]);
		else
			chanset_remove(cs, a->v[i], a->len[i]);
	}
	return (unsigned)a->argc - 1;
}

static bool
pubsub_of(enum cmd_kind k, enum chan_kind *kind, bool *on)
{
	switch (k) {
	case K_SUBSCRIBE: *kind = CHAN_PLAIN; *on = true; return true;
	case K_UNSUBSCRIBE: *kind = CHAN_PLAIN; *on = false; return true;
	case K_PSUBSCRIBE: *kind = CHAN_PATTERN; *on = true; return true;
	case K_PUNSUBSCRIBE: *kind = CHAN_PATTERN; *on = false; return true;
	case K_SSUBSCRIBE: *kind = CHAN_SHARD; *on = true; return true;
	case K_SUNSUBSCRIBE: *kind = CHAN_SHARD; *on = false; return true;
	default: return false;
	}
}

/* A request while the connection is a stream: everything is forwarded,
 * and we count the replies it will get. */
static enum proto_verdict
stream_request(struct redis_session *s, enum cmd_kind k, const struct args *a,
    struct reqinfo *ri)
{
	enum chan_kind kind;
	bool on;

	ri->need = NEED_STREAM;
	ri->no_timeout = true;
	if (s->monitor)
		return PV_FORWARD; /* the server ignores it, or answers it */
	if (pubsub_of(k, &kind, &on)) {
		if (on && a->argc < 2)
			s->expect += 1; /* an arity error */
		else
			s->expect += track_subscription(s, kind, on, a);
		return PV_FORWARD;
	}
	s->expect += 1; /* PING, or an error: one reply */
	return PV_FORWARD;
}

static enum proto_verdict
start_stream(struct redis_session *s, enum cmd_kind k, const struct args *a,
    struct reqinfo *ri)
{
	/* Once a stream, every byte the connection sends goes to the client
	 * as it comes: replies still owed to requests sent before (an EXEC
	 * on the client's own connection) must have come first. */
	if (!ri->can_switch)
		return PV_WAIT;
	if (k == K_MONITOR) {
		s->monitor = true;
		s->expect += 1; /* +OK, then the feed */
		ri->need = NEED_STREAM;
		ri->no_timeout = true;
		return PV_FORWARD;
	}
	return stream_request(s, k, a, ri);
}

static enum proto_verdict
transaction(struct redis_session *s, enum cmd_kind k, struct reqinfo *ri)
{
	bool end = k == K_EXEC || k == K_DISCARD;

	if ((k == K_MULTI || k == K_WATCH) && !ri->has_dedicated &&
	    !ri->can_switch)
		return PV_WAIT;
	if (end && !s->in_multi && !ri->has_dedicated) {
		add_error(ri->reply, "-ERR %s without MULTI", k == K_EXEC ?
		    "EXEC" : "DISCARD");
		return PV_LOCAL;
	}
	if (k == K_UNWATCH && !ri->has_dedicated) {
		evbuffer_add(ri->reply, "+OK\r\n", 5);
		return PV_LOCAL;
	}
	ri->need = NEED_DEDICATED;
	if (k == K_MULTI && !s->in_multi) {
		s->in_multi = true;
		s->multi_aborted = false;
		ri->pflags |= RPF_MULTI;
	} else if (k == K_WATCH && !s->in_multi) {
		s->watching = true;
	} else if (end && s->in_multi) {
		s->in_multi = false;
		s->watching = false;
		ri->pflags |= RPF_TXN_END;
		if (k == K_EXEC && s->multi_aborted) {
			/* As redis does after a queue-time error: nothing of
			 * the transaction runs. */
			ri->pflags |= RPF_EXECABORT;
		} else if (s->multi_db >= 0 && k == K_EXEC) {
			/* The db moves if EXEC runs (not on a WATCH abort):
			 * until its reply says, the client keeps this
			 * connection and whatever db the server left it in. */
			ri->pflags |= RPF_EXEC_SELECT;
			s->exec_db = s->multi_db;
			s->old_db = s->db;
			s->db_pending = true;
		}
		if (s->multi_db >= 0)
			ri->pflags |= RPF_TXN_SELECT;
		s->multi_db = -1;
		s->multi_aborted = false;
	} else if (k == K_UNWATCH && !s->in_multi) {
		s->watching = false;
	}
	return PV_FORWARD;
}

/*
 * MULTI, EXEC, DISCARD, WATCH or UNWATCH with the wrong number of
 * arguments: the server answers its arity error and changes nothing
 * (MULTI x opens no transaction, WATCH alone watches nothing), so it is
 * forwarded as it is and never taken for a session change. EXEC is the
 * exception: redis answers -EXECABORT and discards the transaction and
 * the watches, in or out of MULTI, so the session ends with it.
 */
static enum proto_verdict
transaction_bad_arity(struct redis_session *s, enum cmd_kind k,
    struct reqinfo *ri)
{
	if (s->in_multi || s->watching)
		ri->need = NEED_DEDICATED;
	if (k != K_EXEC)
		return PV_FORWARD;
	if (s->in_multi) {
		ri->pflags |= RPF_TXN_END;
		if (s->multi_db >= 0)
			ri->pflags |= RPF_TXN_SELECT;
	}
	s->in_multi = false;
	s->watching = false;
	s->multi_db = -1;
	s->multi_aborted = false;
	return PV_FORWARD;
}

static enum proto_verdict
blocking(struct redis_session *s, struct reqinfo *ri)
{
	if (s->in_multi) {
		/* Inside MULTI it does not block: queued like the rest. */
		ri->need = NEED_DEDICATED;
		return PV_FORWARD;
	}
	if (!ri->has_dedicated && !ri->can_switch)
		return PV_WAIT;
	s->blocking++;
	ri->need = NEED_DEDICATED;
	ri->no_timeout = true;
	ri->pflags |= RPF_BLOCKING;
	return PV_FORWARD;
}

/* XREAD and XREADGROUP block only when asked to: BLOCK before STREAMS. */
static bool
asks_to_block(const struct args *a)
{
	for (int i = 1; i < a->argc; i++) {
		if (arg_is(a->v[i], a->len[i], "streams"))
			return false;
		if (arg_is(a->v[i], a->len[i], "block"))
			return true;
	}
	return false;
}

/* An entry is a command ("flushall") or a subcommand ("config|set"). */
static bool
refused_by_config(const struct cfg_upstream *up, const char *name, size_t len,
    const struct args *a)
{
	for (size_t i = 0; i < up->nrefused; i++) {
		const char *r = up->refused[i];
		const char *bar = strchr(r, '|');
		if (bar == NULL) {
			if (name_is(name, len, r))
				return true;
			continue;
		}
		if ((size_t)(bar - r) == len && memcmp(r, name, len) == 0 &&
		    a->argc > 1 && arg_is(a->v[1], a->len[1], bar + 1))
			return true;
	}
	return false;
}

static bool
refuses_subcommands(const struct cfg_upstream *up, const char *name,
    size_t len)
{
	for (size_t i = 0; i < up->nrefused; i++) {
		const char *bar = strchr(up->refused[i], '|');
		if (bar != NULL && (size_t)(bar - up->refused[i]) == len &&
		    memcmp(up->refused[i], name, len) == 0)
			return true;
	}
	return false;
}

static void
upper(const char *name, size_t len, char *buf, size_t size)
{
	size_t n = len < size - 1 ? len : size - 1;

	for (size_t i = 0; i < n; i++)
		buf[i] = (char)toupper((unsigned char)name[i]);
	buf[n] = '\0';
}

/* Answered by sidepool whatever the state (not queued in MULTI). */
static bool
always_local(enum cmd_kind k)
{
	return k == K_AUTH || k == K_HELLO || k == K_CLIENT || k == K_RESET ||
	    k == K_QUIT;
}

static enum proto_verdict
answer_local(struct redis_session *s, enum cmd_kind k, const struct args *a,
    struct reqinfo *ri)
{
	switch (k) {
	case K_QUIT:
		evbuffer_add(ri->reply, "+OK\r\n", 5);
		return PV_LOCAL_CLOSE;
	case K_AUTH:
		return cmd_auth(s, a, ri);
	case K_HELLO:
		return cmd_hello(s, a, ri);
	case K_CLIENT:
		return cmd_client(s, a, ri);
	default:
		return cmd_reset(s, a, ri);
	}
}

static enum proto_verdict
dispatch(struct redis_session *s, const struct command *cmd, enum cmd_kind k,
    enum cmd_policy policy, const char *name, size_t len,
    const struct args *a, struct reqinfo *ri)
{
	char upname[RESP_NAME_MAX + 1];
	enum chan_kind ck;
	bool on;

	if (auth_required(ri->upstream) && !s->authed && k != K_AUTH &&
	    k != K_HELLO && k != K_QUIT) {
		add_error(ri->reply, "-NOAUTH Authentication required.");
		return PV_LOCAL;
	}
	upper(name, len, upname, sizeof(upname));
	if (refused_by_config(ri->upstream, name, len, a)) {
		add_error(ri->reply, "-ERR sidepool: %s is refused by this proxy's "
		    "configuration (refuse_commands)", upname);
		return PV_LOCAL;
	}
	/* A stream keeps every reply in the server's order: only QUIT and
	 * RESET are ours; the server refuses what it does not allow there. */
	if (streaming(s) && k != K_QUIT && k != K_RESET)
		return stream_request(s, k, a, ri);
	if (s->in_multi && (k == K_AUTH || k == K_HELLO || k == K_CLIENT)) {
		/* Its answer is ours, the transaction's results the server's:
		 * refused, and EXEC then aborts, as after any queue error. */
		add_error(ri->reply, "-ERR sidepool: %s inside MULTI is not "
		    "supported", upname);
		return PV_LOCAL;
	}
	/* In a stream, QUIT and RESET come after the replies it still owes
	 * (SUBSCRIBE's confirmations, MONITOR's +OK): answered now, they
	 * would overtake them, and RESET would drop them with the
	 * connection. Asked again at each reply of the stream. */
	if ((k == K_QUIT || k == K_RESET) && s->expect > 0)
		return PV_WAIT;
	/* RESET closes the client's own connection: the replies still owed
	 * on it (MULTI's +OK, a blocking pop's) must have come first. */
	if (k == K_RESET && ri->has_dedicated && !ri->can_switch &&
	    !streaming(s))
		return PV_WAIT;
	if (always_local(k))
		return answer_local(s, k, a, ri);
	if (policy == CMD_REFUSED) {
		add_error(ri->reply, "-ERR sidepool: %s is not allowed through the "
		    "proxy", upname);
		return PV_LOCAL;
	}
	if (pubsub_of(k, &ck, &on) || k == K_MONITOR) {
		if (s->in_multi) {
			/* redis would subscribe at EXEC, leaving a stream on a
			 * connection about to go back to the pool. */
			add_error(ri->reply, "-ERR sidepool: %s inside MULTI is not "
			    "supported", upname);
			return PV_LOCAL;
		}
		return start_stream(s, k, a, ri);
	}
	switch (k) {
	case K_MULTI:
	case K_EXEC:
	case K_DISCARD:
	case K_WATCH:
	case K_UNWATCH:
		if (!arity_ok(cmd, a->argc))
			return transaction_bad_arity(s, k, ri);
		return transaction(s, k, ri);
	case K_SELECT:
		return cmd_select(s, a, ri);
	default:
		break;
	}
	if (s->in_multi || s->watching) {
		ri->need = NEED_DEDICATED;
		return PV_FORWARD;
	}
	if (k == K_PING || k == K_ECHO)
		return cmd_ping_echo(s, k == K_PING, a, ri);
	if (cmd != NULL && ((cmd->flags & CMDF_BLOCKING) ||
	    ((cmd->flags & CMDF_MAY_BLOCK) && asks_to_block(a))))
		return blocking(s, ri);
	if (policy == CMD_STATEFUL) {
		add_error(ri->reply, "-ERR sidepool: %s would change the state of "
		    "a shared server connection and is not supported through "
		    "the proxy", upname);
		return PV_LOCAL;
	}
	return PV_FORWARD;
}

/* Commands whose arguments sidepool must see. Everything else is
 * forwarded without pulling the request up. */
static bool
needs_args(const struct command *cmd, enum cmd_kind k,
    const struct cfg_upstream *up, const char *name, size_t len)
{
	return k != K_PLAIN || (cmd != NULL && (cmd->flags & CMDF_MAY_BLOCK)) ||
	    (up->nrefused > 0 && refuses_subcommands(up, name, len));
}

/*
 * After the decision: an error answered here inside MULTI aborts the
 * transaction, as a queue-time error does in redis; an EXEC of an aborted
 * transaction is sent as DISCARD (the server must drop what it queued) and
 * answered EXECABORT.
 */
static enum proto_verdict
finish_dispatch(struct redis_session *s, enum proto_verdict v,
    struct evbuffer *in, struct reqinfo *ri)
{
	static const char discard[] = "*1\r\n$7\r\nDISCARD\r\n";
	char first;

	if (v == PV_LOCAL && s->in_multi &&
	    evbuffer_copyout(ri->reply, &first, 1) == 1 && first == '-')
		s->multi_aborted = true;
	if (v == PV_FORWARD && (ri->pflags & RPF_EXECABORT)) {
		if (evbuffer_drain(in, ri->len) != 0 ||
		    evbuffer_prepend(in, discard, sizeof(discard) - 1) != 0)
			return PV_ERROR_CLOSE;
		ri->len = sizeof(discard) - 1;
	}
	return v;
}

/*
 * "POST" and "Host:" as a command are an HTTP request sent to Redis (a
 * browser made to attack it, cross-protocol scripting): redis-server logs
 * it and closes that client without a word. Forwarded, they would make it
 * close the shared connection, failing the requests of every other client
 * on it; so sidepool does what redis does, here.
 */
static bool
is_http_attack(const char *name, size_t len)
{
	return name_is(name, len, "post") || name_is(name, len, "host:");
}

static enum proto_verdict
refuse_http_attack(const char *name, size_t len)
{
	static _Thread_local struct log_limit limit;

	log_limited(&limit, LOG_WARN, "a client sent '%.*s' as a Redis command: "
	    "an HTTP request, likely a cross-protocol attack from a browser; "
	    "closing it, as redis-server does (check what can reach this "
	    "listener)", (int)len, name);
	return PV_LOCAL_CLOSE;
}

enum proto_verdict
session_dispatch(struct redis_session *s, const struct command *cmd,
    const char *name, size_t namelen, const char *arg1, size_t arg1len,
    struct evbuffer *in, struct reqinfo *ri)
{
	struct args a = { .argc = 1 };
	enum cmd_kind k = kind_of(cmd);
	enum cmd_policy policy = cmd == NULL ? CMD_FORWARD :
	    (cmd->flags & CMDF_SUBCOMMANDS) ? command_policy(cmd, arg1, arg1len) :
	    cmd->policy;
	enum proto_verdict v;

	if (cmd == NULL && is_http_attack(name, namelen))
		return refuse_http_attack(name, namelen);
	/* The common case, decided in a few comparisons: a plain command
	 * from an authenticated client with no session. */
	if (k == K_PLAIN && policy == CMD_FORWARD && !s->in_multi &&
	    !s->watching && !streaming(s) && ri->upstream->nrefused == 0 &&
	    (s->authed || !auth_required(ri->upstream)) &&
	    (cmd == NULL || !(cmd->flags & (CMDF_BLOCKING | CMDF_MAY_BLOCK))))
		return PV_FORWARD;
	if (!needs_args(cmd, k, ri->upstream, name, namelen))
		return finish_dispatch(s, dispatch(s, cmd, k, policy, name,
		    namelen, &a, ri), in, ri);
	if (!split_args(in, ri->len, &a)) {
		free_args(&a);
		add_error(ri->reply, "-ERR sidepool: out of memory");
		return PV_ERROR_CLOSE;
	}
	v = dispatch(s, cmd, k, policy, name, namelen, &a, ri);
	free_args(&a);
	return finish_dispatch(s, v, in, ri);
}

/* ---- replies ------------------------------------------------------------- */

/* A published message is not the answer to any request. */
static bool
is_message(struct evbuffer *in, size_t len)
{
	static const char *const heads[] = { "*3\r\n$7\r\nmessage\r\n",
	    "*4\r\n$8\r\npmessage\r\n", "*3\r\n$8\r\nsmessage\r\n" };
	char buf[24];
	size_t n = len < sizeof(buf) ? len : sizeof(buf);

	if (evbuffer_copyout(in, buf, n) != (ev_ssize_t)n)
		return false;
	for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++)
		if (n >= strlen(heads[i]) &&
		    memcmp(buf, heads[i], strlen(heads[i])) == 0)
			return true;
	return false;
}

void
session_reply_seen(struct redis_session *s, uint32_t pflags,
    struct evbuffer *in, size_t len)
{
	if (pflags & RPF_EXEC_SELECT) {
		char head[3] = "";
		/* An array of results: EXEC ran, SELECT with it. */
		if (evbuffer_copyout(in, head, 3) >= 2 && head[0] == '*' &&
		    head[1] != '-')
			s->db = s->exec_db;
		else
			s->db = s->old_db;
		s->db_pending = false;
		return;
	}
	if (pflags & RPF_BLOCKING) {
		if (s->blocking > 0)
			s->blocking--;
		return;
	}
	/* After MONITOR's +OK the feed is neither: expect is 0 by then. */
	if (s->expect > 0 && !is_message(in, len))
		s->expect--;
}

/* ---- the connection side ------------------------------------------------- */

unsigned
session_prepare(struct redis_conn *conn, struct redis_session *s,
    uint32_t pflags, struct evbuffer *out)
{
	unsigned n = 0;
	char db[16];

	if (!conn->in_multi && !s->db_pending && conn->db != s->db) {
		snprintf(db, sizeof(db), "%d", s->db);
		add_command(out, 2, "SELECT", db);
		conn->db = s->db;
		n++;
	}
	if (pflags & RPF_MULTI)
		conn->in_multi = true;
	if (pflags & RPF_TXN_END) {
		conn->in_multi = false;
		if (pflags & RPF_TXN_SELECT)
			conn->db = -1; /* EXEC or DISCARD decides: ask again */
	}
	return n;
}

unsigned
session_handshake(struct redis_conn *conn, const struct cfg_upstream *up,
    struct evbuffer *out)
{
	conn->db = 0;
	conn->in_multi = false;
	if (up->auth_password == NULL)
		return 0;
	if (up->auth_user != NULL)
		add_command(out, 3, "AUTH", up->auth_user, up->auth_password);
	else
		add_command(out, 2, "AUTH", up->auth_password);
	return 1;
}

int
session_abandon(struct redis_session *s, struct evbuffer *out)
{
	int n = 0;

	if (s->monitor || streaming(s) || s->blocking > 0)
		n = -1;
	else if (s->in_multi)
		add_command(out, 1, "DISCARD"), n = 1;
	else if (s->watching)
		add_command(out, 1, "UNWATCH"), n = 1;
	session_reset(s);
	return n;
}
