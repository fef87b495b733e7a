/*
 * process.c — starting one function process inside the started sandbox.
 *
 * Order matters: stdio first (while still root, the fds came from the host), then every privilege is given
 * up (bounding set needs CAP_SETPCAP, so before setuid), chdir as the unprivileged user (so permissions
 * apply), no_new_privs, and the seccomp filter last (it needs no_new_privs and must not block the calls
 * above). An exec failure travels back over a close-on-exec pipe, so the host learns ENOENT/EACCES instead
 * of an exit code 127.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"
#include "syscalls.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* The default search path of execvp(3) in glibc, used when the process's env has no PATH. */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *env_path(char **envp)
{
	for (char **e = envp; *e; e++)
		if (strncmp(*e, "PATH=", 5) == 0)
			return *e + 5;
	return DEFAULT_PATH;
}

static int exec_resolved(char **argv, char **envp)
{
	const char *file = argv[0], *path, *p;
	char buf[4096];
	int saw_eacces = 0;

	if (strchr(file, '/')) {
		execve(file, argv, envp);
		return fail(errno, "execve", file, "executing %s", file);
	}
	path = env_path(envp);
	for (p = path;; p++) {
		const char *end = strchrnul(p, ':');
		size_t dl = (size_t) (end - p);
		if (dl == 0) /* empty entry = current directory (POSIX) */
			snprintf(buf, sizeof buf, "%s", file);
		else
			snprintf(buf, sizeof buf, "%.*s/%s", (int) dl, p, file);
		execve(buf, argv, envp);
		if (errno == EACCES)
			saw_eacces = 1;
		else if (errno != ENOENT && errno != ENOTDIR)
			return fail(errno, "execve", buf, "executing %s", buf);
		if (!*end)
			break;
		p = end;
	}
	return fail(saw_eacces ? EACCES : ENOENT, "execve", file, "%s not found in PATH=%s", file, path);
}

static void child(const struct proc_spec *s, int errfd)
{
	sigset_t none;
	struct sigaction dfl;
	int fd;

	/* The init blocks SIGCHLD (signalfd) and inherited SIG_IGN for SIGPIPE from Node; exec keeps both. */
	sigemptyset(&none);
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL);
	sigprocmask(SIG_SETMASK, &none, NULL);

	/* The init runs at oom_score_adj -1000 so the OOM killer picks the function; children inherit it and go
	 * back to 0. Where the init could not lower its own, the function goes to +1000 (see main.c). */
	const char *adj = init_oom_protected ? "0" : "1000";
	fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, adj, strlen(adj)) != (ssize_t) strlen(adj)) {
		fail(errno, "write", "/proc/self/oom_score_adj", "resetting oom_score_adj");
		goto out;
	}
	close(fd);

	if (setsid() < 0) {
		fail(errno, "setsid", "", "new session");
		goto out;
	}
	for (int i = 0; i < s->nfds; i++) {
		/* received fds are all >= 4 (0-2 are /dev/null, 3 the control socket), so no overlap */
		if (dup2(s->fds[i], i) < 0) {
			fail(errno, "dup2", "", "fd %d", i);
			goto out;
		}
	}
	/* Everything else (control socket, host fds) must not survive exec; errfd is already close-on-exec. */
	if (sys_close_range((unsigned) s->nfds, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
		fail(errno, "close_range", "", "marking fds close-on-exec");
		goto out;
	}
	if (caps_drop_all(s->uid, s->gid) < 0)
		goto out;
	if (chdir(s->cwd) < 0) {
		fail(errno, "chdir", s->cwd, "working directory");
		goto out;
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		fail(errno, "prctl", "", "PR_SET_NO_NEW_PRIVS");
		goto out;
	}
	if (seccomp_install() < 0)
		goto out;
	exec_resolved(s->argv, s->envp);
out:
	if (write(errfd, &last_failure, sizeof last_failure) < 0) {
		/* nothing left to tell anyone */
	}
	_exit(127);
}

pid_t proc_spawn(const struct proc_spec *s)
{
	int ep[2];
	pid_t pid;
	ssize_t r;
	struct failure f;

	if (pipe2(ep, O_CLOEXEC) < 0)
		return fail(errno, "pipe2", "", "exec status pipe");
	pid = fork();
	if (pid < 0) {
		close(ep[0]);
		close(ep[1]);
		return fail(errno, "fork", "", "starting %s", s->argv[0]);
	}
	if (pid == 0) {
		close(ep[0]);
		child(s, ep[1]);
	}
	close(ep[1]);
	do
		r = read(ep[0], &f, sizeof f);
	while (r < 0 && errno == EINTR);
	close(ep[0]);
	if (r == 0)
		return pid; /* EOF: the exec succeeded and closed the pipe */
	/* The child failed before exec and is exiting: reap it here so it is never reported as "exited". */
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	if (r != (ssize_t) sizeof f)
		return fail(EIO, "read", "", "short exec status from the child");
	last_failure = f;
	return -1;
}
