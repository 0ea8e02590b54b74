/*
 * fuzz_config.c - libFuzzer harness for the configuration loader
 * (config_load_string) and its value parsers (durations, sizes,
 * addresses).
 *
 * The input is a sidepool.yml. A load either gives a config and no error,
 * or NULL and at least one "NAME:LINE:COL: message"; a config that loads
 * must hang together (every listener points at one of the upstreams, every
 * upstream has servers and limits). Every message is one line of bounded
 * length without control bytes, whatever the values it quotes (finding K3
 * was a value's newline in a message). Everything is freed: LeakSanitizer
 * reports what the loader forgets. A broken invariant is a
 * __builtin_trap().
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

#define NAME "fuzz.yml"

/* Longer than any message with its values cut (config.c QUOTE_SIZE). */
#define MESSAGE_MAX 2048

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * One line for a terminal or a log: no C0 control byte, no DEL, no C1
 * control (0xc2 0x80..0x9f in UTF-8), and not a whole value of any length.
 */
static void
check_one_line(const char *msg)
{
	const unsigned char *p = (const unsigned char *)msg;

	for (; *p != '\0'; p++) {
		CHECK(*p >= 0x20 && *p != 0x7f);
		CHECK(!(p[0] == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0));
	}
	CHECK((size_t)(p - (const unsigned char *)msg) <= MESSAGE_MAX);
}

static void
check_addr(const struct cfg_addr *a)
{
	CHECK(memchr(a->text, '\0', sizeof(a->text)) != NULL);
	CHECK(a->family == AF_INET || a->family == AF_INET6 ||
	    a->family == AF_UNIX);
	CHECK(a->salen > 0 && a->salen <= sizeof(a->sa));
}

static void
check_config(const struct config *cfg)
{
	size_t i, j;

	CHECK(cfg->path != NULL && strcmp(cfg->path, NAME) == 0);
	CHECK(cfg->workers >= 1);
	CHECK(cfg->nlisteners >= 1 && cfg->listeners != NULL);
	CHECK(cfg->nupstreams >= 1 && cfg->upstreams != NULL);
	for (i = 0; i < cfg->nlisteners; i++) {
		const struct cfg_listener *l = &cfg->listeners[i];

		check_addr(&l->addr);
		CHECK(l->upstream >= cfg->upstreams &&
		    l->upstream < cfg->upstreams + cfg->nupstreams);
	}
	for (i = 0; i < cfg->nupstreams; i++) {
		const struct cfg_upstream *u = &cfg->upstreams[i];
		const struct cfg_limits *lim = &u->limits;

		CHECK(u->name != NULL && u->name[0] != '\0');
		CHECK(u->protocol == PROTO_REDIS ||
		    u->protocol == PROTO_MEMCACHE);
		CHECK(u->nservers >= 1 && u->servers != NULL);
		for (j = 0; j < u->nservers; j++) {
			check_addr(&u->servers[j].addr);
			CHECK(u->servers[j].index == j);
		}
		CHECK(u->pool.size <= u->pool.max_connections);
		/* 0 in the file means the protocol's default: never 0 here */
		CHECK(lim->max_request_size > 0 && lim->max_value_size > 0 &&
		    lim->max_args > 0 && lim->max_line_length > 0 &&
		    lim->max_pending > 0 && lim->max_output > 0);
	}
}

/* The value parsers on the input as one string (up to its first NUL). */
static void
check_values(const uint8_t *data, size_t size)
{
	char buf[512], err[256];
	struct cfg_addr addr;
	uint64_t v;
	size_t n = size < sizeof(buf) - 1 ? size : sizeof(buf) - 1;

	memcpy(buf, data, n);
	buf[n] = '\0';
	(void)config_parse_duration(buf, &v);
	(void)config_parse_size(buf, &v);
	err[0] = '\0';
	if (config_parse_addr(buf, &addr, err, sizeof(err)) == 0) {
		check_addr(&addr);
	} else {
		CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
		check_one_line(err);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config_errors errs = { 0 };
	struct config *cfg;
	size_t i;

	cfg = config_load_string((const char *)data, size, NAME, &errs);
	if (cfg != NULL) {
		CHECK(errs.n == 0);
		check_config(cfg);
	} else {
		CHECK(errs.n > 0 && errs.msgs != NULL);
	}
	for (i = 0; i < errs.n; i++) {
		CHECK(errs.msgs[i] != NULL);
		CHECK(strncmp(errs.msgs[i], NAME ":", strlen(NAME) + 1) == 0);
		check_one_line(errs.msgs[i]);
	}
	config_free(cfg);
	config_errors_clear(&errs);
	CHECK(errs.n == 0 && errs.msgs == NULL);

	check_values(data, size);
	return 0;
}
