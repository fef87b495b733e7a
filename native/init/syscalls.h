/*
 * syscalls.h — raw system calls that glibc 2.36 (Debian 12) does not wrap, or wraps behind headers that clash
 * with the kernel's UAPI headers. Each is a thin syscall(2) call: same return convention as libc (-1 + errno).
 */
#ifndef FNHOST_SYSCALLS_H
#define FNHOST_SYSCALLS_H

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline int sys_pivot_root(const char *new_root, const char *put_old)
{
	return (int) syscall(SYS_pivot_root, new_root, put_old);
}

/* glibc has no capset(2) wrapper (libcap provides one); v3 = 64-bit capability sets. */
static inline int sys_capset(struct __user_cap_header_struct *h, struct __user_cap_data_struct *d)
{
	return (int) syscall(SYS_capset, h, d);
}

static inline int sys_capget(struct __user_cap_header_struct *h, struct __user_cap_data_struct *d)
{
	return (int) syscall(SYS_capget, h, d);
}

static inline int sys_seccomp(unsigned int op, unsigned int flags, void *args)
{
	return (int) syscall(SYS_seccomp, op, flags, args);
}

#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
static inline int sys_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags)
{
	return (int) syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags);
}

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
static inline int sys_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
	return (int) syscall(SYS_close_range, first, last, flags);
}

#endif
