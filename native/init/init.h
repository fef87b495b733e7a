/*
 * init.h — shared declarations of the sandbox's init (PID 1 in the sandbox's pid namespace).
 *
 * Error convention (native/ERRORS.md): every system call is checked; a failing step calls fail() with the
 * errno, the syscall's name, the path it acted on ("" when none) and a short message, and returns -1. Callers
 * higher up return -1 without overwriting the first failure, so the host sees the innermost errno and syscall
 * with the outer context prepended to the message (fail_ctx()).
 */
#ifndef FNHOST_INIT_H
#define FNHOST_INIT_H

#include <stddef.h>
#include <sys/types.h>

#define CONTROL_FD 3          /* the addon dup2()s the init's end of the control socketpair here */
#define MAX_FRAME (1u << 20)  /* 1 MiB: argv + env of one process; the host refuses larger specs first */
#define MAX_FDS 8             /* stdin, stdout, stderr, wire, one mount fd; room to spare */
#define MAX_PROCS 256         /* tracked processes (started by the host); untracked ones are only reaped */

struct failure {
	int err;
	char syscall[32];
	char path[512];
	char msg[512];
};
extern struct failure last_failure;

int fail(int err, const char *syscall, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int fail_ctx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A frame is a list of NUL-terminated strings plus the fds that arrived with it. */
struct frame {
	char *buf;
	size_t len;
	size_t pos;          /* read cursor for next_str() */
	int fds[MAX_FDS];
	int nfds;
	int fds_used;        /* cursor for next_fd() */
};
int recv_frame(int fd, struct frame *f);
const char *next_str(struct frame *f);
int next_int(struct frame *f, long long *out);
int next_fd(struct frame *f);

/* proto.c: status messages to the host (same framing: u32 little-endian length + NUL-separated strings). */
int send_msg(const char *const *parts, int n);

/* ns.c */
int ns_make_private(void);
int ns_lo_up(void);
int ns_sethostname(const char *name);

/* mount.c */
int mnt_tmpfs(const char *target, const char *size_bytes, const char *mode);
int mnt_tmp_premake(void);
int mnt_tmp(const char *size_bytes, const char *target);
int mnt_proc(const char *target);
int mnt_dev(const char *target);
int mnt_pivot(const char *new_root);
int mnt_enter(const char *new_root);
int mnt_move_fd(int fd, const char *target);
int mnt_move(const char *from, const char *to);
int mnt_stage(const char *stage);
int mnt_template(const char *stage, const char *init_path);
int mnt_zygote(const char *stage);

/* caps.c */
int caps_drop_all(uid_t uid, gid_t gid);
int caps_init_keep_minimal(void);
int caps_init_started(void);
int caps_zygote_keep(void);

/* seccomp.c: seccomp_prepare builds the filter program once (before any spawn; install calls it too) */
void seccomp_prepare(void);
int seccomp_install(void);

/* main.c: whether the init's own oom_score_adj -1000 was accepted */
extern int init_oom_protected;

/* zygote.c: never returns in the zygote; returns 0 in a newborn init (continue as --in-template), or -1
 * with last_failure set (in the zygote before "ready", or in a newborn init) */
int zygote_main(const char *stage, int pool_size);

/* process.c */
struct proc_spec {
	long long id;
	uid_t uid;
	gid_t gid;
	const char *cwd;
	char **argv;
	char **envp;
	int fds[4];
	int nfds;
};
pid_t proc_spawn(const struct proc_spec *spec);

#endif
