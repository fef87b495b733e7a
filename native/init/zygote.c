/*
 * zygote.c — the sandbox spawner (fnhost-init --zygote <stage-dir>): one small static helper per host process.
 *
 * Why: an init made by exec'ing this binary in fresh namespaces costs an exec (≈0.45 ms here) and a fresh
 * network namespace (≈0.4 ms to create, more to tear down). The zygote builds the spec-independent stage once
 * (its own mount namespace IS the template: read-only tmpfs root with /root, a finished /dev and an empty
 * /proc), then for each sandbox clones a child that simply continues as that sandbox's init: no exec, and the
 * child's memory is a copy of this small process, never of Node's heap.
 *
 * Each child is born with clone3(CLONE_PARENT | NEWPID | NEWNS | NEWUTS | NEWIPC [| CLONE_INTO_CGROUP]):
 *  - CLONE_PARENT makes it a child of the host process (not of the zygote), so the host reaps it with waitpid
 *    and gets SIGCHLD exactly as for an init it spawned itself; its PDEATHSIG is tied to the host too.
 *  - NEWNS copies the zygote's namespace: 2 mounts (stage root, /dev), never the host's tree.
 *  - the network namespace comes from a pool (below); the child setns()es into it. Without one (pool drained
 *    by a burst) the clone adds CLONE_NEWNET instead.
 *
 * Network-namespace pool (argv[3] > 0; the host's default is 0 on cgroup v1, where the clone's CLONE_NEWNET
 * runs while the host makes the cgroups: services/sandbox/index.ts netnsPool):
 * a second helper process (the "maker", a fork of the zygote) creates namespaces off
 * the hot path: unshare(CLONE_NEWNET), bring `lo` up, take an fd of the namespace (SIOCGSKNS on a socket in
 * it), setns back to its own original namespace, and send the fd to the zygote over a SOCK_SEQPACKET pair.
 * The pool IS that socket's queue (at most pool_size fds in flight; argv[3], chosen by the host); the
 * zygote receives one per spawn with MSG_DONTWAIT, hands it to exactly one child, closes its own copy right
 * after clone and asks the maker for a replacement. So every sandbox gets a namespace nobody ever used, and after the sandbox the namespace has no
 * reference left (the kernel's cleanup_net then frees it, asynchronously, as for any netns).
 *
 * Host → zygote frames (the init's control protocol, proto.c, with one op):
 *   "run <reqid> spawn <njoin> <has-cgroup-dir> [<late>]" with fds [control socket end, njoin v1 `tasks` fds,
 *   (v2 dir fd)]. <late> = 1 (then njoin = 0, no dir): the host makes the cgroups while the zygote clones and
 *   sends the `tasks` fds to the new init itself, as the first frame on its control socket ("join" + fds;
 *   recv_join below).
 * Zygote → host: "ready" once, then per spawn "ok <reqid> <host pid>" or "error <reqid> <errno> <syscall> <path> <msg>".
 * Errors of the child itself (joining the cgroups, setns, ...) go to the host on the child's own control
 * socket, as any init set-up error ("error 0 ...", native/ERRORS.md).
 *
 * The zygote exits at EOF on its control socket, after closing the pool socket and reaping the maker, which
 * exits at EOF on it (zygote_exit). Both have PDEATHSIG=SIGKILL (the zygote's parent is the host thread that
 * spawned it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"
#include "syscalls.h"

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

static void send_fd(int sock, int fd)
{
	char one = 'n';
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &one, .iov_len = 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof fd);
	while (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0)
		if (errno != EINTR)
			_exit(0); /* the zygote is gone */
}

/* The maker: one new, loopback-up network namespace per token read from `sock`. Only syscalls, no state. */
static __attribute__((noreturn)) void maker(int sock)
{
	int home, s, ns;
	char token;

	/* Off the hot path for real: SCHED_IDLE runs the maker only on a CPU nothing else wants, and never lets
	 * its wake-up preempt the host, the zygote or a sandbox (a netns costs ≈0.4 ms of CPU to build, which
	 * otherwise landed in the middle of the next create). On a saturated host it starves: the pool runs dry
	 * and spawns fall back to CLONE_NEWNET, i.e. to the cost without a pool. (It can be preempted while
	 * holding rtnl_lock in setup_net, for the few µs lo's registration takes.) */
	struct sched_param idle = { 0 };
	sched_setscheduler(0, SCHED_IDLE, &idle);
	s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	/* SIOCGSKNS (Linux 4.9): an fd of the socket's network namespace, without needing /proc (this mount
	 * namespace has none). */
	home = s < 0 ? -1 : ioctl(s, SIOCGSKNS);
	if (s >= 0)
		close(s);
	if (home < 0)
		_exit(1);
	for (;;) {
		ssize_t r = read(sock, &token, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			_exit(0);
		if (unshare(CLONE_NEWNET) < 0)
			_exit(1); /* the zygote sees EOF on the pool and falls back to CLONE_NEWNET */
		s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (s < 0)
			_exit(1);
		struct ifreq ifr;
		memset(&ifr, 0, sizeof ifr);
		strcpy(ifr.ifr_name, "lo");
		/* a fresh netns has only `lo`, and it is down */
		if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
			_exit(1);
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			_exit(1);
		ns = ioctl(s, SIOCGSKNS);
		close(s);
		if (ns < 0)
			_exit(1);
		/* Back home, so the maker holds no reference to a namespace it has handed out. */
		if (setns(home, CLONE_NEWNET) < 0)
			_exit(1);
		send_fd(sock, ns);
		close(ns);
	}
}

static int pool_fd = -1; /* the zygote's end of the pool socket; -1 when the maker is gone */

static void ask_maker(int n)
{
	for (int i = 0; i < n && pool_fd >= 0; i++)
		if (send(pool_fd, "t", 1, MSG_NOSIGNAL) != 1) {
			close(pool_fd);
			pool_fd = -1;
		}
}

/* A pooled namespace fd, or -1 (pool empty or maker gone: the caller clones with CLONE_NEWNET). */
static int pool_take(void)
{
	char b;
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
	if (pool_fd < 0)
		return -1;
	ssize_t r = recvmsg(pool_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (r <= 0) {
		if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
			/* The maker is gone: no pool from now on. It is this process's only child (inits are the host's,
			 * CLONE_PARENT), so reap it. */
			close(pool_fd);
			pool_fd = -1;
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
		}
		return -1;
	}
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof fd);
	return fd;
}

static int start_maker(int pool_size)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return fail(errno, "socketpair", "", "netns pool socket");
	pid_t pid = fork();
	if (pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return fail(errno, "fork", "", "netns maker");
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		close(sv[0]);
		close(CONTROL_FD);
		maker(sv[1]);
	}
	close(sv[1]);
	pool_fd = sv[0];
	ask_maker(pool_size);
	return 0;
}

/*
 * The host closed the control socket: end the maker (EOF on the pool socket; it is at most one unshare away
 * from reading it) and reap it before exiting, so that no zombie of ours is left for PID 1 to collect. The
 * host reaps the zygote in turn (services/sandbox/zygote.ts close()). Inits are not the zygote's children
 * (CLONE_PARENT), so the maker is the only child waited for here.
 */
static __attribute__((noreturn)) void zygote_exit(void)
{
	if (pool_fd >= 0) {
		close(pool_fd);
		pool_fd = -1;
	}
	for (;;) {
		if (waitpid(-1, NULL, 0) > 0)
			continue;
		if (errno != EINTR)
			break;
	}
	_exit(0);
}

static void reply_error(long long reqid)
{
	char id[24], e[16];
	snprintf(id, sizeof id, "%lld", reqid);
	snprintf(e, sizeof e, "%d", last_failure.err);
	const char *m[] = { "error", id, e, last_failure.syscall, last_failure.path, last_failure.msg };
	send_msg(m, 6);
}

/*
 * In the newborn child: become the sandbox's init. Its own control socket goes to fd 3 first (replacing the
 * zygote's), so every later failure reaches the host the usual way. Returns 0, or -1 with last_failure set.
 */
/*
 * A late join (spawn with <late> = 1): the host sent the spawn before making the sandbox's cgroups, so that
 * this clone runs while it makes them; the child waits here for one frame "join" carrying the v1 `tasks` fds.
 * Nothing of the sandbox runs before it has joined (the host sends nothing else before "ready"), so the child
 * is in its cgroups before anything can be charged to them that was not already charged at clone time. EOF
 * (the host could not make the cgroups) ends the child.
 */
static int recv_join(int *join, int *njoin)
{
	struct frame jf = { 0 };
	const char *verb;
	if (recv_frame(CONTROL_FD, &jf) < 0)
		_exit(0); /* the host gave up on this sandbox */
	verb = next_str(&jf);
	if (!verb || strcmp(verb, "join") || jf.nfds < 1 || jf.nfds > 6) {
		for (int i = 0; i < jf.nfds; i++)
			close(jf.fds[i]);
		free(jf.buf);
		return fail(EINVAL, "read", "", "malformed join frame");
	}
	*njoin = jf.nfds;
	memcpy(join, jf.fds, sizeof(int) * (size_t) jf.nfds);
	free(jf.buf);
	return 0;
}

static int child_setup(int ctrl, int *join, int njoin, int late, int netns)
{
	if (dup2(ctrl, CONTROL_FD) < 0)
		_exit(2); /* no control socket: nobody to tell; the host sees EOF */
	if (fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC) < 0)
		return fail(errno, "fcntl", "", "control socket");
	if (late && recv_join(join, &njoin) < 0)
		return -1;
	/* v1 has no CLONE_INTO_CGROUP: join each controller's cgroup before anything of the sandbox runs
	 * ("0" = this task; `tasks`, not cgroup.procs: see native/addon/addon.cc ChildMain). */
	for (int i = 0; i < njoin; i++)
		if (write(join[i], "0", 1) != 1)
			return fail(errno, "write", "tasks", "joining the sandbox's cgroup");
	if (netns >= 0 && setns(netns, CLONE_NEWNET) < 0)
		return fail(errno, "setns", "net", "entering the pooled network namespace");
	/* After joining, so the new cgroup namespace's root is the sandbox's own cgroup. */
	if (unshare(CLONE_NEWCGROUP) < 0)
		return fail(errno, "unshare", "", "CLONE_NEWCGROUP");
	/* Host dies → sandbox dies. The parent is the host (CLONE_PARENT); if it died before this prctl the
	 * control socket's host end is closed already and the init exits at its first read. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		return fail(errno, "prctl", "", "PR_SET_PDEATHSIG");
	/* stdio: /dev/null of this namespace's own /dev (the zygote's 0-2 are the host's /dev/null). */
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul < 0)
		return fail(errno, "open", "/dev/null", "opening /dev/null");
	for (int i = 0; i < 3; i++)
		if (dup2(nul, i) < 0)
			return fail(errno, "dup2", "/dev/null", "stdio");
	/* Nothing of the zygote's (pool socket, pooled and received fds) stays open in the sandbox. */
	if (sys_close_range(CONTROL_FD + 1, ~0U, 0) < 0)
		return fail(errno, "close_range", "", "closing the zygote's fds");
	pool_fd = -1;
	return 0;
}

static void close_frame_fds(struct frame *f)
{
	for (int i = 0; i < f->nfds; i++)
		close(f->fds[i]);
	f->nfds = 0;
}

/*
 * One spawn request. Returns 1 in the parent (request answered), 0 in the newborn child (continue as init),
 * -1 in the child with last_failure set (the caller reports it on the child's control socket).
 */
static int handle_spawn(struct frame *f)
{
	long long reqid = -1, njoin, hasdir, late = 0;
	const char *verb = next_str(f), *op;
	int ctrl, dirfd = -1, join[8];

	memset(&last_failure, 0, sizeof last_failure);
	if (!verb || strcmp(verb, "run") || next_int(f, &reqid) < 0 || !(op = next_str(f)) || strcmp(op, "spawn") ||
	    next_int(f, &njoin) < 0 || next_int(f, &hasdir) < 0 || njoin < 0 || njoin > 6 ||
	    (f->pos < f->len && next_int(f, &late) < 0) || (late && (njoin || hasdir)) ||
	    f->nfds != 1 + njoin + (hasdir ? 1 : 0)) {
		fail(EINVAL, "read", "", "malformed spawn frame");
		close_frame_fds(f);
		reply_error(reqid);
		return 1;
	}
	ctrl = next_fd(f);
	for (int i = 0; i < njoin; i++)
		join[i] = next_fd(f);
	if (hasdir)
		dirfd = next_fd(f);

	int netns = pool_take();
	struct clone_args ca;
	memset(&ca, 0, sizeof ca);
	ca.flags = CLONE_PARENT | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
	if (netns < 0)
		ca.flags |= CLONE_NEWNET;
	if (dirfd >= 0) {
		/* cgroup v2: born in the cgroup, not moved in afterwards */
		ca.flags |= CLONE_INTO_CGROUP;
		ca.cgroup = (unsigned long long) dirfd;
	}
	/* CLONE_PARENT: the child gets the zygote's own exit signal (SIGCHLD, to the host); clone3 refuses any
	 * other exit_signal than 0 with it (kernel/fork.c clone3_args_valid). */
	ca.exit_signal = 0;
	/* Fork-like (no CLONE_VM, no stack): the child returns here on a copy of this stack. glibc's cached tid
	 * is stale in the child (raw clone), which only matters to raise()/pthread calls the init never makes. */
	long pid = syscall(SYS_clone3, &ca, sizeof ca);
	if (pid == 0) {
		if (child_setup(ctrl, join, (int) njoin, (int) late, netns) < 0)
			return -1;
		free(f->buf);
		return 0;
	}
	int err = errno;
	char id[24], p[24];
	snprintf(id, sizeof id, "%lld", reqid);
	/* The host waits for this answer: send it before any tidying up. */
	if (pid < 0) {
		fail(err, "clone3", "", "cloning a sandbox init");
		reply_error(reqid);
	} else {
		snprintf(p, sizeof p, "%ld", pid);
		const char *m[] = { "ok", id, p };
		send_msg(m, 3);
	}
	close_frame_fds(f);
	if (netns >= 0) {
		close(netns); /* the child holds the only reference now (after its setns, its task does) */
		ask_maker(1);
	}
	return 1;
}

int zygote_main(const char *stage, int pool_size)
{
	/* The zygote's own mount namespace becomes the template every sandbox copies. */
	if (ns_make_private() < 0 || mnt_zygote(stage) < 0)
		return fail_ctx("building the zygote's stage in %s", stage);
	/* Without the pool every spawn still works (CLONE_NEWNET), only slower. */
	if (pool_size > 64)
		pool_size = 64; /* sanity cap: each idle namespace pins kernel memory */
	if (pool_size > 0 && start_maker(pool_size) < 0)
		memset(&last_failure, 0, sizeof last_failure);
	/* The zygote and so every init cloned from it start with only the capabilities an init uses; each init
	 * then drops to its own minimum with a few calls instead of ~40 (caps.c). */
	if (caps_zygote_keep() < 0)
		return fail_ctx("dropping the zygote's capabilities");
	const char *ready[] = { "ready" };
	if (send_msg(ready, 1) < 0)
		_exit(2);
	for (;;) {
		struct frame f = { 0 };
		if (recv_frame(CONTROL_FD, &f) < 0)
			zygote_exit(); /* the host closed the socket */
		int r = handle_spawn(&f);
		if (r <= 0)
			return r; /* the newborn init */
		free(f.buf);
	}
}
