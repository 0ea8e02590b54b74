/*
 * test_pool.c - pool bookkeeping without sockets: a fake open/close, a
 * fake clock, and assertions on which connection is reused, evicted or
 * expired, and why.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "pool.h"

#define MAX_FAKES 64

static struct backend *fakes[MAX_FAKES];
static int nfakes;
static enum close_reason last_reason;
static int nclosed;
static uint64_t fake_now;
static bool open_fails;

static struct backend *
fake_open(struct pool *p, char *err, size_t errlen)
{
	if (open_fails) {
		pool_record_failure(p, fake_now, true, "refused");
		return NULL;
	}
	struct backend *b = calloc(1, sizeof(*b));
	TAILQ_INIT(&b->inflight);
	b->in = evbuffer_new();
	b->out = evbuffer_new();
	fakes[nfakes++] = b;
	pool_add(p, b, BACKEND_CONNECTING, fake_now);
	return b;
}

static void
fake_close(struct backend *b, enum close_reason why, const char *detail)
{
	last_reason = why;
	nclosed++;
	b->pool->stats.closed[why]++;
	pool_set_state(b, BACKEND_CLOSED, fake_now);
}

static int nprobes;

static void
fake_probe(struct backend *b)
{
	nprobes++;
	if (b->state != BACKEND_CONNECTING)
		pool_set_state(b, BACKEND_PROBING, fake_now);
}

static const struct pool_ops fake_ops = { fake_open, fake_probe, fake_close };
static struct cfg_upstream up;
static struct cfg_server server;
static struct pool pool;

static void
setup(void)
{
	nfakes = 0;
	nclosed = 0;
	nprobes = 0;
	fake_now = 1000;
	open_fails = false;
	up = (struct cfg_upstream){ .name = "u", .protocol = PROTO_REDIS };
	up.pool.size = 2;
	up.pool.max_connections = 3;
	up.pool.idle_timeout_ms = 1000;
	up.connect_timeout_ms = 500;
	up.request_timeout_ms = 200;
	up.failure_limit = 3;
	up.retry_interval_ms = 100;
	up.retry_max_interval_ms = 1000;
	snprintf(server.addr.text, sizeof(server.addr.text), "127.0.0.1:1");
	pool_init(&pool, &up, &server, &fake_ops, 42);
}

static void
teardown(void)
{
	for (int i = 0; i < nfakes; i++) {
		evbuffer_free(fakes[i]->in);
		evbuffer_free(fakes[i]->out);
		free(fakes[i]);
	}
}

/* Open n connections and make them idle, the first one idling first. */
static void
make_idle(int n)
{
	for (int i = 0; i < n; i++) {
		struct backend *b = fake_open(&pool, NULL, 0);
		fake_now++;
		pool_set_state(b, BACKEND_IDLE, fake_now);
	}
}

START_TEST(test_acquire_on_empty_pool_opens_a_connection)
{
	char err[64];
	struct backend *b = pool_acquire(&pool, fake_now, err, sizeof(err));

	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(b->state, BACKEND_CONNECTING);
	ck_assert_uint_eq(pool_total(&pool), 1);
	ck_assert_uint_eq(pool.stats.opened, 1);
}
END_TEST

START_TEST(test_acquire_takes_most_recently_used_idle_connection)
{
	make_idle(2);
	struct backend *mru = fakes[1];
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);

	ck_assert_ptr_eq(b, mru);
	ck_assert_int_eq(b->state, BACKEND_ACTIVE);
	ck_assert_uint_eq(pool.count[BACKEND_IDLE], 1);
}
END_TEST

START_TEST(test_idle_beyond_pool_size_evicts_least_recently_used)
{
	pool.idle_timeout_ms = 60000;
	make_idle(3); /* idle since 1001, 1002, 1003; size 2 */
	ck_assert_int_eq(nclosed, 0); /* kept a moment, for the next burst */
	pool_tick(&pool, 1001 + 999);
	ck_assert_int_eq(nclosed, 0);
	pool_tick(&pool, 1001 + 1000);
	ck_assert_int_eq(nclosed, 1);
	ck_assert_int_eq(last_reason, CLOSE_EVICTED);
	ck_assert_int_eq(fakes[0]->state, BACKEND_CLOSED);
	ck_assert_int_eq(fakes[1]->state, BACKEND_IDLE);
	ck_assert_int_eq(fakes[2]->state, BACKEND_IDLE);
	ck_assert_uint_eq(pool.count[BACKEND_IDLE], 2);
	ck_assert_uint_eq(pool.stats.closed[CLOSE_EVICTED], 1);
}
END_TEST

START_TEST(test_pool_size_zero_keeps_no_idle_connection)
{
	pool.size = 0;
	make_idle(1);
	ck_assert_int_eq(fakes[0]->state, BACKEND_CLOSED);
	ck_assert_uint_eq(pool_total(&pool), 0);
}
END_TEST

START_TEST(test_idle_timeout_closes_only_expired_connections_oldest_first)
{
	make_idle(2); /* idle since 1001 and 1002 */
	pool_tick(&pool, 1001 + 999);
	ck_assert_int_eq(nclosed, 0);
	pool_tick(&pool, 1001 + 1000);
	ck_assert_int_eq(nclosed, 1);
	ck_assert_int_eq(last_reason, CLOSE_IDLE_TIMEOUT);
	ck_assert_int_eq(fakes[0]->state, BACKEND_CLOSED);
	ck_assert_int_eq(fakes[1]->state, BACKEND_IDLE);
}
END_TEST

START_TEST(test_idle_timeout_zero_means_never)
{
	pool.idle_timeout_ms = 0;
	make_idle(2);
	pool_tick(&pool, fake_now + 86400000ULL);
	ck_assert_int_eq(nclosed, 0);
}
END_TEST

START_TEST(test_reuse_of_idle_connection_resets_its_lru_position)
{
	make_idle(2);
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_eq(b, fakes[1]);
	fake_now += 10;
	pool_set_state(b, BACKEND_IDLE, fake_now);
	/* fakes[0] is now the least recently used: a third idle evicts it */
	pool.idle_timeout_ms = 60000;
	make_idle(1);
	pool_tick(&pool, fake_now + 1000);
	ck_assert_int_eq(fakes[0]->state, BACKEND_CLOSED);
	ck_assert_int_eq(fakes[1]->state, BACKEND_IDLE);
}
END_TEST

START_TEST(test_busy_connection_under_pipeline_depth_is_shared)
{
	struct backend *a = pool_acquire(&pool, fake_now, NULL, 0);
	pool_set_state(a, BACKEND_ACTIVE, fake_now);
	a->ninflight = 1;
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_eq(a, b);
	ck_assert_uint_eq(pool_total(&pool), 1);
}
END_TEST

/* Two busy connections, a opened first: b took the last request. */
static void
make_two_busy(struct backend **a, struct backend **b)
{
	*a = pool_acquire(&pool, fake_now, NULL, 0);
	pool_set_state(*a, BACKEND_ACTIVE, fake_now);
	(*a)->ninflight = pool.pipeline_depth;
	*b = pool_acquire(&pool, fake_now, NULL, 0);
	pool_set_state(*b, BACKEND_ACTIVE, fake_now);
	(*b)->ninflight = 1;
	(*a)->ninflight = 1;
}

START_TEST(test_requests_fill_the_last_used_connection_before_another)
{
	struct backend *a, *b;

	make_two_busy(&a, &b);
	ck_assert_ptr_ne(a, b);
	for (int i = 0; i < 5; i++) {
		struct backend *x = pool_acquire(&pool, fake_now, NULL, 0);
		ck_assert_ptr_eq(x, b);
		x->ninflight++;
	}
	b->ninflight = pool.pipeline_depth; /* full: the one before it */
	ck_assert_ptr_eq(pool_acquire(&pool, fake_now, NULL, 0), a);
	ck_assert_ptr_eq(pool_acquire(&pool, fake_now, NULL, 0), a);
}
END_TEST

START_TEST(test_busy_connection_is_preferred_to_an_idle_one)
{
	make_idle(1);
	struct backend *idle = fakes[0];
	struct backend *busy = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_eq(busy, idle); /* no busy one yet: the idle one */
	pool_set_state(busy, BACKEND_ACTIVE, fake_now);
	busy->ninflight = 1;
	make_idle(1);
	ck_assert_uint_eq(pool.count[BACKEND_IDLE], 1);
	ck_assert_ptr_eq(pool_acquire(&pool, fake_now, NULL, 0), busy);
	ck_assert_uint_eq(pool.count[BACKEND_IDLE], 1);
}
END_TEST

START_TEST(test_connection_with_large_transfer_takes_no_new_request)
{
	struct backend *a, *b;
	static char chunk[64 * 1024];

	make_two_busy(&a, &b);
	evbuffer_add(b->in, chunk, sizeof(chunk)); /* a large reply half read */
	ck_assert_ptr_eq(pool_acquire(&pool, fake_now, NULL, 0), a);
	evbuffer_add(a->out, chunk, sizeof(chunk)); /* a large request unsent */
	struct backend *c = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_ne(c, a);
	ck_assert_ptr_ne(c, b);
	ck_assert_int_eq(nfakes, 3);
	evbuffer_drain(b->in, sizeof(chunk));
	c->ninflight = 1;
	pool_set_state(c, BACKEND_ACTIVE, fake_now);
	c->ninflight = pool.pipeline_depth;
	ck_assert_ptr_eq(pool_acquire(&pool, fake_now, NULL, 0), b);
}
END_TEST

START_TEST(test_requests_fill_a_connecting_connection_before_opening_another)
{
	pool.max_connections = 8;
	struct backend *a = pool_acquire(&pool, fake_now, NULL, 0);
	a->ninflight = pool.pipeline_depth; /* full while it connects */
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_ne(a, b);
	ck_assert_uint_eq(b->state, BACKEND_CONNECTING);
	b->ninflight = 16;
	for (int i = 0; i < 5; i++) {
		struct backend *x = pool_acquire(&pool, fake_now, NULL, 0);
		ck_assert_ptr_eq(x, b);
		x->ninflight += 16;
	}
	ck_assert_int_eq(nfakes, 2);
}
END_TEST

START_TEST(test_deep_pipelines_open_new_connections_up_to_max)
{
	for (int i = 0; i < 3; i++) {
		struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
		ck_assert_ptr_nonnull(b);
		if (b->state == BACKEND_CONNECTING)
			pool_set_state(b, BACKEND_ACTIVE, fake_now);
		b->ninflight = pool.pipeline_depth;
	}
	ck_assert_uint_eq(pool_total(&pool), 3);
	/* at max: requests go to the busy ones, round robin, never a 4th */
	struct backend *x = pool_acquire(&pool, fake_now, NULL, 0);
	struct backend *y = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_nonnull(x);
	ck_assert_ptr_ne(x, y);
	ck_assert_uint_eq(pool_total(&pool), 3);
	ck_assert_int_eq(nfakes, 3);
}
END_TEST

START_TEST(test_failed_open_on_empty_pool_returns_null)
{
	open_fails = true;
	char err[64] = "";
	ck_assert_ptr_null(pool_acquire(&pool, fake_now, err, sizeof(err)));
}
END_TEST

START_TEST(test_connect_timeout_closes_connecting_connection)
{
	pool_acquire(&pool, fake_now, NULL, 0);
	pool_tick(&pool, fake_now + 499);
	ck_assert_int_eq(nclosed, 0);
	pool_tick(&pool, fake_now + 500);
	ck_assert_int_eq(nclosed, 1);
	ck_assert_int_eq(last_reason, CLOSE_CONNECT_TIMEOUT);
}
END_TEST

START_TEST(test_request_timeout_closes_connection_with_old_request)
{
	struct request old = { .sent_us = fake_now * 1000 };
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	pool_set_state(b, BACKEND_ACTIVE, fake_now);
	TAILQ_INSERT_TAIL(&b->inflight, &old, backend_link);
	b->ninflight = 1;
	pool_tick(&pool, fake_now + 199);
	ck_assert_int_eq(nclosed, 0);
	pool_tick(&pool, fake_now + 200);
	ck_assert_int_eq(nclosed, 1);
	ck_assert_int_eq(last_reason, CLOSE_REQUEST_TIMEOUT);
}
END_TEST

START_TEST(test_close_all_empties_every_list)
{
	make_idle(2);
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	(void)b;
	pool_acquire(&pool, fake_now, NULL, 0); /* idle one left */
	fake_open(&pool, NULL, 0);
	pool_close_all(&pool, CLOSE_SHUTDOWN);
	ck_assert_uint_eq(pool_total(&pool), 0);
	ck_assert_int_eq(last_reason, CLOSE_SHUTDOWN);
}
END_TEST

START_TEST(test_refused_connect_marks_server_down_and_fails_fast)
{
	char err[160] = "";

	open_fails = true;
	ck_assert_ptr_null(pool_acquire(&pool, fake_now, err, sizeof(err)));
	ck_assert(pool.down);
	ck_assert_uint_eq(pool.stats.marked_down, 1);
	/* while down, no connect is even tried */
	open_fails = false;
	ck_assert_ptr_null(pool_acquire(&pool, fake_now, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "down"));
	ck_assert_int_eq(nfakes, 0);
	ck_assert_uint_eq(pool.stats.fast_failures, 1);
}
END_TEST

START_TEST(test_failures_below_limit_keep_server_up)
{
	pool_record_failure(&pool, fake_now, false, "timeout");
	pool_record_failure(&pool, fake_now, false, "timeout");
	ck_assert(!pool.down);
	pool_record_success(&pool, fake_now);
	pool_record_failure(&pool, fake_now, false, "timeout");
	pool_record_failure(&pool, fake_now, false, "timeout");
	ck_assert(!pool.down);
	pool_record_failure(&pool, fake_now, false, "timeout");
	ck_assert(pool.down);
}
END_TEST

START_TEST(test_down_server_is_retried_with_capped_exponential_backoff)
{
	uint64_t prev = 0;

	open_fails = true;
	pool_record_failure(&pool, fake_now, true, "refused");
	for (int i = 0; i < 8; i++) {
		uint64_t wait = pool.retry_at_ms - fake_now;
		/* jitter is within 20% of the backoff, which doubles to 1s */
		ck_assert_uint_ge(wait, pool.backoff_ms * 8 / 10);
		ck_assert_uint_le(wait, pool.backoff_ms * 12 / 10);
		ck_assert_uint_le(pool.backoff_ms, 1000);
		ck_assert_uint_ge(pool.backoff_ms, prev);
		prev = pool.backoff_ms;
		pool_tick(&pool, pool.retry_at_ms - 1);
		ck_assert_uint_eq(pool.retry_at_ms - fake_now, wait);
		fake_now = pool.retry_at_ms;
		pool_tick(&pool, fake_now); /* the retry: refused again */
	}
	ck_assert_uint_eq(pool.backoff_ms, 1000);
	ck_assert(pool.down);
}
END_TEST

START_TEST(test_successful_retry_probe_brings_server_back)
{
	open_fails = true;
	pool_record_failure(&pool, fake_now, true, "refused");
	open_fails = false;
	fake_now = pool.retry_at_ms;
	pool_tick(&pool, fake_now);
	ck_assert_int_eq(nfakes, 1);   /* one connection tries */
	ck_assert_int_eq(nprobes, 1);  /* and carries a probe */
	pool_tick(&pool, fake_now);
	ck_assert_int_eq(nfakes, 1);   /* never a second one meanwhile */
	pool_record_success(&pool, fake_now);
	ck_assert(!pool.down);
	ck_assert_uint_eq(pool.failures, 0);
}
END_TEST

START_TEST(test_idle_connection_is_probed_after_probe_interval)
{
	pool.probe_interval_ms = 300;
	make_idle(1);
	pool_tick(&pool, fakes[0]->used_ms + 299);
	ck_assert_int_eq(nprobes, 0);
	pool_tick(&pool, fakes[0]->used_ms + 300);
	ck_assert_int_eq(nprobes, 1);
	ck_assert_int_eq(fakes[0]->state, BACKEND_PROBING);
	/* a probing connection is never handed to a client */
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	ck_assert_ptr_ne(b, fakes[0]);
}
END_TEST

START_TEST(test_unanswered_probe_closes_connection)
{
	pool.probe_interval_ms = 300;
	make_idle(1);
	uint64_t t = fakes[0]->used_ms + 300;
	pool_tick(&pool, t);
	pool_tick(&pool, t + up.connect_timeout_ms);
	ck_assert_int_eq(fakes[0]->state, BACKEND_CLOSED);
	ck_assert_int_eq(last_reason, CLOSE_PROBE_FAILED);
}
END_TEST

START_TEST(test_min_idle_connections_are_opened_and_kept)
{
	pool.min_idle = 2;
	pool_tick(&pool, fake_now);
	ck_assert_uint_eq(pool_total(&pool), 2);
	for (int i = 0; i < nfakes; i++)
		pool_set_state(fakes[i], BACKEND_IDLE, fake_now);
	/* idle timeout does not take the pool below min_idle */
	pool_tick(&pool, fake_now + 10 * up.pool.idle_timeout_ms);
	ck_assert_uint_eq(pool_total(&pool), 2);
}
END_TEST

START_TEST(test_connections_retire_after_max_lifetime_staggered)
{
	pool.max_lifetime_ms = 10000;
	make_idle(2);
	for (int i = 0; i < 2; i++) {
		uint64_t life = fakes[i]->retire_ms - fakes[i]->created_ms;
		ck_assert_uint_le(life, 10000);
		ck_assert_uint_ge(life, 10000 - 1200);
	}
	/* a busy connection past its lifetime is retired when released */
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	pool_release(b, b->retire_ms);
	ck_assert_int_eq(b->state, BACKEND_CLOSED);
	ck_assert_int_eq(last_reason, CLOSE_MAX_LIFETIME);
}
END_TEST

START_TEST(test_failures_of_old_connections_do_not_grow_the_backoff)
{
	pool_record_failure(&pool, fake_now, true, "refused");
	uint64_t backoff = pool.backoff_ms, at = pool.retry_at_ms;
	/* the eight connections open at the time fail right after */
	for (int i = 0; i < 8; i++)
		pool_record_failure(&pool, fake_now, false, "reset");
	ck_assert_uint_eq(pool.backoff_ms, backoff);
	ck_assert_uint_eq(pool.retry_at_ms, at);
}
END_TEST

START_TEST(test_down_server_with_idle_connection_is_retried_by_probing_it)
{
	make_idle(1);
	pool_record_failure(&pool, fake_now, true, "LOADING");
	ck_assert(pool.down);
	pool_tick(&pool, pool.retry_at_ms);
	ck_assert_int_eq(nprobes, 1);
	ck_assert_int_eq(fakes[0]->state, BACKEND_PROBING);
	ck_assert_int_eq(nfakes, 1); /* no new connection was needed */
}
END_TEST

static Suite *
pool_suite(void)
{
	Suite *s = suite_create("pool");
	TCase *tc = tcase_create("pool");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_acquire_on_empty_pool_opens_a_connection);
	tcase_add_test(tc, test_acquire_takes_most_recently_used_idle_connection);
	tcase_add_test(tc, test_idle_beyond_pool_size_evicts_least_recently_used);
	tcase_add_test(tc, test_pool_size_zero_keeps_no_idle_connection);
	tcase_add_test(tc, test_idle_timeout_closes_only_expired_connections_oldest_first);
	tcase_add_test(tc, test_idle_timeout_zero_means_never);
	tcase_add_test(tc, test_reuse_of_idle_connection_resets_its_lru_position);
	tcase_add_test(tc, test_busy_connection_under_pipeline_depth_is_shared);
	tcase_add_test(tc, test_requests_fill_the_last_used_connection_before_another);
	tcase_add_test(tc, test_busy_connection_is_preferred_to_an_idle_one);
	tcase_add_test(tc, test_connection_with_large_transfer_takes_no_new_request);
	tcase_add_test(tc, test_requests_fill_a_connecting_connection_before_opening_another);
	tcase_add_test(tc, test_deep_pipelines_open_new_connections_up_to_max);
	tcase_add_test(tc, test_failed_open_on_empty_pool_returns_null);
	tcase_add_test(tc, test_connect_timeout_closes_connecting_connection);
	tcase_add_test(tc, test_request_timeout_closes_connection_with_old_request);
	tcase_add_test(tc, test_close_all_empties_every_list);
	tcase_add_test(tc, test_refused_connect_marks_server_down_and_fails_fast);
	tcase_add_test(tc, test_failures_below_limit_keep_server_up);
	tcase_add_test(tc, test_down_server_is_retried_with_capped_exponential_backoff);
	tcase_add_test(tc, test_successful_retry_probe_brings_server_back);
	tcase_add_test(tc, test_idle_connection_is_probed_after_probe_interval);
	tcase_add_test(tc, test_unanswered_probe_closes_connection);
	tcase_add_test(tc, test_min_idle_connections_are_opened_and_kept);
	tcase_add_test(tc, test_connections_retire_after_max_lifetime_staggered);
	tcase_add_test(tc, test_failures_of_old_connections_do_not_grow_the_backoff);
	tcase_add_test(tc, test_down_server_with_idle_connection_is_retried_by_probing_it);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(pool_suite());

	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
