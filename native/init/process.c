/*
 * process.c — starting one function process inside the started sandbox.
 *
 * Order matters: stdio first (while still root, the fds came from the host), then every privilege is given
 * up (bounding set needs CAP_SETPCAP, so before setuid), chdir as the unprivileged user (so permissions
 * apply), no_new_privs, and the seccomp filter last (it needs no_new_privs and must not block the calls
 * above). An exec failure is reported to the host as the spawn's error (ENOENT/EACCES, not an exit code 127):
 * the child shares the init's memory and leaves it in last_failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
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

/* The child's own stack: it shares the init's memory (CLONE_VM) while the init waits (CLONE_VFORK), so it
 * must not run on the init's stack. The init starts one process at a time. */
static char child_stack[64 * 1024] __attribute__((aligned(16)));

struct child_args {
	const struct proc_spec *spec;
	/* written by the child before it exits on a failure; read by the init once the child is gone */
	volatile int failed;
};

/*
 * The function's process, from clone to execve. It shares the init's memory but not its files, signal
 * handlers or credentials: only system calls and stack-local work here, and failures go to last_failure (the
 * init reads it after the child exited).
 */
static int child(void *p)
{
	struct child_args *a = p;
	const struct proc_spec *s = a->spec;
	sigset_t none;
	int fd;

	/* The init blocks every signal, and exec keeps the mask; dispositions are all default already (main.c). */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	/* The init runs at oom_score_adj -1000 so the OOM killer picks the function; children inherit it and go
	 * back to 0. Where the init could not lower its own, the function goes to +1000 (see main.c). The kernel
	 * does not carry this over to the init although they share memory: a vfork child keeps its own
	 * (fs/proc/base.c __set_oom_adj skips tasks with vfork_done). */
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
	/* Everything else (control socket, host fds) must not survive exec. */
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
	a->failed = 1;
	_exit(127);
}

pid_t proc_spawn(const struct proc_spec *s)
{
	struct child_args a = { .spec = s, .failed = 0 };
	pid_t pid;

	/* vfork-style: no copy of the init's page tables, and the init resumes exactly when the child has exec'd
	 * (or exited on a failure), so the reply to the host can say which. The init's signals are all blocked
	 * (main.c), so nothing runs on the init's side while the child uses the shared memory. */
	pid = clone(child, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
	if (pid < 0)
		return fail(errno, "clone", "", "starting %s", s->argv[0]);
	if (!a.failed)
		return pid; /* exec'd */
	/* The child failed before exec and has exited (its failure is in last_failure, shared memory): reap it
	 * here so it is never reported as "exited". */
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return -1;
}
