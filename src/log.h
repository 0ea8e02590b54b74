/*
 * log.h - leveled log lines to stderr or a file, safe from any thread.
 *
 * Each line is written with one write(2), so lines from different workers
 * never interleave. A line says when, how bad, and who: the thread's name
 * ("main", "w0", "w1"...) comes first, then what the caller wrote.
 */
#ifndef SIDEPOOL_LOG_H
#define SIDEPOOL_LOG_H

#include <stdint.h>

#include "config.h"

int log_open(const char *path, enum log_level level, char *err, size_t errlen);
int log_reopen(void);
void log_close(void);
void log_set_level(enum log_level level);
void log_set_thread_name(const char *name);
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * A condition that can repeat thousands of times a second (out of file
 * descriptors) must neither flood the log nor go unseen: at most one line
 * per LOG_LIMIT_MS for each struct log_limit, and that line says how many
 * like it were left out since the last one. A struct log_limit belongs to
 * one thread (a _Thread_local, or a worker's own struct).
 */
#define LOG_LIMIT_MS 1000

struct log_limit {
	uint64_t last_ms;           /* when the last line went out; 0: never */
	unsigned long suppressed;   /* left out since then */
};

void log_limited(struct log_limit *ll, enum log_level level,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
