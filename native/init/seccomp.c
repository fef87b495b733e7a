/*
 * seccomp.c — the function process's system-call filter: a hand-written classic-BPF deny list.
 *
 * Covers at least what Docker's default profile refuses to an unprivileged container (moby
 * profiles/seccomp/default.json): mount/namespace/ptrace/keyring/module/kexec/bpf/perf/time/swap/reboot
 * calls, clone with any namespace flag, and clone3 (its flags live in a struct the filter cannot read, so it
 * gets ENOSYS and libcs fall back to clone, which is filtered by argument). io_uring is refused too: its
 * submissions bypass this filter. Anything not from the native ABI (i386 via int 0x80, x32) kills the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "init.h"
#include "syscalls.h"

#if defined(__x86_64__)
#define AUDIT_ARCH_NATIVE AUDIT_ARCH_X86_64
#define X32_SYSCALL_BIT 0x40000000
#elif defined(__aarch64__)
#define AUDIT_ARCH_NATIVE AUDIT_ARCH_AARCH64
#else
#error "seccomp.c: add this architecture's AUDIT_ARCH"
#endif

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#define CLONE_NS_FLAGS (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
			CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWTIME)

static const int denied_eperm[] = {
	SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot, SYS_unshare, SYS_setns,
	SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp,
	SYS_kexec_load,
#ifdef SYS_kexec_file_load
	SYS_kexec_file_load,
#endif
	SYS_init_module, SYS_finit_module, SYS_delete_module,
	SYS_bpf, SYS_perf_event_open, SYS_keyctl, SYS_add_key, SYS_request_key,
	SYS_open_by_handle_at, SYS_name_to_handle_at, SYS_swapon, SYS_swapoff, SYS_reboot, SYS_acct,
	SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime, SYS_adjtimex, SYS_syslog, SYS_vhangup,
	SYS_quotactl, SYS_userfaultfd,
#ifdef SYS_quotactl_fd
	SYS_quotactl_fd,
#endif
#ifdef SYS_iopl
	SYS_iopl, SYS_ioperm,
#endif
#ifdef SYS_uselib
	SYS_uselib,
#endif
#ifdef SYS_sysfs
	SYS_sysfs,
#endif
	/* the new mount API */
	428 /* open_tree */, 429 /* move_mount */, 430 /* fsopen */, 431 /* fsconfig */, 432 /* fsmount */,
	433 /* fspick */, 442 /* mount_setattr */, 438 /* pidfd_getfd */,
};

static const int denied_enosys[] = {
	435 /* clone3 */, 425 /* io_uring_setup */, 426 /* io_uring_enter */, 427 /* io_uring_register */,
};

#define ALLOW (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define RET_ERRNO(e) (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
#define LOAD(field) (struct sock_filter) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))

/*
 * Layout: arch check, x32 check, one JEQ per denied syscall jumping forward to a shared RET (cBPF jump offsets
 * are 8 bits: the lists stay far below 255 entries), the clone flag test, ALLOW, then the shared RETs. One
 * instruction per syscall instead of a JEQ+RET pair: the kernel converts and JITs the program on every install
 * (each cold start), and that work is linear in its length (≈60 instructions instead of ≈110).
 */
int seccomp_install(void)
{
	struct sock_filter f[256];
	const unsigned n_eperm = sizeof denied_eperm / sizeof denied_eperm[0];
	const unsigned n_enosys = sizeof denied_enosys / sizeof denied_enosys[0];
	unsigned n = 0, i;

	f[n++] = LOAD(arch);
	f[n++] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_NATIVE, 1, 0);
	f[n++] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	f[n++] = LOAD(nr);
#ifdef X32_SYSCALL_BIT
	f[n++] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1);
	f[n++] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
#endif
	/* Index of the shared RETs: after the lists, the 4 clone instructions and ALLOW. */
	const unsigned list = n, ret_eperm = list + n_eperm + n_enosys + 4 + 1, ret_enosys = ret_eperm + 1;
	for (i = 0; i < n_eperm; i++, n++)
		f[n] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned) denied_eperm[i],
						     (unsigned char) (ret_eperm - n - 1), 0);
	for (i = 0; i < n_enosys; i++, n++)
		f[n] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned) denied_enosys[i],
						     (unsigned char) (ret_enosys - n - 1), 0);
	/* clone(flags, ...): flags is the first argument on x86_64 and arm64; the namespace bits are all in
	 * the low 32 bits, which sit at args[0]'s offset on little-endian machines. */
	f[n++] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3);
	f[n++] = LOAD(args[0]);
	f[n++] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NS_FLAGS, 0, 1);
	f[n++] = RET_ERRNO(EPERM);
	f[n++] = ALLOW;
	f[n++] = RET_ERRNO(EPERM);  /* ret_eperm */
	f[n++] = RET_ERRNO(ENOSYS); /* ret_enosys */
	_Static_assert(sizeof denied_eperm / sizeof denied_eperm[0] + sizeof denied_enosys / sizeof denied_enosys[0] < 240,
		       "cBPF jump offsets are 8 bits");

	struct sock_fprog prog = { .len = (unsigned short) n, .filter = f };
	if (sys_seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
		return fail(errno, "seccomp", "", "installing the seccomp filter");
	return 0;
}
