/*
 * net.c - the only file that calls socket(2), bind(2), connect(2), accept(2).
 */
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

static int
new_socket(int family)
{
	return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

void
net_tune_stream(int fd)
{
	int one = 1;

	/* Requests and replies are small and latency-bound: never Nagle. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/*
 * A unix socket file left by a crashed run is replaced; one that somebody
 * still listens on is not stolen. A connect() tells the two apart.
 */
static int
clear_unix_path(const struct cfg_addr *addr, char *err, size_t errlen)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&addr->sa;
	struct stat st;

	if (lstat(sun->sun_path, &st) == -1)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "%s exists and is not a socket; remove it "
		    "or choose another path", addr->text);
		return -1;
	}
	int fd = new_socket(AF_UNIX);
	if (fd == -1)
		return -1;
	int live = connect(fd, (const struct sockaddr *)&addr->sa,
	    addr->salen) == 0 || errno == EAGAIN || errno == EINPROGRESS;
	close(fd);
	if (live) {
		snprintf(err, errlen, "another process is listening on %s; stop "
		    "it or choose another path", addr->text);
		return -1;
	}
	if (unlink(sun->sun_path) == -1 && errno != ENOENT) {
		snprintf(err, errlen, "cannot remove stale socket %s: %s",
		    addr->text, strerror(errno));
		return -1;
	}
	return 0;
}

static int
bind_and_listen(int fd, const struct cfg_addr *addr, int backlog, char *err,
    size_t errlen)
{
	if (bind(fd, (const struct sockaddr *)&addr->sa, addr->salen) == -1) {
		snprintf(err, errlen, "cannot bind %s: %s%s", addr->text,
		    strerror(errno), errno == EADDRINUSE ?
		    " (another process uses this address: stop it or choose "
		    "another)" : errno == EACCES ? " (permission denied: "
		    "check the directory or use a port above 1023)" : "");
		return -1;
	}
	if (listen(fd, backlog) == -1) {
		snprintf(err, errlen, "cannot listen on %s: %s", addr->text,
		    strerror(errno));
		return -1;
	}
	return 0;
}

int
net_listen(const struct cfg_addr *addr, int backlog, mode_t mode, char *err,
    size_t errlen)
{
	int one = 1;

	if (addr->family == AF_UNIX &&
	    clear_unix_path(addr, err, errlen) == -1) {
		if (err[0] == '\0')
			snprintf(err, errlen, "cannot use %s: %s", addr->text,
			    strerror(errno));
		return -1;
	}
	int fd = new_socket(addr->family);
	if (fd == -1) {
		snprintf(err, errlen, "cannot create a socket for %s: %s",
		    addr->text, strerror(errno));
		return -1;
	}
	if (addr->family != AF_UNIX) {
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (addr->family == AF_INET6)
			(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
			    sizeof(one));
	}
	if (bind_and_listen(fd, addr, backlog, err, errlen) == -1) {
		close(fd);
		return -1;
	}
	if (addr->family == AF_UNIX) {
		const struct sockaddr_un *sun =
		    (const struct sockaddr_un *)&addr->sa;
		if (chmod(sun->sun_path, mode) == -1) {
			snprintf(err, errlen, "cannot set mode %04o on %s: %s",
			    (unsigned)mode, addr->text, strerror(errno));
			close(fd);
			unlink(sun->sun_path);
			return -1;
		}
	}
	return fd;
}

static ssize_t net_read_reserved(struct evbuffer *buf, int fd, size_t max);

int
net_chmod_unix(const struct cfg_addr *addr, mode_t mode)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&addr->sa;

	return chmod(sun->sun_path, mode);
}

/* The identity of the socket file we bound, so that at exit we remove our
 * own file and never one that a newer process has put in its place. */
int
net_unix_identity(const struct cfg_addr *addr, dev_t *dev, ino_t *ino)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&addr->sa;
	struct stat st;

	if (addr->family != AF_UNIX || lstat(sun->sun_path, &st) == -1)
		return -1;
	*dev = st.st_dev;
	*ino = st.st_ino;
	return 0;
}

void
net_unlink_unix(const struct cfg_addr *addr, dev_t dev, ino_t ino)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&addr->sa;
	struct stat st;

	if (addr->family != AF_UNIX || lstat(sun->sun_path, &st) == -1)
		return;
	if (st.st_dev == dev && st.st_ino == ino)
		unlink(sun->sun_path);
}

enum net_connect_result
net_connect(const struct cfg_addr *addr, int *fdp, char *err, size_t errlen)
{
	int fd = new_socket(addr->family);

	if (fd == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return NET_FAILED;
	}
	if (addr->family != AF_UNIX)
		net_tune_stream(fd);
	*fdp = fd;
	if (connect(fd, (const struct sockaddr *)&addr->sa, addr->salen) == 0)
		return NET_CONNECTED;
	if (errno == EINPROGRESS || errno == EAGAIN)
		return NET_IN_PROGRESS;
	snprintf(err, errlen, "%s", strerror(errno));
	close(fd);
	*fdp = -1;
	return NET_FAILED;
}

int
net_socket_error(int fd)
{
	int e = 0;
	socklen_t len = sizeof(e);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) == -1)
		return errno;
	return e;
}

/* Returns 0 with *fdp set, or -1 with errno (EAGAIN when none pending). */
int
net_accept(int lfd, int *fdp)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd == -1)
		return -1;
	*fdp = fd;
	return 0;
}

/*
 * libevent 2.1's evbuffer_read() reads at most 4 KB per call; a 64 MB
 * value would cost 16,000 wakeups. So we read ourselves, two ways:
 * - small reads (nearly every request and reply) go through a stack buffer
 *   and are appended, so the evbuffer allocates a chain of their size (a
 *   fast, cached malloc) rather than a fresh 16 KB one per request;
 * - when that buffer fills, more is coming: read straight into reserved
 *   evbuffer space, without the copy.
 */
ssize_t
net_read(struct evbuffer *buf, int fd, size_t max)
{
	char small[4096];

	if (max >= sizeof(small) && evbuffer_get_length(buf) == 0) {
		ssize_t r = read(fd, small, sizeof(small));
		if (r > 0 && evbuffer_add(buf, small, (size_t)r) == -1)
			return -1;
		if (r < (ssize_t)sizeof(small))
			return r;
		ssize_t more = net_read_reserved(buf, fd, max - (size_t)r);
		if (more > 0)
			return r + more;
		return r; /* EAGAIN or EOF come again on the next call */
	}
	return net_read_reserved(buf, fd, max);
}

static ssize_t
net_read_reserved(struct evbuffer *buf, int fd, size_t max)
{
	struct evbuffer_iovec v[2];
	int n = evbuffer_reserve_space(buf, (ev_ssize_t)max, v, 2);

	if (n <= 0)
		return -1;
	struct iovec iov[2];
	size_t want = 0;
	for (int i = 0; i < n; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
		if (want + iov[i].iov_len > max)
			iov[i].iov_len = max - want;
		want += iov[i].iov_len;
	}
	ssize_t r = readv(fd, iov, n);
	if (r <= 0) {
		evbuffer_commit_space(buf, v, 0);
		return r;
	}
	size_t left = (size_t)r;
	for (int i = 0; i < n; i++) {
		v[i].iov_len = left < iov[i].iov_len ? left : iov[i].iov_len;
		left -= v[i].iov_len;
	}
	evbuffer_commit_space(buf, v, n);
	return r;
}

/*
 * Write what out holds, as far as the socket takes it now, and keep wev
 * armed exactly while something is left: one epoll change per change of
 * state, not one per write. The bytes written are added to *bytes. -1:
 * the connection failed (errno; 0 for a write that took nothing).
 */
int
net_flush(struct evbuffer *out, int fd, struct event *wev, bool *armed,
    uint64_t *bytes)
{
	while (evbuffer_get_length(out) > 0) {
		int n = evbuffer_write(out, fd);
		if (n > 0) {
			*bytes += (uint64_t)n;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n == 0)
			errno = 0;
		return -1;
	}
	bool want = evbuffer_get_length(out) > 0;
	if (want && !*armed)
		event_add(wev, NULL);
	else if (!want && *armed)
		event_del(wev);
	*armed = want;
	return 0;
}

/* An accept or connect that failed for want of something of our own
 * (descriptors, kernel buffers, local ports for a connect): it says
 * nothing about the peer, and retrying at once only spins. */
bool
net_local_shortage(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOBUFS ||
	    err == ENOMEM || err == EADDRNOTAVAIL;
}
