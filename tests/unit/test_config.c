/*
 * test_config.c - the YAML loader: a valid file becomes the right struct
 * config, and every kind of mistake is refused with file:line:col and a
 * message that says what is wrong and what to do.
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L	/* mkstemp, truncate under -std=c11 */
#endif

#include <check.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

/* The smallest valid file; tests that need one mistake start from it. */
#define MINIMAL \
	"listeners:\n" \
	"  - listen: 127.0.0.1:6380\n" \
	"    upstream: redis\n" \
	"upstreams:\n" \
	"  redis:\n" \
	"    protocol: redis\n" \
	"    servers:\n" \
	"      - 127.0.0.1:6379\n"

static struct config *
load(const char *text, struct config_errors *errs)
{
	return config_load_string(text, strlen(text), "test.yml", errs);
}

static struct config *
load_ok(const char *text)
{
	struct config_errors	 errs = { 0 };
	struct config		*cfg = load(text, &errs);

	ck_assert_msg(cfg != NULL, "load failed: %s",
	    errs.n ? errs.msgs[0] : "(no message)");
	ck_assert_uint_eq(errs.n, 0);
	config_errors_clear(&errs);
	return cfg;
}

static bool
message_matches(const char *msg, const char *loc, va_list ap)
{
	va_list		 aq;
	const char	*word;
	bool		 ok = strncmp(msg, loc, strlen(loc)) == 0;

	va_copy(aq, ap);
	while (ok && (word = va_arg(aq, const char *)) != NULL)
		ok = strstr(msg, word) != NULL;
	va_end(aq);
	return ok;
}

/*
 * Load text, which must fail, with one message that starts with loc
 * ("test.yml:3:5: ") and contains every word of the NULL-ended list.
 */
static void
expect_error(const char *text, const char *loc, ...)
{
	struct config_errors	 errs = { 0 };
	struct config		*cfg = load(text, &errs);
	char			 all[4096] = "";
	bool			 found = false;
	va_list			 ap;
	size_t			 i;

	ck_assert_msg(cfg == NULL, "load succeeded, expected an error at %s",
	    loc);
	ck_assert_uint_gt(errs.n, 0);
	for (i = 0; i < errs.n && !found; i++) {
		va_start(ap, loc);
		found = message_matches(errs.msgs[i], loc, ap);
		va_end(ap);
		strncat(all, errs.msgs[i], sizeof(all) - strlen(all) - 1);
		strncat(all, "\n", sizeof(all) - strlen(all) - 1);
	}
	ck_assert_msg(found, "no error at %s with the expected words; got:\n%s",
	    loc, all);
	config_errors_clear(&errs);
}

/* Load text, which must fail with exactly one message starting with want. */
static void
expect_single_error(const char *text, const char *want)
{
	struct config_errors	 errs = { 0 };

	ck_assert_ptr_null(load(text, &errs));
	ck_assert_msg(errs.n == 1, "%zu errors, the first: %s", errs.n,
	    errs.n ? errs.msgs[0] : "");
	ck_assert_msg(strncmp(errs.msgs[0], want, strlen(want)) == 0,
	    "got: %s", errs.msgs[0]);
	config_errors_clear(&errs);
}

/* ---- a valid file ------------------------------------------------------ */

static const char full_config[] =
	"workers: 4\n"
	"log:\n"
	"  level: debug\n"
	"  file: /var/log/sidepool.log\n"
	"pid_file: /run/sidepool/sidepool.pid\n"
	"shutdown_timeout: 30s\n"
	"listeners:\n"
	"  - listen: 127.0.0.1:6380\n"
	"    upstream: cache\n"
	"    backlog: 512\n"
	"    max_clients: 1000\n"
	"    idle_timeout: 5m\n"
	"  - listen: unix:/run/sidepool/redis.sock\n"
	"    upstream: cache\n"
	"    mode: \"0600\"\n"
	"  - listen: '[::1]:11212'\n"
	"    upstream: mc\n"
	"upstreams:\n"
	"  cache:\n"
	"    protocol: redis\n"
	"    servers:\n"
	"      - 10.0.0.1:6379\n"
	"      - unix:/run/redis/redis.sock\n"
	"    pool:\n"
	"      size: 4\n"
	"      max_connections: 16\n"
	"      idle_timeout: 250ms\n"
	"    connect_timeout: 2s\n"
	"    request_timeout: 0\n"
	"    limits:\n"
	"      max_request_size: 16m\n"
	"      max_value_size: 8mb\n"
	"      max_args: 1000\n"
	"      max_line_length: 4k\n"
	"      max_pending: 64\n"
	"      max_output: 1g\n"
	"  mc:\n"
	"    protocol: memcached\n"
	"    servers: [ 127.0.0.1:11211 ]\n";

START_TEST(test_full_config_loads_every_field)
{
	struct config		*cfg = load_ok(full_config);
	struct cfg_listener	*l;
	struct cfg_upstream	*u;

	ck_assert_str_eq(cfg->path, "test.yml");
	ck_assert_uint_eq(cfg->workers, 4);
	ck_assert(!cfg->workers_auto);
	ck_assert_int_eq(cfg->log_level, LOG_DEBUG);
	ck_assert_str_eq(cfg->log_file, "/var/log/sidepool.log");
	ck_assert_str_eq(cfg->pid_file, "/run/sidepool/sidepool.pid");
	ck_assert_uint_eq(cfg->shutdown_timeout_ms, 30000);

	ck_assert_uint_eq(cfg->nupstreams, 2);
	u = &cfg->upstreams[0];
	ck_assert_str_eq(u->name, "cache");
	ck_assert_int_eq(u->line, 19);
	ck_assert_int_eq(u->col, 3);
	ck_assert_int_eq(u->protocol, PROTO_REDIS);
	ck_assert_uint_eq(u->nservers, 2);
	ck_assert_str_eq(u->servers[0].addr.text, "10.0.0.1:6379");
	ck_assert_uint_eq(u->servers[0].index, 0);
	ck_assert_str_eq(u->servers[1].addr.text, "unix:/run/redis/redis.sock");
	ck_assert_int_eq(u->servers[1].addr.family, AF_UNIX);
	ck_assert_uint_eq(u->servers[1].index, 1);
	ck_assert_uint_eq(u->pool.size, 4);
	ck_assert_uint_eq(u->pool.max_connections, 16);
	ck_assert_uint_eq(u->pool.idle_timeout_ms, 250);
	ck_assert_uint_eq(u->connect_timeout_ms, 2000);
	ck_assert_uint_eq(u->request_timeout_ms, 0);
	ck_assert_uint_eq(u->limits.max_request_size, 16u << 20);
	ck_assert_uint_eq(u->limits.max_value_size, 8u << 20);
	ck_assert_uint_eq(u->limits.max_args, 1000);
	ck_assert_uint_eq(u->limits.max_line_length, 4096);
	ck_assert_uint_eq(u->limits.max_pending, 64);
	ck_assert_uint_eq(u->limits.max_output, 1u << 30);
	u = &cfg->upstreams[1];
	ck_assert_str_eq(u->name, "mc");
	ck_assert_int_eq(u->protocol, PROTO_MEMCACHE);
	ck_assert_str_eq(u->servers[0].addr.text, "127.0.0.1:11211");

	ck_assert_uint_eq(cfg->nlisteners, 3);
	l = &cfg->listeners[0];
	ck_assert_str_eq(l->addr.text, "127.0.0.1:6380");
	ck_assert_ptr_eq(l->upstream, &cfg->upstreams[0]);
	ck_assert_int_eq(l->backlog, 512);
	ck_assert_uint_eq(l->max_clients, 1000);
	ck_assert_uint_eq(l->idle_timeout_ms, 300000);
	ck_assert_int_eq(l->line, 8);
	ck_assert_int_eq(l->col, 5);
	l = &cfg->listeners[1];
	ck_assert_str_eq(l->addr.text, "unix:/run/sidepool/redis.sock");
	ck_assert_uint_eq(l->mode, 0600);
	ck_assert_ptr_eq(l->upstream, &cfg->upstreams[0]);
	l = &cfg->listeners[2];
	ck_assert_str_eq(l->addr.text, "[::1]:11212");
	ck_assert_ptr_eq(l->upstream, &cfg->upstreams[1]);
	config_free(cfg);
}
END_TEST

START_TEST(test_absent_keys_take_their_defaults)
{
	struct config		*cfg = load_ok(MINIMAL);
	struct cfg_listener	*l = &cfg->listeners[0];
	struct cfg_upstream	*u = &cfg->upstreams[0];

	ck_assert(cfg->workers_auto);
	ck_assert_uint_ge(cfg->workers, 1);
	ck_assert_int_eq(cfg->log_level, LOG_INFO);
	ck_assert_ptr_null(cfg->log_file);
	ck_assert_ptr_null(cfg->pid_file);
	ck_assert_uint_eq(cfg->shutdown_timeout_ms, 10000);
	ck_assert_uint_eq(l->mode, 0660);
	ck_assert_int_eq(l->backlog, 1024);
	ck_assert_uint_eq(l->max_clients, 0);
	ck_assert_uint_eq(l->idle_timeout_ms, 0);
	ck_assert_uint_eq(u->pool.size, 8);
	ck_assert_uint_eq(u->pool.max_connections, 32);
	ck_assert_uint_eq(u->pool.idle_timeout_ms, 60000);
	ck_assert_uint_eq(u->connect_timeout_ms, 1000);
	ck_assert_uint_eq(u->request_timeout_ms, 5000);
	config_free(cfg);
}
END_TEST

START_TEST(test_null_values_mean_default)
{
	struct config	*cfg = load_ok(
	    "workers: ~\n"
	    "log:\n"
	    "pid_file: null\n"
	    MINIMAL
	    "    pool:\n"
	    "    limits: {}\n");

	ck_assert(cfg->workers_auto);
	ck_assert_ptr_null(cfg->pid_file);
	ck_assert_uint_eq(cfg->upstreams[0].pool.size, 8);
	config_free(cfg);
}
END_TEST

START_TEST(test_workers_auto_is_online_cpus)
{
	struct config	*cfg = load_ok("workers: auto\n" MINIMAL);
	long		 ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	ck_assert(cfg->workers_auto);
	if (ncpu > 256)
		ncpu = 256;
	ck_assert_uint_eq(cfg->workers, ncpu < 1 ? 1 : (unsigned)ncpu);
	config_free(cfg);
}
END_TEST

START_TEST(test_redis_limits_default_to_server_limits)
{
	struct config		*cfg = load_ok(MINIMAL
	    "    limits:\n"
	    "      max_args: 0\n");
	struct cfg_limits	*lim = &cfg->upstreams[0].limits;

	ck_assert_uint_eq(lim->max_request_size, 1u << 30);
	ck_assert_uint_eq(lim->max_value_size, 512u << 20);
	ck_assert_uint_eq(lim->max_args, 2147483647);
	ck_assert_uint_eq(lim->max_line_length, 64u << 10);
	ck_assert_uint_eq(lim->max_pending, 1024);
	ck_assert_uint_eq(lim->max_output, 64u << 20);
	config_free(cfg);
}
END_TEST

START_TEST(test_memcache_limits_default_to_server_limits)
{
	struct config		*cfg = load_ok(
	    "listeners:\n"
	    "  - listen: /run/mc.sock\n"
	    "    upstream: mc\n"
	    "upstreams:\n"
	    "  mc:\n"
	    "    limits: { max_value_size: 4m }\n"
	    "    protocol: memcache\n"
	    "    servers: [ 127.0.0.1:11211 ]\n");
	struct cfg_limits	*lim = &cfg->upstreams[0].limits;

	ck_assert_int_eq(cfg->upstreams[0].protocol, PROTO_MEMCACHE);
	ck_assert_uint_eq(lim->max_request_size, 2u << 20);
	ck_assert_uint_eq(lim->max_value_size, 4u << 20);
	ck_assert_uint_eq(lim->max_args, 65536);
	ck_assert_uint_eq(lim->max_line_length, 2048);
	ck_assert_uint_eq(lim->max_pending, 1024);
	ck_assert_uint_eq(lim->max_output, 64u << 20);
	config_free(cfg);
}
END_TEST

START_TEST(test_several_servers_in_one_upstream_are_allowed)
{
	struct config	*cfg = load_ok(MINIMAL
	    "      - 127.0.0.1:6381\n"
	    "      - '[::1]:6379'\n");

	ck_assert_uint_eq(cfg->upstreams[0].nservers, 3);
	ck_assert_uint_eq(cfg->upstreams[0].servers[2].index, 2);
	ck_assert_str_eq(cfg->upstreams[0].servers[2].addr.text,
	    "[::1]:6379");
	config_free(cfg);
}
END_TEST

START_TEST(test_listener_may_name_upstream_defined_before_it)
{
	struct config	*cfg = load_ok(
	    "upstreams:\n"
	    "  a: { protocol: redis, servers: [ 127.0.0.1:7000 ] }\n"
	    "  b: { protocol: redis, servers: [ 127.0.0.1:7001 ] }\n"
	    "listeners:\n"
	    "  - { listen: 127.0.0.1:7100, upstream: b }\n"
	    "  - { listen: 127.0.0.1:7101, upstream: a }\n");

	ck_assert_ptr_eq(cfg->listeners[0].upstream, &cfg->upstreams[1]);
	ck_assert_ptr_eq(cfg->listeners[1].upstream, &cfg->upstreams[0]);
	config_free(cfg);
}
END_TEST

START_TEST(test_mode_accepts_octal_forms)
{
	static const struct { const char *text; mode_t mode; } cases[] = {
		{ "0660", 0660 }, { "\"0600\"", 0600 }, { "'660'", 0660 },
		{ "0o640", 0640 }, { "0", 0 }, { "\"0777\"", 0777 },
	};
	char		 text[512];
	struct config	*cfg;
	size_t		 i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text),
		    "listeners:\n"
		    "  - listen: unix:/run/x.sock\n"
		    "    upstream: r\n"
		    "    mode: %s\n"
		    "upstreams:\n"
		    "  r: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
		    cases[i].text);
		cfg = load_ok(text);
		ck_assert_msg(cfg->listeners[0].mode == cases[i].mode,
		    "mode %s gave %o", cases[i].text, cfg->listeners[0].mode);
		config_free(cfg);
	}
}
END_TEST

START_TEST(test_names_of_protocols_and_levels)
{
	ck_assert_str_eq(proto_kind_name(PROTO_REDIS), "redis");
	ck_assert_str_eq(proto_kind_name(PROTO_MEMCACHE), "memcache");
	ck_assert_str_eq(log_level_name(LOG_DEBUG), "debug");
	ck_assert_str_eq(log_level_name(LOG_INFO), "info");
	ck_assert_str_eq(log_level_name(LOG_NOTICE), "notice");
	ck_assert_str_eq(log_level_name(LOG_WARN), "warn");
	ck_assert_str_eq(log_level_name(LOG_ERROR), "error");
}
END_TEST

/* ---- durations, sizes, addresses --------------------------------------- */

START_TEST(test_durations_parse_table)
{
	static const struct { const char *s; uint64_t ms; } good[] = {
		{ "0", 0 }, { "0s", 0 }, { "250ms", 250 }, { "5s", 5000 },
		{ "2m", 120000 }, { "1h", 3600000 }, { "90s", 90000 },
	};
	static const char *const bad[] = {
		"", "5", "-1s", "5 s", "5S", "1d", "s", "1.5s", "ms",
		"5sec", "99999999999999999999s", "18446744073709551615h",
	};
	uint64_t	 ms;
	size_t		 i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ms = 12345;
		ck_assert_msg(config_parse_duration(good[i].s, &ms) == 0,
		    "'%s' refused", good[i].s);
		ck_assert_msg(ms == good[i].ms, "'%s' gave %llu", good[i].s,
		    (unsigned long long)ms);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(config_parse_duration(bad[i], &ms) == -1,
		    "'%s' accepted", bad[i]);
}
END_TEST

START_TEST(test_sizes_parse_table)
{
	static const struct { const char *s; uint64_t bytes; } good[] = {
		{ "0", 0 }, { "512", 512 }, { "16k", 16384 }, { "16kb", 16384 },
		{ "16K", 16384 }, { "16KB", 16384 }, { "1m", 1u << 20 },
		{ "1MB", 1u << 20 }, { "1g", 1u << 30 }, { "2Gb", 2ull << 30 },
		{ "100b", 100 },
		{ "18446744073709551615", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "k", "-1", "1.5m", "16 k", "1t", "16kbb", "1mk",
		"18446744073709551616", "17179869184g", "abc",
	};
	uint64_t	 n;
	size_t		 i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		n = 12345;
		ck_assert_msg(config_parse_size(good[i].s, &n) == 0,
		    "'%s' refused", good[i].s);
		ck_assert_msg(n == good[i].bytes, "'%s' gave %llu", good[i].s,
		    (unsigned long long)n);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(config_parse_size(bad[i], &n) == -1,
		    "'%s' accepted", bad[i]);
}
END_TEST

START_TEST(test_addr_ipv4)
{
	struct cfg_addr		 a;
	struct sockaddr_in	*sin = (struct sockaddr_in *)&a.sa;
	char			 err[256];

	ck_assert_int_eq(config_parse_addr("10.1.2.3:6379", &a, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(a.family, AF_INET);
	ck_assert_int_eq(sin->sin_family, AF_INET);
	ck_assert_uint_eq(ntohs(sin->sin_port), 6379);
	ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), 0x0a010203);
	ck_assert_uint_eq(a.salen, sizeof(struct sockaddr_in));
	ck_assert_str_eq(a.text, "10.1.2.3:6379");
}
END_TEST

START_TEST(test_addr_ipv6_is_canonical)
{
	struct cfg_addr		 a;
	struct sockaddr_in6	*sin6 = (struct sockaddr_in6 *)&a.sa;
	char			 err[256];

	ck_assert_int_eq(config_parse_addr("[0:0::0001]:6379", &a, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(a.family, AF_INET6);
	ck_assert_uint_eq(ntohs(sin6->sin6_port), 6379);
	ck_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
	ck_assert_uint_eq(a.salen, sizeof(struct sockaddr_in6));
	ck_assert_str_eq(a.text, "[::1]:6379");
}
END_TEST

START_TEST(test_addr_localhost_is_loopback)
{
	struct cfg_addr	 a;
	char		 err[256];

	ck_assert_int_eq(config_parse_addr("localhost:11211", &a, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(a.family, AF_INET);
	ck_assert_str_eq(a.text, "127.0.0.1:11211");
}
END_TEST

START_TEST(test_addr_unix_with_and_without_prefix)
{
	struct cfg_addr		 a;
	struct sockaddr_un	*sun = (struct sockaddr_un *)&a.sa;
	char			 err[256];

	ck_assert_int_eq(config_parse_addr("unix:/run/x.sock", &a, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(a.family, AF_UNIX);
	ck_assert_int_eq(sun->sun_family, AF_UNIX);
	ck_assert_str_eq(sun->sun_path, "/run/x.sock");
	ck_assert_str_eq(a.text, "unix:/run/x.sock");
	ck_assert_uint_eq(a.salen,
	    offsetof(struct sockaddr_un, sun_path) + strlen("/run/x.sock") + 1);

	ck_assert_int_eq(config_parse_addr("/run/y.sock", &a, err,
	    sizeof(err)), 0);
	ck_assert_str_eq(a.text, "unix:/run/y.sock");
}
END_TEST

START_TEST(test_addr_unix_path_too_long)
{
	struct sockaddr_un	 sun;
	struct cfg_addr		 a;
	char			 path[sizeof(sun.sun_path) + 8], err[256];

	/* the longest path that fits, NUL included, is accepted */
	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[sizeof(sun.sun_path) - 1] = '\0';
	ck_assert_int_eq(config_parse_addr(path, &a, err, sizeof(err)), 0);

	path[sizeof(sun.sun_path) - 1] = 'a';
	path[sizeof(sun.sun_path)] = '\0';
	ck_assert_int_eq(config_parse_addr(path, &a, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "too") ? err : strstr(err, "limit"));
	ck_assert_ptr_nonnull(strstr(err, "shorter path"));
}
END_TEST

static void
expect_bad_addr(const char *s, const char *word)
{
	struct cfg_addr	 a;
	char		 err[256] = "";

	ck_assert_msg(config_parse_addr(s, &a, err, sizeof(err)) == -1,
	    "'%s' accepted", s);
	ck_assert_msg(strstr(err, word) != NULL, "'%s': error '%s' lacks '%s'",
	    s, err, word);
}

START_TEST(test_addr_port_must_be_1_to_65535)
{
	expect_bad_addr("127.0.0.1:0", "1..65535");
	expect_bad_addr("127.0.0.1:70000", "1..65535");
	expect_bad_addr("127.0.0.1:99999999999999999999999", "1..65535");
	expect_bad_addr("127.0.0.1:http", "not a number");
	expect_bad_addr("[::1]:0", "1..65535");
}
END_TEST

START_TEST(test_addr_missing_port)
{
	expect_bad_addr("127.0.0.1", "missing port");
	expect_bad_addr("127.0.0.1:", "missing port");
	expect_bad_addr("[::1]", "missing port");
	expect_bad_addr("localhost", "missing port");
}
END_TEST

START_TEST(test_addr_other_mistakes)
{
	expect_bad_addr("", "empty address");
	expect_bad_addr("redis.example.com:6379", "not resolved");
	expect_bad_addr("256.0.0.1:6379", "not an IPv4 address");
	expect_bad_addr("::1:6379", "brackets");
	expect_bad_addr("[::g]:6379", "not an IPv6 address");
	expect_bad_addr("[::1:6379", "missing ']'");
	expect_bad_addr(":6379", "missing host");
	expect_bad_addr("unix:run/x.sock", "absolute");
}
END_TEST

/* ---- errors ---------------------------------------------------------- */

START_TEST(test_unknown_key_names_location_and_expected_keys)
{
	struct config_errors	 errs = { 0 };
	struct config		*cfg = load(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis:\n"
	    "    protocol: redis\n"
	    "    pool_szie: 8\n"
	    "    servers:\n"
	    "      - 127.0.0.1:6379\n", &errs);

	ck_assert_ptr_null(cfg);
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_str_eq(errs.msgs[0], "test.yml:7:5: unknown key 'pool_szie' "
	    "in upstream 'redis' (expected one of: protocol, servers, pool, "
	    "connect_timeout, request_timeout, failure_limit, auth, "
	    "client_auth, databases, refuse_commands, retry_interval, "
	    "retry_max_interval, limits)");
	config_errors_clear(&errs);
	ck_assert_uint_eq(errs.n, 0);
	ck_assert_ptr_null(errs.msgs);
}
END_TEST

START_TEST(test_unknown_key_suggests_the_closest_key)
{
	expect_error(MINIMAL "    pool:\n      szie: 4\n", "test.yml:10:7: ",
	    "unknown key 'szie' in pool of upstream 'redis'",
	    "did you mean 'size'?", "size, max_connections, idle_timeout",
	    NULL);
	expect_error("wrokers: 2\n" MINIMAL, "test.yml:1:1: ",
	    "unknown key 'wrokers' at the top level", "'workers'", NULL);
	expect_error("log: { levle: info }\n" MINIMAL, "test.yml:1:8: ",
	    "unknown key 'levle' in log", "'level'", NULL);
}
END_TEST

START_TEST(test_yaml_syntax_error_names_location)
{
	expect_error("listeners:\n  - listen: [127.0.0.1:6380\n",
	    "test.yml:3:1: ", "YAML syntax error", NULL);
	expect_error("upstreams:\n  redis:\n   protocol: redis\n  servers: x: y\n",
	    "test.yml:4:", "YAML syntax error", "mapping values", NULL);
}
END_TEST

START_TEST(test_tab_indentation_says_use_spaces)
{
	expect_error("log:\n\tlevel: info\n" MINIMAL, "test.yml:2:1: ",
	    "YAML syntax error", "tabs", "use spaces", NULL);
}
END_TEST

START_TEST(test_unquoted_ipv6_says_to_quote_it)
{
	expect_error(
	    "listeners:\n"
	    "  - listen: [::1]:6380\n"
	    "    upstream: redis\n", "test.yml:2:",
	    "YAML syntax error", "quote IPv6 addresses", NULL);
}
END_TEST

START_TEST(test_invalid_utf8_is_located)
{
	expect_error(MINIMAL "# caf\xe9\n", "test.yml:9:6: ",
	    "not valid YAML text", "UTF-8", NULL);
}
END_TEST

START_TEST(test_top_level_must_be_a_mapping)
{
	expect_error("- listen: 127.0.0.1:6380\n", "test.yml:1:1: ",
	    "top level must be a mapping", "not a sequence", NULL);
	expect_error("just text\n", "test.yml:1:1: ",
	    "top level must be a mapping", NULL);
}
END_TEST

START_TEST(test_empty_file_is_refused)
{
	expect_error("", "test.yml:1:1: ", "empty", "listeners", NULL);
	expect_error("# only a comment\n", "test.yml:", "empty", NULL);
}
END_TEST

START_TEST(test_second_document_is_refused)
{
	expect_error(MINIMAL "---\nworkers: 2\n", "test.yml:9:1: ",
	    "second YAML document", NULL);
}
END_TEST

START_TEST(test_sequence_where_scalar_expected_is_a_type_error)
{
	expect_error("workers: [1, 2]\n" MINIMAL, "test.yml:1:10: ",
	    "workers must be 'auto' or an integer, not a sequence", NULL);
	expect_error(MINIMAL "    connect_timeout: { a: 1 }\n",
	    "test.yml:9:22: ", "connect_timeout in upstream 'redis' must be "
	    "a duration", "not a mapping", NULL);
	expect_error("log: debug\n" MINIMAL, "test.yml:1:6: ",
	    "log must be a mapping", NULL);
	expect_single_error("listeners: { listen: 127.0.0.1:1 }\n"
	    "upstreams: { r: { protocol: redis, servers: [ 127.0.0.1:2 ] } }\n",
	    "test.yml:1:12: listeners must be a sequence");
	expect_single_error("listeners: [ { listen: 127.0.0.1:1, upstream: r } ]\n"
	    "upstreams: [ r ]\n",
	    "test.yml:2:12: upstreams must be a mapping");
	expect_error("listeners:\n  - 127.0.0.1:6380\n"
	    "upstreams: { r: { protocol: redis, servers: [ 127.0.0.1:2 ] } }\n",
	    "test.yml:2:5: ", "listener #1 must be a mapping", NULL);
}
END_TEST

START_TEST(test_text_where_integer_expected_is_a_type_error)
{
	expect_error("workers: many\n" MINIMAL, "test.yml:1:10: ",
	    "workers must be 'auto' or an integer, not 'many'", NULL);
	expect_error(MINIMAL "    pool: { size: abc }\n", "test.yml:9:19: ",
	    "size in pool of upstream 'redis' must be an integer, not 'abc'",
	    NULL);
	expect_error(MINIMAL "    limits: { max_pending: 1.5 }\n",
	    "test.yml:9:28: ", "must be an integer, not '1.5'", NULL);
}
END_TEST

START_TEST(test_out_of_range_says_the_range)
{
	expect_error("workers: 300\n" MINIMAL, "test.yml:1:10: ",
	    "workers 300 is out of range", "1..256", NULL);
	expect_error("workers: 0\n" MINIMAL, "test.yml:1:10: ",
	    "out of range", NULL);
	expect_error("shutdown_timeout: 2h\n" MINIMAL, "test.yml:1:19: ",
	    "shutdown_timeout 2h is out of range", "0..1h", NULL);
	expect_error(MINIMAL "    connect_timeout: 0\n", "test.yml:9:22: ",
	    "connect_timeout 0 in upstream 'redis' is out of range",
	    "1ms..1h", NULL);
	expect_error(MINIMAL "    pool: { max_connections: 0 }\n",
	    "test.yml:9:30: ", "max_connections 0", "1..10000", NULL);
	expect_error(MINIMAL "    pool: { size: 10001 }\n", "test.yml:9:19: ",
	    "0..10000", NULL);
	expect_error(MINIMAL "    limits: { max_pending: 1000001 }\n",
	    "test.yml:9:28: ", "0..1000000", NULL);
	expect_error(MINIMAL "    limits: { max_args: 2147483648 }\n",
	    "test.yml:9:25: ", "0..2147483647", NULL);
	expect_error(MINIMAL "    limits: { max_args: 99999999999999999999 }\n",
	    "test.yml:9:25: ", "out of range", NULL);
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "    upstream: redis\n"
	    "    backlog: 0\n"
	    "    max_clients: -1\n"
	    "upstreams: { redis: { protocol: redis, servers: [ 127.0.0.1:1 ] } }\n",
	    "test.yml:4:14: ", "backlog 0 in listener #1 is out of range",
	    "1..65535", NULL);
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "    upstream: redis\n"
	    "    max_clients: 1000001\n"
	    "upstreams: { redis: { protocol: redis, servers: [ 127.0.0.1:1 ] } }\n",
	    "test.yml:4:18: ", "0..1000000", NULL);
}
END_TEST

START_TEST(test_duration_without_unit_says_add_a_unit)
{
	expect_error(MINIMAL "    request_timeout: 5\n", "test.yml:9:22: ",
	    "request_timeout '5' in upstream 'redis' has no unit",
	    "add one", NULL);
	expect_error("shutdown_timeout: 10 seconds\n" MINIMAL,
	    "test.yml:1:19: ", "unknown unit", NULL);
	expect_error(MINIMAL "    pool: { idle_timeout: soon }\n",
	    "test.yml:9:27: ", "'soon' in pool of upstream 'redis' is not a "
	    "duration", NULL);
}
END_TEST

START_TEST(test_bad_size_is_reported)
{
	expect_error(MINIMAL "    limits: { max_output: 64x }\n",
	    "test.yml:9:27: ", "max_output '64x' in limits of upstream "
	    "'redis' has an unknown suffix", NULL);
	expect_error(MINIMAL "    limits: { max_value_size: 99999999999g }\n",
	    "test.yml:9:31: ", "too large", NULL);
	expect_error(MINIMAL "    limits: { max_line_length: big }\n",
	    "test.yml:9:32: ", "is not a size", NULL);
}
END_TEST

START_TEST(test_bad_addresses_are_located)
{
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis:\n"
	    "    protocol: redis\n"
	    "    servers:\n"
	    "      - db.example:6379\n", "test.yml:2:13: ",
	    "bad listen address '127.0.0.1' in listener #1", "missing port",
	    NULL);
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis:\n"
	    "    protocol: redis\n"
	    "    servers:\n"
	    "      - db.example:6379\n", "test.yml:8:9: ",
	    "bad server address 'db.example:6379' in upstream 'redis'",
	    "not resolved", NULL);
}
END_TEST

START_TEST(test_no_listeners_is_refused)
{
	expect_error(
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:1:1: ", "no listeners", NULL);
	expect_error(
	    "listeners: []\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:1:1: ", "no listeners", NULL);
	expect_error(
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n"
	    "listeners:\n",
	    "test.yml:3:1: ", "no listeners", NULL);
}
END_TEST

START_TEST(test_no_upstreams_is_refused)
{
	expect_error("workers: 1\nlisteners: [ { listen: 127.0.0.1:1, "
	    "upstream: r } ]\n", "test.yml:1:1: ", "no upstreams", NULL);
	expect_error("listeners: [ { listen: 127.0.0.1:1, upstream: r } ]\n"
	    "upstreams: {}\n", "test.yml:2:1: ", "no upstreams", NULL);
}
END_TEST

START_TEST(test_listener_without_listen_is_refused)
{
	expect_error(
	    "listeners:\n"
	    "  - upstream: redis\n"
	    "    backlog: 10\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:2:5: ", "listener #1 has no listen address", "add listen",
	    NULL);
}
END_TEST

START_TEST(test_listener_without_upstream_is_refused)
{
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "  - listen: 127.0.0.1:6381\n"
	    "    upstream:\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:2:5: ", "listener #1 has no upstream", NULL);
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "  - listen: 127.0.0.1:6381\n"
	    "    upstream:\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:3:5: ", "listener #2 has no upstream", NULL);
}
END_TEST

START_TEST(test_unknown_upstream_lists_the_known_ones)
{
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "    upstream: redsi\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n"
	    "  mc: { protocol: memcache, servers: [ 127.0.0.1:11211 ] }\n",
	    "test.yml:3:15: ", "listener #1 names upstream 'redsi'",
	    "not defined", "known upstreams: redis, mc", NULL);
}
END_TEST

START_TEST(test_duplicate_listener_address_names_the_first)
{
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6380\n"
	    "    upstream: redis\n"
	    "  - listen: localhost:6380\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:4:13: ", "duplicate listen address 127.0.0.1:6380",
	    "listener #2", "listener #1 at line 2, column 13", NULL);
}
END_TEST

START_TEST(test_upstream_without_servers_is_refused)
{
	expect_error(
	    MINIMAL
	    "  empty:\n"
	    "    protocol: redis\n",
	    "test.yml:9:3: ", "upstream 'empty' has no servers", NULL);
	expect_error(
	    MINIMAL
	    "  empty:\n"
	    "    protocol: redis\n"
	    "    servers: []\n",
	    "test.yml:11:14: ", "servers in upstream 'empty' is empty", NULL);
	expect_error(
	    MINIMAL
	    "  empty:\n",
	    "test.yml:9:", "upstream 'empty' must be a mapping", NULL);
}
END_TEST

START_TEST(test_upstream_without_protocol_is_refused)
{
	expect_error(
	    MINIMAL
	    "  other:\n"
	    "    servers: [ 127.0.0.1:7000 ]\n",
	    "test.yml:9:3: ", "upstream 'other' has no protocol",
	    "protocol: redis", NULL);
	expect_error(MINIMAL "    protocol: http\n",
	    "test.yml:9:5: ", "duplicate key 'protocol'", NULL);
	expect_error(
	    "listeners: [ { listen: 127.0.0.1:1, upstream: r } ]\n"
	    "upstreams:\n"
	    "  r: { protocol: http, servers: [ 127.0.0.1:2 ] }\n",
	    "test.yml:3:18: ", "unknown protocol 'http'", "redis or memcache",
	    NULL);
}
END_TEST

START_TEST(test_server_twice_in_one_upstream_is_refused)
{
	expect_error(MINIMAL "      - localhost:6379\n", "test.yml:9:9: ",
	    "server 127.0.0.1:6379 is listed twice in upstream 'redis'",
	    "first at line 8, column 9", NULL);
}
END_TEST

START_TEST(test_server_in_two_upstreams_is_refused)
{
	expect_error(
	    MINIMAL
	    "  again:\n"
	    "    protocol: redis\n"
	    "    servers: [ 127.0.0.1:6379 ]\n",
	    "test.yml:11:16: ", "server 127.0.0.1:6379 in upstream 'again'",
	    "already a server of upstream 'redis' at line 8, column 9",
	    "pools are keyed by address", NULL);
}
END_TEST

START_TEST(test_listener_that_is_a_server_is_refused)
{
	expect_error(
	    "listeners:\n"
	    "  - listen: 127.0.0.1:6379\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:2:13: ", "proxy to itself", NULL);
}
END_TEST

START_TEST(test_pool_size_above_max_connections_is_refused)
{
	expect_error(MINIMAL "    pool:\n      size: 40\n", "test.yml:10:13: ",
	    "pool size 40 is larger than max_connections 32",
	    "upstream 'redis'", "raise max_connections", NULL);
	expect_error(MINIMAL "    pool:\n      max_connections: 4\n",
	    "test.yml:10:24: ", "pool size 8 is larger than "
	    "max_connections 4", NULL);
}
END_TEST

START_TEST(test_metrics_endpoint_must_be_loopback)
{
	struct config *cfg = load_ok(MINIMAL
	    "metrics:\n  listen: 127.0.0.1:9187\n");
	ck_assert(cfg->has_metrics);
	ck_assert_str_eq(cfg->metrics_addr.text, "127.0.0.1:9187");
	config_free(cfg);
	expect_error(MINIMAL "metrics:\n  listen: 10.1.2.3:9187\n",
	    "test.yml:10:11: ", "not a loopback", "no authentication", NULL);
	expect_error(MINIMAL "metrics:\n  listen: unix:/tmp/m.sock\n",
	    "test.yml:10:11: ", "not a loopback", NULL);
}
END_TEST

START_TEST(test_control_socket_path_and_mode)
{
	struct config *cfg = load_ok(MINIMAL
	    "control:\n  path: /run/sidepool/control.sock\n");
	ck_assert_str_eq(cfg->control_path, "/run/sidepool/control.sock");
	ck_assert_uint_eq(cfg->control_mode, 0600);
	config_free(cfg);
	cfg = load_ok(MINIMAL "control:\n  path: /tmp/c.sock\n  mode: \"0660\"\n");
	ck_assert_uint_eq(cfg->control_mode, 0660);
	config_free(cfg);
	expect_error(MINIMAL "control:\n  path: /tmp/c.sock\n  mode: 660\n",
	    "test.yml:11:9: ", "ambiguous", NULL);
}
END_TEST

START_TEST(test_mode_on_tcp_listener_is_refused)
{
	expect_error(
	    "listeners:\n"
	    "  - mode: \"0660\"\n"
	    "    listen: 127.0.0.1:6380\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "test.yml:2:11: ", "mode in listener #1 applies only to unix "
	    "sockets", "remove mode", NULL);
}
END_TEST

START_TEST(test_bad_modes_are_refused)
{
	static const struct { const char *mode, *col, *word; } cases[] = {
		{ "660", "11", "ambiguous" },
		{ "\"0778\"", "11", "not an octal number" },
		{ "01000", "11", "0..0777" },
		{ "'rw-rw----'", "11", "not an octal number" },
		{ "\"\"", "11", "not an octal number" },
		{ "[ 6, 6, 0 ]", "11", "must be an octal mode" },
	};
	char	 text[512], loc[32];
	size_t	 i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text),
		    "listeners:\n"
		    "  - mode: %s\n"
		    "    listen: /run/x.sock\n"
		    "    upstream: r\n"
		    "upstreams:\n"
		    "  r: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
		    cases[i].mode);
		snprintf(loc, sizeof(loc), "test.yml:2:%s: ", cases[i].col);
		expect_error(text, loc, cases[i].word, NULL);
	}
}
END_TEST

START_TEST(test_duplicate_key_names_the_first)
{
	expect_error(
	    "workers: 2\n"
	    MINIMAL
	    "workers: 3\n",
	    "test.yml:10:1: ", "duplicate key 'workers'",
	    "first set at line 1, column 1", NULL);
	expect_error(
	    MINIMAL
	    "  redis:\n"
	    "    protocol: redis\n"
	    "    servers: [ 127.0.0.1:7000 ]\n",
	    "test.yml:9:3: ", "duplicate key 'redis' in upstreams",
	    "line 5, column 3", NULL);
}
END_TEST

START_TEST(test_other_value_mistakes_say_what_to_write)
{
	expect_error("log: { level: verbose }\n" MINIMAL, "test.yml:1:15: ",
	    "unknown log level 'verbose'", "debug, info", NULL);
	expect_error("log: { file: sidepool.log }\n" MINIMAL, "test.yml:1:14: ",
	    "file 'sidepool.log' in log must be an absolute path",
	    "'stderr'", NULL);
	expect_error("pid_file: run/x.pid\n" MINIMAL, "test.yml:1:11: ",
	    "pid_file 'run/x.pid' must be an absolute path", NULL);
	expect_error(MINIMAL "  'bad name':\n    protocol: redis\n"
	    "    servers: [ 127.0.0.1:7000 ]\n", "test.yml:9:3: ",
	    "upstream name 'bad name' is not valid", NULL);
	expect_error(MINIMAL "      -\n", "test.yml:9:", "empty server entry",
	    NULL);
	expect_error("log: { ? [a]: b }\n" MINIMAL, "test.yml:1:",
	    "keys in log must be plain names", NULL);
}
END_TEST

START_TEST(test_all_errors_are_collected)
{
	struct config_errors	 errs = { 0 };
	struct config		*cfg = load(
	    "workers: none\n"
	    "colour: blue\n"
	    "listeners:\n"
	    "  - listen: 127.0.0.1:99999\n"
	    "    upstream: nowhere\n"
	    "upstreams:\n"
	    "  redis:\n"
	    "    protocol: redis\n"
	    "    servers: [ 127.0.0.1:6379 ]\n"
	    "    request_timeout: 7\n", &errs);

	ck_assert_ptr_null(cfg);
	ck_assert_uint_eq(errs.n, 5);
	ck_assert_ptr_nonnull(strstr(errs.msgs[0], "test.yml:1:10: "));
	ck_assert_ptr_nonnull(strstr(errs.msgs[1], "test.yml:2:1: "));
	ck_assert_ptr_nonnull(strstr(errs.msgs[2], "test.yml:4:13: "));
	ck_assert_ptr_nonnull(strstr(errs.msgs[3], "test.yml:10:22: "));
	ck_assert_ptr_nonnull(strstr(errs.msgs[4], "test.yml:5:15: "));
	config_errors_clear(&errs);
}
END_TEST

START_TEST(test_too_many_errors_are_capped)
{
	struct config_errors	 errs = { 0 };
	struct config		*cfg;
	char			*text, *p;
	size_t			 i, cap = 300 * 16 + 256;

	text = p = malloc(cap);
	ck_assert_ptr_nonnull(text);
	p += sprintf(p, "%s", MINIMAL);
	for (i = 0; i < 300; i++)
		p += sprintf(p, "    bad%zu: 1\n", i);
	cfg = load(text, &errs);
	ck_assert_ptr_null(cfg);
	ck_assert_uint_eq(errs.n, 101);
	ck_assert_ptr_nonnull(strstr(errs.msgs[100], "too many errors"));
	config_errors_clear(&errs);
	free(text);
}
END_TEST

START_TEST(test_errors_may_be_ignored_with_null)
{
	ck_assert_ptr_null(config_load_string("workers: x\n", 11, "t.yml",
	    NULL));
	config_errors_clear(NULL);
	config_free(NULL);
}
END_TEST

/* ---- values quoted in messages ---------------------------------------- */

/* s is whole UTF-8: a value cut for a message is cut between characters. */
static bool
utf8_whole(const unsigned char *s)
{
	int	 more = 0;

	for (; *s != '\0'; s++) {
		if (more > 0) {
			if ((*s & 0xc0) != 0x80)
				return false;
			more--;
		} else if (*s >= 0xf0)
			more = 3;
		else if (*s >= 0xe0)
			more = 2;
		else if (*s >= 0xc0)
			more = 1;
		else if (*s >= 0x80)
			return false;
	}
	return more == 0;
}

/*
 * Load text, which must fail. Every message must be one line of at most
 * max bytes of printable UTF-8 (a newline would split it in a log, an
 * escape sequence would drive the terminal), and one must contain want.
 */
static void
expect_quoted(const char *text, const char *want, size_t max)
{
	struct config_errors	 errs = { 0 };
	char			 all[2048] = "";
	bool			 found = false;
	size_t			 i;

	ck_assert_ptr_null(load(text, &errs));
	for (i = 0; i < errs.n; i++) {
		const unsigned char *m = (const unsigned char *)errs.msgs[i];

		for (const unsigned char *p = m; *p != '\0'; p++)
			ck_assert_msg(*p >= 0x20 && *p != 0x7f &&
			    !(p[0] == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0),
			    "control byte 0x%02x at %zu in: %.300s", *p,
			    (size_t)(p - m), m);
		ck_assert_msg(strlen(errs.msgs[i]) <= max, "%zu bytes: %.300s",
		    strlen(errs.msgs[i]), m);
		ck_assert_msg(utf8_whole(m), "not whole UTF-8: %.300s", m);
		found = found || strstr(errs.msgs[i], want) != NULL;
		strncat(all, errs.msgs[i], sizeof(all) - strlen(all) - 1);
		strncat(all, "\n", sizeof(all) - strlen(all) - 1);
	}
	ck_assert_msg(found, "no message contains \"%s\"; got:\n%s", want, all);
	config_errors_clear(&errs);
}

START_TEST(test_value_with_a_newline_stays_on_one_line)
{
	/* the fuzzer's input (K3): a quoted scalar folded to "\n" */
	expect_quoted("listeners:\n- mode: \"\n\n\"\n",
	    "test.yml:2:9: mode '\\n' in listener #1 is not an octal number",
	    1024);
	expect_quoted("pid_file: \"run\\r\\nx\"\n" MINIMAL,
	    "pid_file 'run\\r\\nx' must be an absolute path", 1024);
	expect_quoted("log: { level: \"de\\tbug\" }\n" MINIMAL,
	    "unknown log level 'de\\tbug'", 1024);
	expect_quoted("workers: \"4\\n\"\n" MINIMAL,
	    "workers must be 'auto' or an integer, not '4\\n'", 1024);
	expect_quoted(MINIMAL "    pool: { idle_timeout: \"5\\ns\" }\n",
	    "idle_timeout '5\\ns' in pool of upstream 'redis' has an unknown "
	    "unit", 1024);
	expect_quoted(MINIMAL "    refuse_commands: [ \"keys\\n\" ]\n",
	    "'keys\\n' in refuse_commands in upstream 'redis' is not a "
	    "command name", 1024);
	expect_quoted("\"work\\ners\": 2\n" MINIMAL,
	    "unknown key 'work\\ners' at the top level", 1024);
}
END_TEST

START_TEST(test_addresses_with_control_bytes_are_escaped)
{
	expect_quoted(
	    "listeners:\n"
	    "  - listen: \"127.0.0.1:\\n80\"\n"
	    "    upstream: redis\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "bad listen address '127.0.0.1:\\n80' in listener #1: port "
	    "'\\n80' in '127.0.0.1:\\n80' is not a number", 1024);
	/* a unix path may hold anything: its canonical text is quoted too */
	expect_quoted(
	    "listeners:\n"
	    "  - { listen: \"/tmp/a\\nb\", upstream: redis }\n"
	    "  - { listen: \"unix:/tmp/a\\nb\", upstream: redis }\n"
	    "upstreams:\n"
	    "  redis: { protocol: redis, servers: [ 127.0.0.1:6379 ] }\n",
	    "duplicate listen address unix:/tmp/a\\nb in listener #2", 1024);
}
END_TEST

START_TEST(test_upstream_name_with_control_bytes_is_escaped_everywhere)
{
	/* the name is in every message about its upstream, and in the
	 * list of known upstreams */
	static const char text[] =
	    "listeners:\n"
	    "  - { listen: 127.0.0.1:6380, upstream: nowhere }\n"
	    "upstreams:\n"
	    "  \"a\\x1b[2Jb\":\n"
	    "    servers: [ 127.0.0.1:6379 ]\n";

	expect_quoted(text, "upstream name 'a\\x1b[2Jb' is not valid", 1024);
	expect_quoted(text, "upstream 'a\\x1b[2Jb' has no protocol", 1024);
	expect_quoted(text, "known upstreams: a\\x1b[2Jb)", 1024);
}
END_TEST

START_TEST(test_backslash_in_a_value_is_shown_doubled)
{
	/* else 'a\nb' could be a newline or a backslash and an n */
	expect_quoted("pid_file: 'a\\nb'\n" MINIMAL,
	    "pid_file 'a\\\\nb' must be an absolute path", 1024);
}
END_TEST

START_TEST(test_long_values_are_cut_in_messages)
{
	char	*text = malloc(20000), *p;
	size_t	 i;

	ck_assert_ptr_nonnull(text);
	/* 5000 bytes of a path, 300 digits of a number */
	p = text + sprintf(text, "pid_file: ");
	memset(p, 'a', 5000);
	p += 5000;
	p += sprintf(p, "\nworkers: ");
	memset(p, '9', 300);
	p += 300;
	sprintf(p, "\n" MINIMAL);
	expect_quoted(text, "pid_file 'aaaaaaaa", 400);
	expect_quoted(text, "aaaa...' must be an absolute path", 400);
	expect_quoted(text, "workers 9999", 400);
	expect_quoted(text, "99... is out of range", 400);

	/* a cut falls between characters: 2000 x "é" (2 bytes each) */
	p = text + sprintf(text, "pid_file: ");
	for (i = 0; i < 2000; i++)
		p += sprintf(p, "\xc3\xa9");
	sprintf(p, "\n" MINIMAL);
	expect_quoted(text, "\xc3\xa9...' must be an absolute path", 400);
	free(text);
}
END_TEST

/* ---- files ------------------------------------------------------------ */

START_TEST(test_config_load_reads_a_file)
{
	char		 path[] = "/tmp/test_config_XXXXXX";
	int		 fd = mkstemp(path);
	struct config	*cfg;
	struct config_errors errs = { 0 };

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, MINIMAL, strlen(MINIMAL)),
	    (ssize_t)strlen(MINIMAL));
	close(fd);
	cfg = config_load(path, &errs);
	ck_assert_ptr_nonnull(cfg);
	ck_assert_str_eq(cfg->path, path);
	config_free(cfg);

	ck_assert_int_eq(truncate(path, 0), 0);
	ck_assert_ptr_null(config_load(path, &errs));
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_msg(strncmp(errs.msgs[0], path, strlen(path)) == 0 &&
	    strncmp(errs.msgs[0] + strlen(path), ":1:1: ", 6) == 0,
	    "%s", errs.msgs[0]);
	config_errors_clear(&errs);
	unlink(path);
}
END_TEST

START_TEST(test_config_load_missing_file_says_why)
{
	struct config_errors	 errs = { 0 };

	ck_assert_ptr_null(config_load("/nonexistent/sidepool.yml", &errs));
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_ptr_nonnull(strstr(errs.msgs[0], "/nonexistent/sidepool.yml"));
	ck_assert_ptr_nonnull(strstr(errs.msgs[0], "No such file"));
	config_errors_clear(&errs);

	ck_assert_ptr_null(config_load("/", &errs));
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_ptr_nonnull(strstr(errs.msgs[0], "directory"));
	config_errors_clear(&errs);
}
END_TEST

START_TEST(test_shipped_config_is_valid)
{
	const char		*srcdir = getenv("SIDEPOOL_SRCDIR");
	char			 path[4096];
	struct config_errors	 errs = { 0 };
	struct config		*cfg;
	struct cfg_upstream	*redis, *mc;

	snprintf(path, sizeof(path), "%s/conf/sidepool.yml",
	    srcdir ? srcdir : ".");
	cfg = config_load(path, &errs);
	ck_assert_msg(cfg != NULL, "%s", errs.n ? errs.msgs[0] : path);
	ck_assert_uint_eq(cfg->nlisteners, 4);
	ck_assert_uint_eq(cfg->nupstreams, 2);
	redis = &cfg->upstreams[0];
	mc = &cfg->upstreams[1];
	ck_assert_str_eq(redis->name, "redis");
	ck_assert_int_eq(redis->protocol, PROTO_REDIS);
	ck_assert_str_eq(redis->servers[0].addr.text, "127.0.0.1:6379");
	ck_assert_str_eq(mc->name, "memcached");
	ck_assert_int_eq(mc->protocol, PROTO_MEMCACHE);
	ck_assert_str_eq(mc->servers[0].addr.text, "127.0.0.1:11211");
	ck_assert_str_eq(cfg->listeners[0].addr.text, "127.0.0.1:6380");
	ck_assert_ptr_eq(cfg->listeners[0].upstream, redis);
	ck_assert_str_eq(cfg->listeners[1].addr.text,
	    "unix:/run/sidepool/redis.sock");
	ck_assert_uint_eq(cfg->listeners[1].mode, 0660);
	ck_assert_ptr_eq(cfg->listeners[1].upstream, redis);
	ck_assert_str_eq(cfg->listeners[2].addr.text, "127.0.0.1:11212");
	ck_assert_ptr_eq(cfg->listeners[2].upstream, mc);
	ck_assert_str_eq(cfg->listeners[3].addr.text,
	    "unix:/run/sidepool/memcached.sock");
	ck_assert_ptr_eq(cfg->listeners[3].upstream, mc);
	/* the example states the defaults: it must load as if it were empty */
	ck_assert(cfg->workers_auto);
	ck_assert_uint_eq(cfg->shutdown_timeout_ms, 10000);
	ck_assert_uint_eq(redis->pool.size, 8);
	ck_assert_uint_eq(redis->pool.max_connections, 32);
	ck_assert_uint_eq(redis->limits.max_value_size, 512u << 20);
	ck_assert_uint_eq(mc->limits.max_value_size, 1u << 20);
	config_free(cfg);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite	*s = suite_create("config");
	TCase	*tc;

	tc = tcase_create("valid");
	tcase_add_test(tc, test_full_config_loads_every_field);
	tcase_add_test(tc, test_absent_keys_take_their_defaults);
	tcase_add_test(tc, test_null_values_mean_default);
	tcase_add_test(tc, test_workers_auto_is_online_cpus);
	tcase_add_test(tc, test_redis_limits_default_to_server_limits);
	tcase_add_test(tc, test_memcache_limits_default_to_server_limits);
	tcase_add_test(tc, test_several_servers_in_one_upstream_are_allowed);
	tcase_add_test(tc, test_listener_may_name_upstream_defined_before_it);
	tcase_add_test(tc, test_mode_accepts_octal_forms);
	tcase_add_test(tc, test_names_of_protocols_and_levels);
	suite_add_tcase(s, tc);

	tc = tcase_create("syntax");
	tcase_add_test(tc, test_durations_parse_table);
	tcase_add_test(tc, test_sizes_parse_table);
	tcase_add_test(tc, test_addr_ipv4);
	tcase_add_test(tc, test_addr_ipv6_is_canonical);
	tcase_add_test(tc, test_addr_localhost_is_loopback);
	tcase_add_test(tc, test_addr_unix_with_and_without_prefix);
	tcase_add_test(tc, test_addr_unix_path_too_long);
	tcase_add_test(tc, test_addr_port_must_be_1_to_65535);
	tcase_add_test(tc, test_addr_missing_port);
	tcase_add_test(tc, test_addr_other_mistakes);
	suite_add_tcase(s, tc);

	tc = tcase_create("errors");
	tcase_add_test(tc, test_unknown_key_names_location_and_expected_keys);
	tcase_add_test(tc, test_unknown_key_suggests_the_closest_key);
	tcase_add_test(tc, test_yaml_syntax_error_names_location);
	tcase_add_test(tc, test_tab_indentation_says_use_spaces);
	tcase_add_test(tc, test_unquoted_ipv6_says_to_quote_it);
	tcase_add_test(tc, test_invalid_utf8_is_located);
	tcase_add_test(tc, test_top_level_must_be_a_mapping);
	tcase_add_test(tc, test_empty_file_is_refused);
	tcase_add_test(tc, test_second_document_is_refused);
	tcase_add_test(tc, test_sequence_where_scalar_expected_is_a_type_error);
	tcase_add_test(tc, test_text_where_integer_expected_is_a_type_error);
	tcase_add_test(tc, test_out_of_range_says_the_range);
	tcase_add_test(tc, test_duration_without_unit_says_add_a_unit);
	tcase_add_test(tc, test_bad_size_is_reported);
	tcase_add_test(tc, test_bad_addresses_are_located);
	tcase_add_test(tc, test_no_listeners_is_refused);
	tcase_add_test(tc, test_no_upstreams_is_refused);
	tcase_add_test(tc, test_listener_without_listen_is_refused);
	tcase_add_test(tc, test_listener_without_upstream_is_refused);
	tcase_add_test(tc, test_unknown_upstream_lists_the_known_ones);
	tcase_add_test(tc, test_duplicate_listener_address_names_the_first);
	tcase_add_test(tc, test_upstream_without_servers_is_refused);
	tcase_add_test(tc, test_upstream_without_protocol_is_refused);
	tcase_add_test(tc, test_server_twice_in_one_upstream_is_refused);
	tcase_add_test(tc, test_server_in_two_upstreams_is_refused);
	tcase_add_test(tc, test_listener_that_is_a_server_is_refused);
	tcase_add_test(tc, test_pool_size_above_max_connections_is_refused);
	tcase_add_test(tc, test_mode_on_tcp_listener_is_refused);
	tcase_add_test(tc, test_metrics_endpoint_must_be_loopback);
	tcase_add_test(tc, test_control_socket_path_and_mode);
	tcase_add_test(tc, test_bad_modes_are_refused);
	tcase_add_test(tc, test_duplicate_key_names_the_first);
	tcase_add_test(tc, test_other_value_mistakes_say_what_to_write);
	tcase_add_test(tc, test_all_errors_are_collected);
	tcase_add_test(tc, test_too_many_errors_are_capped);
	tcase_add_test(tc, test_errors_may_be_ignored_with_null);
	suite_add_tcase(s, tc);

	tc = tcase_create("quoting");
	tcase_add_test(tc, test_value_with_a_newline_stays_on_one_line);
	tcase_add_test(tc, test_addresses_with_control_bytes_are_escaped);
	tcase_add_test(tc,
	    test_upstream_name_with_control_bytes_is_escaped_everywhere);
	tcase_add_test(tc, test_backslash_in_a_value_is_shown_doubled);
	tcase_add_test(tc, test_long_values_are_cut_in_messages);
	suite_add_tcase(s, tc);

	tc = tcase_create("files");
	tcase_add_test(tc, test_config_load_reads_a_file);
	tcase_add_test(tc, test_config_load_missing_file_says_why);
	tcase_add_test(tc, test_shipped_config_is_valid);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner	*sr = srunner_create(config_suite());
	int	 failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
