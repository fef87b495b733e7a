/**
 * The native addon's exact surface (native/addon/addon.cc). Syscall-shaped: no policy, no defaults.
 * Thrown errors have Node's errno shape (native/ERRORS.md): `{code: 'EPERM', errno: -1, syscall, path?}`.
 * Loaded only through services/sandbox/native.ts.
 */

export interface SpawnedInit {
  /** host pid of the init (PID 1 in its new pid namespace). The caller must reap it with waitpid. */
  pid: number;
  /** host end of the control socketpair (AF_UNIX SOCK_STREAM, close-on-exec); the init has fd 3. */
  fd: number;
}

export interface WaitStatus {
  /** exit code, or null when killed by a signal */
  code: number | null;
  /** signal number, or null */
  signal: number | null;
}

export interface NativeAddon {
  /**
   * clone(CLONE_VM|CLONE_VFORK|flags) → the child writes "0" to each of `joinFds` (cgroup v1 `tasks` files,
   * opened for writing by the caller), unshares its cgroup namespace when CLONE_NEWCGROUP is in `flags`, sets
   * PR_SET_PDEATHSIG=SIGKILL, dup2()s its control socket to fd 3 and execve()s `path` with argv [path, ...args]
   * and an empty env.
   * With `cgroupDirFd >= 0` (a cgroup v2 directory) it uses clone3 with CLONE_INTO_CGROUP instead.
   * With `templateNsFd >= 0` (a mount namespace fd; leave CLONE_NEWNS out of `flags`) the child does
   * setns(templateNsFd) + unshare(CLONE_NEWNS) before exec, and `path` is resolved in that copy.
   * Node's heap is never copied. Throws with syscall "clone"/"clone3"/"write"/"setns"/"unshare"/"execve".
   */
  spawnInit(path: string, args: string[], flags: number, joinFds: number[], cgroupDirFd: number, templateNsFd?: number): SpawnedInit;
  /** sendmsg(fd, data) with `fds` attached as SCM_RIGHTS to the first byte; completes partial writes. */
  sendFrame(fd: number, data: Buffer, fds: number[]): void;
  /** pipe2(O_CLOEXEC) → [read end, write end]. */
  pipe(): [number, number];
  /** socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC) → two connected ends. */
  socketpair(): [number, number];
  /** waitpid(pid, WNOHANG|__WALL) → status, or null when the child is still running. */
  waitpid(pid: number): WaitStatus | null;
  /**
   * fsopen("overlay") + fsconfig("lowerdir+", layer) per layer (top first; a joined "lowerdir" on kernels
   * before 6.8) + fsmount(RDONLY|NOSUID|NODEV) → detached mount fd (close-on-exec). No upper dir: overlayfs
   * needs at least 2 layers then.
   */
  overlayMount(layersTopFirst: string[]): number;
  /**
   * flock(fd, op) (op: LOCK_SH or LOCK_EX, optionally | LOCK_NB) → true; false when LOCK_NB was given and a
   * conflicting lock is held. Blocks otherwise. Throws for any other failure.
   */
  flock(fd: number, op: number): boolean;
  /** clone flag and flock operation values of this platform. */
  constants: {
    CLONE_NEWNS: number;
    CLONE_NEWPID: number;
    CLONE_NEWUTS: number;
    CLONE_NEWIPC: number;
    CLONE_NEWNET: number;
    CLONE_NEWCGROUP: number;
    LOCK_SH: number;
    LOCK_EX: number;
    LOCK_NB: number;
  };
}

declare const addon: NativeAddon;
export default addon;
