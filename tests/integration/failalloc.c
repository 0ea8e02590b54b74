/*
 * failalloc.c - an LD_PRELOAD shim that makes malloc, calloc, realloc and
 * the aligned allocators return NULL on demand, so that the "out of memory"
 * paths of sidepool run in tests (test_alloc_failures.py, or by hand: see
 * docs/ALLOC-FAILURES.md). It is not part of the daemon; the test compiles
 * it:
 *
 *   cc -shared -fPIC -O2 -o failalloc.so failalloc.c -ldl
 *   LD_PRELOAD=./failalloc.so SIDEPOOL_FAILALLOC_RATE=0.05 sidepool -c ...
 *
 * What fails is a plan, read from the environment when the shim loads:
 *
 *   SIDEPOOL_FAILALLOC_AFTER=N    while failing is on, the first N
 *                                 allocations succeed (default 0)
 *   SIDEPOOL_FAILALLOC_COUNT=M    only the M after them may fail (default:
 *                                 all that follow)
 *   SIDEPOOL_FAILALLOC_RATE=p     of those, a fraction p fails (0..1,
 *                                 default 1), chosen by a hash of the seed
 *                                 and the allocation's number
 *   SIDEPOOL_FAILALLOC_SEED=s     that seed (default 1)
 *   SIDEPOOL_FAILALLOC_THREAD=t   main: only the main thread's allocations
 *                                 fail; workers: only the others' (default
 *                                 all)
 *   SIDEPOOL_FAILALLOC_FILE=path  failing is on only while this file
 *                                 exists; words in it ("after=3 count=1
 *                                 rate=0.05 seed=7 thread=main") replace
 *                                 the plan's. The shim looks at most every
 *                                 10 ms, and at once on SIGUSR2. Without
 *                                 it, failing is on from the start.
 *   SIDEPOOL_FAILALLOC_BACKTRACE=K  write the call stacks of the first K
 *                                 failures to stderr (resolve
 *                                 "sidepool(+0x...)" with addr2line -e)
 *
 * Allocations are counted from when failing was switched on. If none of
 * the variables is set, nothing fails and the shim only counts. SIGUSR2
 * (which sidepool does not use) writes "failalloc: on=0|1 calls=C
 * armed_calls=A failed=F" to stderr, as exit does: a test reads it to know
 * that its switch took effect and that failures were really injected.
 *
 * Nothing here may allocate: it runs inside malloc. dlsym() itself may call
 * calloc before the real one is known, so those first requests come from a
 * small static arena that free() recognises and ignores. The plan is
 * changed only when failing is switched on, by plain stores: a thread that
 * reads it at that moment may see half of the change, which a test tool
 * can live with.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ARENA_SIZE	(64 * 1024)
#define ARENA_ALIGN	16
#define CHECK_NS	(10 * 1000 * 1000)

enum thread_filter { THREAD_ALL, THREAD_MAIN, THREAD_WORKERS };

struct plan {
	uint64_t after;
	uint64_t count;
	uint64_t threshold;	/* fail if the hash is <= this */
	uint64_t seed;
	enum thread_filter thread;
};

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

static _Alignas(ARENA_ALIGN) unsigned char arena[ARENA_SIZE];
static atomic_size_t arena_used;
static atomic_int resolving;	/* 1 while dlsym runs, 2 once done */

static bool configured;		/* any variable set: failures possible */
static const char *gate_file;
static uint64_t backtraces;	/* how many failures to show */
static pid_t main_tid;
static struct plan env_plan = { 0, UINT64_MAX, UINT64_MAX, 1, THREAD_ALL };
static struct plan plan = { 0, UINT64_MAX, UINT64_MAX, 1, THREAD_ALL };

static atomic_bool on;
static atomic_uint_fast64_t calls, armed_calls, failed;
static atomic_int_fast64_t next_check_ns;

static void write_backtrace(void);

/* ---- the bootstrap arena ------------------------------------------------ */

/* Each block starts with its size, so realloc can copy it out. */
static void *
arena_alloc(size_t size)
{
	size_t need = (size + 2 * ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
	size_t at = atomic_fetch_add(&arena_used, need);

	if (at + need > ARENA_SIZE)
		return NULL;
	memcpy(arena + at, &size, sizeof(size));
	return arena + at + ARENA_ALIGN;
}

static bool
in_arena(const void *p)
{
	const unsigned char *c = p;

	return c >= arena && c < arena + ARENA_SIZE;
}

static size_t
arena_size(const void *p)
{
	size_t size;

	memcpy(&size, (const unsigned char *)p - ARENA_ALIGN, sizeof(size));
	return size;
}

/* ---- the plan ------------------------------------------------------------ */

/* No strtoull or strtod: they may touch locale data. Plain decimals. */
static bool
parse_u64(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
		v = v * 10 + (uint64_t)(s[i] - '0');
	if (i == 0)
		return false;
	*out = v;
	return true;
}

/* "0.05" -> a threshold over the 64-bit hash space. */
static bool
parse_rate(const char *s, size_t len, uint64_t *threshold)
{
	double v = 0, scale = 1;
	bool frac = false, digits = false;

	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.') {
			frac = true;
		} else if (s[i] >= '0' && s[i] <= '9') {
			digits = true;
			if (frac) {
				scale /= 10;
				v += (s[i] - '0') * scale;
			} else {
				v = v * 10 + (s[i] - '0');
			}
		} else {
			break;
		}
	}
	if (!digits)
		return false;
	if (v >= 1)
		*threshold = UINT64_MAX;
	else if (v <= 0)
		*threshold = 0;
	else
		*threshold = (uint64_t)(v * 18446744073709551615.0);
	return true;
}

static size_t
cstrlen(const char *s)
{
	return s != NULL ? strlen(s) : 0;
}

static bool
parse_thread(const char *s, size_t len, enum thread_filter *t)
{
	if (len == 4 && memcmp(s, "main", 4) == 0)
		*t = THREAD_MAIN;
	else if (len == 7 && memcmp(s, "workers", 7) == 0)
		*t = THREAD_WORKERS;
	else if (len == 3 && memcmp(s, "all", 3) == 0)
		*t = THREAD_ALL;
	else
		return false;
	return true;
}

/* One "key=value" word of the gate file. */
static void
apply_word(struct plan *p, const char *w, size_t len)
{
	const char *eq = memchr(w, '=', len);

	if (eq == NULL)
		return;
	size_t klen = (size_t)(eq - w), vlen = len - klen - 1;
	const char *v = eq + 1;
	if (klen == 5 && memcmp(w, "after", 5) == 0)
		(void)parse_u64(v, vlen, &p->after);
	else if (klen == 5 && memcmp(w, "count", 5) == 0)
		(void)parse_u64(v, vlen, &p->count);
	else if (klen == 4 && memcmp(w, "rate", 4) == 0)
		(void)parse_rate(v, vlen, &p->threshold);
	else if (klen == 4 && memcmp(w, "seed", 4) == 0)
		(void)parse_u64(v, vlen, &p->seed);
	else if (klen == 6 && memcmp(w, "thread", 6) == 0)
		(void)parse_thread(v, vlen, &p->thread);
}

/* The plan while the gate file exists: the environment's, then its words. */
static void
read_gate_plan(void)
{
	char buf[256];
	struct plan p = env_plan;
	ssize_t n = 0;
	int fd = open(gate_file, O_RDONLY | O_CLOEXEC);

	if (fd != -1) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
	}
	for (ssize_t i = 0; i < n;) {
		while (i < n && (buf[i] == ' ' || buf[i] == '\n' ||
		    buf[i] == '\t'))
			i++;
		ssize_t start = i;
		while (i < n && buf[i] != ' ' && buf[i] != '\n' &&
		    buf[i] != '\t')
			i++;
		if (i > start)
			apply_word(&p, buf + start, (size_t)(i - start));
	}
	plan = p;
}

static void
read_settings(void)
{
	const char *s;

	gate_file = getenv("SIDEPOOL_FAILALLOC_FILE");
	configured = gate_file != NULL;
	s = getenv("SIDEPOOL_FAILALLOC_AFTER");
	configured |= parse_u64(s, cstrlen(s), &env_plan.after);
	s = getenv("SIDEPOOL_FAILALLOC_COUNT");
	configured |= parse_u64(s, cstrlen(s), &env_plan.count);
	s = getenv("SIDEPOOL_FAILALLOC_RATE");
	configured |= parse_rate(s, cstrlen(s), &env_plan.threshold);
	s = getenv("SIDEPOOL_FAILALLOC_SEED");
	(void)parse_u64(s, cstrlen(s), &env_plan.seed);
	s = getenv("SIDEPOOL_FAILALLOC_THREAD");
	(void)parse_thread(s, cstrlen(s), &env_plan.thread);
	s = getenv("SIDEPOOL_FAILALLOC_BACKTRACE");
	(void)parse_u64(s, cstrlen(s), &backtraces);
	if (backtraces > 0) {
		/* The first backtrace() loads libgcc_s, which allocates: do it
		 * now, while nothing fails. */
		void *frames[2];
		(void)backtrace(frames, 2);
	}
	main_tid = getpid();
	plan = env_plan;
	atomic_store(&on, configured && gate_file == NULL);
}

/* ---- the switch ---------------------------------------------------------- */

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Look at the file; when it appears, take its plan and count afresh. */
static void
check_gate(void)
{
	bool now_on = access(gate_file, F_OK) == 0;

	if (now_on && !atomic_load(&on)) {
		read_gate_plan();
		atomic_store(&armed_calls, 0);
	}
	atomic_store(&on, now_on);
}

static void
maybe_check_gate(void)
{
	int64_t now = now_ns();
	int_fast64_t due = atomic_load_explicit(&next_check_ns,
	    memory_order_relaxed);

	if (now < due || !atomic_compare_exchange_strong(&next_check_ns, &due,
	    now + CHECK_NS))
		return;
	check_gate();
}

/* splitmix64: a fixed, well-spread choice per allocation number. */
static uint64_t
mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static bool
thread_chosen(enum thread_filter t)
{
	if (t == THREAD_ALL)
		return true;
	bool is_main = (pid_t)syscall(SYS_gettid) == main_tid;
	return t == THREAD_MAIN ? is_main : !is_main;
}

/* Count this allocation and decide whether it fails. */
static bool
should_fail(void)
{
	atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
	if (!configured)
		return false;
	if (gate_file != NULL)
		maybe_check_gate();
	if (!atomic_load_explicit(&on, memory_order_relaxed))
		return false;
	uint64_t n = atomic_fetch_add_explicit(&armed_calls, 1,
	    memory_order_relaxed) + 1;
	if (n <= plan.after || n - plan.after > plan.count)
		return false;
	if (plan.threshold != UINT64_MAX &&
	    mix(plan.seed ^ mix(n)) > plan.threshold)
		return false;
	if (!thread_chosen(plan.thread))
		return false;
	if (atomic_fetch_add_explicit(&failed, 1, memory_order_relaxed) <
	    backtraces)
		write_backtrace();
	return true;
}

/* ---- reports --------------------------------------------------------------- */

static char *
put_u64(char *p, uint64_t v)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (n > 0)
		*p++ = tmp[--n];
	return p;
}

static char *
put_str(char *p, const char *s)
{
	size_t n = strlen(s);

	memcpy(p, s, n);
	return p + n;
}

/* Async-signal-safe: no stdio, one write. */
static void
report(void)
{
	char buf[160], *p = buf;
	int saved = errno;

	p = put_str(p, "failalloc: on=");
	p = put_u64(p, atomic_load(&on));
	p = put_str(p, " calls=");
	p = put_u64(p, atomic_load(&calls));
	p = put_str(p, " armed_calls=");
	p = put_u64(p, atomic_load(&armed_calls));
	p = put_str(p, " failed=");
	p = put_u64(p, atomic_load(&failed));
	*p++ = '\n';
	(void)!write(STDERR_FILENO, buf, (size_t)(p - buf));
	errno = saved;
}

/* backtrace_symbols_fd writes without allocating. */
static void
write_backtrace(void)
{
	static const char head[] = "failalloc: failing this allocation:\n";
	void *frames[24];
	int saved = errno;
	int n = backtrace(frames, 24);

	(void)!write(STDERR_FILENO, head, sizeof(head) - 1);
	backtrace_symbols_fd(frames, n, STDERR_FILENO);
	errno = saved;
}

static void
on_sigusr2(int sig)
{
	(void)sig;
	if (gate_file != NULL)
		check_gate();
	report();
}

/* ---- the real allocator ------------------------------------------------------ */

static void
resolve(void)
{
	int expected = 0;

	if (!atomic_compare_exchange_strong(&resolving, &expected, 1))
		return;
	real_malloc = dlsym(RTLD_NEXT, "malloc");
	real_calloc = dlsym(RTLD_NEXT, "calloc");
	real_realloc = dlsym(RTLD_NEXT, "realloc");
	real_free = dlsym(RTLD_NEXT, "free");
	real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
	real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
	real_memalign = dlsym(RTLD_NEXT, "memalign");
	atomic_store(&resolving, 2);
}

/* The real allocator is known (false inside dlsym: use the arena). */
static bool
ready(void)
{
	if (atomic_load_explicit(&resolving, memory_order_acquire) == 2)
		return true;
	resolve();
	return atomic_load(&resolving) == 2 && real_malloc != NULL;
}

__attribute__((constructor)) static void
failalloc_init(void)
{
	struct sigaction sa;

	(void)ready();
	read_settings();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigusr2;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR2, &sa, NULL);
}

__attribute__((destructor)) static void
failalloc_fini(void)
{
	report();
}

/* ---- the wrappers ------------------------------------------------------------ */

void *
malloc(size_t size)
{
	if (!ready())
		return arena_alloc(size);
	if (should_fail()) {
		errno = ENOMEM;
		return NULL;
	}
	return real_malloc(size);
}

void *
calloc(size_t n, size_t size)
{
	if (!ready()) {
		if (size != 0 && n > SIZE_MAX / size)
			return NULL;
		return arena_alloc(n * size);	/* never reused: zero */
	}
	if (should_fail()) {
		errno = ENOMEM;
		return NULL;
	}
	return real_calloc(n, size);
}

void *
realloc(void *p, size_t size)
{
	if (p != NULL && in_arena(p)) {
		void *q = malloc(size);
		size_t old = arena_size(p);
		if (q != NULL)
			memcpy(q, p, old < size ? old : size);
		return q;
	}
	if (!ready())
		return p == NULL ? arena_alloc(size) : NULL;
	/* realloc(p, 0) frees: nothing to fail. */
	if (!(p != NULL && size == 0) && should_fail()) {
		errno = ENOMEM;
		return NULL;
	}
	return real_realloc(p, size);
}

void
free(void *p)
{
	if (p == NULL || in_arena(p))
		return;
	if (ready())
		real_free(p);
}

int
posix_memalign(void **out, size_t align, size_t size)
{
	if (!ready() || real_posix_memalign == NULL || should_fail())
		return ENOMEM;
	return real_posix_memalign(out, align, size);
}

void *
aligned_alloc(size_t align, size_t size)
{
	if (!ready() || real_aligned_alloc == NULL || should_fail()) {
		errno = ENOMEM;
		return NULL;
	}
	return real_aligned_alloc(align, size);
}

void *
memalign(size_t align, size_t size)
{
	if (!ready() || real_memalign == NULL || should_fail()) {
		errno = ENOMEM;
		return NULL;
	}
	return real_memalign(align, size);
}
