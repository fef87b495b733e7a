/*
 * mount.c — the sandbox's filesystem: the create-time stage (/dev, /proc, host tree detached), then at start
 * the read-only overlay rootfs and extra overlays (detached mounts built by the host with fsmount() and
 * move_mount()ed here), the /tmp tmpfs, and pivot_root into the rootfs.
 *
 * All of it happens in mount namespaces of our own, whose propagation was made private first
 * (ns_make_private), so nothing here is ever visible in the host's mount table.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "init.h"
#include "syscalls.h"

#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

int mnt_move(const char *from, const char *to)
{
	if (mount(from, to, NULL, MS_MOVE, NULL) < 0)
		return fail(errno, "mount", to, "moving %s", from);
	return 0;
}

static int stage_common(const char *stage)
{
	char p[4096];
	if (mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=65536,mode=755") < 0)
		return fail(errno, "mount", stage, "staging tmpfs");
	static const char *const dirs[] = { "root", "dev", "proc", "tmp" };
	for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", stage, dirs[i]);
		if (mkdir(p, 0755) < 0)
			return fail(errno, "mkdir", p, "staging directory");
	}
	snprintf(p, sizeof p, "%s/dev", stage);
	return mnt_dev(p);
}

static int stage_finish(const char *stage)
{
	if (mnt_pivot(stage) < 0)
		return -1;
	/* the stage itself becomes read-only: nothing but mount points lives in it */
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=65536,mode=755") < 0)
		return fail(errno, "mount", "/", "remounting the stage read-only");
	return 0;
}

/*
 * Everything that does not depend on the start spec, done while the sandbox waits in the pool: a small
 * tmpfs becomes this namespace's root, holding /root (where start mounts the rootfs), a finished /dev and
 * this pid namespace's /proc (start moves both into the rootfs). The copy of the host's mount tree (~30
 * mounts) is detached now, not on the cold-start path. Layers reach the sandbox afterwards only as detached
 * overlay mounts the host builds (fsmount) and sends over the control socket: overlayfs cannot use lower
 * dirs outside the mounter's namespace ("failed to clone lowerpath"), and the host's tree is gone from here.
 * (Used when the host has no template namespace; see mnt_template.)
 */
int mnt_stage(const char *stage)
{
	char p[4096];
	if (stage_common(stage) < 0)
		return -1;
	snprintf(p, sizeof p, "%s/proc", stage);
	if (mnt_proc(p) < 0)
		return -1;
	return stage_finish(stage);
}

/*
 * The template mount namespace, built once per host process by an init started with --template: the same
 * stage minus /proc (that belongs to each sandbox's pid namespace), plus the init binary bind-mounted at /init.
 * Each sandbox's init is then exec'd (/init) in a copy of this namespace (setns + unshare in the addon's
 * child), so a sandbox never holds a copy of the host's mounts, not even briefly, and creating one copies
 * 4 mounts instead of the host's ~30 and detaches nothing.
 */
int mnt_template(const char *stage, const char *init_path)
{
	char p[4096];
	int fd;
	if (stage_common(stage) < 0)
		return -1;
	snprintf(p, sizeof p, "%s/init", stage);
	fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0755);
	if (fd < 0)
		return fail(errno, "open", p, "init mount point");
	close(fd);
	if (mount(init_path, p, NULL, MS_BIND, NULL) < 0)
		return fail(errno, "mount", p, "binding %s", init_path);
	if (mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV | MS_NOSUID, NULL) < 0)
		return fail(errno, "mount", p, "remounting /init read-only");
	return stage_finish(stage);
}

/* The zygote's stage (zygote.c): the template's layout without /init (its children never exec). */
int mnt_zygote(const char *stage)
{
	if (stage_common(stage) < 0)
		return -1;
	return stage_finish(stage);
}

int mnt_tmpfs(const char *target, const char *size_bytes, const char *mode)
{
	char opts[128];
	snprintf(opts, sizeof opts, "size=%s,mode=%s", size_bytes, mode);
	if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
		return fail(errno, "mount", target, "tmpfs mount (%s)", opts);
	return 0;
}

/* Size of the /tmp tmpfs an init makes before its first frame: services/sandbox/validate.ts DEFAULT_TMPFS_MB
 * (64 MiB), so that a start with the default size only moves it (mnt_tmp). */
#define PREMADE_TMP_BYTES (64ULL << 20)
static unsigned long long premade_tmp_bytes;

/* Made while the host prepares the start frame (main.c setup_rest): the sandbox's /tmp, at the stage's /tmp. */
int mnt_tmp_premake(void)
{
	char size[32];
	snprintf(size, sizeof size, "%llu", PREMADE_TMP_BYTES);
	if (mnt_tmpfs("/tmp", size, "1777") < 0)
		return -1;
	premade_tmp_bytes = PREMADE_TMP_BYTES;
	return 0;
}

/* Start: the premade /tmp, resized when the spec wants another cap (an empty tmpfs takes any size), moved to
 * target. Without a premade one (an init that never ran setup_rest's step), a new tmpfs at target. */
int mnt_tmp(const char *size_bytes, const char *target)
{
	char *end;
	unsigned long long want = strtoull(size_bytes, &end, 10);
	if (*end || !want)
		return fail(EINVAL, "tmp", target, "bad tmpfs size %s", size_bytes);
	if (!premade_tmp_bytes)
		return mnt_tmpfs(target, size_bytes, "1777");
	if (want != premade_tmp_bytes) {
		char opts[64];
		snprintf(opts, sizeof opts, "size=%s", size_bytes);
		if (mount(NULL, "/tmp", NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, opts) < 0)
			return fail(errno, "mount", "/tmp", "resizing the tmpfs (%s)", opts);
	}
	premade_tmp_bytes = 0;
	return mnt_move("/tmp", target);
}

int mnt_proc(const char *target)
{
	if (mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return fail(errno, "mount", target, "proc mount");
	return 0;
}

static const struct {
	const char *name;
	unsigned maj, min;
} dev_nodes[] = {
	/* Documentation/admin-guide/devices.txt, char major 1 */
	{ "null", 1, 3 }, { "zero", 1, 5 }, { "full", 1, 7 }, { "random", 1, 8 }, { "urandom", 1, 9 },
};

static const struct {
	const char *name, *to;
} dev_links[] = {
	{ "fd", "/proc/self/fd" }, { "stdin", "/proc/self/fd/0" }, { "stdout", "/proc/self/fd/1" },
	{ "stderr", "/proc/self/fd/2" },
};

int mnt_dev(const char *target)
{
	char p[4096];
	/* 64 KiB: only device nodes and symlinks live here; mode 755 so the function's uid cannot add files. */
	if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=65536,mode=755") < 0)
		return fail(errno, "mount", target, "/dev tmpfs mount");
	for (size_t i = 0; i < sizeof dev_nodes / sizeof dev_nodes[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", target, dev_nodes[i].name);
		if (mknod(p, S_IFCHR | 0666, makedev(dev_nodes[i].maj, dev_nodes[i].min)) < 0)
			return fail(errno, "mknod", p, "creating /dev/%s", dev_nodes[i].name);
		/* mknod honours the umask; the nodes must be usable by the unprivileged uid. */
		if (chmod(p, 0666) < 0)
			return fail(errno, "chmod", p, "chmod /dev/%s", dev_nodes[i].name);
	}
	for (size_t i = 0; i < sizeof dev_links / sizeof dev_links[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", target, dev_links[i].name);
		if (symlink(dev_links[i].to, p) < 0)
			return fail(errno, "symlink", p, "creating /dev/%s", dev_links[i].name);
	}
	/* Read-only from now on: the nodes still work (a read-only fs doesn't affect device I/O). */
	if (mount(NULL, target, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=65536,mode=755") < 0)
		return fail(errno, "mount", target, "remounting /dev read-only");
	return 0;
}

int mnt_pivot(const char *new_root)
{
	/* pivot_root(".", ".") stacks the old root under the new one at "/", so no put_old directory is needed
	 * in the (read-only) rootfs; the detaching umount then drops the whole host tree from this namespace
	 * (pivot_root(2), NOTES). */
	if (chdir(new_root) < 0)
		return fail(errno, "chdir", new_root, "entering the new root");
	if (sys_pivot_root(".", ".") < 0)
		return fail(errno, "pivot_root", new_root, "pivot_root");
	if (umount2(".", MNT_DETACH) < 0)
		return fail(errno, "umount2", "/", "detaching the old root");
	if (chdir("/") < 0)
		return fail(errno, "chdir", "/", "entering /");
	return 0;
}

/*
 * Start: the rootfs (attached at <stage>/root) becomes the sandbox's root. It is moved onto the stage's "/" and
 * the init chroots into it (what switch_root(8) does), instead of pivot_root + a detaching umount of the old
 * root: that umount waits for an expedited RCU grace period (fs/namespace.c namespace_unlock) on every cold
 * start — 0.04 ms in an idle C microbenchmark, 0.1-0.6 ms in perf traces of `npm run bench:sandbox` (the other
 * CPU busy in the kernel: netns set-up/teardown) — and pivot_root walks every task of the host (chroot_fs_refs).
 * Measured: start() 1.0-1.9 → 0.85-1.4 ms (median, 200 cycles, alternating builds at load 3).
 *
 * Why this keeps the old root unreachable: what stays below the rootfs is only the stage — a 64 KiB read-only
 * tmpfs holding the empty directories root/, dev/, proc/ and tmp/ (their mounts were moved into the rootfs; the exec
 * fallback's template also holds the read-only bind mount of this init binary at /init). The host's
 * tree was never in this namespace: the zygote pivot_root()ed into its stage and detached the host's tree
 * once (mnt_zygote), and each sandbox's namespace is a copy of that one (the exec fallbacks detach the host's
 * copy before "ready", mnt_stage). Below the rootfs, nothing can be reached: every process of the sandbox
 * has the rootfs as its root ("/.." is "/"), /proc/<pid>/root of each is the rootfs, mountinfo skips what lies
 * outside a reader's root, and uncovering or leaving it needs chroot/umount2/pivot_root/move_mount/open_tree
 * and CAP_SYS_CHROOT/CAP_SYS_ADMIN, which the function's process has neither of (seccomp.c, caps.c). The init
 * drops CAP_SYS_CHROOT right after (caps_init_started). Entering the namespace from the host (setns) lands in
 * the rootfs too: the kernel follows mounts on the namespace's root (mntns_install).
 */
int mnt_enter(const char *new_root)
{
	if (chdir(new_root) < 0)
		return fail(errno, "chdir", new_root, "entering the new root");
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		return fail(errno, "mount", "/", "moving the rootfs onto /");
	if (chroot(".") < 0)
		return fail(errno, "chroot", new_root, "chroot into the rootfs");
	if (chdir("/") < 0)
		return fail(errno, "chdir", "/", "entering /");
	return 0;
}

int mnt_move_fd(int fd, const char *target)
{
	if (sys_move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		return fail(errno, "move_mount", target, "attaching a mount");
	return 0;
}
