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
#define JUMP(op, k, jt, jf) (struct sock_filter) BPF_JUMP(BPF_JMP | (op) | BPF_K, (k), (jt), (jf))

/* What a listed syscall number leads to; the index of the shared tail instruction that does it. */
enum verdict { V_EPERM, V_ENOSYS, V_CLONE, V_ALLOW, NVERDICT };

struct entry {
	unsigned nr;
	enum verdict v;
};

/* Leaves of the search tree hold up to this many numbers, tested one JEQ each. */
#define LEAF 3

struct prog {
	struct sock_filter *f;
	unsigned n;
	/* JEQs/JAs that jump to a tail instruction not yet placed: patched once the tail's index is known */
	struct { unsigned at; enum verdict v; int ja; } fix[256];
	unsigned nfix;
};

/*
 * Emits a binary search over entries [lo, hi) (sorted by nr): JGE splits down to leaves of ≤ LEAF JEQs; every
 * path ends in a jump to the tail (verdict of the matched number, or ALLOW when none matched). Why a tree
 * and not one JEQ per number: on every install the kernel evaluates the filter once per syscall number and
 * architecture to build its allow-cache (kernel/seccomp.c seccomp_cache_prepare: ~460 numbers × the
 * instructions on each path), and that emulation, linear in the path length, was most of the ≈75 µs an
 * install cost on each cold start; a tree makes every path ≈ log2(entries) + LEAF instructions long.
 */
static void emit_tree(struct prog *p, const struct entry *e, unsigned lo, unsigned hi)
{
	if (hi - lo <= LEAF) {
		for (unsigned i = lo; i < hi; i++) {
			p->fix[p->nfix++] = (typeof(p->fix[0])) { p->n, e[i].v, 0 };
			p->f[p->n++] = JUMP(BPF_JEQ, e[i].nr, 0, 0);
		}
		p->fix[p->nfix++] = (typeof(p->fix[0])) { p->n, V_ALLOW, 1 };
		p->f[p->n++] = (struct sock_filter) BPF_STMT(BPF_JMP | BPF_JA, 0);
		return;
	}
	unsigned mid = lo + (hi - lo) / 2, at = p->n++;
	emit_tree(p, e, lo, mid);
	/* nr >= e[mid].nr: skip the left half (its length fits 8 bits: the whole program is < 256) */
	p->f[at] = JUMP(BPF_JGE, e[mid].nr, (unsigned char) (p->n - at - 1), 0);
	emit_tree(p, e, mid, hi);
}

/* The program, built once (seccomp_prepare) in the zygote or init: every process it starts inherits it. */
static struct sock_filter filter[256];
static unsigned short filter_len;

/*
 * Layout: arch check, x32 check, the search tree over the listed numbers, then the shared tail: the clone flag
 * test, ALLOW, RET EPERM, RET ENOSYS.
 */
void seccomp_prepare(void)
{
	struct entry e[128];
	const unsigned n_eperm = sizeof denied_eperm / sizeof denied_eperm[0];
	const unsigned n_enosys = sizeof denied_enosys / sizeof denied_enosys[0];
	unsigned ne = 0, i;
	struct prog p = { .f = filter };

	if (filter_len)
		return;
	_Static_assert(sizeof denied_eperm / sizeof denied_eperm[0] + sizeof denied_enosys / sizeof denied_enosys[0] + 1 < 100,
		       "the tree (≈2 instructions per entry) and its tail must stay below 256 instructions: cBPF jump offsets are 8 bits");

	for (i = 0; i < n_eperm; i++)
		e[ne++] = (struct entry) { (unsigned) denied_eperm[i], V_EPERM };
	for (i = 0; i < n_enosys; i++)
		e[ne++] = (struct entry) { (unsigned) denied_enosys[i], V_ENOSYS };
	e[ne++] = (struct entry) { SYS_clone, V_CLONE };
	/* insertion sort: a few dozen entries, and no libc allocation (this may run in a vfork-style child) */
	for (i = 1; i < ne; i++)
		for (unsigned j = i; j > 0 && e[j - 1].nr > e[j].nr; j--) {
			struct entry t = e[j];
			e[j] = e[j - 1];
			e[j - 1] = t;
		}

	p.f[p.n++] = LOAD(arch);
	p.f[p.n++] = JUMP(BPF_JEQ, AUDIT_ARCH_NATIVE, 1, 0);
	p.f[p.n++] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	p.f[p.n++] = LOAD(nr);
#ifdef X32_SYSCALL_BIT
	p.f[p.n++] = JUMP(BPF_JGE, X32_SYSCALL_BIT, 0, 1);
	p.f[p.n++] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
#endif
	emit_tree(&p, e, 0, ne);

	unsigned tail[NVERDICT];
	/* clone(flags, ...): flags is the first argument on x86_64 and arm64; the namespace bits are all in
	 * the low 32 bits, which sit at args[0]'s offset on little-endian machines. */
	tail[V_CLONE] = p.n;
	p.f[p.n++] = LOAD(args[0]);
	p.f[p.n++] = JUMP(BPF_JSET, CLONE_NS_FLAGS, 1, 0);
	tail[V_ALLOW] = p.n;
	p.f[p.n++] = ALLOW;
	tail[V_EPERM] = p.n;
	p.f[p.n++] = RET_ERRNO(EPERM);
	tail[V_ENOSYS] = p.n;
	p.f[p.n++] = RET_ERRNO(ENOSYS);
	for (i = 0; i < p.nfix; i++) {
		unsigned at = p.fix[i].at, off = tail[p.fix[i].v] - at - 1;
		if (p.fix[i].ja)
			p.f[at].k = off;
		else
			p.f[at].jt = (unsigned char) off;
	}
	filter_len = (unsigned short) p.n;
}

int seccomp_install(void)
{
	seccomp_prepare();
	struct sock_fprog prog = { .len = filter_len, .filter = filter };
	if (sys_seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
		return fail(errno, "seccomp", "", "installing the seccomp filter");
	return 0;
}
