/*
 * test_command.c - the Redis command table: order, lookup, key positions,
 * flags and the proxy's policy for every command it treats specially.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"

static const struct command *
lookup(const char *name)
{
	return command_lookup(name, strlen(name));
}

START_TEST(table_is_sorted_and_unique)
{
	size_t i, n = command_count();

	ck_assert_uint_gt(n, 200);
	for (i = 1; i < n; i++)
		ck_assert_msg(strcmp(command_at(i - 1)->name,
		    command_at(i)->name) < 0, "%s before %s",
		    command_at(i - 1)->name, command_at(i)->name);
	ck_assert_ptr_null(command_at(n));
}
END_TEST

START_TEST(every_row_finds_itself_and_is_well_formed)
{
	size_t i, j, n = command_count();

	for (i = 0; i < n; i++) {
		const struct command *c = command_at(i);

		ck_assert_ptr_eq(lookup(c->name), c);
		ck_assert_int_ne(c->arity, 0);
		for (j = 0; c->name[j] != '\0'; j++)
			ck_assert_msg(c->name[j] < 'A' || c->name[j] > 'Z',
			    "%s not lowercase", c->name);
		ck_assert_ptr_null(strchr(c->name, '|'));
		if (c->first_key == 0)
			ck_assert_int_eq(c->key_step, 0);
		else
			ck_assert_int_ge(c->key_step, 1);
		if (c->flags & CMDF_NOKEYS)
			ck_assert_int_eq(c->first_key, 0);
	}
}
END_TEST

START_TEST(lookup_finds_first_last_and_middle)
{
	const struct command *first = command_at(0);
	const struct command *last = command_at(command_count() - 1);

	ck_assert_str_eq(first->name, "acl");
	ck_assert_str_eq(last->name, "zunionstore");
	ck_assert_ptr_eq(lookup("acl"), first);
	ck_assert_ptr_eq(lookup("zunionstore"), last);
	ck_assert_str_eq(lookup("get")->name, "get");
	ck_assert_str_eq(lookup("lpush")->name, "lpush");
}
END_TEST

START_TEST(lookup_of_unknown_or_partial_names_is_null)
{
	ck_assert_ptr_null(lookup("nosuchcommand"));
	ck_assert_ptr_null(lookup("ge"));         /* prefix of get */
	ck_assert_ptr_null(lookup("gett"));       /* get plus a byte */
	ck_assert_ptr_null(lookup("a"));          /* before the first */
	ck_assert_ptr_null(lookup("zzz"));        /* after the last */
	ck_assert_ptr_null(lookup("GET"));        /* callers lowercase */
	ck_assert_ptr_null(lookup("client|kill")); /* subcommands are not top-level */
	ck_assert_ptr_null(command_lookup("get", 0));
	ck_assert_ptr_null(command_lookup(NULL, 0));
	ck_assert_ptr_null(command_lookup("get\0", 4));
}
END_TEST

START_TEST(lookup_needs_no_nul_terminator)
{
	/* Names inside a larger buffer, as the parser hands them over. */
	const char buf[] = "getsetexpirex";
	char *exact = malloc(3); /* no room for a NUL: ASan would catch a read */

	ck_assert_str_eq(command_lookup(buf, 3)->name, "get");
	ck_assert_str_eq(command_lookup(buf, 6)->name, "getset");
	ck_assert_str_eq(command_lookup(buf + 6, 6)->name, "expire");
	ck_assert_ptr_null(command_lookup(buf, 4));
	memcpy(exact, "del", 3);
	ck_assert_str_eq(command_lookup(exact, 3)->name, "del");
	free(exact);
}
END_TEST

START_TEST(known_commands_have_redis_arity_and_keys)
{
	const struct command *c;

	c = lookup("get");
	ck_assert_int_eq(c->arity, 2);
	ck_assert_int_eq(c->first_key, 1);
	ck_assert_int_eq(c->last_key, 1);
	ck_assert_int_eq(c->key_step, 1);
	ck_assert_uint_eq(c->flags & (CMDF_READONLY | CMDF_WRITE), CMDF_READONLY);

	c = lookup("set");
	ck_assert_int_eq(c->arity, -3);
	ck_assert_int_eq(c->first_key, 1);
	ck_assert_int_eq(c->last_key, 1);
	ck_assert(c->flags & CMDF_WRITE);

	c = lookup("mset");
	ck_assert_int_eq(c->arity, -3);
	ck_assert_int_eq(c->first_key, 1);
	ck_assert_int_eq(c->last_key, -1);
	ck_assert_int_eq(c->key_step, 2);

	c = lookup("eval");
	ck_assert_int_eq(c->arity, -3);
	ck_assert_int_eq(c->first_key, 0);
	ck_assert(c->flags & CMDF_MOVABLE_KEYS);
	ck_assert(!(c->flags & CMDF_NOKEYS));

	c = lookup("xread");
	ck_assert_int_eq(c->arity, -4);
	ck_assert(c->flags & CMDF_MOVABLE_KEYS);
	ck_assert(c->flags & CMDF_MAY_BLOCK);
	ck_assert(!(c->flags & CMDF_BLOCKING));
	ck_assert(lookup("xreadgroup")->flags & CMDF_MAY_BLOCK);

	c = lookup("blpop");
	ck_assert_int_eq(c->first_key, 1);
	ck_assert_int_eq(c->last_key, -2);
	ck_assert(c->flags & CMDF_BLOCKING);
	ck_assert(lookup("wait")->flags & CMDF_BLOCKING);

	ck_assert(lookup("ping")->flags & CMDF_NOKEYS);
	ck_assert(lookup("subscribe")->flags & CMDF_PUBSUB);
	ck_assert(lookup("flushall")->flags & CMDF_WRITE);
	ck_assert(lookup("shutdown")->flags & CMDF_ADMIN);
}
END_TEST

START_TEST(container_commands_are_flagged)
{
	static const char *const containers[] = { "acl", "client", "cluster",
	    "command", "config", "function", "latency", "memory", "module",
	    "object", "pubsub", "script", "slowlog", "xgroup", "xinfo" };
	size_t i;

	for (i = 0; i < sizeof(containers) / sizeof(containers[0]); i++)
		ck_assert_msg(lookup(containers[i])->flags & CMDF_SUBCOMMANDS,
		    "%s", containers[i]);
	ck_assert(!(lookup("get")->flags & CMDF_SUBCOMMANDS));
	/* Keys live in the subcommands (XGROUP CREATE key...): not NOKEYS. */
	ck_assert(!(lookup("xgroup")->flags & CMDF_NOKEYS));
	ck_assert(lookup("client")->flags & CMDF_NOKEYS);
}
END_TEST

static void
assert_policy(const char *name, enum cmd_policy want)
{
	const struct command *c = lookup(name);

	ck_assert_msg(c != NULL, "%s missing", name);
	ck_assert_msg(command_policy(c, "", 0) == want, "%s: policy %d, want %d",
	    name, command_policy(c, "", 0), want);
	ck_assert_msg(c->policy == want, "%s", name);
}

START_TEST(local_commands)
{
	assert_policy("ping", CMD_LOCAL);
	assert_policy("echo", CMD_LOCAL);
	assert_policy("quit", CMD_LOCAL);
}
END_TEST

START_TEST(stateful_commands)
{
	static const char *const names[] = { "select", "auth", "hello",
	    "multi", "exec", "discard", "watch", "unwatch", "subscribe",
	    "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
	    "sunsubscribe", "monitor", "reset", "readonly", "readwrite",
	    "asking", "blpop", "brpop", "brpoplpush", "blmove", "blmpop",
	    "bzpopmin", "bzpopmax", "bzmpop", "wait", "waitaof", "client" };
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		assert_policy(names[i], CMD_STATEFUL);
}
END_TEST

START_TEST(refused_commands)
{
	static const char *const names[] = { "sync", "psync", "replconf",
	    "shutdown", "slaveof", "replicaof", "failover", "debug",
	    "cluster" };
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		assert_policy(names[i], CMD_REFUSED);
}
END_TEST

START_TEST(ordinary_commands_are_forwarded)
{
	static const char *const names[] = { "get", "set", "mget", "eval",
	    "xread", "xreadgroup", "migrate", "config", "latency", "flushall",
	    "info", "publish", "keys", "scan", "function", "fcall",
	    "restore-asking", "swapdb" };
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		assert_policy(names[i], CMD_FORWARD);
}
END_TEST

START_TEST(only_the_listed_commands_are_special)
{
	size_t i, n = command_count(), special = 0;

	for (i = 0; i < n; i++)
		if (command_at(i)->policy != CMD_FORWARD)
			special++;
	/* 3 local + 30 stateful + 9 refused: a new one needs a test above. */
	ck_assert_uint_eq(special, 42);
}
END_TEST

START_TEST(every_client_subcommand_is_stateful)
{
	static const char *const subs[] = { "setname", "getname", "id", "info",
	    "tracking", "reply", "caching", "no-evict", "no-touch", "kill",
	    "pause", "unpause", "unblock", "list", "trackinginfo", "getredir",
	    "setinfo", "help", "nosuchsub" };
	const struct command *c = lookup("client");
	size_t i;

	for (i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
		ck_assert_msg(command_policy(c, subs[i], strlen(subs[i])) ==
		    CMD_STATEFUL, "client %s", subs[i]);
	ck_assert_int_eq(command_policy(c, "SETNAME", 7), CMD_STATEFUL);
}
END_TEST

START_TEST(module_load_is_refused_but_list_is_forwarded)
{
	const struct command *c = lookup("module");

	ck_assert_int_eq(command_policy(c, "load", 4), CMD_REFUSED);
	ck_assert_int_eq(command_policy(c, "LOADEX", 6), CMD_REFUSED);
	ck_assert_int_eq(command_policy(c, "unload", 6), CMD_REFUSED);
	ck_assert_int_eq(command_policy(c, "list", 4), CMD_FORWARD);
	ck_assert_int_eq(command_policy(c, "help", 4), CMD_FORWARD);
	ck_assert_int_eq(command_policy(c, "", 0), CMD_FORWARD);
	/* "loadxyz" is not "load": no prefix matches. */
	ck_assert_int_eq(command_policy(c, "loadxyz", 7), CMD_FORWARD);
	ck_assert_int_eq(command_policy(c, "loa", 3), CMD_FORWARD);
}
END_TEST

START_TEST(subcommands_resolve_case_insensitively)
{
	const struct command *script = lookup("script");
	const struct command *config = lookup("config");
	const struct command *cluster = lookup("cluster");

	ck_assert_int_eq(command_policy(script, "debug", 5), CMD_STATEFUL);
	ck_assert_int_eq(command_policy(script, "Debug", 5), CMD_STATEFUL);
	ck_assert_int_eq(command_policy(script, "load", 4), CMD_FORWARD);
	ck_assert_int_eq(command_policy(script, "kill", 4), CMD_FORWARD);
	ck_assert_int_eq(command_policy(config, "set", 3), CMD_FORWARD);
	ck_assert_int_eq(command_policy(config, "GET", 3), CMD_FORWARD);
	ck_assert_int_eq(command_policy(cluster, "info", 4), CMD_REFUSED);
	ck_assert_int_eq(command_policy(cluster, "nosuch", 6), CMD_REFUSED);
}
END_TEST

START_TEST(policy_of_plain_commands_ignores_arg1)
{
	const struct command *get = lookup("get");
	const struct command *client = lookup("client");
	/* A long argument must not overflow the subcommand name buffer. */
	char big[300];

	memset(big, 'k', sizeof(big));
	ck_assert_int_eq(command_policy(get, "debug", 5), CMD_FORWARD);
	ck_assert_int_eq(command_policy(get, NULL, 0), CMD_FORWARD);
	ck_assert_int_eq(command_policy(client, big, sizeof(big)), CMD_STATEFUL);
	ck_assert_int_eq(command_policy(NULL, "x", 1), CMD_FORWARD);
}
END_TEST

static Suite *
command_suite(void)
{
	Suite *s = suite_create("command");
	TCase *tc = tcase_create("table");

	tcase_add_test(tc, table_is_sorted_and_unique);
	tcase_add_test(tc, every_row_finds_itself_and_is_well_formed);
	tcase_add_test(tc, lookup_finds_first_last_and_middle);
	tcase_add_test(tc, lookup_of_unknown_or_partial_names_is_null);
	tcase_add_test(tc, lookup_needs_no_nul_terminator);
	tcase_add_test(tc, known_commands_have_redis_arity_and_keys);
	tcase_add_test(tc, container_commands_are_flagged);
	suite_add_tcase(s, tc);

	tc = tcase_create("policy");
	tcase_add_test(tc, local_commands);
	tcase_add_test(tc, stateful_commands);
	tcase_add_test(tc, refused_commands);
	tcase_add_test(tc, ordinary_commands_are_forwarded);
	tcase_add_test(tc, only_the_listed_commands_are_special);
	tcase_add_test(tc, every_client_subcommand_is_stateful);
	tcase_add_test(tc, module_load_is_refused_but_list_is_forwarded);
	tcase_add_test(tc, subcommands_resolve_case_insensitively);
	tcase_add_test(tc, policy_of_plain_commands_ignores_arg1);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(command_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
