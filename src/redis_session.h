/*
 * redis_session.h - what one Redis client has set on "its" connection,
 * kept by sidepool so that nothing leaks to the next client of a pooled
 * connection: its database, name, authentication, transaction, watches,
 * subscriptions, blocking commands and MONITOR.
 *
 * Some of it sidepool answers itself (AUTH, HELLO, SELECT, CLIENT SETNAME,
 * RESET); the rest needs the client's own server connection for as long as
 * it lasts (MULTI..EXEC, WATCH, SUBSCRIBE, blocking pops, MONITOR).
 */
#ifndef SIDEPOOL_REDIS_SESSION_H
#define SIDEPOOL_REDIS_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "command.h"
#include "proto.h"
#include "resp.h"

/* pflags the Redis protocol puts on requests. */
enum {
	RPF_BLOCKING = 1 << 0,  /* a blocking command: its reply ends it */
	RPF_MULTI = 1 << 1,     /* MULTI: the connection enters a transaction */
	RPF_TXN_END = 1 << 2,   /* EXEC or DISCARD inside a transaction */
	RPF_TXN_SELECT = 1 << 3,/* ... after a SELECT was queued in it */
	RPF_EXEC_SELECT = 1 << 4,/* EXEC: its success moves the client's db */
	RPF_EXECABORT = 1 << 5, /* EXEC of a transaction with a refused
				   command: sent as DISCARD, answered EXECABORT */
};

/* The channels of one kind a client is subscribed to: UNSUBSCRIBE with no
 * argument is answered once per channel, so the count must be exact. */
struct chanset {
	char **names;
	size_t n, cap;
};

struct redis_session {
	int db;                 /* the client's database */
	int multi_db;           /* a SELECT queued in MULTI: the db after EXEC */
	int exec_db;            /* ... and at EXEC, until its reply says */
	int old_db;             /* the db if EXEC does not run */
	bool db_pending;        /* EXEC's reply will say which it is: until
				   then the client's db is its connection's */
	bool multi_aborted;     /* a command in MULTI was refused here */
	bool authed;
	bool in_multi;
	bool watching;
	bool monitor;
	unsigned blocking;      /* blocking commands in flight */
	unsigned expect;        /* stream replies owed, messages aside */
	struct chanset subs[3]; /* channels, patterns, shard channels */
	char *name;             /* CLIENT SETNAME */
};

/* The per-connection side: what the server has been told on it. */
struct redis_conn {
	int db;                 /* -1: unknown, SELECT before the next use */
	bool in_multi;
};

void session_init(struct redis_session *s);
void session_free(struct redis_session *s);
void session_reset(struct redis_session *s);
bool session_active(const struct redis_session *s);
bool session_binding(const struct redis_session *s);

/*
 * Decide what to do with one complete request (len bytes at the head of
 * in; argv[0] lowercased in name): answer it here, refuse it, or forward
 * it on a shared, dedicated or streaming connection. Never drains.
 */
enum proto_verdict session_dispatch(struct redis_session *s,
    const struct command *cmd, const char *name, size_t namelen,
    const char *arg1, size_t arg1len, struct evbuffer *in,
    struct reqinfo *ri);

void session_reply_seen(struct redis_session *s, uint32_t pflags,
    struct evbuffer *in, size_t len);
unsigned session_prepare(struct redis_conn *conn, struct redis_session *s,
    uint32_t pflags, struct evbuffer *out);
unsigned session_handshake(struct redis_conn *conn,
    const struct cfg_upstream *up, struct evbuffer *out);
int session_abandon(struct redis_session *s, struct evbuffer *out);

#endif
