/*
 * log.c - the log: one file descriptor, one level, one write per line.
 *
 * The descriptor and level are the only process-wide mutable state here;
 * they are atomics so a reopen (SIGUSR1) never tears a line in half: the
 * old descriptor stays valid until the new one is swapped in.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

static atomic_int log_fd = 2;
static atomic_int log_level = LOG_INFO;
static char log_path[4096];
static _Thread_local char thread_name[16] = "main";

static const char *const level_names[] = {
	[LOG_DEBUG] = "debug",
	[LOG_INFO] = "info",
	[LOG_NOTICE] = "notice",
	[LOG_WARN] = "warn",
	[LOG_ERROR] = "error",
};

static int
open_log_file(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

	if (fd == -1 && err != NULL)
		snprintf(err, errlen, "cannot open log file %s: %s "
		    "(check the directory exists and is writable)", path,
		    strerror(errno));
	return fd;
}

int
log_open(const char *path, enum log_level level, char *err, size_t errlen)
{
	atomic_store(&log_level, level);
	if (path == NULL) {
		log_path[0] = '\0';
		return 0;
	}
	int fd = open_log_file(path, err, errlen);
	if (fd == -1)
		return -1;
	snprintf(log_path, sizeof(log_path), "%s", path);
	int old = atomic_exchange(&log_fd, fd);
	if (old > 2)
		close(old);
	return 0;
}

/* For logrotate: open the path again and swap descriptors. */
int
log_reopen(void)
{
	char err[sizeof(log_path) + 256];

	if (log_path[0] == '\0')
		return 0;
	int fd = open_log_file(log_path, err, sizeof(err));
	if (fd == -1) {
		log_error("%s; still writing to the old file", err);
		return -1;
	}
	int old = atomic_exchange(&log_fd, fd);
	if (old > 2)
		close(old);
	return 0;
}

void
log_close(void)
{
	int old = atomic_exchange(&log_fd, 2);

	if (old > 2)
		close(old);
}

void
log_set_level(enum log_level level)
{
	atomic_store(&log_level, level);
}

void
log_set_thread_name(const char *name)
{
	snprintf(thread_name, sizeof(thread_name), "%s", name);
}

int
log_enabled(enum log_level level)
{
	return (int)level >= atomic_load(&log_level);
}

static void write_line(enum log_level level, const char *tail,
    const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/* One line: the prefix, the caller's words, and a tail if there is one. */
static void
write_line(enum log_level level, const char *tail, const char *fmt,
    va_list ap)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	int saved_errno = errno;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
	    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] %s: ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level],
	    thread_name);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	if (tail != NULL && n < (int)sizeof(line) - 2)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "%s", tail);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = write(atomic_load(&log_fd), line, (size_t)n);
	(void)w;
	errno = saved_errno;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	write_line(level, NULL, fmt, ap);
	va_end(ap);
}

void
log_limited(struct log_limit *ll, enum log_level level, const char *fmt, ...)
{
	uint64_t now = clock_ms();
	char tail[96] = "";
	va_list ap;

	if (!log_enabled(level))
		return;
	if (ll->last_ms != 0 && now - ll->last_ms < LOG_LIMIT_MS) {
		ll->suppressed++;
		return;
	}
	if (ll->suppressed > 0)
		snprintf(tail, sizeof(tail), " (%lu more like this in the %llu "
		    "ms since the last such line)", ll->suppressed,
		    (unsigned long long)(now - ll->last_ms));
	ll->last_ms = now;
	ll->suppressed = 0;
	va_start(ap, fmt);
	write_line(level, tail[0] != '\0' ? tail : NULL, fmt, ap);
	va_end(ap);
}
