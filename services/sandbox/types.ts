/**
 * @module sandbox/types
 * The contract of the sandbox: the TypeScript face of native/ (addon + init). Everything above it
 * (runtimes, scheduler) is written against these types only.
 *
 * Life of a sandbox (DESIGN.md "Words"):
 *   createSandbox(opts)  → fresh pid/mnt/uts/ipc/net/cgroup namespaces, init (PID 1) born inside its own
 *                          cgroup with default caps, blocked on its control channel. No rootfs yet. (pool)
 *   sb.start(spec)       → caps applied, read-only overlay rootfs + /tmp tmpfs + /proc + minimal /dev,
 *                          the rootfs becomes the root (the host's tree was pivot_root'ed out of the
 *                          sandbox's mount namespace before it existed), then the first process:
 *                          unprivileged uid, no caps, no_new_privs, seccomp, exec(argv). (specialise / cold start)
 *   sb.exec(spec)        → another process in the same started sandbox (same rootfs, same hardening);
 *                          spec.mounts: overlays attached first, in the same request to the init.
 *   sb.attach(t, dirs)   → a read-only overlay of `dirs` appears at `t` inside a started sandbox
 *                          (code layer into a pre-booted runtime).
 *   proc.exited          → {code, signal, oomKilled, peakMemoryBytes}
 *   sb.kill() / sb.destroy() → nothing of the sandbox is left: no process, mount or cgroup.
 *
 * Paths given here are host paths and must be absolute. Layer lists are bottom-first (OCI order: the
 * first entry is the base layer, the last is the top); the native side turns them into overlayfs's
 * top-first `lowerdir=`.
 *
 * Errors: bad specs reject with `InvalidRequest` (details.field) before anything is created; kernel
 * failures reject with a `SandboxError` carrying Node's errno shape `{code: 'EPERM', errno, syscall, path}`.
 */
import type { Readable, Writable, Duplex } from 'node:stream';

/** Resource caps of one sandbox's cgroup. */
export interface SandboxLimits {
  /** memory cap in MiB (v2 memory.max, v1 memory.limit_in_bytes and memsw); swap is never allowed. */
  memoryMb: number;
  /** max number of tasks (pids.max); a fork bomb stops here. */
  pidsMax: number;
  /** CPU quota in thousandths of a core per period (1000 = one full core); 0 = unlimited. */
  cpuMillis: number;
}

export interface CreateOptions {
  /** caps at birth (defaults: memoryMb 128, pidsMax 64, cpuMillis 1000). */
  limits?: Partial<SandboxLimits>;
  /** the node's prefix below fnhost/ for cgroups (default: process-wide config, see setNodeId()). */
  nodeId?: string;
}

export interface ProcessSpec {
  /** argv[0] is resolved inside the sandbox's rootfs (absolute path, or looked up in PATH of env). */
  argv: string[];
  env?: Record<string, string>;
  /** working directory inside the sandbox (default "/"). */
  cwd?: string;
  /** unprivileged uid/gid (default 65534/65534); 0 is refused. */
  uid?: number;
  gid?: number;
  /** when true the process gets fd 3: a stream socket whose other end is `SandboxProcess.wire`. */
  wire?: boolean;
  /**
   * The process's whole stdin. As much as the pipe holds (64 KiB by default) is written before the process
   * can run, so a process that reads stdin at once finds it without waiting for the host; the rest follows
   * as it reads, then stdin is closed (EOF). `SandboxProcess.stdin` is then already ended. An empty buffer
   * gives an immediate EOF. Without it, the caller writes `SandboxProcess.stdin` itself.
   * @example
   * const p = await sb.exec({ argv: ['/bin/cat'], stdin: Buffer.from('hello') });
   */
  stdin?: Uint8Array;
}

/** A process of a started sandbox (`Sandbox.exec`). */
export interface ExecSpec extends ProcessSpec {
  /**
   * Read-only overlays attached inside the sandbox right before the process starts, in the same request to the
   * init (one host→init round trip instead of `attach()` and `exec()`'s two): e.g. a function's code at /var/task
   * of a sandbox whose rootfs was mounted ahead of time. They stay for later processes, as `attach()` leaves
   * them; argv[0] may live in them. A failure once the request has gone out (a mount or the spawn failed in the
   * init) leaves the sandbox destroyed, as a failed `start()` does: which of its steps were done is not known.
   * @example
   * const p = await sb.exec({ argv: ['/var/task/run'], cwd: '/var/task', mounts: [{ target: '/var/task', layers: [codeDir] }] });
   */
  mounts?: Array<{ target: string; layers: string[] }>;
}

export interface StartSpec extends ProcessSpec {
  /** read-only overlayfs lower dirs (bottom first). No upper dir: the rootfs is read-only. */
  layers: string[];
  /** extra read-only overlays mounted inside the rootfs before it becomes the root, e.g. the code layer at /var/task. */
  mounts?: Array<{ target: string; layers: string[] }>;
  /** size cap of the /tmp tmpfs in MiB (default 64); charged to the sandbox's memory cgroup. */
  tmpfsMb?: number;
  /** hostname inside the UTS namespace (default: "fnhost"). */
  hostname?: string;
  /** caps applied before anything of the function runs. */
  limits?: Partial<SandboxLimits>;
}

export interface ExitStatus {
  /** exit code, or null when killed by a signal. */
  code: number | null;
  /** signal name ("SIGKILL") or null. */
  signal: string | null;
  /** the memory cgroup's OOM killer killed a process of this sandbox while this process ran. */
  oomKilled: boolean;
  /** the cgroup's peak memory use in bytes (v2 memory.peak, v1 memory.max_usage_in_bytes). */
  peakMemoryBytes: number;
}

export interface SandboxProcess {
  /** pid in the host's pid namespace. */
  readonly pid: number;
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** the host's end of the process's fd 3 when `wire: true`, else null. */
  readonly wire: Duplex | null;
  /** settles once the process has ended and been reaped by the init. Never rejects. */
  readonly exited: Promise<ExitStatus>;
}

export interface MemoryStats {
  currentBytes: number;
  peakBytes: number;
  /** how many times the cgroup's OOM killer has killed a task in this sandbox. */
  oomKills: number;
}

export type SandboxState = 'created' | 'started' | 'destroyed';

export interface Sandbox {
  readonly id: string;
  /** host pid of the sandbox's init (PID 1 inside). */
  readonly initPid: number;
  readonly state: SandboxState;
  start(spec: StartSpec): Promise<SandboxProcess>;
  exec(spec: ExecSpec): Promise<SandboxProcess>;
  attach(target: string, layers: string[]): Promise<void>;
  setLimits(limits: Partial<SandboxLimits>): Promise<void>;
  memory(): Promise<MemoryStats>;
  /** SIGKILL every process in the sandbox (the init included); idempotent. */
  kill(): Promise<void>;
  /** kill, reap, remove the cgroups; idempotent; after it nothing of the sandbox remains. */
  destroy(): Promise<void>;
}
