/*
 * sidepoolctl.c - the command line for sidepool's control socket.
 *
 * It sends one command, prints the answer, and says in its exit status
 * what scripts need to know: 0 done (and, for status, all servers up),
 * 1 the command failed, 2 usage, 3 the control socket cannot be reached,
 * 4 status found a server down.
 *
 * It never waits longer than its timeout: a health check that runs it
 * against a stopped or hung daemon must get exit 3, not hang with it.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "build_config.h"
#include "config.h"

enum { EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DEGRADED };

#define DEFAULT_TIMEOUT_MS 5000
#define MAX_TIMEOUT_S 86400

/* The connection and how long it may take: one deadline for the connect,
 * the command and the whole answer. */
struct session {
	const char *path;       /* for messages */
	int fd;
	int timeout_ms;         /* 0: no limit */
	uint64_t deadline_ms;
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: sidepoolctl [-c config | -s socket] [-T seconds] [--json] "
	    "command\n"
	    "\n"
	    "  -c file    read the control socket path from this config\n"
	    "             (default %s)\n"
	    "  -s path    the control socket itself\n"
	    "  -T, --timeout seconds\n"
	    "             give up when the whole answer has not come by then\n"
	    "             (default %d; 0 waits for ever)\n"
	    "  -j, --json answer in JSON\n"
	    "\n"
	    "commands: status stats pools servers clients workers config\n"
	    "          version help reload\n"
	    "exit: 0 ok, 1 command failed, 2 usage, 3 cannot reach sidepool,\n"
	    "      4 status: a server is down\n", CONFIG_DEFAULT_PATH,
	    DEFAULT_TIMEOUT_MS / 1000);
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Seconds as a person writes them (5, 0.5); -1 if it is not that. */
static int
parse_timeout(const char *arg)
{
	char *end;

	errno = 0;
	double s = strtod(arg, &end);
	if (errno != 0 || end == arg || *end != '\0' || !(s >= 0) ||
	    s > MAX_TIMEOUT_S)
		return -1;
	int ms = (int)(s * 1000 + 0.5);
	return s > 0 && ms == 0 ? 1 : ms;
}

/* Milliseconds left before the deadline (at least 0), or -1: no limit. */
static int
time_left(const struct session *ss)
{
	if (ss->timeout_ms == 0)
		return -1;
	uint64_t now = now_ms();
	return now >= ss->deadline_ms ? 0 : (int)(ss->deadline_ms - now);
}

static void
report_timeout(const struct session *ss, const char *what)
{
	fprintf(stderr, "sidepoolctl: sidepool at %s %s within %g s: it is "
	    "stopped, hung or overloaded (check that the process runs and "
	    "what its log says; -T gives it longer)\n", ss->path, what,
	    ss->timeout_ms / 1000.0);
}

static char *
socket_from_config(const char *path)
{
	struct config_errors errs = { 0 };
	struct config *cfg = config_load(path, &errs);
	char *sock = NULL;

	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	config_errors_clear(&errs);
	if (cfg == NULL)
		return NULL;
	if (cfg->control_path == NULL)
		fprintf(stderr, "sidepoolctl: %s has no control: path; add "
		    "one, or give the socket with -s\n", path);
	else
		sock = strdup(cfg->control_path);
	config_free(cfg);
	return sock;
}

/*
 * A unix connect blocks while the daemon's backlog is full (it does not
 * accept: stopped, or hung); SO_SNDTIMEO bounds that wait, and the write
 * of the command after it.
 */
static int
connect_control(struct session *ss)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	const char *p = strncmp(ss->path, "unix:", 5) == 0 ? ss->path + 5 :
	    ss->path;

	ss->path = p;
	if (strlen(p) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "sidepoolctl: socket path too long: %s\n", p);
		return -1;
	}
	strcpy(sun.sun_path, p);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		fprintf(stderr, "sidepoolctl: cannot create a socket: %s\n",
		    strerror(errno));
		return -1;
	}
	if (ss->timeout_ms > 0) {
		struct timeval tv = { ss->timeout_ms / 1000,
		    (ss->timeout_ms % 1000) * 1000 };
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			report_timeout(ss, "did not accept the connection");
		else
			fprintf(stderr, "sidepoolctl: cannot reach sidepool at "
			    "%s: %s%s\n", p, strerror(errno), errno == EACCES ?
			    " (the control socket is private: run as the "
			    "daemon's user or root)" : errno == ENOENT ||
			    errno == ECONNREFUSED ? " (is sidepool running "
			    "with this config?)" : "");
		close(fd);
		return -1;
	}
	ss->fd = fd;
	return 0;
}

/* SIGPIPE is ignored: a daemon that closed on us is an error to report. */
static int
send_command(struct session *ss, const char *line, size_t len)
{
	while (len > 0) {
		ssize_t n = send(ss->fd, line, len, MSG_NOSIGNAL);
		if (n > 0) {
			line += n;
			len -= (size_t)n;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			report_timeout(ss, "did not take the command");
		else
			fprintf(stderr, "sidepoolctl: cannot send the command to "
			    "sidepool at %s: %s (it closed the connection: see "
			    "its log)\n", ss->path, strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Copy the answer to stdout until the daemon closes the connection, and
 * keep its first bytes in head for the exit status. Returns 0, or -1 when
 * the answer did not come whole (said why).
 */
static int
read_answer(struct session *ss, char *head, size_t headsize, size_t *headlen)
{
	char buf[65536];

	for (;;) {
		struct pollfd pfd = { .fd = ss->fd, .events = POLLIN };
		int left = time_left(ss);
		int k = left == 0 ? 0 : poll(&pfd, 1, left);
		if (k == -1 && errno == EINTR)
			continue;
		if (k == -1) {
			fprintf(stderr, "sidepoolctl: poll: %s\n", strerror(errno));
			return -1;
		}
		if (k == 0) {
			report_timeout(ss, *headlen > 0 ? "did not finish its "
			    "answer" : "did not answer");
			return -1;
		}
		ssize_t r = read(ss->fd, buf, sizeof(buf));
		if (r == 0)
			return 0;
		if (r == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r == -1) {
			fprintf(stderr, "sidepoolctl: cannot read the answer from "
			    "sidepool at %s: %s (see its log)\n", ss->path,
			    strerror(errno));
			return -1;
		}
		if (*headlen < headsize - 1) {
			size_t n = headsize - 1 - *headlen;
			n = (size_t)r < n ? (size_t)r : n;
			memcpy(head + *headlen, buf, n);
			*headlen += n;
			head[*headlen] = '\0';
		}
		fwrite(buf, 1, (size_t)r, stdout);
	}
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = CONFIG_DEFAULT_PATH, *sock = NULL;
	struct session ss = { .fd = -1, .timeout_ms = DEFAULT_TIMEOUT_MS };
	bool json = false;
	int opt;

	while ((opt = getopt_long(argc, argv, "c:s:T:jhV", longopts,
	    NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 's':
			sock = optarg;
			break;
		case 'T':
			if ((ss.timeout_ms = parse_timeout(optarg)) == -1) {
				fprintf(stderr, "sidepoolctl: -T takes seconds, "
				    "like 5 or 0.5 (0 waits for ever, at most "
				    "%d), not '%s'\n", MAX_TIMEOUT_S, optarg);
				return EXIT_USAGE;
			}
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case 'V':
			printf("sidepoolctl %s\n", PACKAGE_VERSION);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	/* A closed pipe (the daemon's, or stdout's reader) is an error we
	 * report, not a silent death. */
	signal(SIGPIPE, SIG_IGN);
	const char *cmd = argv[optind];
	char line[256], head[32] = "";
	size_t headlen = 0;
	int n = snprintf(line, sizeof(line), "%s%s\n", json ? "json " : "", cmd);
	if (n >= (int)sizeof(line)) {
		fprintf(stderr, "sidepoolctl: command too long: %s\n", cmd);
		return EXIT_USAGE;
	}
	char *owned = NULL;
	if (sock == NULL && (sock = owned = socket_from_config(config)) == NULL)
		return EXIT_UNREACHABLE;
	ss.path = sock;
	ss.deadline_ms = now_ms() + (uint64_t)ss.timeout_ms;
	if (connect_control(&ss) == -1) {
		free(owned);
		return EXIT_UNREACHABLE;
	}
	int rc = EXIT_OK;
	if (send_command(&ss, line, (size_t)n) == -1 ||
	    read_answer(&ss, head, sizeof(head), &headlen) == -1)
		rc = EXIT_UNREACHABLE;
	bool written = fflush(stdout) != EOF && !ferror(stdout);
	int e = errno;
	close(ss.fd);
	free(owned);
	if (!written)
		fprintf(stderr, "sidepoolctl: cannot write the answer: %s\n",
		    strerror(e));
	if (rc != 0)
		return rc;
	if (!written)
		return EXIT_FAILED;
	if (headlen == 0) {
		fprintf(stderr, "sidepoolctl: sidepool closed the connection "
		    "without an answer (see its log)\n");
		return EXIT_FAILED;
	}
	if (strncmp(head, "error: ", 7) == 0 || strncmp(head, "{\"error\"", 8) == 0)
		return EXIT_FAILED;
	if (strcmp(cmd, "status") == 0 && (strncmp(head, "degraded", 8) == 0 ||
	    strstr(head, "\"healthy\": false") != NULL))
		return EXIT_DEGRADED;
	return EXIT_OK;
}
