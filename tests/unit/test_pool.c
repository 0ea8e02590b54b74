/*
 * test_pool.c - pool bookkeeping without sockets: a fake open/close, a
 * fake clock, and assertions on which connection is reused, evicted or
 * expired, and why.
 */
#include <check.h>
#include <stdlib.h>

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
	if (open_fails)
		return NULL;
	struct backend *b = calloc(1, sizeof(*b));
	TAILQ_INIT(&b->inflight);
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

static const struct pool_ops fake_ops = { fake_open, fake_close };
static struct cfg_upstream up;
static struct cfg_server server;
static struct pool pool;

static void
setup(void)
{
	nfakes = 0;
	nclosed = 0;
	fake_now = 1000;
	open_fails = false;
	up = (struct cfg_upstream){ .name = "u", .protocol = PROTO_REDIS };
	up.pool.size = 2;
	up.pool.max_connections = 3;
	up.pool.idle_timeout_ms = 1000;
	up.connect_timeout_ms = 500;
	up.request_timeout_ms = 200;
	snprintf(server.addr.text, sizeof(server.addr.text), "127.0.0.1:1");
	pool_init(&pool, &up, &server, &fake_ops);
}

static void
teardown(void)
{
	for (int i = 0; i < nfakes; i++)
		free(fakes[i]);
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
	make_idle(3);
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
	pool_expire(&pool, 1001 + 999);
	ck_assert_int_eq(nclosed, 0);
	pool_expire(&pool, 1001 + 1000);
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
	pool_expire(&pool, fake_now + 86400000ULL);
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
	make_idle(1);
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
	pool_expire(&pool, fake_now + 499);
	ck_assert_int_eq(nclosed, 0);
	pool_expire(&pool, fake_now + 500);
	ck_assert_int_eq(nclosed, 1);
	ck_assert_int_eq(last_reason, CLOSE_CONNECT_TIMEOUT);
}
END_TEST

START_TEST(test_request_timeout_closes_connection_with_old_request)
{
	struct request old = { .sent_ms = fake_now };
	struct backend *b = pool_acquire(&pool, fake_now, NULL, 0);
	pool_set_state(b, BACKEND_ACTIVE, fake_now);
	TAILQ_INSERT_TAIL(&b->inflight, &old, backend_link);
	b->ninflight = 1;
	pool_expire(&pool, fake_now + 199);
	ck_assert_int_eq(nclosed, 0);
	pool_expire(&pool, fake_now + 200);
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
	tcase_add_test(tc, test_deep_pipelines_open_new_connections_up_to_max);
	tcase_add_test(tc, test_failed_open_on_empty_pool_returns_null);
	tcase_add_test(tc, test_connect_timeout_closes_connecting_connection);
	tcase_add_test(tc, test_request_timeout_closes_connection_with_old_request);
	tcase_add_test(tc, test_close_all_empties_every_list);
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
