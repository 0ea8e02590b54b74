/*
 * memcache.c - the Memcached text protocol: request framing and validation
 * as memcached 1.6 does it, noreply and quiet mode kept off shared server
 * connections, reply framing. See docs/memcache.md for the decisions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "buffer.h"
#include "memcache.h"

/*
 * Command kinds. The validator of each kind reproduces the checks memcached
 * makes, in memcached's order, so that the client sees the same bytes.
 */
enum mc_kind {
	MC_K_GET,       /* get gets bget <key>* */
	MC_K_GAT,       /* gat gats <exptime> <key>* */
	MC_K_STORE,     /* set add replace append prepend + data block */
	MC_K_CAS,       /* cas <key> <flags> <exptime> <bytes> <cas> + data */
	MC_K_ARITH,     /* incr decr */
	MC_K_DELETE,
	MC_K_TOUCH,
	MC_K_VERBOSITY,
	MC_K_FLUSH_ALL,
	MC_K_PLAIN,     /* version, stats, mn: forwarded as they are */
	MC_K_MG,
	MC_K_MS,
	MC_K_MD,
	MC_K_MA,
	MC_K_ME,
	MC_K_QUIT,
	MC_K_REFUSED,   /* server administration: never through a shared pool */
};

#define MC_CF_NOREPLY 0x01 /* memcached honours a last token "noreply" */

struct mc_cmd {
	const char *name;
	enum mc_kind kind;
	unsigned char min_tokens; /* fewer: "ERROR" (memcached's WANT_TOKENS) */
	unsigned char max_tokens; /* more: "ERROR"; 0 = any number */
	unsigned char flags;
	unsigned char shape;      /* enum mc_shape of the reply */
};

/* The command table: every command sidepool knows, in one place. */
static const struct mc_cmd mc_cmds[] = {
	{ "get",            MC_K_GET,       2, 0, 0,             MC_SHAPE_VALUES },
	{ "gets",           MC_K_GET,       2, 0, 0,             MC_SHAPE_VALUES },
	{ "mg",             MC_K_MG,        2, 0, 0,             MC_SHAPE_META },
	{ "set",            MC_K_STORE,     5, 6, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "ms",             MC_K_MS,        2, 0, 0,             MC_SHAPE_LINE },
	{ "delete",         MC_K_DELETE,    2, 4, 0,             MC_SHAPE_LINE },
	{ "md",             MC_K_MD,        2, 0, 0,             MC_SHAPE_LINE },
	{ "add",            MC_K_STORE,     5, 6, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "replace",        MC_K_STORE,     5, 6, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "append",         MC_K_STORE,     5, 6, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "prepend",        MC_K_STORE,     5, 6, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "cas",            MC_K_CAS,       6, 7, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "incr",           MC_K_ARITH,     3, 4, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "decr",           MC_K_ARITH,     3, 4, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "ma",             MC_K_MA,        2, 0, 0,             MC_SHAPE_META },
	{ "touch",          MC_K_TOUCH,     3, 4, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "gat",            MC_K_GAT,       2, 0, 0,             MC_SHAPE_VALUES },
	{ "gats",           MC_K_GAT,       2, 0, 0,             MC_SHAPE_VALUES },
	{ "mn",             MC_K_PLAIN,     1, 0, 0,             MC_SHAPE_LINE },
	{ "me",             MC_K_ME,        1, 0, 0,             MC_SHAPE_LINE },
	{ "bget",           MC_K_GET,       2, 0, 0,             MC_SHAPE_VALUES },
	{ "version",        MC_K_PLAIN,     1, 0, 0,             MC_SHAPE_LINE },
	{ "stats",          MC_K_PLAIN,     1, 0, 0,             MC_SHAPE_STATS },
	{ "verbosity",      MC_K_VERBOSITY, 2, 3, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "flush_all",      MC_K_FLUSH_ALL, 1, 3, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "quit",           MC_K_QUIT,      1, 0, 0,             MC_SHAPE_LINE },
	{ "shutdown",       MC_K_REFUSED,   1, 0, 0,             MC_SHAPE_LINE },
	{ "cache_memlimit", MC_K_REFUSED,   1, 0, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "slabs",          MC_K_REFUSED,   1, 0, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "lru_crawler",    MC_K_REFUSED,   1, 0, 0,             MC_SHAPE_LINE },
	{ "lru",            MC_K_REFUSED,   1, 0, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "watch",          MC_K_REFUSED,   1, 0, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "extstore",       MC_K_REFUSED,   1, 0, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "refresh_certs",  MC_K_REFUSED,   1, 0, MC_CF_NOREPLY, MC_SHAPE_LINE },
	{ "misbehave",      MC_K_REFUSED,   1, 0, 0,             MC_SHAPE_LINE },
	{ "debugtime",      MC_K_REFUSED,   1, 0, 0,             MC_SHAPE_LINE },
};

/* memcached's own error texts */
#define MC_E_UNKNOWN "ERROR"
#define MC_E_FORMAT "CLIENT_ERROR bad command line format"
#define MC_E_EXPTIME "CLIENT_ERROR invalid exptime argument"
#define MC_E_DELTA "CLIENT_ERROR invalid numeric delta argument"
#define MC_E_DELETE \
	"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
#define MC_E_TOO_LARGE "SERVER_ERROR object too large for cache"

/* sidepool's own: CLIENT_ERROR for what the client sent, SERVER_ERROR for
 * what went wrong here or at the server */
#define MC_E_BINARY \
	"CLIENT_ERROR sidepool: binary protocol not supported, use the text protocol\r\n"
#define MC_E_LINE "CLIENT_ERROR sidepool: command line too long\r\n"
#define MC_E_NOMEM "SERVER_ERROR sidepool: out of memory\r\n"

/* ---- tokens and numbers ---- */

/* isspace() in the C locale, which is what memcached runs in */
static bool
mc_isspace(char c)
{
	return c == ' ' || (c >= '\t' && c <= '\r');
}

bool
mc_next_token(const char *line, size_t len, size_t *pos, struct mc_token *t)
{
	size_t i = *pos, start;

	while (i < len && line[i] == ' ')
		i++;
	if (i >= len || line[i] == '\0') {
		*pos = len;
		return false;
	}
	start = i;
	while (i < len && line[i] != ' ' && line[i] != '\0')
		i++;
	t->p = line + start;
	t->len = i - start;
	/* a NUL ends the line for memcached (it uses strlen) */
	*pos = (i < len && line[i] == '\0') ? len : i;
	return true;
}

size_t
mc_tokenize(const char *line, size_t len, struct mc_token *tok, size_t max,
    size_t *argc)
{
	struct mc_token t;
	size_t pos = 0, kept = 0, n = 0;

	while (mc_next_token(line, len, &pos, &t)) {
		if (kept < max)
			tok[kept++] = t;
		n++;
	}
	*argc = n;
	return kept;
}

/* What glibc's strtoul() and strtol() see in a token: white space, a sign,
 * decimal digits, then whatever stopped them. */
struct mc_num {
	bool neg;
	bool digits;
	bool overflow; /* more than 64 bits of magnitude */
	uint64_t mag;
	size_t end;    /* index of the first byte after the digits */
};

static void
mc_scan_number(const char *s, size_t len, struct mc_num *n)
{
	size_t i = 0;

	memset(n, 0, sizeof(*n));
	while (i < len && mc_isspace(s[i]))
		i++;
	if (i < len && (s[i] == '+' || s[i] == '-'))
		n->neg = s[i++] == '-';
	for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
		unsigned d = (unsigned)(s[i] - '0');

		n->digits = true;
		if (n->overflow || n->mag > (UINT64_MAX - d) / 10)
			n->overflow = true;
		else
			n->mag = n->mag * 10 + d;
	}
	n->end = i;
}

/* memcached accepts the number when the token ends after the digits or
 * the next byte is white space: "5\tjunk" is 5. */
static bool
mc_number_ends(const char *s, size_t len, const struct mc_num *n)
{
	return n->digits && (n->end == len || mc_isspace(s[n->end]));
}

/* strtoul() then memcached's "negative only if a '-' is in the token" */
static bool
mc_parse_ulong(const char *s, size_t len, uint64_t *out)
{
	struct mc_num n;
	uint64_t v;

	mc_scan_number(s, len, &n);
	if (n.overflow || !mc_number_ends(s, len, &n))
		return false;
	v = n.neg ? (uint64_t)0 - n.mag : n.mag;
	if ((int64_t)v < 0 && memchr(s, '-', len) != NULL)
		return false;
	*out = v;
	return true;
}

bool
mc_parse_u64(const char *s, size_t len, uint64_t *out)
{
	return mc_parse_ulong(s, len, out);
}

bool
mc_parse_u32(const char *s, size_t len, uint32_t *out)
{
	uint64_t v;

	if (!mc_parse_ulong(s, len, &v))
		return false;
	*out = (uint32_t)v; /* memcached stores the long into 32 bits */
	return true;
}

bool
mc_parse_i32(const char *s, size_t len, int32_t *out)
{
	struct mc_num n;
	uint64_t v;

	mc_scan_number(s, len, &n);
	if (!mc_number_ends(s, len, &n) || n.overflow)
		return false;
	/* strtol() range: ERANGE beyond a 64-bit long */
	if ((!n.neg && n.mag > (uint64_t)INT64_MAX) ||
	    (n.neg && n.mag > (uint64_t)INT64_MAX + 1))
		return false;
	v = n.neg ? (uint64_t)0 - n.mag : n.mag;
	/* then the long is stored into an int32_t: two's complement wrap */
	*out = (int32_t)(uint32_t)(v & 0xffffffffu);
	return true;
}

/* Is head[0..n) the start of s, or s the start of head? */
static enum mc_long
mc_long_word(const char *head, size_t n, const char *s)
{
	size_t len = strlen(s);

	if (memcmp(head, s, n < len ? n : len) != 0)
		return MC_LONG_NO;
	return n >= len ? MC_LONG_YES : MC_LONG_MAYBE;
}

enum mc_long
mc_long_line(const char *head, size_t n)
{
	enum mc_long get, gets;
	size_t i = 0;

	while (i < n && i <= 100 && head[i] == ' ')
		i++;
	if (i > 100)
		return MC_LONG_NO;
	head += i;
	n -= i;
	get = mc_long_word(head, n, "get ");
	gets = mc_long_word(head, n, "gets ");
	if (get == MC_LONG_YES || gets == MC_LONG_YES)
		return MC_LONG_YES;
	if (get == MC_LONG_MAYBE || gets == MC_LONG_MAYBE)
		return MC_LONG_MAYBE;
	return MC_LONG_NO;
}

/* ---- command lines ---- */

/* A command line, tokenized as memcached does it. */
struct mc_cmdline {
	const char *line;
	size_t len;                       /* up to the "\r\n", or a NUL */
	size_t total;                     /* the whole line, "\n" included */
	struct mc_token tok[MC_TOKENS_MAX];
	size_t ntok;                      /* kept: at most 23, like memcached */
	size_t argc;                      /* all of them */
	const struct mc_cmd *cmd;
};

static bool
mc_tok_is(const struct mc_token *t, const char *s)
{
	size_t n = strlen(s);

	return t->len == n && memcmp(t->p, s, n) == 0;
}

static const struct mc_cmd *
mc_cmd_find(const struct mc_token *name)
{
	size_t i;

	for (i = 0; i < sizeof(mc_cmds) / sizeof(mc_cmds[0]); i++)
		if (mc_tok_is(name, mc_cmds[i].name))
			return &mc_cmds[i];
	return NULL;
}

/* Answer here; nothing at all when the client said noreply (memcached
 * suppresses its errors too in that case). */
static void
mc_fail(struct mc_plan *plan, const char *text)
{
	plan->action = MC_ACT_REPLY;
	if (plan->noreply)
		plan->reply[0] = '\0';
	else
		snprintf(plan->reply, sizeof(plan->reply), "%s\r\n", text);
}

static void
mc_forward(struct mc_plan *plan, const struct mc_cmdline *cl, uint32_t pflags)
{
	plan->action = MC_ACT_FORWARD;
	plan->pflags = pflags | cl->cmd->shape;
	if (plan->noreply)
		plan->pflags |= MC_PF_NOREPLY;
}

/*
 * Forward without token i (noreply, q): drop it and the spaces before it.
 * One space stays when the token before ends in '\r': memcached drops a
 * '\r' only right before the '\n', so without the space "delete a\r
 * noreply\n" would reach it as "delete a\r\n", another key.
 */
static void
mc_strip_token(struct mc_plan *plan, const struct mc_cmdline *cl, size_t i)
{
	const struct mc_token *prev = &cl->tok[i - 1], *t = &cl->tok[i];

	plan->strip_from = (size_t)(prev->p + prev->len - cl->line);
	if (prev->p[prev->len - 1] == '\r')
		plan->strip_from++;
	plan->strip_to = (size_t)(t->p + t->len - cl->line);
}

static bool
mc_key_ok(const struct mc_token *key)
{
	return key->len <= MC_KEY_MAX;
}

/* Does a data block of vlen bytes fit the limits? */
static bool
mc_value_fits(const struct mc_cmdline *cl, const struct cfg_limits *lim,
    int32_t vlen)
{
	uint64_t total = (uint64_t)cl->total + (uint64_t)vlen + 2;

	return (uint64_t)vlen <= lim->max_value_size &&
	    total <= lim->max_request_size;
}

/*
 * memcached refuses a value too large for it and also deletes the key's
 * old item ("avoid stale data persisting in cache") for set and ms. We
 * refuse it ourselves, so the delete is ours to send: md keeps a base64
 * key base64.
 */
static void
mc_plan_evict(struct mc_plan *plan, const struct mc_cmdline *cl)
{
	const struct mc_token *key = &cl->tok[1];
	bool b64 = false;

	if (cl->cmd->kind == MC_K_MS)
		for (size_t i = 3; i < cl->ntok; i++)
			if (cl->tok[i].len == 1 && cl->tok[i].p[0] == 'b')
				b64 = true;
	snprintf(plan->evict, sizeof(plan->evict), "%s %.*s%s\r\n",
	    cl->cmd->kind == MC_K_MS ? "md" : "delete", (int)key->len, key->p,
	    b64 ? " b" : "");
	plan->action = MC_ACT_EVICT;
	plan->pflags = MC_PF_EVICTED | (plan->noreply ? MC_PF_NOREPLY : 0);
}

/* A data block follows: forward it, or refuse it and drop it unread, as
 * memcached swallows the block of an item it cannot store. */
static void
mc_expect_data(struct mc_plan *plan, const struct mc_cmdline *cl,
    const struct cfg_limits *lim, int32_t vlen, uint32_t pflags)
{
	plan->data_len = (uint64_t)vlen + 2;
	if (!mc_value_fits(cl, lim, vlen)) {
		mc_fail(plan, MC_E_TOO_LARGE);
		plan->swallow = true;
		if (strcmp(cl->cmd->name, "set") == 0 || cl->cmd->kind == MC_K_MS)
			mc_plan_evict(plan, cl);
		return;
	}
	plan->has_data = true;
	mc_forward(plan, cl, pflags);
}

/* get gets bget <key>*, gat gats <exptime> <key>* */
static void
mc_plan_get(struct mc_plan *plan, const struct mc_cmdline *cl,
    const struct cfg_limits *lim)
{
	struct mc_token t;
	size_t pos = 0, i = 0, nkeys = 0, first = 1;
	int32_t exptime;

	if (cl->cmd->kind == MC_K_GAT) {
		if (!mc_parse_i32(cl->tok[1].p, cl->tok[1].len, &exptime)) {
			mc_fail(plan, MC_E_EXPTIME);
			return;
		}
		first = 2;
	}
	/* every key, not only the 23 kept tokens: a multiget is unbounded */
	while (mc_next_token(cl->line, cl->len, &pos, &t)) {
		if (i++ < first)
			continue;
		if (!mc_key_ok(&t)) {
			mc_fail(plan, MC_E_FORMAT);
			return;
		}
		nkeys++;
	}
	if (nkeys > lim->max_args) {
		plan->action = MC_ACT_REPLY;
		snprintf(plan->reply, sizeof(plan->reply),
		    "CLIENT_ERROR sidepool: too many keys (max %llu)\r\n",
		    (unsigned long long)lim->max_args);
		return;
	}
	mc_forward(plan, cl, 0);
}

/* set add replace append prepend cas: <key> <flags> <exptime> <bytes> [<cas>] */
static void
mc_plan_store(struct mc_plan *plan, const struct mc_cmdline *cl,
    const struct cfg_limits *lim)
{
	const struct mc_token *tok = cl->tok;
	uint32_t flags;
	int32_t exptime, vlen;
	uint64_t cas;

	if (!mc_key_ok(&tok[1]) ||
	    !mc_parse_u32(tok[2].p, tok[2].len, &flags) ||
	    !mc_parse_i32(tok[3].p, tok[3].len, &exptime) ||
	    !mc_parse_i32(tok[4].p, tok[4].len, &vlen) ||
	    (cl->cmd->kind == MC_K_CAS &&
	    !mc_parse_u64(tok[5].p, tok[5].len, &cas)) ||
	    vlen < 0 || vlen > INT32_MAX - 2) {
		/* no data is swallowed: memcached reads it as a command */
		mc_fail(plan, MC_E_FORMAT);
		return;
	}
	mc_expect_data(plan, cl, lim, vlen, 0);
}

/* incr decr <key> <delta>, touch <key> <exptime> */
static void
mc_plan_key_number(struct mc_plan *plan, const struct mc_cmdline *cl)
{
	const struct mc_token *n = &cl->tok[2];
	uint64_t delta;
	int32_t exptime;

	if (!mc_key_ok(&cl->tok[1]))
		mc_fail(plan, MC_E_FORMAT);
	else if (cl->cmd->kind == MC_K_ARITH &&
	    !mc_parse_u64(n->p, n->len, &delta))
		mc_fail(plan, MC_E_DELTA);
	else if (cl->cmd->kind == MC_K_TOUCH &&
	    !mc_parse_i32(n->p, n->len, &exptime))
		mc_fail(plan, MC_E_EXPTIME);
	else
		mc_forward(plan, cl, 0);
}

/* delete <key> [0] [noreply]: the old "hold time" must be 0 */
static void
mc_plan_delete(struct mc_plan *plan, const struct mc_cmdline *cl)
{
	bool hold0, valid;

	if (cl->ntok > 2) {
		hold0 = mc_tok_is(&cl->tok[2], "0");
		plan->noreply = mc_tok_is(&cl->tok[cl->ntok - 1], "noreply");
		valid = (cl->ntok == 3 && (hold0 || plan->noreply)) ||
		    (cl->ntok == 4 && hold0 && plan->noreply);
		if (!valid) {
			mc_fail(plan, MC_E_DELETE);
			return;
		}
	}
	if (!mc_key_ok(&cl->tok[1])) {
		mc_fail(plan, MC_E_FORMAT);
		return;
	}
	if (plan->noreply)
		mc_strip_token(plan, cl, cl->ntok - 1);
	mc_forward(plan, cl, 0);
}

/* verbosity <level>, flush_all [<delay>] */
static void
mc_plan_admin(struct mc_plan *plan, const struct mc_cmdline *cl)
{
	const struct mc_token *n = &cl->tok[1];
	uint32_t level;
	int32_t delay;

	if (cl->cmd->kind == MC_K_VERBOSITY) {
		if (!mc_parse_u32(n->p, n->len, &level)) {
			mc_fail(plan, MC_E_FORMAT);
			return;
		}
	} else if (cl->ntok != (plan->noreply ? 2u : 1u)) {
		if (!mc_parse_i32(n->p, n->len, &delay)) {
			mc_fail(plan, MC_E_EXPTIME);
			return;
		}
	}
	mc_forward(plan, cl, 0);
}

/* Meta quiet mode: strip the one 'q' flag and remember which replies the
 * server would have hidden. Two 'q' flags are left for the server to
 * refuse ("duplicate flag"); an error is never hidden. */
static void
mc_plan_quiet(struct mc_plan *plan, const struct mc_cmdline *cl,
    size_t first_flag, uint32_t *pflags)
{
	size_t i, q = 0, nq = 0;

	for (i = first_flag; i < cl->ntok; i++) {
		if (cl->tok[i].p[0] == 'q') {
			q = i;
			nq++;
		}
	}
	if (nq != 1)
		return;
	mc_strip_token(plan, cl, q);
	switch (cl->cmd->kind) {
	case MC_K_MG:
		*pflags = MC_PF_DROP_EN;
		break;
	case MC_K_MA:
		*pflags = MC_PF_DROP_HD | MC_PF_DROP_VA;
		break;
	default: /* ms, md */
		*pflags = MC_PF_DROP_HD;
		break;
	}
}

/* mg ms md ma <key> [<datalen>] <flag>* */
static void
mc_plan_meta(struct mc_plan *plan, const struct mc_cmdline *cl,
    const struct cfg_limits *lim)
{
	bool ms = cl->cmd->kind == MC_K_MS;
	uint32_t pflags = 0;
	int32_t vlen = 0;

	if (!mc_key_ok(&cl->tok[1]) || (ms && cl->ntok == 2)) {
		mc_fail(plan, MC_E_FORMAT);
		return;
	}
	if (cl->ntok > MC_META_TOKENS_MAX) {
		mc_fail(plan, cl->cmd->kind == MC_K_MG ?
		    "CLIENT_ERROR options flags are too long" :
		    "CLIENT_ERROR options flags too long");
		return;
	}
	if (ms && (!mc_parse_i32(cl->tok[2].p, cl->tok[2].len, &vlen) ||
	    vlen < 0 || vlen > INT32_MAX - 2)) {
		mc_fail(plan, MC_E_FORMAT);
		return;
	}
	/* the server checks the flags themselves and answers one error line */
	mc_plan_quiet(plan, cl, ms ? 3 : 2, &pflags);
	if (ms) {
		mc_expect_data(plan, cl, lim, vlen, pflags);
		return;
	}
	mc_forward(plan, cl, pflags);
}

static void
mc_plan_refused(struct mc_plan *plan, const struct mc_cmdline *cl)
{
	char text[96];

	snprintf(text, sizeof(text),
	    "CLIENT_ERROR sidepool: '%s' is not supported through the proxy",
	    cl->cmd->name);
	mc_fail(plan, text);
}

static void
mc_plan_kind(struct mc_plan *plan, const struct mc_cmdline *cl,
    const struct cfg_limits *lim)
{
	switch (cl->cmd->kind) {
	case MC_K_GET:
	case MC_K_GAT:
		mc_plan_get(plan, cl, lim);
		break;
	case MC_K_STORE:
	case MC_K_CAS:
		mc_plan_store(plan, cl, lim);
		break;
	case MC_K_ARITH:
	case MC_K_TOUCH:
		mc_plan_key_number(plan, cl);
		break;
	case MC_K_DELETE:
		mc_plan_delete(plan, cl);
		break;
	case MC_K_VERBOSITY:
	case MC_K_FLUSH_ALL:
		mc_plan_admin(plan, cl);
		break;
	case MC_K_PLAIN:
		mc_forward(plan, cl, 0);
		break;
	case MC_K_ME:
		if (cl->ntok < 2 || !mc_key_ok(&cl->tok[1]))
			mc_fail(plan, MC_E_FORMAT);
		else
			mc_forward(plan, cl, 0);
		break;
	case MC_K_MG:
	case MC_K_MS:
	case MC_K_MD:
	case MC_K_MA:
		mc_plan_meta(plan, cl, lim);
		break;
	case MC_K_QUIT:
		plan->action = MC_ACT_QUIT;
		break;
	case MC_K_REFUSED:
		mc_plan_refused(plan, cl);
		break;
	default:
		abort();
	}
}

void
mc_plan_line(const char *line, size_t len, const struct cfg_limits *lim,
    struct mc_plan *plan)
{
	struct mc_cmdline cl;
	const struct mc_cmd *cmd;
	const char *nul;

	memset(plan, 0, sizeof(*plan));
	plan->name = "unknown";
	cl.total = len + 1;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if ((nul = memchr(line, '\0', len)) != NULL)
		len = (size_t)(nul - line);
	cl.line = line;
	cl.len = len;
	cl.ntok = mc_tokenize(line, len, cl.tok, MC_TOKENS_MAX, &cl.argc);

	cmd = cl.ntok > 0 ? mc_cmd_find(&cl.tok[0]) : NULL;
	if (cmd == NULL) {
		mc_fail(plan, MC_E_UNKNOWN);
		return;
	}
	cl.cmd = cmd;
	plan->name = cmd->name;
	if (cl.ntok < cmd->min_tokens ||
	    (cmd->max_tokens != 0 && cl.ntok > cmd->max_tokens)) {
		mc_fail(plan, MC_E_UNKNOWN);
		return;
	}
	/* as set_noreply_maybe(): the last token, before any other check */
	if ((cmd->flags & MC_CF_NOREPLY) && cl.ntok >= 2 &&
	    mc_tok_is(&cl.tok[cl.ntok - 1], "noreply")) {
		plan->noreply = true;
		mc_strip_token(plan, &cl, cl.ntok - 1);
	}
	mc_plan_kind(plan, &cl, lim);
	if (plan->action != MC_ACT_FORWARD)
		plan->strip_from = plan->strip_to = 0;
}

/* ---- evbuffer helpers ---- */

/*
 * Look for the "\n" ending the line that starts at offset from, resuming
 * where the last call stopped (*scanned bytes after from are known to hold
 * none), so that a long line arriving in pieces is searched once.
 */
static bool
mc_find_eol(struct evbuffer *in, size_t from, size_t *scanned, size_t *nl,
    uint64_t *examined)
{
	size_t avail = evbuffer_get_length(in), start = from + *scanned;
	struct evbuffer_ptr p;

	if (start >= avail)
		return false;
	if (evbuffer_ptr_set(in, &p, start, EVBUFFER_PTR_SET) != 0)
		return false;
	p = evbuffer_search_eol(in, &p, NULL, EVBUFFER_EOL_LF);
	if (p.pos < 0) {
		*examined += avail - start;
		*scanned = avail - from;
		return false;
	}
	*examined += (size_t)p.pos - start + 1;
	*nl = (size_t)p.pos;
	return true;
}

/* Copy n bytes at offset off (bounded: line heads, "\r\n" checks). */
static bool
mc_copy_at(struct evbuffer *in, size_t off, void *out, size_t n)
{
	struct evbuffer_ptr p;

	if (evbuffer_ptr_set(in, &p, off, EVBUFFER_PTR_SET) != 0)
		return false;
	return evbuffer_copyout_from(in, &p, out, n) == (ev_ssize_t)n;
}

static bool
mc_crlf_at(struct evbuffer *in, size_t off)
{
	char two[2];

	return mc_copy_at(in, off, two, 2) && two[0] == '\r' && two[1] == '\n';
}

/* Remove bytes [from, to) of the head of in, keeping what is around. */
static int
mc_strip(struct evbuffer *in, size_t from, size_t to)
{
	char stackbuf[256], *head = stackbuf;
	int rc = 0;

	if (from > sizeof(stackbuf) && (head = malloc(from)) == NULL)
		return -1;
	if (evbuffer_remove(in, head, from) != (int)from ||
	    evbuffer_drain(in, to - from) != 0 ||
	    evbuffer_prepend(in, head, from) != 0)
		rc = -1;
	if (head != stackbuf)
		free(head);
	return rc;
}

/* ---- requests ---- */

static int mc_error_reply(struct evbuffer *out, uint32_t pflags,
    const char *msg);

enum mc_req_phase {
	MC_RQ_LINE,    /* looking for the end of a command line */
	MC_RQ_DATA,    /* line planned; waiting for its data block */
	MC_RQ_SWALLOW, /* dropping the data block of a refused item */
};

struct mc_req_state {
	enum mc_req_phase phase;
	size_t scanned;      /* LINE: bytes known to hold no "\n" */
	size_t line_len;     /* DATA: the command line, "\n" included */
	uint64_t data_len;   /* DATA: block bytes; SWALLOW: bytes left to drop */
	size_t strip_from;   /* DATA: line bytes to remove when forwarding */
	size_t strip_to;
	uint32_t pflags;
	const char *name;
	uint64_t examined;   /* bytes searched or copied, ever (tests) */
};

static void
mc_req_init(void *state)
{
	memset(state, 0, sizeof(struct mc_req_state));
}

/* Ready for the next request; the count of examined bytes stays. */
static void
mc_req_reset(struct mc_req_state *st)
{
	uint64_t examined = st->examined;

	memset(st, 0, sizeof(*st));
	st->examined = examined;
}

uint64_t
mc_req_examined(const void *state)
{
	return ((const struct mc_req_state *)state)->examined;
}

static enum proto_verdict
mc_req_close(struct mc_req_state *st, struct reqinfo *ri, const char *name,
    const char *text)
{
	ri->name = name;
	ri->len = 0;
	evbuffer_add(ri->reply, text, strlen(text));
	mc_req_reset(st);
	return PV_ERROR_CLOSE;
}

/* The request is whole at the head of in: strip what the server must not
 * see (noreply, q) and hand it over. */
static enum proto_verdict
mc_req_forward(struct mc_req_state *st, struct evbuffer *in,
    struct reqinfo *ri, uint64_t data_len)
{
	size_t len = st->line_len + (size_t)data_len;

	if (st->strip_to > st->strip_from) {
		if (mc_strip(in, st->strip_from, st->strip_to) != 0)
			return mc_req_close(st, ri, st->name, MC_E_NOMEM);
		len -= st->strip_to - st->strip_from;
	}
	ri->len = len;
	ri->pflags = st->pflags;
	ri->name = st->name;
	mc_req_reset(st);
	return PV_FORWARD;
}

/*
 * The data block is counted, never scanned: it is binary and may be big.
 * Whether it ends in "\r\n" is the server's to say: memcached reads exactly
 * <bytes>+2 either way and answers one line ("bad data chunk", or an error
 * about the flags or the size that it finds first), so forwarding it is
 * both safe for the connection and exact for the client.
 */
static enum proto_verdict
mc_req_data(struct mc_req_state *st, struct evbuffer *in, struct reqinfo *ri)
{
	if (evbuffer_get_length(in) < st->line_len + st->data_len)
		return PV_NEED_MORE;
	return mc_req_forward(st, in, ri, st->data_len);
}

static enum proto_verdict
mc_req_swallow(struct mc_req_state *st, struct evbuffer *in,
    struct reqinfo *ri)
{
	size_t avail = evbuffer_get_length(in);

	if (avail == 0)
		return PV_NEED_MORE;
	ri->len = avail < st->data_len ? avail : (size_t)st->data_len;
	ri->name = st->name;
	st->data_len -= ri->len;
	if (st->data_len == 0)
		mc_req_reset(st);
	return PV_SKIP;
}

static enum proto_verdict
mc_req_act(struct mc_req_state *st, struct evbuffer *in,
    const struct mc_plan *plan, size_t line_len, struct reqinfo *ri)
{
	ri->name = plan->name;
	switch (plan->action) {
	case MC_ACT_QUIT:
		ri->len = line_len;
		mc_req_reset(st);
		return PV_LOCAL_CLOSE;
	case MC_ACT_REPLY:
		evbuffer_add(ri->reply, plan->reply, strlen(plan->reply));
		ri->len = line_len;
		mc_req_reset(st);
		if (plan->swallow && plan->data_len > 0) {
			st->phase = MC_RQ_SWALLOW;
			st->data_len = plan->data_len;
			st->name = plan->name;
		}
		return PV_LOCAL;
	case MC_ACT_EVICT:
		/* the line becomes the delete; the data block is dropped */
		if (evbuffer_drain(in, line_len) != 0 ||
		    evbuffer_prepend(in, plan->evict, strlen(plan->evict)) != 0)
			return mc_req_close(st, ri, plan->name, MC_E_NOMEM);
		ri->len = strlen(plan->evict);
		ri->pflags = plan->pflags;
		mc_req_reset(st);
		if (plan->data_len > 0) {
			st->phase = MC_RQ_SWALLOW;
			st->data_len = plan->data_len;
			st->name = plan->name;
		}
		return PV_FORWARD;
	case MC_ACT_FORWARD:
		st->line_len = line_len;
		st->pflags = plan->pflags;
		st->strip_from = plan->strip_from;
		st->strip_to = plan->strip_to;
		st->name = plan->name;
		if (!plan->has_data)
			return mc_req_forward(st, in, ri, 0);
		st->phase = MC_RQ_DATA;
		st->data_len = plan->data_len;
		return mc_req_data(st, in, ri);
	}
	abort();
}

/* memcached's long-get rule on the first n bytes of the line. */
static enum mc_long
mc_req_long(struct evbuffer *in, size_t n)
{
	char head[MC_LONG_HEAD];

	if (n > sizeof(head))
		n = sizeof(head);
	if (n > 0 && !mc_copy_at(in, 0, head, n))
		return MC_LONG_NO;
	return mc_long_line(head, n);
}

/* Closed for max_request_size: what client.c says for a request it has
 * to refuse (reply_error(c, 0, ...)), so the client reads the same bytes
 * whichever of the two refuses it. */
static enum proto_verdict
mc_req_too_large(struct mc_req_state *st, struct reqinfo *ri)
{
	ri->name = "unknown";
	ri->len = 0;
	mc_error_reply(ri->reply, 0, "request larger than max_request_size");
	mc_req_reset(st);
	return PV_ERROR_CLOSE;
}

enum mc_limit { MC_LIM_OK, MC_LIM_LINE, MC_LIM_REQUEST };

/*
 * The size limits on a command line: have bytes of it are here, all of it
 * when whole (its "\n" not counted). They are decided as a reader given
 * one byte at a time would decide them, however the bytes came: the limit
 * such a reader hits first wins, the line limit when one byte breaks both.
 * Each rule, once broken, stays broken as bytes are added, so it was broken
 * by some first k <= n bytes exactly when it is broken at n; n is what we
 * have, or the first byte over max_request_size if that comes sooner. A
 * whole line is then judged as one: its end decides a long-get head still
 * undecided, and its "\n" counts towards the request.
 */
static enum mc_limit
mc_req_limit(struct evbuffer *in, const struct cfg_limits *lim, size_t have,
    bool whole)
{
	size_t n = have;
	enum mc_long rule = MC_LONG_MAYBE;

	if (n > lim->max_request_size)
		n = (size_t)lim->max_request_size + 1;
	if (n > lim->max_line_length) {
		rule = mc_req_long(in, n);
		if (rule == MC_LONG_NO)
			return MC_LIM_LINE;
	}
	if (have > lim->max_request_size)
		return MC_LIM_REQUEST;
	if (!whole)
		return MC_LIM_OK;
	if (have > lim->max_line_length && rule != MC_LONG_YES)
		return MC_LIM_LINE;
	if (have + 1 > lim->max_request_size)
		return MC_LIM_REQUEST;
	return MC_LIM_OK;
}

static enum proto_verdict
mc_req_line(struct mc_req_state *st, struct evbuffer *in,
    const struct cfg_limits *lim, struct reqinfo *ri)
{
	size_t avail = evbuffer_get_length(in), nl = 0;
	unsigned char first;
	const char *line;
	struct mc_plan plan;
	bool whole;

	if (avail == 0)
		return PV_NEED_MORE;
	if (st->scanned == 0 && mc_copy_at(in, 0, &first, 1) && first == 0x80)
		return mc_req_close(st, ri, "binary", MC_E_BINARY);
	whole = mc_find_eol(in, 0, &st->scanned, &nl, &st->examined);
	switch (mc_req_limit(in, lim, whole ? nl : avail, whole)) {
	case MC_LIM_LINE:
		return mc_req_close(st, ri, "unknown", MC_E_LINE);
	case MC_LIM_REQUEST:
		return mc_req_too_large(st, ri);
	case MC_LIM_OK:
		break;
	}
	if (!whole)
		return PV_NEED_MORE;
	line = nl > 0 ? (const char *)evbuffer_pullup(in, (ev_ssize_t)nl) : "";
	if (line == NULL)
		return mc_req_close(st, ri, "unknown", MC_E_NOMEM);
	st->examined += nl;
	mc_plan_line(line, nl, lim, &plan);
	return mc_req_act(st, in, &plan, nl + 1, ri);
}

static enum proto_verdict
mc_parse_request(void *state, struct evbuffer *in,
    const struct cfg_limits *lim, struct reqinfo *ri)
{
	struct mc_req_state *st = state;

	ri->len = 0;
	ri->pflags = 0;
	switch (st->phase) {
	case MC_RQ_LINE:
		return mc_req_line(st, in, lim, ri);
	case MC_RQ_DATA:
		return mc_req_data(st, in, ri);
	case MC_RQ_SWALLOW:
		return mc_req_swallow(st, in, ri);
	}
	abort();
}

/* ---- replies ---- */

static bool
mc_parse_len(const char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0 || n > 19)
		return false;
	for (i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = v;
	return true;
}

static const struct {
	const char *word;
	enum mc_code code;
} mc_reply_words[] = {
	{ "VALUE", MC_R_VALUE },
	{ "END", MC_R_END },
	{ "VA", MC_R_VA },
	{ "HD", MC_R_HD },
	{ "EN", MC_R_EN },
	{ "STAT", MC_R_STAT },
	{ "ITEM", MC_R_STAT },
	{ "PREFIX", MC_R_STAT },
	{ "ERROR", MC_R_ERROR },
	{ "CLIENT_ERROR", MC_R_ERROR },
	{ "SERVER_ERROR", MC_R_ERROR },
};

void
mc_reply_classify(const char *line, size_t len, struct mc_reply_line *out)
{
	struct mc_token tok[4];
	size_t argc, n, i, at = 0;

	memset(out, 0, sizeof(*out));
	out->code = MC_R_OTHER;
	n = mc_tokenize(line, len, tok, 4, &argc);
	if (n == 0)
		return;
	for (i = 0; i < sizeof(mc_reply_words) / sizeof(mc_reply_words[0]); i++) {
		if (mc_tok_is(&tok[0], mc_reply_words[i].word)) {
			out->code = mc_reply_words[i].code;
			break;
		}
	}
	/* VALUE <key> <flags> <bytes> [<cas>], VA <size> <flag>* */
	if (out->code == MC_R_VALUE)
		at = 3;
	else if (out->code == MC_R_VA)
		at = 1;
	/* memcached's item lengths are ints: anything larger is a desync */
	if (at != 0 && at < n)
		out->has_len = mc_parse_len(tok[at].p, tok[at].len, &out->len) &&
		    out->len <= INT32_MAX;
}

enum mc_reply_phase {
	MC_RP_LINE, /* looking for the end of a reply line */
	MC_RP_DATA, /* waiting for a data block counted by its line */
};

struct mc_reply_state {
	enum mc_reply_phase phase;
	size_t pos;          /* bytes of the reply framed so far */
	size_t scanned;      /* LINE: bytes after pos known to hold no "\n" */
	uint64_t data_len;   /* DATA: block bytes, "\r\n" included */
	bool last_block;     /* DATA: the reply ends with this block (VA) */
	unsigned lines;      /* lines of this reply seen */
	enum mc_code first;  /* code of its first line: quiet drops */
	uint64_t examined;
};

/* Longest head of a line worth looking at: a VALUE line with a 250-byte
 * key and its numbers fits; the rest of a longer line never matters. */
#define MC_REPLY_HEAD 320

static void
mc_reply_init(void *state)
{
	memset(state, 0, sizeof(struct mc_reply_state));
}

static void
mc_reply_reset(struct mc_reply_state *st)
{
	uint64_t examined = st->examined;

	memset(st, 0, sizeof(*st));
	st->examined = examined;
}

uint64_t
mc_reply_examined(const void *state)
{
	return ((const struct mc_reply_state *)state)->examined;
}

static bool
mc_reply_dropped(uint32_t pflags, enum mc_code first)
{
	if (pflags & MC_PF_NOREPLY)
		return true;
	return (first == MC_R_EN && (pflags & MC_PF_DROP_EN)) ||
	    (first == MC_R_HD && (pflags & MC_PF_DROP_HD)) ||
	    (first == MC_R_VA && (pflags & MC_PF_DROP_VA));
}

static enum reply_verdict
mc_reply_done(struct mc_reply_state *st, uint32_t pflags,
    struct replyinfo *ri)
{
	ri->len = st->pos;
	ri->drop = mc_reply_dropped(pflags, st->first);
	if ((pflags & MC_PF_EVICTED) && !ri->drop)
		ri->replace = MC_E_TOO_LARGE "\r\n";
	mc_reply_reset(st);
	return RV_REPLY;
}

static enum reply_verdict
mc_reply_error(struct mc_reply_state *st, struct replyinfo *ri,
    const char *why)
{
	ri->err = why;
	mc_reply_reset(st);
	return RV_ERROR;
}

/* What a reply line means for a reply of this shape. */
enum mc_step { MC_STEP_MORE, MC_STEP_DATA, MC_STEP_DONE, MC_STEP_BAD };

static enum mc_step
mc_reply_step(const struct mc_reply_state *st, uint32_t pflags,
    const struct mc_reply_line *rl, bool whole)
{
	switch (pflags & MC_PF_SHAPE_MASK) {
	case MC_SHAPE_VALUES:
		if (rl->code == MC_R_VALUE)
			return rl->has_len && whole ? MC_STEP_DATA : MC_STEP_BAD;
		if (rl->code == MC_R_END || rl->code == MC_R_ERROR)
			return MC_STEP_DONE;
		return MC_STEP_BAD;
	case MC_SHAPE_META:
		if (rl->code == MC_R_VA)
			return rl->has_len ? MC_STEP_DATA : MC_STEP_BAD;
		return MC_STEP_DONE;
	case MC_SHAPE_STATS:
		if (rl->code == MC_R_STAT)
			return MC_STEP_MORE;
		/* RESET, OK, ERROR...: a one-line answer, never after STATs */
		return rl->code == MC_R_END || st->lines == 1 ?
		    MC_STEP_DONE : MC_STEP_BAD;
	default:
		return MC_STEP_DONE;
	}
}

/* One reply line is at [pos, nl]: classify it and move on. */
static enum reply_verdict
mc_reply_line(struct mc_reply_state *st, struct evbuffer *in, size_t nl,
    uint32_t pflags, struct replyinfo *ri)
{
	char head[MC_REPLY_HEAD];
	size_t len = nl - st->pos, n;
	struct mc_reply_line rl;

	if (len > 0) {
		n = len < sizeof(head) ? len : sizeof(head);
		if (!mc_copy_at(in, st->pos, head, n))
			return mc_reply_error(st, ri, "cannot read reply line");
		st->examined += n;
		if (n == len && head[n - 1] == '\r')
			n--;
	} else {
		n = 0;
	}
	mc_reply_classify(head, n, &rl);
	if (st->lines++ == 0)
		st->first = rl.code;
	st->pos = nl + 1;
	st->scanned = 0;
	switch (mc_reply_step(st, pflags, &rl, len <= sizeof(head))) {
	case MC_STEP_DONE:
		return mc_reply_done(st, pflags, ri);
	case MC_STEP_DATA:
		st->phase = MC_RP_DATA;
		st->data_len = rl.len + 2;
		st->last_block = rl.code == MC_R_VA;
		return RV_NEED_MORE;
	case MC_STEP_MORE:
		return RV_NEED_MORE;
	case MC_STEP_BAD:
		break;
	}
	return mc_reply_error(st, ri, "unexpected reply line from the server");
}

static enum reply_verdict
mc_parse_reply(void *state, struct evbuffer *in, uint32_t pflags,
    struct replyinfo *ri)
{
	struct mc_reply_state *st = state;
	size_t avail = evbuffer_get_length(in), nl;
	enum reply_verdict v;

	ri->len = 0;
	ri->drop = false;
	ri->push = false;
	ri->busy_error = false;
	ri->err = NULL;
	for (;;) {
		if (st->phase == MC_RP_DATA) {
			if (avail < st->pos + st->data_len)
				return RV_NEED_MORE;
			st->examined += 2;
			if (!mc_crlf_at(in, st->pos + (size_t)st->data_len - 2))
				return mc_reply_error(st, ri,
				    "data block not followed by \\r\\n");
			st->pos += (size_t)st->data_len;
			st->phase = MC_RP_LINE;
			if (st->last_block)
				return mc_reply_done(st, pflags, ri);
		}
		/* the same limit whether or not the "\n" is there yet,
		 * so that how the server's bytes were cut does not matter */
		if (!mc_find_eol(in, st->pos, &st->scanned, &nl,
		    &st->examined)) {
			if (avail - st->pos > MC_REPLY_LINE_MAX)
				return mc_reply_error(st, ri,
				    "reply line too long");
			return RV_NEED_MORE;
		}
		if (nl - st->pos > MC_REPLY_LINE_MAX)
			return mc_reply_error(st, ri, "reply line too long");
		v = mc_reply_line(st, in, nl, pflags, ri);
		if (v != RV_NEED_MORE)
			return v;
	}
}

/* ---- the rest of the table ---- */

static int
mc_error_reply(struct evbuffer *out, uint32_t pflags, const char *msg)
{
	if (pflags & MC_PF_NOREPLY)
		return 0;
	return buffer_add_line(out, "SERVER_ERROR sidepool: ", "%s", msg);
}

static void
mc_probe(struct evbuffer *out)
{
	evbuffer_add(out, "mn\r\n", 4);
}

static void
mc_default_limits(struct cfg_limits *lim)
{
	if (lim->max_request_size == 0)
		lim->max_request_size = MC_DEFAULT_MAX_REQUEST;
	if (lim->max_value_size == 0)
		lim->max_value_size = MC_DEFAULT_MAX_VALUE;
	if (lim->max_args == 0)
		lim->max_args = MC_DEFAULT_MAX_ARGS;
	if (lim->max_line_length == 0)
		lim->max_line_length = MC_DEFAULT_MAX_LINE;
	if (lim->max_pending == 0)
		lim->max_pending = MC_DEFAULT_MAX_PENDING;
	if (lim->max_output == 0)
		lim->max_output = MC_DEFAULT_MAX_OUTPUT;
}

const struct proto memcache_proto = {
	.name = "memcache",
	.req_state_size = sizeof(struct mc_req_state),
	.reply_state_size = sizeof(struct mc_reply_state),
	.req_init = mc_req_init,
	.parse_request = mc_parse_request,
	.reply_init = mc_reply_init,
	.parse_reply = mc_parse_reply,
	.error_reply = mc_error_reply,
	.probe = mc_probe,
	.default_limits = mc_default_limits,
};
