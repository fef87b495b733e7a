/*
 * caps.c — privileges. The function's process ends with no capability in any set (bounding and ambient
 * included), an unprivileged uid/gid and no supplementary groups. The init keeps only what later requests
 * need (attach: CAP_SYS_ADMIN for move_mount; spawning: CAP_SETUID/SETGID/SETPCAP; until start, CAP_SYS_CHROOT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "init.h"
#include "syscalls.h"

/* Highest capability number to try; PR_CAPBSET_DROP fails with EINVAL past the kernel's CAP_LAST_CAP. */
#define CAP_TRY_MAX 63

/* What is still in the bounding set: children only drop these (one syscall per capability, ~1-2 µs each
 * with PTI, on every cold start). */
static unsigned long long bounding_left = ~0ULL;

/* `left`: the caller's record of what is still in its bounding set, updated as capabilities go. */
static int drop_bounding_except(unsigned long long keep, unsigned long long *left)
{
	for (int c = 0; c <= CAP_TRY_MAX; c++) {
		if ((keep & (1ULL << c)) || !(*left & (1ULL << c)))
			continue;
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) {
			if (errno == EINVAL) {
				*left &= (1ULL << c) - 1;
				break;
			}
			return fail(errno, "prctl", "", "PR_CAPBSET_DROP %d", c);
		}
		*left &= ~(1ULL << c);
	}
	return 0;
}

/* Effective = permitted = eff_perm ∩ what we hold now (a host may withhold some from root: this VM has no
 * CAP_SYS_RESOURCE, and capset refuses to add to the permitted set). Inheritable = none. */
static int set_caps(unsigned long long eff_perm)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof d);
	if (eff_perm) {
		if (sys_capget(&h, d) < 0)
			return fail(errno, "capget", "", "reading capabilities");
		eff_perm &= (unsigned long long) d[0].permitted | (unsigned long long) d[1].permitted << 32;
		memset(d, 0, sizeof d);
	}
	d[0].effective = d[0].permitted = (unsigned) (eff_perm & 0xffffffffu);
	d[1].effective = d[1].permitted = (unsigned) (eff_perm >> 32);
	if (sys_capset(&h, d) < 0)
		return fail(errno, "capset", "", "setting capabilities");
	return 0;
}

/*
 * Runs in the function's child, which shares the init's memory (process.c: CLONE_VM|CLONE_VFORK): it works on
 * a local copy of bounding_left (the init's own bounding set is unchanged), and makes the id changes as raw
 * system calls, so no libc state (glibc's set*id broadcast to other threads) is involved.
 */
int caps_drop_all(uid_t uid, gid_t gid)
{
	unsigned long long left = bounding_left;
	if (drop_bounding_except(0, &left) < 0)
		return -1;
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		return fail(errno, "prctl", "", "PR_CAP_AMBIENT_CLEAR_ALL");
	if (syscall(SYS_setgroups, 0, NULL) < 0)
		return fail(errno, "setgroups", "", "clearing supplementary groups");
	if (syscall(SYS_setresgid, gid, gid, gid) < 0)
		return fail(errno, "setresgid", "", "gid %u", (unsigned) gid);
	if (syscall(SYS_setresuid, uid, uid, uid) < 0)
		return fail(errno, "setresuid", "", "uid %u", (unsigned) uid);
	/* A uid change from 0 to non-0 already cleared permitted/effective (no SECBIT_KEEP_CAPS); clear the
	 * inheritable set too, explicitly. */
	return set_caps(0);
}

/* What a started init keeps: attach (CAP_SYS_ADMIN) and spawning (CAP_SETUID/SETGID/SETPCAP). */
#define INIT_STARTED_CAPS ((1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_SETUID) | (1ULL << CAP_SETGID) | (1ULL << CAP_SETPCAP))

/* Before start it also needs CAP_SYS_CHROOT, once, to enter the rootfs (mount.c mnt_enter). */
int caps_init_keep_minimal(void)
{
	unsigned long long keep = INIT_STARTED_CAPS | (1ULL << CAP_SYS_CHROOT);
	if (drop_bounding_except(keep, &bounding_left) < 0)
		return -1;
	return set_caps(keep);
}

/* Once inside the rootfs: CAP_SYS_CHROOT goes (bounding, effective, permitted). */
int caps_init_started(void)
{
	if (!(bounding_left & (1ULL << CAP_SYS_CHROOT)))
		return 0;
	if (drop_bounding_except(INIT_STARTED_CAPS, &bounding_left) < 0)
		return -1;
	return set_caps(INIT_STARTED_CAPS);
}

/*
 * The zygote's set (zygote.c): what its inits need before they reach caps_init_keep_minimal — CAP_SYS_ADMIN
 * (clone with namespaces, setns, mounts), CAP_NET_ADMIN (lo up in a fresh netns when the pool is empty),
 * CAP_SYS_RESOURCE (oom_score_adj -1000), and what caps_init_keep_minimal keeps (CAP_SYS_CHROOT included).
 */
int caps_zygote_keep(void)
{
	unsigned long long keep = (1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_SETUID) | (1ULL << CAP_SETGID) |
				  (1ULL << CAP_SETPCAP) | (1ULL << CAP_NET_ADMIN) | (1ULL << CAP_SYS_RESOURCE) |
				  (1ULL << CAP_SYS_CHROOT);
	if (drop_bounding_except(keep, &bounding_left) < 0)
		return -1;
	return set_caps(keep);
}
