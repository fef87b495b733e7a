/*
 * main.c — fnhost's sandbox init: PID 1 of the sandbox's pid namespace, a declarative executor.
 *
 * Born by the addon's clone() in fresh pid/mnt/uts/ipc/net namespaces, already inside the sandbox's cgroups
 * and its own cgroup namespace, with the control socket on fd 3. It sets up what needs no spec (mounts,
 * loopback up, OOM protection) and says "ready" (in a copy of a template or of the zygote's stage: as soon as
 * its namespaces, cgroups and fds are final, the rest of that set-up following while the host prepares its
 * first frame; a failure there answers every frame), then executes frames from the host in order. Each frame
 * is "run <reqid>" followed by ops; the reply is "ok <reqid> [<pid>]" or
 * "error <reqid> <errno> <syscall> <path> <message>". Processes it started are reported when reaped as
 * "exited <reqid> <pid> <code> <signal>" (code -1 when signalled). It exits when the control socket closes,
 * which makes the kernel kill every process in the pid namespace (and drop every mount with it).
 *
 * Before its first frame the init stages what needs no spec: its root is then a small read-only tmpfs with
 * /root (empty), /dev (finished) and /proc (this pid ns); nothing of the host's mount tree is in its
 * namespace. Either it was exec'd in a copy of the host's template namespace (argv[1] = --in-template: only
 * /proc is left to mount) or it builds the stage itself from a copy
 * of the host's tree (argv[1] = an empty host directory; mount.c mnt_stage). With --template <stage> <init>
 * it only builds the template namespace and waits for the host to close the control socket. With --zygote
 * <stage> it becomes the host's sandbox spawner (zygote.c) and its children continue here as --in-template.
 *
 * Ops (targets are paths in the init's root: the stage before "enter", the sandbox's rootfs after it):
 *   attach <target>                 move_mount the next fd of the frame (a detached read-only overlay the host
 *                                   built with fsmount) onto target: the rootfs at /root, code layers, ...
 *   move <from> <to>                MS_MOVE a staged mount (/dev, /proc) into the rootfs
 *   tmpfs <target> <bytes> <mode>   size-capped tmpfs
 *   tmp <bytes> <target>            the /tmp tmpfs made before the first frame (mode 1777, 64 MiB), resized to
 *                                   <bytes> if that differs, moved to target
 *   proc <target> | dev <target>    /proc of this pid namespace | minimal /dev
 *   enter <newroot>                 make newroot (the rootfs at /root) the root: MS_MOVE onto the stage's "/",
 *                                   chroot into it (mount.c mnt_enter), then drop CAP_SYS_CHROOT
 *   pivot <newroot>                 pivot_root into newroot and detach the old root (not used by the host
 *                                   any more: the stage holds no host mount, see mnt_enter)
 *   hostname <name>
 *   harden                          drop the init's own capabilities to what later ops need (done after
 *                                   staging already; kept for hosts that want to say it explicitly)
 *   spawn <uid> <gid> <cwd> <argc> <argv...> <envc> <env...> <nfds>   (fds 0..nfds-1 come with the frame)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"
#include "syscalls.h"

int init_oom_protected;

/* A set-up step that failed after "ready" (main): every request is answered with it, the sandbox is unusable. */
static int post_ready_failed;
static struct failure post_ready_failure;

static struct {
	pid_t pid;
	long long id;
} procs[MAX_PROCS];

static void track(pid_t pid, long long id)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].pid == 0) {
			procs[i].pid = pid;
			procs[i].id = id;
			return;
		}
	/* Table full: the process still runs and is reaped; the host just never hears of its end. The host
	 * limits concurrent processes per sandbox far below MAX_PROCS. */
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_PROCS; i++) {
			if (procs[i].pid != pid)
				continue;
			char id[24], p[16], code[16], sig[16];
			snprintf(id, sizeof id, "%lld", procs[i].id);
			snprintf(p, sizeof p, "%d", (int) pid);
			snprintf(code, sizeof code, "%d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
			snprintf(sig, sizeof sig, "%d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
			const char *m[] = { "exited", id, p, code, sig };
			send_msg(m, 5);
			procs[i].pid = 0;
			break;
		}
	}
}

static int op_spawn(struct frame *f, long long reqid, pid_t *out)
{
	struct proc_spec s = { .id = reqid };
	long long uid, gid, argc, envc, nfds;
	const char *cwd;
	char **argv = NULL, **envp = NULL;
	int ret = -1;

	if (next_int(f, &uid) < 0 || next_int(f, &gid) < 0 || !(cwd = next_str(f)) || next_int(f, &argc) < 0 ||
	    argc < 1 || argc > 65536)
		return fail(EINVAL, "spawn", "", "malformed spawn op");
	argv = calloc((size_t) argc + 1, sizeof *argv);
	if (!argv)
		return fail(ENOMEM, "calloc", "", "argv");
	for (long long i = 0; i < argc; i++)
		if (!(argv[i] = (char *) next_str(f))) {
			fail(EINVAL, "spawn", "", "malformed argv");
			goto out;
		}
	if (next_int(f, &envc) < 0 || envc < 0 || envc > 65536) {
		fail(EINVAL, "spawn", "", "malformed env count");
		goto out;
	}
	envp = calloc((size_t) envc + 1, sizeof *envp);
	if (!envp) {
		fail(ENOMEM, "calloc", "", "env");
		goto out;
	}
	for (long long i = 0; i < envc; i++)
		if (!(envp[i] = (char *) next_str(f))) {
			fail(EINVAL, "spawn", "", "malformed env");
			goto out;
		}
	if (next_int(f, &nfds) < 0 || nfds < 3 || nfds > 4) {
		fail(EINVAL, "spawn", "", "spawn needs 3 or 4 fds");
		goto out;
	}
	for (int i = 0; i < nfds; i++)
		if ((s.fds[i] = next_fd(f)) < 0) {
			fail(EBADF, "spawn", "", "fd %d missing from the frame", i);
			goto out;
		}
	if (uid <= 0 || gid <= 0 || uid > 0xfffffffe || gid > 0xfffffffe) {
		fail(EINVAL, "spawn", "", "uid/gid must be unprivileged");
		goto out;
	}
	s.nfds = (int) nfds;
	s.uid = (uid_t) uid;
	s.gid = (gid_t) gid;
	s.cwd = cwd;
	s.argv = argv;
	s.envp = envp;
	pid_t pid = proc_spawn(&s);
	if (pid < 0)
		goto out;
	track(pid, reqid);
	*out = pid;
	ret = 0;
out:
	free(argv);
	free(envp);
	return ret;
}

static int run_ops(struct frame *f, long long reqid, pid_t *spawned)
{
	const char *op, *a, *b, *c;
	while ((op = next_str(f))) {
		if (!strcmp(op, "tmpfs")) {
			if (!(a = next_str(f)) || !(b = next_str(f)) || !(c = next_str(f)))
				return fail(EINVAL, "tmpfs", "", "malformed op");
			if (mnt_tmpfs(a, b, c) < 0)
				return -1;
		} else if (!strcmp(op, "tmp")) {
			if (!(a = next_str(f)) || !(b = next_str(f)))
				return fail(EINVAL, "tmp", "", "malformed op");
			if (mnt_tmp(a, b) < 0)
				return -1;
		} else if (!strcmp(op, "proc")) {
			if (!(a = next_str(f)) || mnt_proc(a) < 0)
				return a ? -1 : fail(EINVAL, "proc", "", "malformed op");
		} else if (!strcmp(op, "dev")) {
			if (!(a = next_str(f)) || mnt_dev(a) < 0)
				return a ? -1 : fail(EINVAL, "dev", "", "malformed op");
		} else if (!strcmp(op, "pivot")) {
			if (!(a = next_str(f)) || mnt_pivot(a) < 0)
				return a ? -1 : fail(EINVAL, "pivot", "", "malformed op");
		} else if (!strcmp(op, "enter")) {
			if (!(a = next_str(f)) || mnt_enter(a) < 0)
				return a ? -1 : fail(EINVAL, "enter", "", "malformed op");
			if (caps_init_started() < 0)
				return -1;
		} else if (!strcmp(op, "hostname")) {
			if (!(a = next_str(f)) || ns_sethostname(a) < 0)
				return a ? -1 : fail(EINVAL, "hostname", "", "malformed op");
		} else if (!strcmp(op, "attach")) {
			int fd = next_fd(f);
			if (!(a = next_str(f)) || fd < 0)
				return fail(EINVAL, "attach", "", "attach needs a target and a mount fd");
			if (mnt_move_fd(fd, a) < 0)
				return -1;
		} else if (!strcmp(op, "move")) {
			if (!(a = next_str(f)) || !(b = next_str(f)))
				return fail(EINVAL, "move", "", "malformed op");
			if (mnt_move(a, b) < 0)
				return -1;
		} else if (!strcmp(op, "harden")) {
			if (caps_init_keep_minimal() < 0)
				return -1;
		} else if (!strcmp(op, "spawn")) {
			if (op_spawn(f, reqid, spawned) < 0)
				return fail_ctx("starting a process");
		} else {
			return fail(EINVAL, op, "", "unknown op");
		}
	}
	return 0;
}

static void handle_frame(struct frame *f)
{
	long long reqid = -1;
	pid_t spawned = 0;
	const char *verb = next_str(f);
	char id[24], num[24], err[16];
	int r;

	memset(&last_failure, 0, sizeof last_failure);
	if (!verb || strcmp(verb, "run") || next_int(f, &reqid) < 0) {
		r = fail(EINVAL, "read", "", "malformed frame");
	} else if (post_ready_failed) {
		last_failure = post_ready_failure;
		r = -1;
	} else {
		r = run_ops(f, reqid, &spawned);
	}
	for (int i = 0; i < f->nfds; i++)
		close(f->fds[i]);
	snprintf(id, sizeof id, "%lld", reqid);
	if (r == 0) {
		snprintf(num, sizeof num, "%d", (int) spawned);
		const char *m[] = { "ok", id, num };
		send_msg(m, 3);
	} else {
		snprintf(err, sizeof err, "%d", last_failure.err);
		const char *m[] = { "error", id, err, last_failure.syscall, last_failure.path, last_failure.msg };
		send_msg(m, 6);
	}
}

static void die_setup(void)
{
	char e[16];
	snprintf(e, sizeof e, "%d", last_failure.err);
	const char *m[] = { "error", "0", e, last_failure.syscall, last_failure.path, last_failure.msg };
	send_msg(m, 6);
	_exit(1);
}

/* The init's set-up that needs no spec: /proc of its pid namespace, OOM protection, loopback, staging (when
 * not born in a copy of a template), its minimal capabilities. Returns -1 with last_failure set. */
static int setup_rest(int in_template, int argc, char **argv)
{
	/* In a copy of the template, /proc is this pid namespace's to mount, first (oom_score_adj lives there). */
	if (in_template && mnt_proc("/proc") < 0)
		return -1;

	/* The OOM killer must pick the function, never the init (which would end the whole sandbox). Some hosts
	 * refuse lowering oom_score_adj even to root (this VM answers EIO/EACCES); then the function's processes
	 * get +1000 instead (process.c), which makes them the victims just the same. */
	int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	init_oom_protected = oom >= 0 && write(oom, "-1000", 5) == 5;
	if (oom >= 0)
		close(oom);

	if (ns_lo_up() < 0)
		return -1;
	if (!in_template) {
		if (argc < 2)
			return fail(EINVAL, "execve", "", "usage: fnhost-init <stage-dir> | --in-template | --template <stage-dir> <init-path>");
		if (ns_make_private() < 0 || mnt_stage(argv[1]) < 0)
			return fail_ctx("staging the sandbox's root in %s", argv[1]);
	}
	/* The sandbox's /tmp, made now so that start only moves it (≈0.05 ms less on the cold path). */
	if (mnt_tmp_premake() < 0)
		return -1;
	/* Staging was the last thing that needed more than mounting, hostname and changing ids. */
	return caps_init_keep_minimal();
}

int main(int argc, char **argv)
{
	sigset_t chld;
	int sfd, nul;

	/* Only the control socket (3) and stdio are meant to be open; anything else leaked from the host's
	 * process must not reach the sandbox. */
	sys_close_range(CONTROL_FD + 1, ~0U, 0);
	if (fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC) < 0)
		_exit(2); /* no control socket: nobody to tell */
	nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul < 0) {
		fail(errno, "open", "/dev/null", "opening /dev/null");
		die_setup();
	}
	/* The host's stdio must not be held by the sandbox; 0-2 stay occupied so received fds are >= 4. */
	for (int i = 0; i < 3; i++)
		if (dup2(nul, i) < 0) {
			fail(errno, "dup2", "/dev/null", "stdio");
			die_setup();
		}
	/* open() returns 0-2 when the host's process had closed its stdio; that copy must stay */
	if (nul > 2)
		close(nul);

	/* Default dispositions for every signal, once: Node leaves SIGPIPE ignored, and an ignored signal stays
	 * ignored across execve. With this the function's child needs no sigaction loop (process.c). Nothing is
	 * delivered to the init itself: all signals stay blocked (SIGCHLD is read through a signalfd), and its
	 * socket writes use MSG_NOSIGNAL. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL/SIGSTOP and the libc-reserved ones: fine */

	/* The function's seccomp program, built once here: the zygote's clones inherit it ready-made. */
	seccomp_prepare();

	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "--zygote")) {
		/* zygote.c: returns only in a newborn sandbox init, which then goes on exactly like an init exec'd
		 * with --in-template (its mount namespace is a copy of the zygote's stage). */
		if (argc < 4) {
			fail(EINVAL, "execve", "", "usage: fnhost-init --zygote <stage-dir> <netns-pool-size>");
			die_setup();
		}
		if (zygote_main(argv[2], atoi(argv[3])) < 0)
			die_setup();
		mode = "--in-template";
		/* A clone carries the zygote's command line; say what this process is instead (ps, /proc/<pid>/cmdline
		 * read this memory). argv[1] "--zygote" has room for "--init"; the other arguments are blanked. */
		for (int i = 1; i < argc; i++)
			memset(argv[i], 0, strlen(argv[i]));
		memcpy(argv[1], "--init", 6);
	}

	/* The addon's child blocked every signal before exec; SIGCHLD is read through a signalfd, the rest stay
	 * blocked (PID 1 of a pid namespace only gets signals it handles anyway; SIGKILL from the host always works). */
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		fail(errno, "signalfd", "", "SIGCHLD signalfd");
		die_setup();
	}

	if (!strcmp(mode, "--template")) {
		/* Build the template mount namespace (mount.c mnt_template), say so, and wait for the host to have
		 * opened it (/proc/<pid>/ns/mnt) and closed the control socket. */
		if (argc < 4) {
			fail(EINVAL, "execve", "", "usage: fnhost-init --template <stage-dir> <init-path>");
			die_setup();
		}
		if (ns_make_private() < 0 || mnt_template(argv[2], argv[3]) < 0) {
			fail_ctx("building the template mount namespace in %s", argv[2]);
			die_setup();
		}
		const char *ready[] = { "ready" };
		if (send_msg(ready, 1) < 0)
			_exit(2);
		char c;
		while (read(CONTROL_FD, &c, 1) > 0)
			;
		_exit(0);
	}
	int in_template = !strcmp(mode, "--in-template");
	/* In a copy of the template (or of the zygote's stage) nothing of the host's mount tree is here and the
	 * namespaces, cgroups, fds and signals are final: the host may start sending frames. "ready" goes now, and
	 * the rest of the set-up below runs while the host prepares its first request (start: overlay mounts,
	 * stdio pipes), instead of before it. A failure from here on is the answer to every later request
	 * (post_ready_failed). Staging from a copy of the host's tree must detach that tree BEFORE "ready". */
	if (in_template) {
		const char *ready[] = { "ready" };
		if (send_msg(ready, 1) < 0)
			_exit(2);
	}
	if (setup_rest(in_template, argc, argv) < 0) {
		if (!in_template)
			die_setup();
		post_ready_failure = last_failure;
		post_ready_failed = 1;
	}
	if (!in_template) {
		const char *ready[] = { "ready" };
		if (send_msg(ready, 1) < 0)
			_exit(2);
	}

	for (;;) {
		struct pollfd p[2] = { { .fd = CONTROL_FD, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			_exit(3);
		}
		if (p[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0)
				;
			reap();
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			struct frame f = { 0 };
			if (recv_frame(CONTROL_FD, &f) < 0)
				_exit(0); /* the host closed the control socket (or sent garbage): end the sandbox */
			handle_frame(&f);
			free(f.buf);
		}
	}
}
