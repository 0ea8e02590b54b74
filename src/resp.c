/*
 * resp.c - pure, incremental RESP parsers: client requests (multibulk, as
 * redis-server accepts them), server replies (RESP2 and RESP3), and the
 * splitting of inline requests and of complete multibulk requests.
 *
 * Both feed parsers are byte-driven state machines whose state survives
 * between chunks, so input may be split anywhere. Each state is one case
 * of one switch (req_step, reply_step); the helpers it calls look at bytes
 * and return the next state, or fail. Every step consumes bytes or changes
 * state; bulk payloads are skipped by count, never scanned, and simple
 * lines are searched with memchr, never stored.
 *
 * After RESP_OK a parser resets itself on its next feed, so a caller just
 * keeps feeding the bytes after *used. After RESP_ERROR it stays failed
 * (every feed answers RESP_ERROR, consuming nothing) until its init
 * function is called: the stream is out of step and must be closed. The
 * err text may live in the parser itself ("expected '$', got 'x'"): read
 * it before the parser is initialised again or freed.
 */
#include <stdlib.h>
#include <string.h>

#include "resp.h"

/* redis-server's defaults, for callers that pass no limits. */
static const struct resp_limits default_limits = {
	.max_bulk_len = 512ULL * 1024 * 1024,
	.max_multibulk_len = 2147483647,
	.max_inline_len = 64 * 1024,
};

/*
 * Parse a decimal integer as redis's string2ll accepts it: an optional
 * '-', then digits with no leading zero ("0" alone is fine), nothing else,
 * and within int64. So "+1", "01", "-0", " 1" and "" are all refused.
 */
static bool
parse_int(const char *s, size_t len, int64_t *out)
{
	bool negative = false;
	uint64_t v = 0, limit;
	size_t i = 0;

	if (len == 1 && s[0] == '0') {
		*out = 0;
		return true;
	}
	if (len > 0 && s[0] == '-') {
		negative = true;
		i++;
	}
	if (i >= len || s[i] < '1' || s[i] > '9')
		return false;
	limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return false;
		d = (unsigned)(s[i] - '0');
		if (v > (limit - d) / 10)
			return false;
		v = v * 10 + d;
	}
	if (negative)
		*out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	else
		*out = (int64_t)v;
	return true;
}

static size_t
min_size(size_t a, uint64_t b)
{
	return b < a ? (size_t)b : a;
}

static char
lower_ascii(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/*
 * Write "<prefix>'<c>'" into buf (the parser's line buffer, free once the
 * parser has failed) for error messages that name a byte. CR and LF become
 * spaces, as redis does to keep its error reply one line.
 */
static const char *
format_byte_error(char *buf, size_t cap, const char *prefix, char c)
{
	size_t n = strlen(prefix);

	if (n + 4 > cap)
		abort();
	memcpy(buf, prefix, n);
	buf[n] = '\'';
	buf[n + 1] = c == '\r' || c == '\n' ? ' ' : c;
	buf[n + 2] = '\'';
	buf[n + 3] = '\0';
	return buf;
}

enum line_result { LINE_MORE, LINE_END, LINE_TOO_LONG };

/*
 * Gather a header line ("*3", "$11"...: its type byte is line[0]) up to
 * its '\r', at most RESP_LINE_MAX bytes. *took is what was consumed,
 * including the '\r' on LINE_END.
 */
static enum line_result
gather_line(char *line, size_t *linelen, const char *s, size_t n,
    size_t *took)
{
	const char *cr = memchr(s, '\r', n);
	size_t body = cr != NULL ? (size_t)(cr - s) : n;

	if (*linelen + body > RESP_LINE_MAX) {
		*took = RESP_LINE_MAX - *linelen + 1;
		return LINE_TOO_LONG;
	}
	memcpy(line + *linelen, s, body);
	*linelen += body;
	*took = body + (cr != NULL);
	return cr != NULL ? LINE_END : LINE_MORE;
}

/* The number in a gathered header line, after its type byte. */
static bool
line_value(const char *line, size_t linelen, int64_t *out)
{
	return parse_int(line + 1, linelen - 1, out);
}

/* ------------------------------------------------------------------ */
/* Requests                                                           */
/* ------------------------------------------------------------------ */

enum req_state {
	REQ_START,	/* the '*' of a new request */
	REQ_COUNT,	/* "*N" up to its '\r' */
	REQ_COUNT_LF,	/* the '\n' after "*N\r" */
	REQ_BULK_START,	/* the '$' of the next argument */
	REQ_BULK_LEN,	/* "$N" up to its '\r' */
	REQ_BULK_LEN_LF, /* the '\n' after "$N\r" */
	REQ_BULK_DATA,	/* bulk_left bytes of the argument */
	REQ_BULK_CR,	/* the "\r\n" that must follow them */
	REQ_BULK_LF,
	REQ_DONE,	/* RESP_OK returned: the next feed starts over */
	REQ_FAILED,	/* RESP_ERROR returned: until resp_req_init */
};

void
resp_req_init(struct resp_req_parser *p)
{
	/* Field by field: the name and argument buffers are only read up to
	 * their lengths, and this runs once per request. */
	p->state = REQ_START;
	p->total = 0;
	p->argc = 0;
	p->argi = 0;
	p->bulk_left = 0;
	p->linelen = 0;
	p->name[0] = '\0';
	p->namelen = 0;
	p->name_truncated = false;
	p->arg1len = 0;
	p->arg1_truncated = false;
	p->err = NULL;
}

/* Keep what the caller looks at: argv[0] lowercased, the head of argv[1]. */
static void
capture_arg(struct resp_req_parser *p, const char *s, size_t n)
{
	size_t room, i;

	if (p->argi == 0) {
		room = RESP_NAME_MAX - p->namelen;
		if (n > room)
			p->name_truncated = true;
		for (i = 0; i < n && i < room; i++)
			p->name[p->namelen++] = lower_ascii(s[i]);
		p->name[p->namelen] = '\0';
	} else if (p->argi == 1) {
		room = RESP_ARG_MAX - p->arg1len;
		if (n > room)
			p->arg1_truncated = true;
		memcpy(p->arg1 + p->arg1len, s, n < room ? n : room);
		p->arg1len += n < room ? n : room;
	}
}

/* "*N": false for what redis calls an invalid multibulk length. */
static bool
req_count_ok(const struct resp_req_parser *p, const struct resp_limits *lim,
    int64_t *count)
{
	if (!line_value(p->line, p->linelen, count))
		return false;
	return *count <= 0 || (uint64_t)*count <= lim->max_multibulk_len;
}

/* "$N": false for what redis calls an invalid bulk length. */
static bool
req_bulk_len_ok(const struct resp_req_parser *p,
    const struct resp_limits *lim, int64_t *blen)
{
	if (!line_value(p->line, p->linelen, blen))
		return false;
	return *blen >= 0 && (uint64_t)*blen <= lim->max_bulk_len;
}

static size_t
req_fail(struct resp_req_parser *p, const char *err, size_t took)
{
	p->err = err;
	p->state = REQ_FAILED;
	return took;
}

/*
 * The fast path for a whole header line in one chunk ("*2\r\n", "$3\r\n"),
 * the case of nearly every request: the number is read in place, with the
 * same rules as line_value (no sign but '-', no leading zero, no overflow).
 * Returns the bytes of the line with its CRLF, or 0 to take the slow path
 * (anything unusual: let the byte-by-byte machine give the exact error).
 */
static size_t
fast_header(const char *s, size_t n, int64_t *out)
{
	size_t i = 1;
	int64_t v = 0;

	if (n < 4 || s[1] < '1' || s[1] > '9') {
		if (n >= 4 && s[1] == '0' && s[2] == '\r' && s[3] == '\n') {
			*out = 0;
			return 4;
		}
		return 0;
	}
	for (; i < n && i < 19 && s[i] >= '0' && s[i] <= '9'; i++)
		v = v * 10 + (s[i] - '0');
	if (i + 1 >= n || s[i] != '\r' || s[i + 1] != '\n')
		return 0;
	*out = v;
	return i + 2;
}

/* One transition of the request machine; returns the bytes consumed. */
static size_t
req_step(struct resp_req_parser *p, const struct resp_limits *lim,
    const char *s, size_t n)
{
	int64_t v;
	size_t took;

	switch (p->state) {
	case REQ_START:
		if (s[0] == '*' && (took = fast_header(s, n, &v)) > 0 &&
		    (uint64_t)v <= lim->max_multibulk_len) {
			p->argc = v;
			p->state = v > 0 ? REQ_BULK_START : REQ_DONE;
			return took;
		}
		if (s[0] != '*')
			return req_fail(p, format_byte_error(p->line,
			    sizeof(p->line), "expected '*', got ", s[0]), 1);
		p->line[0] = '*';
		p->linelen = 1;
		p->state = REQ_COUNT;
		return 1;
	case REQ_COUNT:
		switch (gather_line(p->line, &p->linelen, s, n, &took)) {
		case LINE_TOO_LONG:
			return req_fail(p, "too big mbulk count string", took);
		case LINE_END:
			p->state = REQ_COUNT_LF;
			break;
		case LINE_MORE:
			break;
		}
		return took;
	case REQ_COUNT_LF:
		if (s[0] != '\n' || !req_count_ok(p, lim, &v))
			return req_fail(p, "invalid multibulk length", 1);
		p->argc = v > 0 ? v : 0;
		p->state = p->argc > 0 ? REQ_BULK_START : REQ_DONE;
		return 1;
	case REQ_BULK_START:
		if (s[0] == '$' && (took = fast_header(s, n, &v)) > 0 &&
		    (uint64_t)v <= lim->max_bulk_len) {
			p->bulk_left = (uint64_t)v;
			p->state = v > 0 ? REQ_BULK_DATA : REQ_BULK_CR;
			return took;
		}
		if (s[0] != '$')
			return req_fail(p, format_byte_error(p->line,
			    sizeof(p->line), "expected '$', got ", s[0]), 1);
		p->line[0] = '$';
		p->linelen = 1;
		p->state = REQ_BULK_LEN;
		return 1;
	case REQ_BULK_LEN:
		switch (gather_line(p->line, &p->linelen, s, n, &took)) {
		case LINE_TOO_LONG:
			return req_fail(p, "too big bulk count string", took);
		case LINE_END:
			p->state = REQ_BULK_LEN_LF;
			break;
		case LINE_MORE:
			break;
		}
		return took;
	case REQ_BULK_LEN_LF:
		if (s[0] != '\n' || !req_bulk_len_ok(p, lim, &v))
			return req_fail(p, "invalid bulk length", 1);
		p->bulk_left = (uint64_t)v;
		p->state = v > 0 ? REQ_BULK_DATA : REQ_BULK_CR;
		return 1;
	case REQ_BULK_DATA:
		took = min_size(n, p->bulk_left);
		capture_arg(p, s, took);
		p->bulk_left -= took;
		if (p->bulk_left > 0)
			return took;
		/* The CRLF after the data, when it is here too. */
		if (n - took >= 2 && s[took] == '\r' && s[took + 1] == '\n') {
			p->argi++;
			p->state = p->argi < p->argc ? REQ_BULK_START : REQ_DONE;
			return took + 2;
		}
		p->state = REQ_BULK_CR;
		return took;
	case REQ_BULK_CR:
		if (s[0] != '\r')
			return req_fail(p, "expected CRLF after bulk", 1);
		p->state = REQ_BULK_LF;
		return 1;
	case REQ_BULK_LF:
		if (s[0] != '\n')
			return req_fail(p, "expected CRLF after bulk", 1);
		p->argi++;
		p->state = p->argi < p->argc ? REQ_BULK_START : REQ_DONE;
		return 1;
	default:
		abort(); /* REQ_DONE and REQ_FAILED never step */
	}
}

enum resp_status
resp_req_feed(struct resp_req_parser *p, const struct resp_limits *lim,
    const char *buf, size_t len, size_t *used)
{
	size_t pos = 0;

	if (lim == NULL)
		lim = &default_limits;
	if (p->state == REQ_DONE)
		resp_req_init(p);
	*used = 0;
	if (p->state == REQ_FAILED)
		return RESP_ERROR;
	while (pos < len) {
		size_t took = req_step(p, lim, buf + pos, len - pos);

		pos += took;
		p->total += took;
		if (p->state == REQ_DONE || p->state == REQ_FAILED)
			break;
	}
	*used = pos;
	if (p->state == REQ_DONE)
		return RESP_OK;
	return p->state == REQ_FAILED ? RESP_ERROR : RESP_NEED_MORE;
}

/* ------------------------------------------------------------------ */
/* Replies                                                            */
/* ------------------------------------------------------------------ */

enum reply_state {
	RPL_TYPE,	/* the type byte of the next element */
	RPL_ERRCODE,	/* the first word of a top-level '-' error, kept */
	RPL_LINE,	/* the rest of a simple line, skipped up to '\r' */
	RPL_LINE_LF,	/* the '\n' after it */
	RPL_COUNT,	/* a header line ("$5", "*?", ";3") up to '\r' */
	RPL_COUNT_LF,	/* the '\n' after it */
	RPL_BULK_ERRCODE, /* the first word of a top-level '!' error, kept */
	RPL_BULK_DATA,	/* bulk_left bytes of a string or of a chunk */
	RPL_BULK_CR,	/* the "\r\n" after them */
	RPL_BULK_LF,
	RPL_CHUNK_TYPE,	/* the ';' of the next chunk of a "$?" string */
	RPL_END_CR,	/* the "\r\n" after a '.' ending a streamed aggregate */
	RPL_END_LF,
	RPL_DONE,	/* RESP_OK returned: the next feed starts over */
	RPL_FAILED,	/* RESP_ERROR returned: until resp_reply_init */
};

/*
 * remaining[] per open aggregate: n > 0 elements left; LEVEL_STREAMED for
 * "*?"-style aggregates that end at '.'; and below that an attribute with
 * (-1 - r) elements left, because an attribute is not an element of its
 * parent and its completion must not count as one.
 */
#define LEVEL_STREAMED (-1)

static bool
level_is_attribute(int64_t r)
{
	return r < LEVEL_STREAMED;
}

static int64_t
attribute_level(int64_t left)
{
	return -1 - left;
}

static int64_t
attribute_left(int64_t r)
{
	return -1 - r;
}

void
resp_reply_init(struct resp_reply_parser *p)
{
	/* remaining[] is written before it is read, level by level: no need
	 * to clear its 512 bytes for every reply. */
	p->state = RPL_TYPE;
	p->total = 0;
	p->depth = 0;
	p->bulk_left = 0;
	p->linelen = 0;
	p->type = 0;
	p->push = false;
	p->errcodelen = 0;
	p->errcode[0] = '\0';
	p->err = NULL;
}

static bool
is_simple_type(char c)
{
	switch (c) {
	case '+': case '-': case ':': case ',': case '(': case '#': case '_':
		return true;
	default:
		return false;
	}
}

static bool
is_header_type(char c)
{
	switch (c) {
	case '$': case '*': case '%': case '~': case '>': case '|': case '=':
	case '!':
		return true;
	default:
		return false;
	}
}

static bool
is_aggregate_type(char c)
{
	return c != '\0' && strchr("*%~>|", c) != NULL;
}

static size_t
reply_fail(struct resp_reply_parser *p, const char *err, size_t took)
{
	p->err = err;
	p->state = RPL_FAILED;
	return took;
}

/*
 * An element is complete (a scalar, or an aggregate whose last element
 * was): count it in the open aggregates, closing those it fills. Returns
 * the next state: RPL_DONE when it was the whole reply.
 */
static int
complete_element(struct resp_reply_parser *p)
{
	while (p->depth > 0) {
		int64_t *r = &p->remaining[p->depth - 1];

		if (*r == LEVEL_STREAMED)
			return RPL_TYPE;
		if (level_is_attribute(*r)) {
			int64_t left = attribute_left(*r) - 1;

			if (left > 0) {
				*r = attribute_level(left);
				return RPL_TYPE;
			}
			/* An attribute precedes an element; it is not one. */
			p->depth--;
			return RPL_TYPE;
		}
		if (--*r > 0)
			return RPL_TYPE;
		p->depth--;
	}
	return RPL_DONE;
}

/*
 * Open an aggregate of count elements (pairs for maps and attributes).
 * Returns the next state, or RPL_FAILED with p->err set.
 */
static int
open_aggregate(struct resp_reply_parser *p, char type, int64_t count)
{
	if (count == 0)
		return type == '|' ? RPL_TYPE : complete_element(p);
	if (type == '%' || type == '|') {
		if (count > INT64_MAX / 2 - 1) {
			p->err = "aggregate too large";
			return RPL_FAILED;
		}
		count *= 2;
	}
	if (p->depth == RESP_MAX_DEPTH) {
		p->err = "aggregates nested too deep";
		return RPL_FAILED;
	}
	p->remaining[p->depth++] = type == '|' ? attribute_level(count) : count;
	return RPL_TYPE;
}

static int
open_streamed_aggregate(struct resp_reply_parser *p)
{
	if (p->depth == RESP_MAX_DEPTH) {
		p->err = "aggregates nested too deep";
		return RPL_FAILED;
	}
	p->remaining[p->depth++] = LEVEL_STREAMED;
	return RPL_TYPE;
}

/*
 * A header line is complete: say what comes next. line[0] is its type
 * byte, and stays there while its payload is read (RPL_BULK_* use it to
 * tell a chunk of a streamed string from a whole string).
 */
static int
interpret_header(struct resp_reply_parser *p)
{
	char type = p->line[0];
	bool streamed = p->linelen == 2 && p->line[1] == '?';
	int64_t v;

	if (streamed && type == '$')
		return RPL_CHUNK_TYPE;
	if (streamed && (type == '*' || type == '%' || type == '~'))
		return open_streamed_aggregate(p);
	if (!line_value(p->line, p->linelen, &v) || v < -1 ||
	    (v == -1 && (type == '|' || type == ';'))) {
		p->err = type == ';' ? "invalid chunk length" :
		    is_aggregate_type(type) ? "invalid aggregate length" :
		    "invalid bulk length";
		return RPL_FAILED;
	}
	if (v == -1) /* RESP2 null bulk or null array */
		return complete_element(p);
	if (is_aggregate_type(type))
		return open_aggregate(p, type, v);
	if (type == ';' && v == 0) /* the end of a streamed string */
		return complete_element(p);
	p->bulk_left = (uint64_t)v;
	if (v == 0)
		return RPL_BULK_CR;
	return type == '!' && p->depth == 0 ? RPL_BULK_ERRCODE : RPL_BULK_DATA;
}

/* The state a type byte leads to; sets type/push for top-level replies. */
static int
begin_element(struct resp_reply_parser *p, char c)
{
	if (p->depth == 0 && c != '|') {
		p->type = c;
		p->push = c == '>';
	}
	if (c == '-' && p->depth == 0)
		return RPL_ERRCODE;
	if (is_simple_type(c))
		return RPL_LINE;
	if (is_header_type(c)) {
		p->line[0] = c;
		p->linelen = 1;
		return RPL_COUNT;
	}
	if (c == '.' && p->depth > 0 &&
	    p->remaining[p->depth - 1] == LEVEL_STREAMED)
		return RPL_END_CR;
	p->err = format_byte_error(p->line, sizeof(p->line),
	    c == '.' ? "unexpected " : "unknown reply type ", c);
	return RPL_FAILED;
}

/* Keep up to RESP_ERRCODE_MAX - 1 bytes of the error's first word. */
static size_t
capture_errcode(struct resp_reply_parser *p, const char *s, size_t n,
    bool *word_done)
{
	size_t i;

	*word_done = false;
	for (i = 0; i < n; i++) {
		if (s[i] == ' ' || s[i] == '\r' || s[i] == '\n' ||
		    p->errcodelen == RESP_ERRCODE_MAX - 1) {
			*word_done = true;
			break;
		}
		p->errcode[p->errcodelen++] = s[i];
	}
	p->errcode[p->errcodelen] = '\0';
	return i;
}

/* Bytes of a simple line before its '\r'; *cr when the '\r' is there. */
static size_t
skip_line(const char *s, size_t n, bool *cr)
{
	const char *end = memchr(s, '\r', n);

	*cr = end != NULL;
	return end != NULL ? (size_t)(end - s) : n;
}

/*
 * The common elements in one step when they are whole in the chunk: a
 * "$N" or "*N" header, or a "+..." / ":..." line. Anything else, or
 * anything split, takes the byte-by-byte path (which gives exact errors).
 */
static size_t
fast_element(struct resp_reply_parser *p, const char *s, size_t n)
{
	char c = s[0];
	int64_t v;
	size_t took;

	if (c == '+' || c == ':') {
		const char *cr = memchr(s, '\r', n);
		if (cr == NULL || (size_t)(cr - s) + 1 >= n || cr[1] != '\n')
			return 0;
		if (p->depth == 0) {
			p->type = c;
			p->push = false;
		}
		p->state = complete_element(p);
		return (size_t)(cr - s) + 2;
	}
	if ((c != '$' && c != '*') || (took = fast_header(s, n, &v)) == 0)
		return 0;
	if (p->depth == 0) {
		p->type = c;
		p->push = false;
	}
	if (c == '*') {
		p->line[0] = c;
		p->linelen = 1;
		p->state = open_aggregate(p, c, v);
		return took;
	}
	p->line[0] = c; /* read again at the CRLF after the data */
	p->linelen = 1;
	p->bulk_left = (uint64_t)v;
	p->state = v == 0 ? RPL_BULK_CR : RPL_BULK_DATA;
	return took;
}

/*
 * One transition of the reply machine; returns the bytes consumed, which
 * is 0 only when the end of an error's first word moves it to another
 * state (so the feed loop always makes progress).
 */
static size_t
reply_step(struct resp_reply_parser *p, const char *s, size_t n)
{
	size_t took;
	bool flag;

	switch (p->state) {
	case RPL_TYPE:
		if ((took = fast_element(p, s, n)) > 0)
			return took;
		p->state = begin_element(p, s[0]);
		return 1;
	case RPL_ERRCODE:
		took = capture_errcode(p, s, n, &flag);
		if (flag)
			p->state = RPL_LINE;
		return took;
	case RPL_LINE:
		took = skip_line(s, n, &flag);
		if (flag) {
			p->state = RPL_LINE_LF;
			took++;
		}
		return took;
	case RPL_LINE_LF:
	case RPL_BULK_LF:
	case RPL_END_LF:
		if (s[0] != '\n')
			return reply_fail(p, "expected CRLF", 1);
		if (p->state == RPL_END_LF) {
			p->depth--; /* the streamed aggregate is complete */
			p->state = complete_element(p);
		} else if (p->state == RPL_BULK_LF && p->line[0] == ';') {
			p->state = RPL_CHUNK_TYPE;
		} else {
			p->state = complete_element(p);
		}
		return 1;
	case RPL_COUNT:
		switch (gather_line(p->line, &p->linelen, s, n, &took)) {
		case LINE_TOO_LONG:
			return reply_fail(p, "header line too long", took);
		case LINE_END:
			p->state = RPL_COUNT_LF;
			break;
		case LINE_MORE:
			break;
		}
		return took;
	case RPL_COUNT_LF:
		if (s[0] != '\n')
			return reply_fail(p, "expected CRLF", 1);
		p->state = interpret_header(p);
		return 1;
	case RPL_BULK_ERRCODE:
		took = capture_errcode(p, s, min_size(n, p->bulk_left), &flag);
		p->bulk_left -= took;
		if (p->bulk_left == 0)
			p->state = RPL_BULK_CR;
		else if (flag)
			p->state = RPL_BULK_DATA;
		return took;
	case RPL_BULK_DATA:
		took = min_size(n, p->bulk_left);
		p->bulk_left -= took;
		if (p->bulk_left > 0)
			return took;
		/* Not for a chunk of a streamed string: another chunk follows. */
		if (n - took >= 2 && s[took] == '\r' && s[took + 1] == '\n' &&
		    p->line[0] != ';') {
			p->state = complete_element(p);
			return took + 2;
		}
		p->state = RPL_BULK_CR;
		return took;
	case RPL_BULK_CR:
	case RPL_END_CR:
		if (s[0] != '\r')
			return reply_fail(p, "expected CRLF", 1);
		p->state = p->state == RPL_BULK_CR ? RPL_BULK_LF : RPL_END_LF;
		return 1;
	case RPL_CHUNK_TYPE:
		if (s[0] != ';')
			return reply_fail(p, format_byte_error(p->line,
			    sizeof(p->line), "expected ';', got ", s[0]), 1);
		p->line[0] = ';';
		p->linelen = 1;
		p->state = RPL_COUNT;
		return 1;
	default:
		abort(); /* RPL_DONE and RPL_FAILED never step */
	}
}

enum resp_status
resp_reply_feed(struct resp_reply_parser *p, const char *buf, size_t len,
    size_t *used)
{
	size_t pos = 0;

	if (p->state == RPL_DONE)
		resp_reply_init(p);
	*used = 0;
	if (p->state == RPL_FAILED)
		return RESP_ERROR;
	while (pos < len) {
		size_t took = reply_step(p, buf + pos, len - pos);

		pos += took;
		p->total += took;
		if (p->state == RPL_DONE || p->state == RPL_FAILED)
			break;
	}
	*used = pos;
	if (p->state == RPL_DONE)
		return RESP_OK;
	return p->state == RPL_FAILED ? RESP_ERROR : RESP_NEED_MORE;
}

/* ------------------------------------------------------------------ */
/* Inline requests                                                    */
/* ------------------------------------------------------------------ */

/* isspace() in the C locale: what separates arguments. */
static bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
	    c == '\r';
}

/* What ends an unquoted argument: not \v or \f, as in sdssplitargs. */
static bool
ends_bare_word(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static char
unescape(char c)
{
	switch (c) {
	case 'n':
		return '\n';
	case 'r':
		return '\r';
	case 't':
		return '\t';
	case 'b':
		return '\b';
	case 'a':
		return '\a';
	default:
		return c;
	}
}

enum word_state { WORD_BARE, WORD_DQUOTE, WORD_SQUOTE };

/* Where the words being split go: bounded output, one byte at a time. */
struct word_out {
	char *buf;
	size_t cap;
	size_t len;
	bool overflow;
};

static void
put_byte(struct word_out *o, char c)
{
	if (o->len == o->cap) {
		o->overflow = true;
		return;
	}
	o->buf[o->len++] = c;
}

/*
 * Read one word starting at line[*pos] (not a blank) into o. Returns false
 * for unbalanced quotes: a quote never closed, or a closing quote followed
 * by something other than a blank.
 */
static bool
split_word(const char *line, size_t len, size_t *pos, struct word_out *o)
{
	enum word_state st = WORD_BARE;
	size_t i = *pos;

	for (;;) {
		char c = i < len ? line[i] : '\0';
		bool at_end = i >= len;

		if (st == WORD_BARE) {
			if (at_end || ends_bare_word(c))
				break;
			if (c == '"')
				st = WORD_DQUOTE;
			else if (c == '\'')
				st = WORD_SQUOTE;
			else
				put_byte(o, c);
			i++;
			continue;
		}
		if (at_end)
			return false;
		if (st == WORD_DQUOTE && c == '\\' && i + 3 < len &&
		    line[i + 1] == 'x' && hex_value(line[i + 2]) >= 0 &&
		    hex_value(line[i + 3]) >= 0) {
			put_byte(o, (char)(hex_value(line[i + 2]) * 16 +
			    hex_value(line[i + 3])));
			i += 4;
		} else if (st == WORD_DQUOTE && c == '\\' && i + 1 < len) {
			put_byte(o, unescape(line[i + 1]));
			i += 2;
		} else if (st == WORD_SQUOTE && c == '\\' && i + 1 < len &&
		    line[i + 1] == '\'') {
			put_byte(o, '\'');
			i += 2;
		} else if ((st == WORD_DQUOTE && c == '"') ||
		    (st == WORD_SQUOTE && c == '\'')) {
			/* A closing quote ends the word: "a"b is an error. */
			i++;
			if (i < len && !is_blank(line[i]))
				return false;
			break;
		} else {
			put_byte(o, c);
			i++;
		}
	}
	*pos = i;
	return true;
}

/*
 * Unlike sdssplitargs this is binary-safe: a NUL is an ordinary byte, where
 * redis-server never gets that far (it looks for the '\n' with strchr, so
 * an inline request holding a NUL waits until it is "too big"). The caller
 * may refuse such lines itself. Running out of out_buf answers -2, like
 * too many arguments; it cannot happen with out_cap >= len.
 */
int
resp_inline_split(const char *line, size_t len, char *out_buf,
    size_t out_cap, const char **argv, size_t *argvlen, int max_args)
{
	struct word_out o = { out_buf, out_cap, 0, false };
	size_t pos = 0;
	int argc = 0;

	for (;;) {
		size_t start;

		while (pos < len && is_blank(line[pos]))
			pos++;
		if (pos >= len)
			return argc;
		if (argc == max_args)
			return -2;
		start = o.len;
		if (!split_word(line, len, &pos, &o))
			return -1;
		if (o.overflow)
			return -2;
		argv[argc] = out_buf + start;
		argvlen[argc] = o.len - start;
		argc++;
	}
}

/* ------------------------------------------------------------------ */
/* Complete multibulk requests                                        */
/* ------------------------------------------------------------------ */

/* Read "<type>N\r\n" at buf[*pos]; false if it is not there. */
static bool
read_header(const char *buf, size_t len, size_t *pos, char type, int64_t *v)
{
	const char *cr;
	size_t start = *pos;

	if (start >= len || buf[start] != type)
		return false;
	cr = memchr(buf + start, '\r', len - start);
	if (cr == NULL || (size_t)(cr - buf) + 1 >= len || cr[1] != '\n')
		return false;
	if (!parse_int(buf + start + 1, (size_t)(cr - buf) - start - 1, v))
		return false;
	*pos = (size_t)(cr - buf) + 2;
	return true;
}

int
resp_argv(const char *buf, size_t len, const char **argv, size_t *argvlen,
    int max_args)
{
	size_t pos = 0;
	int64_t argc, blen, i;

	if (!read_header(buf, len, &pos, '*', &argc))
		return -1;
	if (argc <= 0)
		return 0;
	if (argc > max_args)
		return -1;
	for (i = 0; i < argc; i++) {
		size_t n;

		if (!read_header(buf, len, &pos, '$', &blen) || blen < 0 ||
		    (uint64_t)blen > len - pos || len - pos - (size_t)blen < 2)
			return -1;
		n = (size_t)blen;
		if (buf[pos + n] != '\r' || buf[pos + n + 1] != '\n')
			return -1;
		argv[i] = buf + pos;
		argvlen[i] = n;
		pos += n + 2;
	}
	return (int)argc;
}
