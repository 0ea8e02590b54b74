/*
 * resp.h - pure, incremental parsers for the Redis protocol (RESP2/RESP3).
 *
 * No I/O, no allocation. A parser is fed the bytes of a stream in as many
 * chunks as the caller likes (split anywhere); it keeps its own state, so a
 * 64 MB bulk arriving in 16 KB pieces is scanned once, not once per piece.
 * Each feed returns RESP_OK when one whole message has been seen,
 * RESP_NEED_MORE when the chunk ran out first, or RESP_ERROR with a message
 * in the parser's err field. *used says how many bytes of the chunk belong
 * to the message (on RESP_OK the rest belongs to the next message).
 */
#ifndef SIDEPOOL_RESP_H
#define SIDEPOOL_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum resp_status { RESP_OK, RESP_NEED_MORE, RESP_ERROR };

/* Bounds on requests, as redis-server's defaults unless configured. */
struct resp_limits {
	uint64_t max_bulk_len;      /* proto-max-bulk-len: 512 MB */
	uint64_t max_multibulk_len; /* INT_MAX, as redis-server */
	uint64_t max_inline_len;    /* PROTO_INLINE_MAX_SIZE: 64 KB */
};

#define RESP_NAME_MAX 32   /* longest command name kept (longer ones are unknown) */
#define RESP_ARG_MAX 64    /* bytes of argv[1] kept, for subcommands */
#define RESP_LINE_MAX 32   /* a "*N" or "$N" header line; longer is an error */

/*
 * Request parser: one multibulk request "*N\r\n$L\r\n...\r\n". Inline
 * requests are turned into multibulk by the caller (resp_inline_split).
 * After RESP_OK: total is the request's length in bytes, argc its argument
 * count, name the lowercased argv[0] (namelen; name_truncated when longer
 * than RESP_NAME_MAX), arg1 the first RESP_ARG_MAX bytes of argv[1]
 * (arg1len, arg1_truncated). "*0\r\n" and "*-1\r\n" complete with argc 0:
 * redis-server ignores them, and so must the caller.
 */
struct resp_req_parser {
	int state;
	uint64_t total;
	int64_t argc;
	int64_t argi;
	uint64_t bulk_left;
	char line[RESP_LINE_MAX];
	size_t linelen;
	char name[RESP_NAME_MAX + 1];
	size_t namelen;
	bool name_truncated;
	char arg1[RESP_ARG_MAX];
	size_t arg1len;
	bool arg1_truncated;
	const char *err; /* on RESP_ERROR: the text after "-ERR Protocol error: " */
};

void resp_req_init(struct resp_req_parser *p);
enum resp_status resp_req_feed(struct resp_req_parser *p,
    const struct resp_limits *lim, const char *buf, size_t len, size_t *used);

/*
 * Reply parser: one whole reply, any RESP2 or RESP3 type, aggregates nested
 * up to RESP_MAX_DEPTH. A RESP3 attribute (|) belongs to the reply after it.
 * After RESP_OK: total is the reply's length, type its first byte ('+', '-',
 * '*', '>', ...), and for error replies errcode holds the first word
 * ("ERR", "LOADING", "MOVED"...). push is set for a top-level '>' push.
 */
#define RESP_MAX_DEPTH 64
#define RESP_ERRCODE_MAX 16

struct resp_reply_parser {
	int state;
	uint64_t total;
	int depth;
	int64_t remaining[RESP_MAX_DEPTH]; /* elements left at each level; -1 streamed */
	uint64_t bulk_left;
	char line[RESP_LINE_MAX];
	size_t linelen;
	char type;
	bool push;
	char errcode[RESP_ERRCODE_MAX];
	size_t errcodelen;
	const char *err;
};

void resp_reply_init(struct resp_reply_parser *p);
enum resp_status resp_reply_feed(struct resp_reply_parser *p,
    const char *buf, size_t len, size_t *used);

/*
 * Inline requests: split one line (without its "\r\n" / "\n") into arguments
 * the way redis-server's sdssplitargs does ("double quotes" with \n \r \t
 * \b \a \\ \" \xHH escapes, 'single quotes' with \' only). Arguments point
 * into out_buf (capacity out_cap, at least len bytes is always enough).
 * Returns the argument count, or -1 for unbalanced quotes (redis-server:
 * "Protocol error: unbalanced quotes in request"), or -2 when more than
 * max_args arguments.
 */
int resp_inline_split(const char *line, size_t len, char *out_buf,
    size_t out_cap, const char **argv, size_t *argvlen, int max_args);

/*
 * Split a complete multibulk request (contiguous, already validated by
 * resp_req_feed) into argv. Returns argc, or -1 if buf is not such a
 * request or has more than max_args arguments.
 */
int resp_argv(const char *buf, size_t len, const char **argv, size_t *argvlen,
    int max_args);

#endif
