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
