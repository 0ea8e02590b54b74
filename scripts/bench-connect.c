/*
 * bench-connect.c - connect-per-request load for scripts/bench.
 *
 * Each of P processes repeats, K/P times: open a connection (TCP or unix
 * socket), send one Redis GET, read the whole reply, close. This is what a
 * PHP or CGI client that connects per request does. The parent prints one
 * line:
 *
 *     ok=N errors=E seconds=S
 *
 * where N counts complete, well-formed replies ('$' bulk or '$-1' nil) and E
 * counts failed connects, short reads and unexpected replies; the first
 * error of each process is printed on stderr.
 *
 * usage: bench-connect tcp HOST PORT ITERATIONS PROCS KEY
 *        bench-connect unix PATH ITERATIONS PROCS KEY
 *
 * Built by scripts/bench with `cc -O2` into its temporary directory.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_storage addr;
static socklen_t addrlen;
static int family;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 1 = a whole well-formed bulk reply is in buf[0..len), 0 = need more,
 * -1 = something else (an error reply or garbage). */
static int reply_complete(const char *buf, size_t len)
{
	const char *eol = memmem(buf, len, "\r\n", 2);
	if (!eol)
		return 0;
	if (buf[0] != '$')
		return -1;
	long n = strtol(buf + 1, NULL, 10);
	if (n < 0)
		return 1;
	size_t need = (size_t)(eol - buf) + 2 + (size_t)n + 2;
	return len >= need ? 1 : 0;
}

static int one_request(const char *req, size_t reqlen, char *err, size_t errlen)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	if (family == AF_INET) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0) {
		snprintf(err, errlen, "connect: %s", strerror(errno));
		close(fd);
		return -1;
	}
	if (write(fd, req, reqlen) != (ssize_t)reqlen) {
		snprintf(err, errlen, "write: %s", strerror(errno));
		close(fd);
		return -1;
	}
	char buf[4096];
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, buf + len, sizeof buf - len - 1);
		if (r <= 0) {
			snprintf(err, errlen, "read: %s",
			         r == 0 ? "connection closed before the reply" : strerror(errno));
			close(fd);
			return -1;
		}
		len += (size_t)r;
		int c = reply_complete(buf, len);
		if (c > 0)
			break;
		if (c < 0 || len >= sizeof buf - 1) {
			buf[len] = 0;
			char *nl = strpbrk(buf, "\r\n");
			if (nl)
				*nl = 0;
			snprintf(err, errlen, "unexpected reply: %.200s", buf);
			close(fd);
			return -1;
		}
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	int a = 1;
	if (argc == 7 && strcmp(argv[1], "tcp") == 0) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&addr;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((unsigned short)atoi(argv[3]));
		if (inet_pton(AF_INET, argv[2], &sin->sin_addr) != 1) {
			fprintf(stderr, "bench-connect: bad address %s\n", argv[2]);
			return 2;
		}
		addrlen = sizeof *sin;
		family = AF_INET;
		a = 4;
	} else if (argc == 6 && strcmp(argv[1], "unix") == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&addr;
		sun->sun_family = AF_UNIX;
		if (strlen(argv[2]) >= sizeof sun->sun_path) {
			fprintf(stderr, "bench-connect: path too long\n");
			return 2;
		}
		strcpy(sun->sun_path, argv[2]);
		addrlen = sizeof *sun;
		family = AF_UNIX;
		a = 3;
	} else {
		fprintf(stderr, "usage: bench-connect tcp HOST PORT ITERATIONS PROCS KEY\n"
		                "       bench-connect unix PATH ITERATIONS PROCS KEY\n");
		return 2;
	}
	long iterations = atol(argv[a]);
	int procs = atoi(argv[a + 1]);
	const char *key = argv[a + 2];
	if (iterations < 1 || procs < 1 || procs > 1024) {
		fprintf(stderr, "bench-connect: bad ITERATIONS or PROCS\n");
		return 2;
	}
	char req[512];
	int reqlen = snprintf(req, sizeof req, "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n", strlen(key), key);
	if (reqlen <= 0 || (size_t)reqlen >= sizeof req) {
		fprintf(stderr, "bench-connect: key too long\n");
		return 2;
	}

	int fds[2];
	if (pipe(fds) < 0) {
		perror("pipe");
		return 2;
	}
	double t0 = now();
	for (int p = 0; p < procs; p++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0) {
			close(fds[0]);
			long share = iterations / procs + (p < iterations % procs ? 1 : 0);
			long ok = 0, errors = 0;
			char err[300];
			for (long i = 0; i < share; i++) {
				if (one_request(req, (size_t)reqlen, err, sizeof err) == 0) {
					ok++;
				} else {
					if (errors++ == 0)
						fprintf(stderr, "bench-connect: %s\n", err);
				}
			}
			long out[2] = { ok, errors };
			if (write(fds[1], out, sizeof out) != sizeof out)
				_exit(1);
			_exit(0);
		}
	}
	close(fds[1]);
	long ok = 0, errors = 0, out[2];
	for (int p = 0; p < procs; p++) {
		if (read(fds[0], out, sizeof out) != sizeof out) {
			errors += iterations / procs;
			continue;
		}
		ok += out[0];
		errors += out[1];
	}
	while (wait(NULL) > 0)
		;
	double secs = now() - t0;
	printf("ok=%ld errors=%ld seconds=%.6f\n", ok, errors, secs);
	return 0;
}
