/*
 * command.h - the Redis command table as data: name, arity, key positions,
 * flags and what sidepool does with each command.
 *
 * One place for it: routing (which argument is the key), stateful handling
 * and the refuse list all read this table. Lookup is by lowercased name.
 */
#ifndef SIDEPOOL_COMMAND_H
#define SIDEPOOL_COMMAND_H

#include <stddef.h>

/* What the proxy does with a command. */
enum cmd_policy {
	CMD_FORWARD,  /* stateless: multiplexed onto a shared pooled connection */
	CMD_LOCAL,    /* answered by sidepool itself (PING, ECHO, QUIT) */
	CMD_STATEFUL, /* changes connection state: needs a dedicated connection */
	CMD_REFUSED,  /* never proxied (replication, SHUTDOWN...) */
};

enum cmd_flags {
	CMDF_WRITE = 1 << 0,
	CMDF_READONLY = 1 << 1,
	CMDF_ADMIN = 1 << 2,
	CMDF_PUBSUB = 1 << 3,
	CMDF_BLOCKING = 1 << 4,     /* may block the connection (BLPOP, WAIT...) */
	CMDF_MAY_BLOCK = 1 << 5,    /* blocks only with an argument (XREAD BLOCK) */
	CMDF_SUBCOMMANDS = 1 << 6,  /* policy depends on argv[1] (CLIENT, CONFIG...) */
	CMDF_NOKEYS = 1 << 7,
	CMDF_MOVABLE_KEYS = 1 << 8, /* keys not at fixed positions (EVAL, ZUNION...) */
};

struct command {
	const char *name;   /* lowercase */
	int arity;          /* redis convention: N exactly, -N at least N (incl. name) */
	int first_key;      /* 0: no key */
	int last_key;       /* -1: last argument */
	int key_step;
	unsigned flags;     /* enum cmd_flags */
	enum cmd_policy policy;
};

/* name is lowercase, not NUL-terminated. NULL when unknown. */
const struct command *command_lookup(const char *name, size_t len);

/* The policy for this command with its first argument (lowercase, may be
 * empty): CLIENT SETNAME is STATEFUL, CLIENT LIST is FORWARD... */
enum cmd_policy command_policy(const struct command *cmd, const char *arg1,
    size_t arg1len);

/* The entry of cmd's subcommand arg1 ("client|setname"), NULL when cmd
 * has no such subcommand. */
const struct command *command_subcommand(const struct command *cmd,
    const char *arg1, size_t arg1len);
size_t command_count(void);
size_t command_index(const struct command *cmd); /* 0..command_count()-1 */
const struct command *command_at(size_t i);

#endif
