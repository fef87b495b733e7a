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
	static const char *const dirs[] = { "root", "dev", "proc" };
	for (size_t i = 0; i < 3; i++) {
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

int mnt_move_fd(int fd, const char *target)
{
	if (sys_move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		return fail(errno, "move_mount", target, "attaching a mount");
	return 0;
}
