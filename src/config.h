/*
 * config.h - the configuration model: what sidepool.yml says, validated.
 *
 * A struct config is immutable once loaded: workers read it without locks.
 * config_load() returns NULL and fills a list of "file:line:col: message"
 * errors when the file is wrong; it never logs and never exits.
 */
#ifndef SIDEPOOL_CONFIG_H
#define SIDEPOOL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define CONFIG_DEFAULT_PATH SYSCONFDIR "/sidepool/sidepool.yml"

enum proto_kind { PROTO_REDIS, PROTO_MEMCACHE };

enum log_level { LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARN, LOG_ERROR };

/* A socket address as written in the config: "127.0.0.1:6379",
 * "[::1]:6379", "localhost:6379" or "unix:/run/x.sock" (a bare absolute
 * path is accepted too). text is the canonical form used in logs and stats. */
struct cfg_addr {
	int family; /* AF_INET, AF_INET6 or AF_UNIX */
	struct sockaddr_storage sa;
	socklen_t salen;
	char text[128];
};

struct cfg_pool {
	unsigned size;            /* idle connections kept per worker per server */
	unsigned max_connections; /* open connections per worker per server */
	uint64_t idle_timeout_ms; /* close idle connections after this; 0 = never */
	unsigned min_idle;        /* connections kept open and warm; 0 = none */
	uint64_t max_lifetime_ms; /* retire connections this old; 0 = never */
	uint64_t probe_interval_ms; /* probe connections idle this long; 0 = never */
	unsigned pipeline_depth;  /* requests in flight before another connection */
	unsigned queue_size;      /* sessions waiting for a connection, per pool */
	uint64_t queue_timeout_ms; /* how long one may wait */
};

/* Bounds on what a client may send. 0 in the file means "protocol default". */
struct cfg_limits {
	uint64_t max_request_size; /* bytes of one whole request */
	uint64_t max_value_size;   /* redis bulk length / memcached item size */
	uint64_t max_args;         /* redis multibulk length / memcached keys per get */
	uint64_t max_line_length;  /* redis inline request / memcached command line */
	unsigned max_pending;      /* requests in flight per client before reads pause */
	uint64_t max_output;       /* reply bytes buffered per client before reads pause */
};

struct cfg_server {
	struct cfg_addr addr;
	unsigned index; /* position in its upstream's server list */
};

/* A client identity sidepool accepts (AUTH user password). */
struct cfg_user {
	char *user;     /* "default" for AUTH with a password only */
	char *password;
};

struct cfg_upstream {
	char *name;
	enum proto_kind protocol;
	struct cfg_server *servers;
	size_t nservers;
	struct cfg_pool pool;
	uint64_t connect_timeout_ms;
	uint64_t request_timeout_ms; /* 0 = never */
	unsigned failure_limit;      /* failures in a row that mark a server down */
	uint64_t retry_interval_ms;  /* first retry of a down server */
	uint64_t retry_max_interval_ms; /* backoff cap */
	struct cfg_limits limits;
	/* Redis only. */
	char *auth_user;             /* sent to the server: AUTH [user] password */
	char *auth_password;         /* NULL: the server needs no AUTH */
	struct cfg_user *users;      /* clients must AUTH as one; none: no auth */
	size_t nusers;
	unsigned databases;          /* SELECT 0..databases-1; default 16 */
	char **refused;              /* more commands to refuse, lowercase */
	size_t nrefused;
	int line, col; /* where it was defined, for later diagnostics */
};

struct cfg_listener {
	struct cfg_addr addr;
	struct cfg_upstream *upstream; /* points into config->upstreams */
	mode_t mode;                   /* unix sockets only; default 0660 */
	int backlog;                   /* default 1024 */
	unsigned max_clients;          /* per listener, all workers; 0 = unlimited */
	uint64_t idle_timeout_ms;      /* client idle timeout; 0 = never */
	int line, col;
};

struct config {
	char *path;
	unsigned workers;  /* resolved: "auto" becomes the number of online CPUs */
	bool workers_auto;
	enum log_level log_level;
	char *log_file;    /* NULL: stderr */
	char *pid_file;    /* NULL: none */
	char *control_path; /* the control socket; NULL: none */
	mode_t control_mode; /* default 0600: only the daemon's user */
	bool has_metrics;   /* Prometheus text on metrics_addr (loopback) */
	struct cfg_addr metrics_addr;
	uint64_t shutdown_timeout_ms;

	struct cfg_listener *listeners;
	size_t nlisteners;
	struct cfg_upstream *upstreams;
	size_t nupstreams;
};

/* Diagnostics collected while loading; each entry is "file:line:col: msg". */
struct config_errors {
	char **msgs;
	size_t n;
};

struct config *config_load(const char *path, struct config_errors *errs);
struct config *config_load_string(const char *text, size_t len,
    const char *name, struct config_errors *errs);
void config_free(struct config *cfg);
void config_errors_clear(struct config_errors *errs);

/* Helpers shared with the rest of the daemon (and tested on their own). */
int config_parse_duration(const char *s, uint64_t *ms);   /* "250ms" "5s" "2m" "1h" "0" */
int config_parse_size(const char *s, uint64_t *bytes);    /* "512" "16k" "1m" "1g" */
int config_parse_addr(const char *s, struct cfg_addr *out, char *err, size_t errlen);
const char *proto_kind_name(enum proto_kind k);
const char *log_level_name(enum log_level l);

#endif
