/*
 * proto.c — framing on the control socket (fd 3, SOCK_STREAM).
 *
 * Both directions: u32 length (little-endian) + payload; the payload is NUL-terminated strings.
 * Host → init frames may carry fds (SCM_RIGHTS) on their first byte; read_frame() collects every fd that
 * arrives while reading one frame, in order. Contract of the verbs: native/ERRORS.md and
 * services/sandbox/control.ts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "init.h"

struct failure last_failure;

int fail(int err, const char *syscall, const char *path, const char *fmt, ...)
{
	va_list ap;
	if (last_failure.err)
		return -1; /* keep the innermost failure */
	last_failure.err = err ? err : EIO;
	snprintf(last_failure.syscall, sizeof last_failure.syscall, "%s", syscall ? syscall : "");
	snprintf(last_failure.path, sizeof last_failure.path, "%s", path ? path : "");
	va_start(ap, fmt);
	vsnprintf(last_failure.msg, sizeof last_failure.msg, fmt, ap);
	va_end(ap);
	return -1;
}

int fail_ctx(const char *fmt, ...)
{
	char ctx[256], joined[sizeof last_failure.msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof ctx, fmt, ap);
	va_end(ap);
	/* "<ctx>: <inner message>", cut at the buffer's end (truncation is fine, losing errno is not) */
	size_t n = 0;
	for (const char *p = ctx; *p && n < sizeof joined - 1; p++)
		joined[n++] = *p;
	for (const char *p = ": "; *p && n < sizeof joined - 1; p++)
		joined[n++] = *p;
	for (const char *p = last_failure.msg; *p && n < sizeof joined - 1; p++)
		joined[n++] = *p;
	joined[n] = 0;
	memcpy(last_failure.msg, joined, sizeof joined);
	return -1;
}

/* Reads exactly len bytes, collecting any fds that arrive; returns 0, or -1 on EOF/error. */
static int read_full(int fd, char *buf, size_t len, struct frame *f)
{
	size_t off = 0;
	while (off < len) {
		char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		struct iovec iov = { .iov_base = buf + off, .iov_len = len - off };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
		ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			int nfd = (int) ((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			int *fds = (int *) CMSG_DATA(c);
			for (int i = 0; i < nfd; i++) {
				if (f && f->nfds < MAX_FDS)
					f->fds[f->nfds++] = fds[i];
				else
					close(fds[i]);
			}
		}
		off += (size_t) r;
	}
	return 0;
}

/* One whole frame from fd: buf is malloc()ed (NUL-terminated past len; the caller frees it), fds collected. */
int recv_frame(int fd, struct frame *f)
{
	unsigned char hdr[4];
	if (read_full(fd, (char *) hdr, 4, f) < 0)
		return -1;
	f->len = (size_t) hdr[0] | (size_t) hdr[1] << 8 | (size_t) hdr[2] << 16 | (size_t) hdr[3] << 24;
	if (f->len > MAX_FRAME)
		return -1;
	f->buf = malloc(f->len + 1);
	if (!f->buf || read_full(fd, f->buf, f->len, f) < 0)
		return -1;
	f->buf[f->len] = 0;
	return 0;
}

const char *next_str(struct frame *f)
{
	const char *s;
	size_t n;
	if (f->pos >= f->len)
		return NULL;
	s = f->buf + f->pos;
	n = strnlen(s, f->len - f->pos);
	if (f->pos + n >= f->len)
		return NULL; /* unterminated */
	f->pos += n + 1;
	return s;
}

int next_int(struct frame *f, long long *out)
{
	const char *s = next_str(f);
	char *end;
	if (!s || !*s)
		return -1;
	errno = 0;
	*out = strtoll(s, &end, 10);
	return (errno || *end) ? -1 : 0;
}

int next_fd(struct frame *f)
{
	if (f->fds_used >= f->nfds)
		return -1;
	return f->fds[f->fds_used++];
}

int send_msg(const char *const *parts, int n)
{
	char buf[4096];
	size_t len = 4;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(parts[i]) + 1;
		if (len + l > sizeof buf)
			l = sizeof buf - len; /* truncate an over-long message rather than drop it */
		memcpy(buf + len, parts[i], l);
		len += l;
		buf[len - 1] = 0;
	}
	uint32_t plen = (uint32_t) (len - 4);
	buf[0] = (char) (plen & 0xff);
	buf[1] = (char) ((plen >> 8) & 0xff);
	buf[2] = (char) ((plen >> 16) & 0xff);
	buf[3] = (char) ((plen >> 24) & 0xff);
	for (size_t off = 0; off < len;) {
		ssize_t w = send(CONTROL_FD, buf + off, len - off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		off += (size_t) w;
	}
	return 0;
}
