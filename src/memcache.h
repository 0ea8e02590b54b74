/*
 * memcache.h - the Memcached text protocol (classic and meta commands).
 *
 * memcache.c provides memcache_proto (proto.h): it frames and validates
 * requests the way memcached 1.6 does, answers its errors with memcached's
 * own bytes, keeps noreply and quiet mode off the shared server connection
 * (every forwarded request gets exactly one reply), and frames replies.
 * The pure helpers below work on contiguous bytes, do no I/O and are what
 * the unit tests exercise directly. docs/memcache.md records the decisions.
 */
#ifndef SIDEPOOL_MEMCACHE_H
#define SIDEPOOL_MEMCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "proto.h"

#define MC_KEY_MAX 250       /* KEY_MAX_LENGTH in memcached */
#define MC_TOKENS_MAX 23     /* memcached keeps 23 tokens, the rest is one tail */
#define MC_META_TOKENS_MAX 19 /* meta command + key + flags, beyond: "too long" */
#define MC_OPAQUE_MAX 32
#define MC_REPLY_LINE_MAX 8192 /* a server line longer than this is a desync */

/* memcache defaults for limits left at 0 in the config */
#define MC_DEFAULT_MAX_REQUEST (2u * 1024 * 1024)
#define MC_DEFAULT_MAX_VALUE (1u * 1024 * 1024)
#define MC_DEFAULT_MAX_ARGS 65536u
#define MC_DEFAULT_MAX_LINE 2048u /* memcached closes longer non-get lines */
#define MC_DEFAULT_MAX_PENDING 1024u
#define MC_DEFAULT_MAX_OUTPUT (64u * 1024 * 1024)

/*
 * pflags, as parse_request gives them for a forwarded request: the shape of
 * the reply in the low bits, then what of it the client must not see.
 * pflags 0 is "one line, show it": right for the probe ("mn" -> "MN").
 */
enum mc_shape {
	MC_SHAPE_LINE = 0,   /* one line: STORED, DELETED, 42, VERSION x, HD ... */
	MC_SHAPE_VALUES = 1, /* get family: (VALUE line, data)* then END */
	MC_SHAPE_META = 2,   /* mg, ma: VA line and data, or one line */
	MC_SHAPE_STATS = 3,  /* stats: STAT/ITEM/PREFIX lines then END, or one line */
};
#define MC_PF_SHAPE_MASK 0x0fu
#define MC_PF_NOREPLY 0x10u /* classic noreply: the client sees nothing at all */
#define MC_PF_DROP_EN 0x20u /* meta q: hide "EN" (mg miss) */
#define MC_PF_DROP_HD 0x40u /* meta q: hide "HD" (ms, md, ma success) */
#define MC_PF_DROP_VA 0x80u /* meta q: hide a "VA" block (ma v success) */
#define MC_PF_EVICTED 0x100u /* the reply stands for "object too large" */

/* One space-separated token of a command line. */
struct mc_token {
	const char *p;
	size_t len;
};

/*
 * memcached splits a command line on ' ' only (tabs and other control
 * bytes belong to tokens) and stops at the first NUL byte. Return the next
 * token of line[*pos..len) and advance *pos past it; false when none is left.
 */
bool mc_next_token(const char *line, size_t len, size_t *pos,
    struct mc_token *t);

/*
 * Tokenize a whole line: keep up to max tokens in tok, count all of them
 * in *argc. Returns the number kept.
 */
size_t mc_tokenize(const char *line, size_t len, struct mc_token *tok,
    size_t max, size_t *argc);

/*
 * memcached's number parsers (safe_strtol, safe_strtoul, safe_strtoull on
 * a 64-bit host), quirks included: leading white space and a sign are
 * accepted, a white-space byte after the digits ends the number ("5\t"),
 * strtol's long is truncated to 32 bits ("4294967301" is 5) and a value
 * that is negative as a signed number fails only if a '-' appears anywhere
 * in the token.
 */
bool mc_parse_i32(const char *s, size_t len, int32_t *out);
bool mc_parse_u32(const char *s, size_t len, uint32_t *out);
bool mc_parse_u64(const char *s, size_t len, uint64_t *out);

/*
 * A command line longer than the line limit is allowed only for a large
 * multiget: at most 100 leading spaces, then "get " or "gets " (memcached's
 * rule). head is the first n bytes of a line that may still grow: while
 * they can become such a start, the answer is MC_LONG_MAYBE. Each answer
 * but MAYBE stays the same however many bytes follow; 105 bytes always
 * decide.
 */
enum mc_long { MC_LONG_NO, MC_LONG_MAYBE, MC_LONG_YES };
#define MC_LONG_HEAD 105
enum mc_long mc_long_line(const char *head, size_t n);

/* What to do with one command line. */
enum mc_action {
	MC_ACT_FORWARD, /* send it (and its data block) to the server */
	MC_ACT_REPLY,   /* answer reply[] here (may be empty: noreply) */
	MC_ACT_QUIT,    /* close the client without a word */
	MC_ACT_EVICT,   /* too large for set/ms: forward evict[] instead, drop the
			   data, answer "object too large" (memcached deletes
			   the old item so no stale value stays readable) */
};

struct mc_plan {
	enum mc_action action;
	const char *name;          /* command name, static storage */
	uint32_t pflags;           /* MC_ACT_FORWARD: for the reply parser */
	bool noreply;              /* the client asked for no reply */
	bool has_data;             /* a data block follows the line */
	uint64_t data_len;         /* its bytes including the final "\r\n" */
	bool swallow;              /* MC_ACT_REPLY: drop data_len bytes unread */
	size_t strip_from;         /* MC_ACT_FORWARD: line bytes to remove */
	size_t strip_to;           /* (noreply, q): [strip_from, strip_to) */
	char reply[128];           /* MC_ACT_REPLY: text, "\r\n" included */
	char evict[300];           /* MC_ACT_EVICT: the line to forward */
};

/*
 * Decide what one complete command line means. line holds the bytes before
 * the "\n" (a "\r" before it is allowed); len < line limit is the caller's
 * business, as is the data block. Pure: no I/O, no allocation.
 */
void mc_plan_line(const char *line, size_t len, const struct cfg_limits *lim,
    struct mc_plan *plan);

/* First word of a server reply line. */
enum mc_code {
	MC_R_OTHER,        /* "STORED", "42", "VERSION 1.6", "OK", "RESET"... */
	MC_R_VALUE,
	MC_R_END,
	MC_R_STAT,         /* STAT, ITEM, PREFIX: a stats-style line, more follow */
	MC_R_VA,
	MC_R_HD,
	MC_R_EN,
	MC_R_ERROR,        /* ERROR, CLIENT_ERROR ..., SERVER_ERROR ... */
};

struct mc_reply_line {
	enum mc_code code;
	bool has_len;      /* VALUE, VA: a well-formed data length was found */
	uint64_t len;      /* data block bytes, without "\r\n" */
};

/* Classify one reply line (without its "\r\n"). */
void mc_reply_classify(const char *line, size_t len, struct mc_reply_line *out);

/* How many bytes a parser state has searched or copied so far (tests). */
uint64_t mc_req_examined(const void *state);
uint64_t mc_reply_examined(const void *state);

#endif
