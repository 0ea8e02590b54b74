/*
 * sidepoolctl.c - the command line for sidepool's control socket.
 *
 * It sends one command, prints the answer, and says in its exit status
 * what scripts need to know: 0 done (and, for status, all servers up),
 * 1 the command failed, 2 usage, 3 the control socket cannot be reached,
 * 4 status found a server down.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "build_config.h"
#include "config.h"

enum { EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DEGRADED };

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: sidepoolctl [-c config | -s socket] [--json] command\n"
	    "\n"
	    "  -c file    read the control socket path from this config\n"
	    "             (default %s)\n"
	    "  -s path    the control socket itself\n"
	    "  -j, --json answer in JSON\n"
	    "\n"
	    "commands: status stats pools servers clients workers config\n"
	    "          version help reload\n"
	    "exit: 0 ok, 1 command failed, 2 usage, 3 cannot reach sidepool,\n"
	    "      4 status: a server is down\n", CONFIG_DEFAULT_PATH);
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

static int
connect_control(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	const char *p = strncmp(path, "unix:", 5) == 0 ? path + 5 : path;

	if (strlen(p) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "sidepoolctl: socket path too long: %s\n", p);
		return -1;
	}
	strcpy(sun.sun_path, p);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) ==
	    -1) {
		fprintf(stderr, "sidepoolctl: cannot reach sidepool at %s: %s%s\n",
		    p, strerror(errno), errno == EACCES ? " (the control "
		    "socket is private: run as the daemon's user or root)" :
		    errno == ENOENT || errno == ECONNREFUSED ? " (is sidepool "
		    "running with this config?)" : "");
		if (fd != -1)
			close(fd);
		return -1;
	}
	return fd;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = CONFIG_DEFAULT_PATH, *sock = NULL;
	bool json = false;
	int opt;

	while ((opt = getopt_long(argc, argv, "c:s:jhV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 's':
			sock = optarg;
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
	const char *cmd = argv[optind];
	char *owned = NULL;
	if (sock == NULL && (sock = owned = socket_from_config(config)) == NULL)
		return EXIT_UNREACHABLE;
	int fd = connect_control(sock);
	free(owned);
	if (fd == -1)
		return EXIT_UNREACHABLE;

	char line[256];
	int n = snprintf(line, sizeof(line), "%s%s\n", json ? "json " : "", cmd);
	if (n >= (int)sizeof(line) || write(fd, line, (size_t)n) != n) {
		fprintf(stderr, "sidepoolctl: cannot send the command\n");
		close(fd);
		return EXIT_UNREACHABLE;
	}
	char buf[65536], head[32] = "";
	size_t headlen = 0;
	ssize_t r;
	while ((r = read(fd, buf, sizeof(buf))) > 0) {
		if (headlen < sizeof(head) - 1) {
			size_t k = sizeof(head) - 1 - headlen;
			k = (size_t)r < k ? (size_t)r : k;
			memcpy(head + headlen, buf, k);
			headlen += k;
			head[headlen] = '\0';
		}
		fwrite(buf, 1, (size_t)r, stdout);
	}
	close(fd);
	if (headlen == 0) {
		fprintf(stderr, "sidepoolctl: sidepool closed the connection "
		    "without an answer\n");
		return EXIT_FAILED;
	}
	if (strncmp(head, "error: ", 7) == 0 || strncmp(head, "{\"error\"", 8) == 0)
		return EXIT_FAILED;
	if (strcmp(cmd, "status") == 0 && (strncmp(head, "degraded", 8) == 0 ||
	    strstr(head, "\"healthy\": false") != NULL))
		return EXIT_DEGRADED;
	return EXIT_OK;
}
