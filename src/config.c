/*
 * config.c - load sidepool.yml into an immutable struct config.
 *
 * Owns the schema: walking the YAML document key by key, filling defaults,
 * cross-checking names and addresses, and every "file:line:col: what is
 * wrong (what to do)" diagnostic. It never logs and never exits: the caller
 * (main, reload) decides what to do with the errors.
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L	/* strdup, inet_pton, sysconf under -std=c11 */
#endif

#include "config.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <yaml.h>

#define MAX_ERRORS	100		/* past this, the rest is noise */
#define MAX_FILE_SIZE	(16u << 20)	/* a config is kilobytes; refuse junk */
#define NAME_MAX_LEN	64		/* upstream names end up in stats */

#define MS_SECOND	1000ull
#define MS_HOUR		(3600ull * MS_SECOND)

#define ATTR_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Where a canonical address is used, to find duplicates after the walk. */
struct addr_use {
	const char	*text;	/* cfg_addr.text, owned by the config */
	const char	*owner;	/* "listener #2" or "upstream 'redis'" */
	yaml_mark_t	 mark;
	bool		 is_listener;
	size_t		 order;	/* position in the file, to keep sorts stable */
};

/* Nodes an upstream keeps for messages about two keys together. */
enum mark {
	MARK_NONE,
	MARK_SIZE,
	MARK_MAX,
	MARK_MIN_IDLE,
	MARK_RETRY,
	NMARKS
};

struct listener_draft {
	struct cfg_listener	*l;
	char			 name[32];	/* "listener #2" */
	char			 where[40];	/* " in listener #2" */
	yaml_node_t		*listen, *upstream, *mode;	/* values */
	bool			 has_addr, upstream_ok;
};

struct upstream_draft {
	struct cfg_upstream	*u;
	yaml_node_t		*key;		/* the name, for locations */
	char			 name[NAME_MAX_LEN + 16];	/* "upstream 'x'" */
	char			 where[NAME_MAX_LEN + 32];
	char			 pool_where[NAME_MAX_LEN + 32];
	char			 limits_where[NAME_MAX_LEN + 32];
	bool			 has_protocol, has_servers;
	yaml_node_t		*marks[NMARKS];
	yaml_node_t		*auth_node;
};

struct loader {
	const char		*name;	/* file name in messages */
	const char		*text;
	size_t			 len;
	struct config_errors	*errs;
	size_t			 nerrors;
	bool			 oom;
	yaml_document_t		 doc;
	struct config		*cfg;
	struct listener_draft	*ldrafts;
	struct upstream_draft	*udrafts;
	struct addr_use		*uses;
	size_t			 nuses, capuses;
	bool			 bad_listeners, bad_upstreams;	/* reported */
};

/* One walk of a mapping: where it is (for messages) and what it fills. */
struct scope {
	struct loader	*ld;
	const char	*where;	/* " in listener #2"; "" at the top level */
	void		*obj;	/* the draft, for the rules' functions */
	void		*fields;/* the struct plain values are stored in */
	yaml_node_t	**marks;/* NMARKS of them, where rules mark nodes */
};

typedef void apply_fn(struct scope *, const char *, yaml_node_t *);

/*
 * Most keys are one value read, checked and stored in a field of the
 * scope's struct: those are data (a kind, the field, its range), read by
 * apply_rule. The others name a function.
 */
enum value_kind {
	V_FUNC,		/* apply does everything */
	V_INT,		/* int, lo..hi */
	V_UINT,		/* unsigned, lo..hi */
	V_U64,		/* uint64_t, lo..hi */
	V_MS,		/* uint64_t milliseconds from "5s"; range says lo..hi */
	V_SIZE,		/* uint64_t bytes from "16k" */
	V_MODE,		/* mode_t, octal */
	V_PATH,		/* char *, absolute */
	V_LOG_PATH,	/* char *, absolute or "stderr" */
	V_SECRET,	/* char *, one line */
};

struct key_rule {
	const char	*key;
	apply_fn	*apply;
	enum value_kind	 kind;
	size_t		 off;	/* of the field in scope->fields */
	uint64_t	 lo, hi;
	const char	*range;	/* V_MS: lo..hi as messages write it */
	enum mark	 mark;	/* where to keep the value's node */
};

/* offsetof, checked: a field of another type than t does not compile. */
#define FIELD(s, m, t)	(offsetof(s, m) + 0 * _Generic(((s *)0)->m, t: 0))

#define R_FUNC(k, f)		{ .key = (k), .apply = (f), .kind = V_FUNC }
#define R_NUM(k, kd, s, m, t, l, h, r, mk) \
	{ .key = (k), .kind = (kd), .off = FIELD(s, m, t), .lo = (l), \
	  .hi = (h), .range = (r), .mark = (mk) }
#define R_INT(k, s, m, l, h)	R_NUM(k, V_INT, s, m, int, l, h, NULL, MARK_NONE)
#define R_UINT(k, s, m, l, h)	R_NUM(k, V_UINT, s, m, unsigned, l, h, NULL, \
				    MARK_NONE)
#define R_U64(k, s, m, l, h)	R_NUM(k, V_U64, s, m, uint64_t, l, h, NULL, \
				    MARK_NONE)
#define R_MS(k, s, m, l, h, r)	R_NUM(k, V_MS, s, m, uint64_t, l, h, r, \
				    MARK_NONE)
#define R_SIZE(k, s, m)		R_NUM(k, V_SIZE, s, m, uint64_t, 0, 0, NULL, \
				    MARK_NONE)
#define R_MODE(k, s, m)		R_NUM(k, V_MODE, s, m, mode_t, 0, 0, NULL, \
				    MARK_NONE)
#define R_PATH(k, s, m)		R_NUM(k, V_PATH, s, m, char *, 0, 0, NULL, \
				    MARK_NONE)
#define R_LOG_PATH(k, s, m)	R_NUM(k, V_LOG_PATH, s, m, char *, 0, 0, \
				    NULL, MARK_NONE)
#define R_SECRET(k, s, m)	R_NUM(k, V_SECRET, s, m, char *, 0, 0, NULL, \
				    MARK_NONE)

#define NITEMS(a) (sizeof(a) / sizeof((a)[0]))

static const char *const proto_names[] = {
	[PROTO_REDIS] = "redis",
	[PROTO_MEMCACHE] = "memcache",
};

static const char *const level_names[] = {
	[LOG_DEBUG] = "debug",
	[LOG_INFO] = "info",
	[LOG_NOTICE] = "notice",
	[LOG_WARN] = "warn",
	[LOG_ERROR] = "error",
};

/* What a limit becomes when the file leaves it out or writes 0: the
 * servers' own defaults, so sidepool never refuses what the server accepts. */
static const struct cfg_limits limit_defaults[] = {
	[PROTO_REDIS] = {
		.max_request_size = 1ull << 30,
		.max_value_size = 512ull << 20,
		.max_args = 2147483647,
		.max_line_length = 64ull << 10,
		.max_pending = 1024,
		.max_output = 64ull << 20,
	},
	[PROTO_MEMCACHE] = {
		.max_request_size = 2ull << 20,
		.max_value_size = 1ull << 20,
		.max_args = 65536,
		.max_line_length = 2048,
		.max_pending = 1024,
		.max_output = 64ull << 20,
	},
};

/* ---- diagnostics ---------------------------------------------------- */

static char *vformat(const char *fmt, va_list ap) ATTR_PRINTF(1, 0);

static char *
vformat(const char *fmt, va_list ap)
{
	va_list	 ap2;
	char	*s;
	int	 n;

	va_copy(ap2, ap);
	n = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (n < 0 || (s = malloc((size_t)n + 1)) == NULL)
		return NULL;
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	return s;
}

static char *format(const char *fmt, ...) ATTR_PRINTF(1, 2);

static char *
format(const char *fmt, ...)
{
	va_list	 ap;
	char	*s;

	va_start(ap, fmt);
	s = vformat(fmt, ap);
	va_end(ap);
	return s;
}

/* Byte i of s as a message shows it (see quote_mem), into e; its length. */
static size_t
escape_byte(const char *s, size_t len, size_t i, char e[5])
{
	static const char	 named[] = "\n\r\t\\", names[] = "nrt\\";
	unsigned char		 c = (unsigned char)s[i];
	const char		*p;
	/* A C1 control is two bytes in UTF-8: 0xc2, then 0x80..0x9f. */
	bool			 c1 = (c == 0xc2 && i + 1 < len &&
	    (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] < 0xa0) ||
	    (c >= 0x80 && c < 0xa0 && i > 0 && (unsigned char)s[i - 1] == 0xc2);

	if (c != '\0' && (p = strchr(named, c)) != NULL) {
		e[0] = '\\';
		e[1] = names[p - named];
		return 2;
	}
	if (c < 0x20 || c == 0x7f || c1)
		return (size_t)snprintf(e, 5, "\\x%02x", c);
	e[0] = (char)c;
	return 1;
}

/*
 * A value from the file as a message shows it, between the message's own
 * quotes: on one line, since a newline would split the message in a log
 * and an escape sequence would drive the terminal it is printed on. Control
 * bytes (C0, DEL and C1) are escaped as C writes them (\n, \x1b), a
 * backslash is doubled so that no escape is ambiguous, and a value that
 * does not fit in size bytes is cut between two characters with "...".
 * size is at least 4. Returns buf.
 */
static const char *
quote_mem(char *buf, size_t size, const char *s, size_t len)
{
	size_t	 n = 0, cut = 0, cut_in = 0, i, el;
	char	 e[5];

	for (i = 0; i < len; i++) {
		el = escape_byte(s, len, i, e);
		if (n + el >= size) {
			/* Not in the middle of a character: drop the bytes
			 * of the one that would be split (copied as is). */
			for (int k = 0; k < 3 && cut_in > 0 &&
			    ((unsigned char)s[cut_in] & 0xc0) == 0x80 &&
			    (unsigned char)s[cut_in - 1] >= 0x80 &&
			    escape_byte(s, len, cut_in - 1, e) == 1; k++) {
				cut_in--;
				cut--;
			}
			memcpy(buf + cut, "...", 4);
			return buf;
		}
		memcpy(buf + n, e, el);
		n += el;
		if (n + 4 <= size) {	/* "..." and the NUL still fit */
			cut = n;
			cut_in = i + 1;
		}
	}
	buf[n] = '\0';
	return buf;
}

/* Room for a value in a message: longer ones are cut. */
#define QUOTE_SIZE	128

/* A NUL-terminated value into a char array (see quote_mem). */
#define QUOTE(buf, s)	quote_mem((buf), sizeof(buf), (s), strlen(s))

static void
push_error(struct loader *ld, char *msg)
{
	char	**v;

	if (msg == NULL) {
		ld->oom = true;
		return;
	}
	if (ld->errs == NULL) {
		free(msg);
		return;
	}
	v = realloc(ld->errs->msgs, (ld->errs->n + 1) * sizeof(*v));
	if (v == NULL) {
		free(msg);
		ld->oom = true;
		return;
	}
	v[ld->errs->n++] = msg;
	ld->errs->msgs = v;
}

/* Forget the errors recorded after the first n. */
static void
drop_errors_after(struct config_errors *errs, size_t n)
{
	if (errs == NULL)
		return;
	while (errs->n > n)
		free(errs->msgs[--errs->n]);
}

static void err_at(struct loader *, yaml_mark_t, const char *, ...)
    ATTR_PRINTF(3, 4);

/* Record "file:line:col: message" (libyaml marks are 0-based). Every error
 * counts, so a load with any error fails, but only the first MAX_ERRORS
 * are kept. */
static void
err_at(struct loader *ld, yaml_mark_t m, const char *fmt, ...)
{
	va_list	 ap;
	char	*msg;

	if (++ld->nerrors > MAX_ERRORS + 1)
		return;
	if (ld->nerrors == MAX_ERRORS + 1) {
		push_error(ld, format("%s:%zu:%zu: too many errors; fix the "
		    "ones above and load again", ld->name, m.line + 1,
		    m.column + 1));
		return;
	}
	va_start(ap, fmt);
	msg = vformat(fmt, ap);
	va_end(ap);
	if (msg == NULL) {
		ld->oom = true;
		return;
	}
	push_error(ld, format("%s:%zu:%zu: %s", ld->name, m.line + 1,
	    m.column + 1, msg));
	free(msg);
}

static void *
ld_calloc(struct loader *ld, size_t n, size_t size)
{
	void	*p;

	if (n == 0)
		n = 1;
	if ((p = calloc(n, size)) == NULL)
		ld->oom = true;
	return p;
}

static char *
ld_strdup(struct loader *ld, const char *s)
{
	char	*p;

	if ((p = strdup(s)) == NULL)
		ld->oom = true;
	return p;
}

void
config_errors_clear(struct config_errors *errs)
{
	size_t	 i;

	if (errs == NULL)
		return;
	for (i = 0; i < errs->n; i++)
		free(errs->msgs[i]);
	free(errs->msgs);
	errs->msgs = NULL;
	errs->n = 0;
}

/* ---- names ----------------------------------------------------------- */

const char *
proto_kind_name(enum proto_kind k)
{
	if ((size_t)k >= NITEMS(proto_names))
		return "unknown";
	return proto_names[k];
}

const char *
log_level_name(enum log_level l)
{
	if ((size_t)l >= NITEMS(level_names))
		return "unknown";
	return level_names[l];
}

/* ---- scalar syntax: integers, durations, sizes ------------------------- */

/* Decimal digits at s into *n; *end after them. -1: no digits, -2: overflow. */
static int
scan_digits(const char *s, uint64_t *n, const char **end)
{
	uint64_t	 v = 0;
	const char	*p;

	for (p = s; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -2;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*end = p;
	*n = v;
	return p == s ? -1 : 0;
}

/* A whole string as a signed decimal. -1: not an integer, -2: too large. */
static int
parse_int(const char *s, int64_t *out)
{
	const char	*end;
	uint64_t	 v;
	bool		 neg = (*s == '-');
	int		 rc;

	if ((rc = scan_digits(s + neg, &v, &end)) != 0)
		return rc;
	if (*end != '\0')
		return -1;
	if (v > (uint64_t)INT64_MAX)
		return -2;
	*out = neg ? -(int64_t)v : (int64_t)v;
	return 0;
}

/* NULL if s is a duration, else why not (to follow the quoted value). */
static const char *
scan_duration(const char *s, uint64_t *ms)
{
	static const struct { const char *unit; uint64_t ms; } units[] = {
		{ "ms", 1 }, { "s", MS_SECOND }, { "m", 60 * MS_SECOND },
		{ "h", MS_HOUR },
	};
	const char	*end;
	uint64_t	 n;
	size_t		 i;
	int		 rc;

	if ((rc = scan_digits(s, &n, &end)) == -2)
		return "is too large";
	if (rc != 0)
		return "is not a duration (write a number and a unit: "
		    "250ms, 5s, 2m, 1h, or 0)";
	if (*end == '\0') {
		if (n != 0)
			return "has no unit (add one: ms, s, m or h, e.g. 5s)";
		*ms = 0;
		return NULL;
	}
	for (i = 0; i < NITEMS(units); i++) {
		if (strcmp(end, units[i].unit) != 0)
			continue;
		if (n > UINT64_MAX / units[i].ms)
			return "is too large";
		*ms = n * units[i].ms;
		return NULL;
	}
	return "has an unknown unit (use ms, s, m or h, e.g. 5s)";
}

/* NULL if s is a size, else why not. */
static const char *
scan_size(const char *s, uint64_t *bytes)
{
	const char	*end, *p;
	uint64_t	 n;
	unsigned	 shift = 0;
	int		 rc;

	if ((rc = scan_digits(s, &n, &end)) == -2)
		return "is too large";
	if (rc != 0)
		return "is not a size (write bytes, or a number with k, m or "
		    "g: 512, 16k, 1m, 1g)";
	p = end;
	switch (*p) {
	case 'k': case 'K':
		shift = 10;
		p++;
		break;
	case 'm': case 'M':
		shift = 20;
		p++;
		break;
	case 'g': case 'G':
		shift = 30;
		p++;
		break;
	default:
		break;
	}
	if (*p == 'b' || *p == 'B')
		p++;
	if (*p != '\0')
		return "has an unknown suffix (use k, m or g, optionally "
		    "followed by b: 16k, 1mb)";
	if (n > (UINT64_MAX >> shift))
		return "is too large";
	*bytes = n << shift;
	return NULL;
}

int
config_parse_duration(const char *s, uint64_t *ms)
{
	if (s == NULL || ms == NULL)
		return -1;
	return scan_duration(s, ms) == NULL ? 0 : -1;
}

int
config_parse_size(const char *s, uint64_t *bytes)
{
	if (s == NULL || bytes == NULL)
		return -1;
	return scan_size(s, bytes) == NULL ? 0 : -1;
}

/* ---- addresses --------------------------------------------------------- */

static int addr_fail(char *, size_t, const char *, ...) ATTR_PRINTF(3, 4);

static int
addr_fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list	 ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int
parse_unix_addr(const char *path, struct cfg_addr *out, char *err,
    size_t errlen)
{
	struct sockaddr_un	*sun = (struct sockaddr_un *)&out->sa;
	size_t			 len = strlen(path);
	char			 q[QUOTE_SIZE];

	if (path[0] != '/')
		return addr_fail(err, errlen, "unix socket path '%s' must be "
		    "absolute (start it with /)", QUOTE(q, path));
	if (len >= sizeof(sun->sun_path))
		return addr_fail(err, errlen, "unix socket path is %zu bytes "
		    "long; the limit is %zu (use a shorter path)", len,
		    sizeof(sun->sun_path) - 1);
	out->family = AF_UNIX;
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, len + 1);
	out->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
	    len + 1);
	memcpy(out->text, "unix:", 5);
	memcpy(out->text + 5, path, len + 1);
	return 0;
}

/* "6379" into *port; an error message otherwise. */
static int
parse_port(const char *s, const char *whole, uint16_t *port, char *err,
    size_t errlen)
{
	int64_t	 v;
	int	 rc;
	char	 qs[QUOTE_SIZE / 2], qw[QUOTE_SIZE];

	QUOTE(qs, s);
	QUOTE(qw, whole);
	if (*s == '\0')
		return addr_fail(err, errlen, "missing port in '%s' (write "
		    "HOST:PORT, e.g. 127.0.0.1:6379)", qw);
	rc = parse_int(s, &v);
	if (rc == -1)
		return addr_fail(err, errlen, "port '%s' in '%s' is not a "
		    "number", qs, qw);
	if (rc == -2 || v < 1 || v > 65535)
		return addr_fail(err, errlen, "port %s in '%s' is out of "
		    "range (use 1..65535)", qs, qw);
	*port = (uint16_t)v;
	return 0;
}

static int
fill_inet4(const char *host, uint16_t port, struct cfg_addr *out)
{
	struct sockaddr_in	*sin = (struct sockaddr_in *)&out->sa;
	char			 buf[INET_ADDRSTRLEN];

	if (strcasecmp(host, "localhost") == 0)
		host = "127.0.0.1";
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
		return -1;
	out->family = AF_INET;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	out->salen = sizeof(*sin);
	inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
	snprintf(out->text, sizeof(out->text), "%s:%u", buf, port);
	return 0;
}

static int
fill_inet6(const char *host, uint16_t port, struct cfg_addr *out)
{
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)&out->sa;
	char			 buf[INET6_ADDRSTRLEN];

	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
		return -1;
	out->family = AF_INET6;
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons(port);
	out->salen = sizeof(*sin6);
	inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
	snprintf(out->text, sizeof(out->text), "[%s]:%u", buf, port);
	return 0;
}

/* "[v6]:port": the host is what lies between the brackets. */
static int
parse_inet6_addr(const char *s, struct cfg_addr *out, char *err,
    size_t errlen)
{
	const char	*close = strchr(s, ']');
	char		 host[INET6_ADDRSTRLEN + 1], q[QUOTE_SIZE];
	size_t		 hlen;
	uint16_t	 port;

	if (close == NULL)
		return addr_fail(err, errlen, "missing ']' in '%s' (write "
		    "IPv6 addresses like [::1]:6379)", QUOTE(q, s));
	if (close[1] != ':')
		return addr_fail(err, errlen, "missing port in '%s' (write "
		    "[IPV6]:PORT, e.g. [::1]:6379)", QUOTE(q, s));
	if (parse_port(close + 2, s, &port, err, errlen) != 0)
		return -1;
	hlen = (size_t)(close - (s + 1));
	if (hlen >= sizeof(host))
		goto bad;
	memcpy(host, s + 1, hlen);
	host[hlen] = '\0';
	if (fill_inet6(host, port, out) == 0)
		return 0;
bad:
	return addr_fail(err, errlen, "'%s' is not an IPv6 address",
	    quote_mem(q, sizeof(q), s, (size_t)(close - s + 1)));
}

/* "ipv4:port" or "localhost:port". Other host names are refused rather
 * than resolved: a DNS answer at start-up would silently pin a pool. */
static int
parse_inet4_addr(const char *s, struct cfg_addr *out, char *err,
    size_t errlen)
{
	const char	*colon = strrchr(s, ':');
	char		 host[256], q[QUOTE_SIZE], qc[QUOTE_SIZE / 2];
	size_t		 hlen;
	uint16_t	 port;

	QUOTE(q, s);
	if (colon == NULL)
		return addr_fail(err, errlen, "missing port in '%s' (write "
		    "HOST:PORT, e.g. 127.0.0.1:6379, or unix:/PATH)", q);
	hlen = (size_t)(colon - s);
	if (memchr(s, ':', hlen) != NULL)
		return addr_fail(err, errlen, "'%s' looks like an IPv6 "
		    "address: put it in brackets, like [::1]:6379", q);
	if (hlen == 0)
		return addr_fail(err, errlen, "missing host in '%s' (write "
		    "127.0.0.1%s, or 0.0.0.0%s for all addresses)", q,
		    QUOTE(qc, colon), qc);
	if (parse_port(colon + 1, s, &port, err, errlen) != 0)
		return -1;
	if (hlen < sizeof(host)) {
		memcpy(host, s, hlen);
		host[hlen] = '\0';
		if (fill_inet4(host, port, out) == 0)
			return 0;
	}
	return addr_fail(err, errlen, "'%s' is not an IPv4 address; host "
	    "names other than localhost are not resolved (write an IP "
	    "address)", quote_mem(q, sizeof(q), s, hlen));
}

int
config_parse_addr(const char *s, struct cfg_addr *out, char *err,
    size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (s == NULL || *s == '\0')
		return addr_fail(err, errlen, "empty address (write "
		    "IP:PORT, [IPV6]:PORT, localhost:PORT or unix:/PATH)");
	if (strncmp(s, "unix:", 5) == 0)
		return parse_unix_addr(s + 5, out, err, errlen);
	if (s[0] == '/')
		return parse_unix_addr(s, out, err, errlen);
	if (s[0] == '[')
		return parse_inet6_addr(s, out, err, errlen);
	return parse_inet4_addr(s, out, err, errlen);
}

/* ---- typed values from nodes ----------------------------------------- */

static yaml_node_t *
node_at(struct loader *ld, int index)
{
	return yaml_document_get_node(&ld->doc, index);
}

static const char *
node_text(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* "key:", "key: ~" and "key: null" mean "not set": the default applies. */
static bool
node_is_null(const yaml_node_t *n)
{
	static const char *const nulls[] = { "", "~", "null", "Null", "NULL" };
	size_t	 i;

	if (n->type != YAML_SCALAR_NODE ||
	    n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	for (i = 0; i < NITEMS(nulls); i++)
		if (strcmp(node_text(n), nulls[i]) == 0)
			return true;
	return false;
}

static const char *
node_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_MAPPING_NODE:
		return "a mapping";
	case YAML_SEQUENCE_NODE:
		return "a sequence";
	default:
		return "a scalar";
	}
}

/* The value as a C string, or NULL after an error saying what was wanted. */
static const char *
get_scalar(struct scope *sc, const char *key, yaml_node_t *v,
    const char *want)
{
	if (v->type != YAML_SCALAR_NODE) {
		err_at(sc->ld, v->start_mark, "%s%s must be %s, not %s", key,
		    sc->where, want, node_kind(v));
		return NULL;
	}
	if (strlen(node_text(v)) != v->data.scalar.length) {
		err_at(sc->ld, v->start_mark, "%s%s contains a NUL byte "
		    "(remove the \\0 escape)", key, sc->where);
		return NULL;
	}
	return node_text(v);
}

static int
get_int(struct scope *sc, const char *key, yaml_node_t *v, int64_t lo,
    int64_t hi, int64_t *out)
{
	const char	*s;
	int64_t		 n;
	int		 rc;
	char		 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "an integer")) == NULL)
		return -1;
	if ((rc = parse_int(s, &n)) == -1) {
		err_at(sc->ld, v->start_mark, "%s%s must be an integer, "
		    "not '%s'", key, sc->where, QUOTE(q, s));
		return -1;
	}
	if (rc == -2 || n < lo || n > hi) {
		err_at(sc->ld, v->start_mark, "%s %s%s is out of range (use "
		    "%lld..%lld)", key, QUOTE(q, s), sc->where, (long long)lo,
		    (long long)hi);
		return -1;
	}
	*out = n;
	return 0;
}

static int
get_duration(struct scope *sc, const char *key, yaml_node_t *v,
    uint64_t lo, uint64_t hi, const char *range, uint64_t *out)
{
	const char	*s, *why;
	uint64_t	 ms;
	char		 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "a duration like 5s")) == NULL)
		return -1;
	if ((why = scan_duration(s, &ms)) != NULL) {
		err_at(sc->ld, v->start_mark, "%s '%s'%s %s", key,
		    QUOTE(q, s), sc->where, why);
		return -1;
	}
	if (ms < lo || ms > hi) {
		err_at(sc->ld, v->start_mark, "%s %s%s is out of range "
		    "(use %s)", key, QUOTE(q, s), sc->where, range);
		return -1;
	}
	*out = ms;
	return 0;
}

static int
get_size(struct scope *sc, const char *key, yaml_node_t *v, uint64_t *out)
{
	const char	*s, *why;
	char		 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "a size like 16k")) == NULL)
		return -1;
	if ((why = scan_size(s, out)) != NULL) {
		err_at(sc->ld, v->start_mark, "%s '%s'%s %s", key,
		    QUOTE(q, s), sc->where, why);
		return -1;
	}
	return 0;
}

/* "stderr" is allowed only where the caller says so (the log file). */
static int
get_path(struct scope *sc, const char *key, yaml_node_t *v, bool stderr_ok,
    char **out)
{
	const char	*s;
	char		 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "an absolute path")) == NULL)
		return -1;
	if (stderr_ok && strcmp(s, "stderr") == 0)
		return 0;
	if (s[0] != '/') {
		err_at(sc->ld, v->start_mark, "%s '%s'%s must be an absolute "
		    "path (start it with /)%s", key, QUOTE(q, s), sc->where,
		    stderr_ok ? " or 'stderr'" : "");
		return -1;
	}
	free(*out);
	*out = ld_strdup(sc->ld, s);
	return 0;
}

/* Octal, as chmod takes it. A plain 660 is refused rather than read as
 * decimal 660 (which YAML says it is) or octal (which the writer meant). */
static int
get_mode(struct scope *sc, const char *key, yaml_node_t *v, mode_t *out)
{
	const char		*s, *p;
	unsigned		 mode = 0;
	char			 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "an octal mode like \"0660\"")) == NULL)
		return -1;
	QUOTE(q, s);
	if (v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && s[0] != '0') {
		err_at(sc->ld, v->start_mark, "mode %s%s is ambiguous: write "
		    "it in octal with a leading zero, like 0660 or \"0660\"",
		    q, sc->where);
		return -1;
	}
	p = s;
	if (p[0] == '0' && (p[1] == 'o' || p[1] == 'O'))
		p += 2;
	if (*p == '\0')
		goto bad;
	for (; *p >= '0' && *p <= '7' && mode <= 0777; p++)
		mode = mode * 8 + (unsigned)(*p - '0');
	if (mode > 0777) {
		err_at(sc->ld, v->start_mark, "mode %s%s is out of range (use "
		    "0..0777)", q, sc->where);
		return -1;
	}
	if (*p != '\0')
		goto bad;
	*out = (mode_t)mode;
	return 0;
bad:
	err_at(sc->ld, v->start_mark, "mode '%s'%s is not an octal number "
	    "(write it like \"0660\")", q, sc->where);
	return -1;
}

static void
get_secret(struct scope *sc, const char *key, yaml_node_t *v, char **dst)
{
	const char	*s = get_scalar(sc, key, v, "a string");

	if (s == NULL)
		return;
	if (strpbrk(s, "\r\n") != NULL) {
		err_at(sc->ld, v->start_mark, "%s%s contains a line break "
		    "(write it on one line)", key, sc->where);
		return;
	}
	free(*dst);
	*dst = ld_strdup(sc->ld, s);
}

/* A mapping or sequence where one is required; false after an error. */
static bool
require_type(struct scope *sc, const char *key, yaml_node_t *v,
    yaml_node_type_t type, const char *want)
{
	if (v->type == type)
		return true;
	err_at(sc->ld, v->start_mark, "%s%s must be %s, not %s", key,
	    sc->where, want, node_kind(v));
	return false;
}

/* ---- walking mappings -------------------------------------------------- */

static size_t
edit_distance(const char *a, const char *b)
{
	size_t	 la = strlen(a), lb = strlen(b), row[NAME_MAX_LEN + 1];
	size_t	 i, j, diag, up, best;

	if (la > NAME_MAX_LEN || lb > NAME_MAX_LEN)
		return SIZE_MAX;
	for (j = 0; j <= lb; j++)
		row[j] = j;
	for (i = 1; i <= la; i++) {
		diag = row[0];
		row[0] = i;
		for (j = 1; j <= lb; j++) {
			up = row[j];
			best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

static void
report_unknown_key(struct scope *sc, yaml_node_t *k,
    const struct key_rule *rules, size_t nrules)
{
	const char	*key = node_text(k), *guess = NULL;
	char		 expected[256] = "", hint[NAME_MAX_LEN + 32] = "";
	char		 q[QUOTE_SIZE];
	size_t		 i, d, best = 3;

	for (i = 0; i < nrules; i++) {
		if (i > 0)
			strncat(expected, ", ", sizeof(expected) -
			    strlen(expected) - 1);
		strncat(expected, rules[i].key, sizeof(expected) -
		    strlen(expected) - 1);
		d = edit_distance(key, rules[i].key);
		if (d < best && d < strlen(rules[i].key)) {
			best = d;
			guess = rules[i].key;
		}
	}
	if (guess != NULL)
		snprintf(hint, sizeof(hint), ": did you mean '%s'?", guess);
	err_at(sc->ld, k->start_mark, "unknown key '%s'%s%s (expected one "
	    "of: %s)", QUOTE(q, key), sc->where[0] ? sc->where :
	    " at the top level",
	    hint, expected);
}

/* The key node of an earlier pair with the same name, if any. */
static yaml_node_t *
find_earlier_key(struct loader *ld, yaml_node_t *map, yaml_node_pair_t *p)
{
	yaml_node_pair_t	*q;
	yaml_node_t		*k = node_at(ld, p->key), *e;

	for (q = map->data.mapping.pairs.start; q < p; q++) {
		e = node_at(ld, q->key);
		if (e->type == YAML_SCALAR_NODE &&
		    strcmp(node_text(e), node_text(k)) == 0)
			return e;
	}
	return NULL;
}

/* A key that must be a plain name, not yet seen in this mapping. */
static bool
check_key(struct scope *sc, yaml_node_t *map, yaml_node_pair_t *p)
{
	yaml_node_t	*k = node_at(sc->ld, p->key), *first;
	char		 q[QUOTE_SIZE];

	if (k->type != YAML_SCALAR_NODE) {
		err_at(sc->ld, k->start_mark, "keys%s must be plain names, "
		    "not %s", sc->where, node_kind(k));
		return false;
	}
	if ((first = find_earlier_key(sc->ld, map, p)) != NULL) {
		err_at(sc->ld, k->start_mark, "duplicate key '%s'%s (first "
		    "set at line %zu, column %zu; keep only one)",
		    QUOTE(q, node_text(k)),
		    sc->where, first->start_mark.line + 1,
		    first->start_mark.column + 1);
		return false;
	}
	return true;
}

static void
apply_rule(struct scope *sc, const struct key_rule *r, yaml_node_t *v)
{
	/* A scope of functions only (metrics, client_auth) has no fields:
	 * no pointer into them then (arithmetic on NULL is undefined). */
	void	*f = r->kind == V_FUNC ? NULL : (char *)sc->fields + r->off;
	int64_t	 n;

	if (r->mark != MARK_NONE)
		sc->marks[r->mark] = v;
	switch (r->kind) {
	case V_FUNC:
		r->apply(sc, r->key, v);
		break;
	case V_INT:
	case V_UINT:
	case V_U64:
		if (get_int(sc, r->key, v, (int64_t)r->lo, (int64_t)r->hi,
		    &n) != 0)
			break;
		if (r->kind == V_INT)
			*(int *)f = (int)n;
		else if (r->kind == V_UINT)
			*(unsigned *)f = (unsigned)n;
		else
			*(uint64_t *)f = (uint64_t)n;
		break;
	case V_MS:
		get_duration(sc, r->key, v, r->lo, r->hi, r->range, f);
		break;
	case V_SIZE:
		get_size(sc, r->key, v, f);
		break;
	case V_MODE:
		get_mode(sc, r->key, v, f);
		break;
	case V_PATH:
	case V_LOG_PATH:
		get_path(sc, r->key, v, r->kind == V_LOG_PATH, f);
		break;
	case V_SECRET:
		get_secret(sc, r->key, v, f);
		break;
	}
}

static void
walk_mapping(struct scope *sc, yaml_node_t *map, const struct key_rule *rules,
    size_t nrules)
{
	yaml_node_pair_t	*p;
	yaml_node_t		*k, *v;
	size_t			 i;

	for (p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		if (!check_key(sc, map, p))
			continue;
		k = node_at(sc->ld, p->key);
		v = node_at(sc->ld, p->value);
		for (i = 0; i < nrules; i++)
			if (strcmp(node_text(k), rules[i].key) == 0)
				break;
		if (i == nrules)
			report_unknown_key(sc, k, rules, nrules);
		else if (!node_is_null(v))
			apply_rule(sc, &rules[i], v);
	}
}

static yaml_node_t *
find_key(struct loader *ld, yaml_node_t *map, const char *key)
{
	yaml_node_pair_t	*p;
	yaml_node_t		*k;

	for (p = map->data.mapping.pairs.start;
	    p < map->data.mapping.pairs.top; p++) {
		k = node_at(ld, p->key);
		if (k->type == YAML_SCALAR_NODE &&
		    strcmp(node_text(k), key) == 0)
			return k;
	}
	return NULL;
}

static void
note_addr_use(struct loader *ld, const char *text, const char *owner,
    yaml_mark_t mark, bool is_listener)
{
	struct addr_use	*v;
	size_t		 cap;

	if (ld->nuses == ld->capuses) {
		cap = ld->capuses ? ld->capuses * 2 : 16;
		if ((v = realloc(ld->uses, cap * sizeof(*v))) == NULL) {
			ld->oom = true;
			return;
		}
		ld->uses = v;
		ld->capuses = cap;
	}
	ld->uses[ld->nuses] = (struct addr_use){ text, owner, mark,
	    is_listener, ld->nuses };
	ld->nuses++;
}

/* ---- listeners --------------------------------------------------------- */

static void
apply_listen(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct listener_draft	*d = sc->obj;
	const char		*s;
	char			 err[256], q[QUOTE_SIZE];

	d->listen = v;
	if ((s = get_scalar(sc, key, v, "an address")) == NULL)
		return;
	if (config_parse_addr(s, &d->l->addr, err, sizeof(err)) != 0) {
		err_at(sc->ld, v->start_mark, "bad listen address '%s'%s: %s",
		    QUOTE(q, s), sc->where, err);
		return;
	}
	d->has_addr = true;
}

static void
apply_listener_upstream(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct listener_draft	*d = sc->obj;

	d->upstream = v;
	d->upstream_ok = get_scalar(sc, key, v, "the name of an upstream") !=
	    NULL;
}

static void
apply_mode(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct listener_draft	*d = sc->obj;

	d->mode = v;
	get_mode(sc, key, v, &d->l->mode);
}

static const struct key_rule listener_rules[] = {
	R_FUNC("listen", apply_listen),
	R_FUNC("upstream", apply_listener_upstream),
	R_FUNC("mode", apply_mode),
	R_INT("backlog", struct cfg_listener, backlog, 1, 65535),
	R_UINT("max_clients", struct cfg_listener, max_clients, 0, 1000000),
	R_MS("idle_timeout", struct cfg_listener, idle_timeout_ms, 0,
	    UINT64_MAX, ""),
};

static void
finish_listener(struct loader *ld, struct listener_draft *d, yaml_node_t *n)
{
	char	 q[QUOTE_SIZE];

	if (d->listen == NULL)
		err_at(ld, n->start_mark, "%s has no listen address (add "
		    "listen: 127.0.0.1:PORT or listen: unix:/PATH)", d->name);
	if (d->upstream == NULL)
		err_at(ld, n->start_mark, "%s has no upstream (add upstream: "
		    "NAME, naming one of the upstreams)", d->name);
	if (d->mode != NULL && d->has_addr && d->l->addr.family != AF_UNIX)
		err_at(ld, d->mode->start_mark, "mode%s applies only to unix "
		    "sockets, and %s is TCP (remove mode)", d->where,
		    QUOTE(q, d->l->addr.text));
	if (d->has_addr)
		note_addr_use(ld, d->l->addr.text, d->name,
		    d->listen->start_mark, true);
}

static void
load_listener(struct loader *ld, size_t i, yaml_node_t *n)
{
	struct listener_draft	*d = &ld->ldrafts[i];
	struct scope		 sc = { ld, d->where, d, &ld->cfg->listeners[i],
	    NULL };

	d->l = &ld->cfg->listeners[i];
	d->l->mode = 0660;
	d->l->backlog = 1024;
	d->l->line = (int)n->start_mark.line + 1;
	d->l->col = (int)n->start_mark.column + 1;
	snprintf(d->name, sizeof(d->name), "listener #%zu", i + 1);
	snprintf(d->where, sizeof(d->where), " in %s", d->name);
	if (n->type != YAML_MAPPING_NODE) {
		err_at(ld, n->start_mark, "%s must be a mapping with listen "
		    "and upstream keys, not %s", d->name, node_kind(n));
		return;
	}
	walk_mapping(&sc, n, listener_rules, NITEMS(listener_rules));
	finish_listener(ld, d, n);
}

static void
apply_listeners(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct loader	*ld = sc->ld;
	struct config	*cfg = ld->cfg;
	yaml_node_item_t *it;
	size_t		 n, i;

	if (!require_type(sc, key, v, YAML_SEQUENCE_NODE,
	    "a sequence of listeners (each item starting with '- ')")) {
		ld->bad_listeners = true;
		return;
	}
	n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	cfg->listeners = ld_calloc(ld, n, sizeof(*cfg->listeners));
	ld->ldrafts = ld_calloc(ld, n, sizeof(*ld->ldrafts));
	if (cfg->listeners == NULL || ld->ldrafts == NULL)
		return;
	cfg->nlisteners = n;
	for (i = 0, it = v->data.sequence.items.start; i < n; i++, it++)
		load_listener(ld, i, node_at(ld, *it));
}

/* ---- upstreams --------------------------------------------------------- */

static void
apply_protocol(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	const char		*s;
	char			 q[QUOTE_SIZE];

	d->has_protocol = true;
	if ((s = get_scalar(sc, key, v, "redis or memcache")) == NULL)
		return;
	if (strcmp(s, "redis") == 0)
		d->u->protocol = PROTO_REDIS;
	else if (strcmp(s, "memcache") == 0 || strcmp(s, "memcached") == 0)
		d->u->protocol = PROTO_MEMCACHE;
	else
		err_at(sc->ld, v->start_mark, "unknown protocol '%s'%s (use "
		    "redis or memcache)", QUOTE(q, s), sc->where);
}

static void
load_server(struct scope *sc, yaml_node_t *n)
{
	struct upstream_draft	*d = sc->obj;
	struct cfg_server	*srv = &d->u->servers[d->u->nservers];
	const char		*s;
	char			 err[256], q[QUOTE_SIZE];

	if (node_is_null(n)) {
		err_at(sc->ld, n->start_mark, "empty server entry%s (write an "
		    "address like 127.0.0.1:6379 or remove the '-')", sc->where);
		return;
	}
	if ((s = get_scalar(sc, "each server", n,
	    "an address like 127.0.0.1:6379")) == NULL)
		return;
	if (config_parse_addr(s, &srv->addr, err, sizeof(err)) != 0) {
		err_at(sc->ld, n->start_mark, "bad server address '%s'%s: %s",
		    QUOTE(q, s), sc->where, err);
		return;
	}
	srv->index = (unsigned)d->u->nservers++;
	note_addr_use(sc->ld, srv->addr.text, d->name, n->start_mark, false);
}

static void
apply_servers(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	yaml_node_item_t	*it;
	size_t			 n;

	d->has_servers = true;
	if (!require_type(sc, key, v, YAML_SEQUENCE_NODE,
	    "a sequence of addresses (each item starting with '- ')"))
		return;
	n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	if (n == 0) {
		err_at(sc->ld, v->start_mark, "servers%s is empty (list at "
		    "least one address)", sc->where);
		return;
	}
	if ((d->u->servers = ld_calloc(sc->ld, n, sizeof(*d->u->servers))) ==
	    NULL)
		return;
	for (it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	    it++)
		load_server(sc, node_at(sc->ld, *it));
}

static const struct key_rule pool_rules[] = {
	R_UINT("queue_size", struct cfg_upstream, pool.queue_size, 0, 1000000),
	R_MS("queue_timeout", struct cfg_upstream, pool.queue_timeout_ms, 0,
	    MS_HOUR, "0..1h"),
	R_NUM("size", V_UINT, struct cfg_upstream, pool.size, unsigned, 0,
	    10000, NULL, MARK_SIZE),
	R_NUM("max_connections", V_UINT, struct cfg_upstream,
	    pool.max_connections, unsigned, 1, 10000, NULL, MARK_MAX),
	R_MS("idle_timeout", struct cfg_upstream, pool.idle_timeout_ms, 0,
	    UINT64_MAX, ""),
	R_NUM("min_idle", V_UINT, struct cfg_upstream, pool.min_idle,
	    unsigned, 0, 10000, NULL, MARK_MIN_IDLE),
	R_MS("max_lifetime", struct cfg_upstream, pool.max_lifetime_ms, 0,
	    UINT64_MAX, ""),
	R_MS("probe_interval", struct cfg_upstream, pool.probe_interval_ms, 0,
	    UINT64_MAX, ""),
	R_UINT("pipeline_depth", struct cfg_upstream, pool.pipeline_depth, 1,
	    100000),
};

static void
apply_pool(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	struct scope		 sub = { sc->ld, d->pool_where, d, d->u,
	    d->marks };

	if (require_type(sc, key, v, YAML_MAPPING_NODE, "a mapping"))
		walk_mapping(&sub, v, pool_rules, NITEMS(pool_rules));
}

static const struct key_rule limits_rules[] = {
	R_SIZE("max_request_size", struct cfg_upstream,
	    limits.max_request_size),
	R_SIZE("max_value_size", struct cfg_upstream, limits.max_value_size),
	R_U64("max_args", struct cfg_upstream, limits.max_args, 0, 2147483647),
	R_SIZE("max_line_length", struct cfg_upstream, limits.max_line_length),
	R_UINT("max_pending", struct cfg_upstream, limits.max_pending, 0,
	    1000000),
	R_SIZE("max_output", struct cfg_upstream, limits.max_output),
};

static void
apply_limits(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	struct scope		 sub = { sc->ld, d->limits_where, d, d->u,
	    NULL };

	if (require_type(sc, key, v, YAML_MAPPING_NODE, "a mapping"))
		walk_mapping(&sub, v, limits_rules, NITEMS(limits_rules));
}

/* ---- redis sessions: credentials, databases, refused commands ---------- */

static const struct key_rule auth_rules[] = {
	R_SECRET("user", struct cfg_upstream, auth_user),
	R_SECRET("password", struct cfg_upstream, auth_password),
};

/* What sidepool sends the server on every new connection. */
static void
apply_auth(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	struct scope		 sub = { sc->ld, d->where, d, d->u, NULL };

	d->auth_node = v;
	if (require_type(sc, key, v, YAML_MAPPING_NODE,
	    "a mapping with password (and user for an ACL user)"))
		walk_mapping(&sub, v, auth_rules, NITEMS(auth_rules));
}

static void
add_user(struct scope *sc, const char *user, const char *password)
{
	struct cfg_upstream	*u = ((struct upstream_draft *)sc->obj)->u;
	struct cfg_user		*n = realloc(u->users,
	    (u->nusers + 1) * sizeof(*n));

	if (n == NULL) {
		sc->ld->oom = true;
		return;
	}
	u->users = n;
	n[u->nusers].user = ld_strdup(sc->ld, user);
	n[u->nusers].password = ld_strdup(sc->ld, password);
	u->nusers++;
}

static void
apply_client_password(struct scope *sc, const char *key, yaml_node_t *v)
{
	char	*pw = NULL;

	get_secret(sc, key, v, &pw);
	if (pw != NULL)
		add_user(sc, "default", pw);
	free(pw);
}

/* users: [{user: app, password: x}, ...] */
static void
apply_client_users(struct scope *sc, const char *key, yaml_node_t *v)
{
	yaml_node_item_t	*it;

	if (!require_type(sc, key, v, YAML_SEQUENCE_NODE,
	    "a sequence of {user, password}"))
		return;
	for (it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	    it++) {
		yaml_node_t	*e = node_at(sc->ld, *it);
		char		*user = NULL, *pw = NULL;
		yaml_node_pair_t *p;

		if (!require_type(sc, key, e, YAML_MAPPING_NODE,
		    "a mapping with user and password"))
			continue;
		for (p = e->data.mapping.pairs.start;
		    p < e->data.mapping.pairs.top; p++) {
			yaml_node_t *k = node_at(sc->ld, p->key);
			yaml_node_t *val = node_at(sc->ld, p->value);
			const char *name = k->type == YAML_SCALAR_NODE ?
			    node_text(k) : "";
			char q[QUOTE_SIZE];
			if (strcmp(name, "user") == 0)
				get_secret(sc, "user", val, &user);
			else if (strcmp(name, "password") == 0)
				get_secret(sc, "password", val, &pw);
			else
				err_at(sc->ld, k->start_mark, "unknown key '%s' "
				    "in a client user%s (expected user, "
				    "password)", QUOTE(q, name), sc->where);
		}
		if (user == NULL || pw == NULL)
			err_at(sc->ld, e->start_mark, "a client user%s needs "
			    "both user and password", sc->where);
		else
			add_user(sc, user, pw);
		free(user);
		free(pw);
	}
}

static const struct key_rule client_auth_rules[] = {
	R_FUNC("password", apply_client_password),
	R_FUNC("users", apply_client_users),
};

/* What clients must send sidepool before anything else. */
static void
apply_client_auth(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	struct scope		 sub = { sc->ld, d->where, d, NULL, NULL };

	d->auth_node = d->auth_node ? d->auth_node : v;
	if (require_type(sc, key, v, YAML_MAPPING_NODE,
	    "a mapping with password or users"))
		walk_mapping(&sub, v, client_auth_rules,
		    NITEMS(client_auth_rules));
}

static void
apply_databases(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	int64_t			 n;

	d->auth_node = d->auth_node ? d->auth_node : v;
	if (get_int(sc, key, v, 1, 1000000, &n) == 0)
		d->u->databases = (unsigned)n;
}

/* Operators may refuse more commands than sidepool does by default. */
static void
apply_refuse(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct upstream_draft	*d = sc->obj;
	struct cfg_upstream	*u = d->u;
	yaml_node_item_t	*it;

	d->auth_node = d->auth_node ? d->auth_node : v;
	if (!require_type(sc, key, v, YAML_SEQUENCE_NODE,
	    "a sequence of command names"))
		return;
	for (it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	    it++) {
		yaml_node_t	*e = node_at(sc->ld, *it);
		const char	*s = get_scalar(sc, key, e, "a command name");
		char		**n, q[QUOTE_SIZE];

		if (s == NULL)
			continue;
		if (*s == '\0' || strspn(s, "abcdefghijklmnopqrstuvwxyz"
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-|") != strlen(s)) {
			err_at(sc->ld, e->start_mark, "'%s' in %s%s is not a "
			    "command name", QUOTE(q, s), key, sc->where);
			continue;
		}
		if ((n = realloc(u->refused, (u->nrefused + 1) *
		    sizeof(*n))) == NULL) {
			sc->ld->oom = true;
			return;
		}
		u->refused = n;
		char *lower = ld_strdup(sc->ld, s);
		for (char *c = lower; c != NULL && *c; c++)
			*c = (char)tolower((unsigned char)*c);
		u->refused[u->nrefused++] = lower;
	}
}

static const struct key_rule upstream_rules[] = {
	R_FUNC("protocol", apply_protocol),
	R_FUNC("servers", apply_servers),
	R_FUNC("pool", apply_pool),
	R_MS("connect_timeout", struct cfg_upstream, connect_timeout_ms, 1,
	    MS_HOUR, "1ms..1h"),
	R_MS("request_timeout", struct cfg_upstream, request_timeout_ms, 0,
	    UINT64_MAX, ""),
	R_UINT("failure_limit", struct cfg_upstream, failure_limit, 1, 1000),
	R_FUNC("auth", apply_auth),
	R_FUNC("client_auth", apply_client_auth),
	R_FUNC("databases", apply_databases),
	R_FUNC("refuse_commands", apply_refuse),
	R_NUM("retry_interval", V_MS, struct cfg_upstream, retry_interval_ms,
	    uint64_t, 1, MS_HOUR, "1ms..1h", MARK_RETRY),
	R_NUM("retry_max_interval", V_MS, struct cfg_upstream,
	    retry_max_interval_ms, uint64_t, 1, MS_HOUR, "1ms..1h", MARK_RETRY),
	R_FUNC("limits", apply_limits),
};

/* 0 in the file means "the protocol's default"; the config never holds 0. */
static void
resolve_limits(struct cfg_upstream *u)
{
	const struct cfg_limits	*def = &limit_defaults[u->protocol];
	struct cfg_limits	*lim = &u->limits;

	if (lim->max_request_size == 0)
		lim->max_request_size = def->max_request_size;
	if (lim->max_value_size == 0)
		lim->max_value_size = def->max_value_size;
	if (lim->max_args == 0)
		lim->max_args = def->max_args;
	if (lim->max_line_length == 0)
		lim->max_line_length = def->max_line_length;
	if (lim->max_pending == 0)
		lim->max_pending = def->max_pending;
	if (lim->max_output == 0)
		lim->max_output = def->max_output;
}

static void
finish_upstream(struct loader *ld, struct upstream_draft *d)
{
	struct cfg_upstream	*u = d->u;
	yaml_node_t		*at = d->marks[MARK_SIZE] ? d->marks[MARK_SIZE] :
	    d->marks[MARK_MAX];

	if (!d->has_protocol)
		err_at(ld, d->key->start_mark, "%s has no protocol (add "
		    "protocol: redis or protocol: memcache)", d->name);
	if (!d->has_servers)
		err_at(ld, d->key->start_mark, "%s has no servers (add "
		    "servers: with at least one address)", d->name);
	if (u->pool.size > u->pool.max_connections && at != NULL)
		err_at(ld, at->start_mark, "pool size %u is larger than "
		    "max_connections %u%s (lower size or raise "
		    "max_connections)", u->pool.size, u->pool.max_connections,
		    d->where);
	if (u->pool.min_idle > u->pool.size && d->marks[MARK_MIN_IDLE])
		err_at(ld, d->marks[MARK_MIN_IDLE]->start_mark, "min_idle %u is larger "
		    "than the pool size %u%s (lower min_idle or raise size: "
		    "idle connections beyond size are closed)",
		    u->pool.min_idle, u->pool.size, d->where);
	if (u->protocol != PROTO_REDIS && d->auth_node != NULL)
		err_at(ld, d->auth_node->start_mark, "auth, client_auth, "
		    "databases and refuse_commands%s apply to redis upstreams "
		    "only (remove them)", d->where);
	if (d->auth_node != NULL && u->auth_user != NULL &&
	    u->auth_password == NULL)
		err_at(ld, d->auth_node->start_mark, "auth%s has a user but no "
		    "password (add password)", d->where);
	if (u->retry_interval_ms > u->retry_max_interval_ms &&
	    d->marks[MARK_RETRY])
		err_at(ld, d->marks[MARK_RETRY]->start_mark, "retry_interval is longer "
		    "than retry_max_interval%s (make retry_max_interval at "
		    "least retry_interval)", d->where);
	resolve_limits(u);
}

/* Names show up in logs, stats and Prometheus labels: keep them plain. */
static void
check_upstream_name(struct loader *ld, yaml_node_t *k)
{
	const char	*s = node_text(k);
	size_t		 len = strlen(s);
	char		 q[QUOTE_SIZE];

	if (len == 0 || len > NAME_MAX_LEN ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789_.-") != len || len != k->data.scalar.length)
		err_at(ld, k->start_mark, "upstream name '%s' is not valid "
		    "(use 1 to %d letters, digits, '_', '-' or '.')",
		    QUOTE(q, s), NAME_MAX_LEN);
}

static void
load_upstream(struct loader *ld, yaml_node_t *k, yaml_node_t *v)
{
	struct config		*cfg = ld->cfg;
	struct upstream_draft	*d = &ld->udrafts[cfg->nupstreams];
	struct cfg_upstream	*u = &cfg->upstreams[cfg->nupstreams++];
	struct scope		 sc = { ld, d->where, d, u, d->marks };
	char			 q[NAME_MAX_LEN + 4];	/* a valid name whole */

	d->u = u;
	d->key = k;
	check_upstream_name(ld, k);
	u->name = ld_strdup(ld, node_text(k));
	u->line = (int)k->start_mark.line + 1;
	u->col = (int)k->start_mark.column + 1;
	u->pool = (struct cfg_pool){ .size = 8, .max_connections = 32,
	    .idle_timeout_ms = 60 * MS_SECOND,
	    .probe_interval_ms = 10 * MS_SECOND, .pipeline_depth = 128,
	    .queue_size = 1024, .queue_timeout_ms = 2 * MS_SECOND };
	u->connect_timeout_ms = MS_SECOND;
	u->request_timeout_ms = 5 * MS_SECOND;
	u->failure_limit = 3;
	u->databases = 16;
	u->retry_interval_ms = 250;
	u->retry_max_interval_ms = 10 * MS_SECOND;
	snprintf(d->name, sizeof(d->name), "upstream '%s'",
	    QUOTE(q, node_text(k)));
	snprintf(d->where, sizeof(d->where), " in %s", d->name);
	snprintf(d->pool_where, sizeof(d->pool_where), " in pool of %s",
	    d->name);
	snprintf(d->limits_where, sizeof(d->limits_where), " in limits of %s",
	    d->name);
	if (node_is_null(v) || v->type != YAML_MAPPING_NODE) {
		err_at(ld, v->start_mark, "%s must be a mapping with protocol "
		    "and servers keys, not %s", d->name, node_is_null(v) ?
		    "empty" : node_kind(v));
		return;
	}
	walk_mapping(&sc, v, upstream_rules, NITEMS(upstream_rules));
	finish_upstream(ld, d);
}

static void
apply_upstreams(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct loader		*ld = sc->ld;
	struct config		*cfg = ld->cfg;
	struct scope		 sub = { ld, " in upstreams", NULL, NULL, NULL };
	yaml_node_pair_t	*p;
	size_t			 n;

	if (!require_type(sc, key, v, YAML_MAPPING_NODE,
	    "a mapping of upstream names to upstreams")) {
		ld->bad_upstreams = true;
		return;
	}
	n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
	/* Sized once: listeners keep pointers into this array. */
	cfg->upstreams = ld_calloc(ld, n, sizeof(*cfg->upstreams));
	ld->udrafts = ld_calloc(ld, n, sizeof(*ld->udrafts));
	if (cfg->upstreams == NULL || ld->udrafts == NULL)
		return;
	for (p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	    p++)
		if (check_key(&sub, v, p))
			load_upstream(ld, node_at(ld, p->key),
			    node_at(ld, p->value));
}

/* ---- top level ---------------------------------------------------------- */

static unsigned
online_cpus(void)
{
	long	 n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > 256 ? 256 : (unsigned)n;
}

static void
apply_workers(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct config	*cfg = sc->ld->cfg;
	const char	*s;
	int64_t		 n;
	int		 rc;
	char		 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "'auto' or an integer")) == NULL)
		return;
	if (strcmp(s, "auto") == 0) {
		cfg->workers_auto = true;
		cfg->workers = online_cpus();
		return;
	}
	if ((rc = parse_int(s, &n)) == -1)
		err_at(sc->ld, v->start_mark, "workers must be 'auto' or an "
		    "integer, not '%s'", QUOTE(q, s));
	else if (rc == -2 || n < 1 || n > 256)
		err_at(sc->ld, v->start_mark, "workers %s is out of range "
		    "(use 1..256, or auto for one per CPU)", QUOTE(q, s));
	else {
		cfg->workers_auto = false;
		cfg->workers = (unsigned)n;
	}
}

static void
apply_log_level(struct scope *sc, const char *key, yaml_node_t *v)
{
	const char	*s;
	size_t		 i;
	char		 q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "a log level")) == NULL)
		return;
	for (i = 0; i < NITEMS(level_names); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			sc->ld->cfg->log_level = (enum log_level)i;
			return;
		}
	}
	err_at(sc->ld, v->start_mark, "unknown log level '%s' (use debug, "
	    "info, notice, warn or error)", QUOTE(q, s));
}

static const struct key_rule log_rules[] = {
	R_FUNC("level", apply_log_level),
	R_LOG_PATH("file", struct config, log_file),
};

static void
apply_log(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct scope	 sub = { sc->ld, " in log", NULL, sc->ld->cfg, NULL };

	if (require_type(sc, key, v, YAML_MAPPING_NODE,
	    "a mapping with level and file"))
		walk_mapping(&sub, v, log_rules, NITEMS(log_rules));
}

static const struct key_rule control_rules[] = {
	R_PATH("path", struct config, control_path),
	R_MODE("mode", struct config, control_mode),
};

static void
apply_control(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct scope	 sub = { sc->ld, " in control", NULL, sc->ld->cfg,
	    NULL };

	if (require_type(sc, key, v, YAML_MAPPING_NODE,
	    "a mapping with path and mode"))
		walk_mapping(&sub, v, control_rules, NITEMS(control_rules));
}

/* The metrics endpoint has no authentication: loopback only. */
static bool
is_loopback(const struct cfg_addr *a)
{
	if (a->family == AF_INET) {
		const struct sockaddr_in *in = (const void *)&a->sa;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (a->family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)&a->sa;
		return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	}
	return false;
}

static void
apply_metrics_listen(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct config	*cfg = sc->ld->cfg;
	const char	*s;
	char		 err[256], q[QUOTE_SIZE];

	if ((s = get_scalar(sc, key, v, "a loopback address")) == NULL)
		return;
	QUOTE(q, s);
	if (config_parse_addr(s, &cfg->metrics_addr, err, sizeof(err)) != 0) {
		err_at(sc->ld, v->start_mark, "bad metrics address '%s': %s", q,
		    err);
		return;
	}
	if (!is_loopback(&cfg->metrics_addr)) {
		err_at(sc->ld, v->start_mark, "metrics address '%s' is not a "
		    "loopback TCP address (the endpoint has no authentication; "
		    "use 127.0.0.1:PORT or [::1]:PORT)", q);
		return;
	}
	cfg->has_metrics = true;
}

static const struct key_rule metrics_rules[] = {
	R_FUNC("listen", apply_metrics_listen),
};

static void
apply_metrics(struct scope *sc, const char *key, yaml_node_t *v)
{
	struct scope	 sub = { sc->ld, " in metrics", NULL, NULL, NULL };

	if (require_type(sc, key, v, YAML_MAPPING_NODE,
	    "a mapping with listen"))
		walk_mapping(&sub, v, metrics_rules, NITEMS(metrics_rules));
}

static const struct key_rule top_rules[] = {
	R_FUNC("workers", apply_workers),
	R_FUNC("log", apply_log),
	R_FUNC("control", apply_control),
	R_FUNC("metrics", apply_metrics),
	R_PATH("pid_file", struct config, pid_file),
	R_MS("shutdown_timeout", struct config, shutdown_timeout_ms, 0, MS_HOUR,
	    "0..1h"),
	R_FUNC("listeners", apply_listeners),
	R_FUNC("upstreams", apply_upstreams),
};

/* ---- cross-checks -------------------------------------------------------- */

static void
join_upstream_names(const struct config *cfg, char *buf, size_t len)
{
	size_t	 i;
	char	 q[NAME_MAX_LEN + 4];

	buf[0] = '\0';
	for (i = 0; i < cfg->nupstreams; i++) {
		if (cfg->upstreams[i].name == NULL)
			continue;
		if (buf[0] != '\0')
			strncat(buf, ", ", len - strlen(buf) - 1);
		strncat(buf, QUOTE(q, cfg->upstreams[i].name),
		    len - strlen(buf) - 1);
	}
}

static void
resolve_listener(struct loader *ld, struct listener_draft *d)
{
	struct config	*cfg = ld->cfg;
	const char	*name = node_text(d->upstream);
	char		 known[512], q[QUOTE_SIZE];
	size_t		 i;

	for (i = 0; i < cfg->nupstreams; i++) {
		if (cfg->upstreams[i].name != NULL &&
		    strcmp(cfg->upstreams[i].name, name) == 0) {
			d->l->upstream = &cfg->upstreams[i];
			return;
		}
	}
	join_upstream_names(cfg, known, sizeof(known));
	QUOTE(q, name);
	if (known[0] == '\0')
		err_at(ld, d->upstream->start_mark, "%s names upstream '%s', "
		    "which is not defined (no upstreams are defined: add it "
		    "under upstreams:)", d->name, q);
	else
		err_at(ld, d->upstream->start_mark, "%s names upstream '%s', "
		    "which is not defined (known upstreams: %s)", d->name, q,
		    known);
}

static int
compare_uses(const void *a, const void *b)
{
	const struct addr_use	*x = a, *y = b;
	int			 c = strcmp(x->text, y->text);

	if (c != 0)
		return c;
	return x->order < y->order ? -1 : x->order > y->order;
}

static void
report_duplicate(struct loader *ld, const struct addr_use *first,
    const struct addr_use *dup)
{
	size_t	 line = first->mark.line + 1, col = first->mark.column + 1;
	char	 q[QUOTE_SIZE];

	QUOTE(q, dup->text);
	if (dup->is_listener)
		err_at(ld, dup->mark, "duplicate listen address %s in %s: "
		    "already used by %s at line %zu, column %zu (give each "
		    "listener its own address)", q, dup->owner,
		    first->owner, line, col);
	else if (first->owner == dup->owner)
		err_at(ld, dup->mark, "server %s is listed twice in %s (first "
		    "at line %zu, column %zu; remove one)", q,
		    dup->owner, line, col);
	else
		err_at(ld, dup->mark, "server %s in %s is already a server of "
		    "%s at line %zu, column %zu (an address belongs to one "
		    "upstream only: pools are keyed by address)", q,
		    dup->owner, first->owner, line, col);
}

/* Within one run of equal addresses (sorted by file order): a second use
 * of the same kind is a duplicate; a listener that is also a server would
 * make sidepool connect to itself. */
static void
check_address_run(struct loader *ld, struct addr_use *run, size_t n)
{
	struct addr_use	*first_listener = NULL, *first_server = NULL;
	struct addr_use	**first;
	size_t		 i;
	char		 q[QUOTE_SIZE];

	for (i = 0; i < n; i++) {
		first = run[i].is_listener ? &first_listener : &first_server;
		if (*first != NULL)
			report_duplicate(ld, *first, &run[i]);
		else
			*first = &run[i];
	}
	if (first_listener != NULL && first_server != NULL)
		err_at(ld, first_listener->mark, "%s listens on %s, which is "
		    "also a server of %s: sidepool would proxy to itself (use "
		    "another address)", first_listener->owner,
		    QUOTE(q, first_listener->text), first_server->owner);
}

static void
check_addresses(struct loader *ld)
{
	size_t	 i, j;

	if (ld->nuses == 0)
		return;
	qsort(ld->uses, ld->nuses, sizeof(*ld->uses), compare_uses);
	for (i = 0; i < ld->nuses; i = j) {
		for (j = i + 1; j < ld->nuses &&
		    strcmp(ld->uses[i].text, ld->uses[j].text) == 0; j++)
			;
		if (j - i > 1)
			check_address_run(ld, &ld->uses[i], j - i);
	}
}

static void
check_config(struct loader *ld, yaml_node_t *root)
{
	struct config	*cfg = ld->cfg;
	yaml_node_t	*k;
	size_t		 i;

	if (cfg->nlisteners == 0 && !ld->bad_listeners) {
		k = find_key(ld, root, "listeners");
		err_at(ld, k ? k->start_mark : root->start_mark, "no listeners "
		    "(add a listeners: sequence with at least one listen "
		    "address and upstream)");
	}
	if (cfg->nupstreams == 0 && !ld->bad_upstreams) {
		k = find_key(ld, root, "upstreams");
		err_at(ld, k ? k->start_mark : root->start_mark, "no upstreams "
		    "(add an upstreams: mapping with at least one upstream)");
	}
	/* Names cannot be checked against upstreams that were not read. */
	for (i = 0; i < cfg->nlisteners && !ld->bad_upstreams; i++)
		if (ld->ldrafts[i].upstream_ok)
			resolve_listener(ld, &ld->ldrafts[i]);
	check_addresses(ld);
}

/* ---- loading --------------------------------------------------------------- */

static void
set_defaults(struct config *cfg)
{
	cfg->workers_auto = true;
	cfg->workers = online_cpus();
	cfg->log_level = LOG_INFO;
	cfg->shutdown_timeout_ms = 10 * MS_SECOND;
	cfg->control_mode = 0600;
}

static void
load_root(struct loader *ld, yaml_node_t *root)
{
	struct scope	 sc = { ld, "", NULL, ld->cfg, NULL };

	if (root->type != YAML_MAPPING_NODE) {
		err_at(ld, root->start_mark, "the top level must be a mapping "
		    "of keys (workers, log, listeners, upstreams...), not %s",
		    node_kind(root));
		return;
	}
	walk_mapping(&sc, root, top_rules, NITEMS(top_rules));
	check_config(ld, root);
}

/* What to suggest for a syntax error on a line: the two mistakes libyaml
 * explains worst are tab indentation ("cannot start any token") and an
 * unquoted IPv6 address, whose '[' opens a YAML list. */
static const char *
syntax_hint(const struct loader *ld, size_t line)
{
	const char	*p = ld->text, *end = ld->text + ld->len, *eol, *q;

	while (line > 0 && p < end)
		if (*p++ == '\n')
			line--;
	if ((eol = memchr(p, '\n', (size_t)(end - p))) == NULL)
		eol = end;
	for (q = p; q < eol && (*q == ' ' || *q == '\t'); q++)
		if (*q == '\t')
			return "YAML does not allow tabs for indentation: use "
			    "spaces";
	for (; q + 1 < eol; q++)
		if (q[0] == ']' && q[1] == ':' && memchr(p, '[', (size_t)(q -
		    p)) != NULL)
			return "quote IPv6 addresses, like '[::1]:6379': an "
			    "unquoted '[' starts a YAML list";
	return "check the indentation and quoting here";
}

/* Reader errors carry a byte offset rather than a mark. */
static yaml_mark_t
mark_from_offset(const struct loader *ld, size_t offset)
{
	yaml_mark_t	 m = { 0, 0, 0 };
	size_t		 i;

	for (i = 0; i < offset && i < ld->len; i++) {
		if (ld->text[i] == '\n') {
			m.line++;
			m.column = 0;
		} else
			m.column++;
	}
	m.index = i;
	return m;
}

static void
report_syntax_error(struct loader *ld, const yaml_parser_t *p)
{
	const char	*problem = p->problem ? p->problem : "unknown error";
	char		 context[128] = "";
	yaml_mark_t	 m = p->problem_mark;

	/* libyaml's loader gives up on some failed allocations (a tag's
	 * copy) without recording any error: a failure with none is one. */
	if (p->error == YAML_MEMORY_ERROR || p->error == YAML_NO_ERROR) {
		ld->oom = true;
		return;
	}
	if (p->error == YAML_READER_ERROR) {
		m = mark_from_offset(ld, p->problem_offset);
		err_at(ld, m, "not valid YAML text: %s (save the file as "
		    "UTF-8 without control characters)", problem);
		return;
	}
	if (p->context != NULL)
		snprintf(context, sizeof(context), ", %s at line %zu, column "
		    "%zu", p->context, p->context_mark.line + 1,
		    p->context_mark.column + 1);
	err_at(ld, m, "YAML syntax error: %s%s (%s)", problem, context,
	    syntax_hint(ld, m.line));
}

/* A file holds one document; a second '---' is most likely a paste. */
static void
check_single_document(struct loader *ld, yaml_parser_t *parser)
{
	yaml_document_t	 doc;
	yaml_node_t	*root;

	if (!yaml_parser_load(parser, &doc)) {
		report_syntax_error(ld, parser);
		return;
	}
	if ((root = yaml_document_get_root_node(&doc)) != NULL)
		err_at(ld, doc.start_mark, "a second YAML document starts "
		    "here (keep one document per file: remove this '---' and "
		    "what follows, or merge it)");
	yaml_document_delete(&doc);
}

static void
load_stream(struct loader *ld, yaml_parser_t *parser)
{
	yaml_node_t	*root;

	if (!yaml_parser_load(parser, &ld->doc)) {
		report_syntax_error(ld, parser);
		return;
	}
	if ((root = yaml_document_get_root_node(&ld->doc)) == NULL) {
		err_at(ld, ld->doc.start_mark, "the file is empty (it needs "
		    "at least listeners and upstreams)");
	} else {
		load_root(ld, root);
		check_single_document(ld, parser);
	}
	yaml_document_delete(&ld->doc);
}

struct config *
config_load_string(const char *text, size_t len, const char *name,
    struct config_errors *errs)
{
	struct loader	 ld;
	yaml_parser_t	 parser;
	struct config	*cfg;
	size_t		 nbefore = errs != NULL ? errs->n : 0;

	memset(&ld, 0, sizeof(ld));
	ld.name = name != NULL ? name : "<config>";
	ld.text = text != NULL ? text : "";
	ld.len = text != NULL ? len : 0;
	ld.errs = errs;
	if ((cfg = ld_calloc(&ld, 1, sizeof(*cfg))) == NULL ||
	    (cfg->path = ld_strdup(&ld, ld.name)) == NULL ||
	    !yaml_parser_initialize(&parser)) {
		config_free(cfg);
		push_error(&ld, format("%s: out of memory loading the "
		    "configuration (check the memory limits of the service, "
		    "then load it again)", ld.name));
		return NULL;
	}
	ld.cfg = cfg;
	set_defaults(cfg);
	yaml_parser_set_input_string(&parser, (const unsigned char *)ld.text,
	    ld.len);
	load_stream(&ld, &parser);
	yaml_parser_delete(&parser);
	free(ld.ldrafts);
	free(ld.udrafts);
	free(ld.uses);
	if (ld.oom) {
		/* What else was reported follows from the missing piece
		 * ("no upstreams", "names upstream 'redis', which is not
		 * defined"): the file may well be right. Say only this. */
		drop_errors_after(errs, nbefore);
		push_error(&ld, format("%s: out of memory loading the "
		    "configuration (check the memory limits of the service, "
		    "then load it again)", ld.name));
	}
	if (ld.nerrors > 0 || ld.oom) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

static void
report_read_error(struct config_errors *errs, const char *path,
    const char *why)
{
	struct loader	 ld = { .name = path, .errs = errs };

	push_error(&ld, format("%s: cannot read the configuration: %s",
	    path, why));
}

/* The whole file in memory, so libyaml and the tab hint see the same bytes. */
static char *
read_file(const char *path, size_t *lenp, struct config_errors *errs)
{
	FILE	*fp;
	char	*buf = NULL, *nbuf;
	size_t	 len = 0, cap = 0, n;

	if ((fp = fopen(path, "r")) == NULL) {
		report_read_error(errs, path, strerror(errno));
		return NULL;
	}
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 8192;
			if ((nbuf = realloc(buf, cap)) == NULL)
				goto fail;
			buf = nbuf;
		}
		if ((n = fread(buf + len, 1, cap - len, fp)) == 0)
			break;
		if ((len += n) > MAX_FILE_SIZE) {
			report_read_error(errs, path, "larger than 16 MiB "
			    "(is this the right file?)");
			goto out;
		}
	}
	if (ferror(fp))
		goto fail;
	fclose(fp);
	*lenp = len;
	return buf;
fail:
	report_read_error(errs, path, strerror(errno));
out:
	fclose(fp);
	free(buf);
	return NULL;
}

struct config *
config_load(const char *path, struct config_errors *errs)
{
	struct config	*cfg;
	char		*text;
	size_t		 len;

	if (path == NULL)
		path = CONFIG_DEFAULT_PATH;
	if ((text = read_file(path, &len, errs)) == NULL)
		return NULL;
	cfg = config_load_string(text, len, path, errs);
	free(text);
	return cfg;
}

void
config_free(struct config *cfg)
{
	size_t	 i;

	if (cfg == NULL)
		return;
	for (i = 0; i < cfg->nupstreams; i++) {
		struct cfg_upstream *u = &cfg->upstreams[i];
		free(u->name);
		free(u->servers);
		free(u->auth_user);
		free(u->auth_password);
		for (size_t k = 0; k < u->nusers; k++) {
			free(u->users[k].user);
			free(u->users[k].password);
		}
		free(u->users);
		for (size_t k = 0; k < u->nrefused; k++)
			free(u->refused[k]);
		free(u->refused);
	}
	free(cfg->upstreams);
	free(cfg->listeners);
	free(cfg->log_file);
	free(cfg->pid_file);
	free(cfg->control_path);
	free(cfg->path);
	free(cfg);
}
