/**
 * @module sandbox/cgroup
 * One small table of cgroup operations with a v1 and a v2 implementation (crun's cgroup manager), chosen
 * per controller by cgroup-detect.ts. Both run through the same conformance suite
 * (test/kernel/sandbox-cgroup.test.ts): the real cgroupfs here (v1), and a scratch directory laid out
 * like cgroupfs for v2.
 *
 * All cgroups of ours live under `fnhost/<nodeId>/<sandboxId>` in each hierarchy.
 */
import { readFileSync } from 'node:fs';
import type { MemoryStats, SandboxLimits } from './types.ts';

export type Controller = 'memory' | 'pids' | 'cpu';
export const CONTROLLERS: readonly Controller[] = ['memory', 'pids', 'cpu'];

/** What the spawner needs to place the init into the cgroup at birth. */
export interface CgroupJoin {
  /** v1: `tasks` of each controller, opened for writing; the clone child writes "0" to each. */
  procsFds: number[];
  /** v2: the cgroup directory (clone3 CLONE_INTO_CGROUP), or -1. */
  dirFd: number;
}

/** One sandbox's cgroup(s). Synchronous where cgroupfs is (every op is a few µs, measured in bench). */
export interface CgroupHandle {
  /** relative path below each hierarchy's root, e.g. fnhost/node-a/sb-1f2e */
  readonly path: string;
  /** opens what the spawner needs; the caller closes the fds (closeJoin) after spawning. */
  openJoin(): CgroupJoin;
  setLimits(limits: Partial<SandboxLimits>): void;
  memory(): MemoryStats;
  /** memory.oom_control oom_kill (v1) / memory.events oom_kill (v2): one file read */
  oomKills(): number;
  /** max_usage_in_bytes (v1) / memory.peak (v2): one file read */
  peakBytes(): number;
  /** resets the peak-memory watermark where the kernel allows it (v1 max_usage_in_bytes). */
  resetPeak(): void;
  /** pids (host namespace) of every task in the cgroup(s). */
  pids(): number[];
  /** SIGKILL every task; resolves when the cgroup(s) have no task left (or the deadline passed: throws). */
  killAll(deadlineMs?: number): Promise<void>;
  /** removes the cgroup dir(s); retries EBUSY while dying tasks are released. Idempotent. */
  remove(deadlineMs?: number): Promise<void>;
}

export interface CgroupManager {
  readonly kind: string;
  /**
   * True when a spawned init can join its cgroups itself, after it was cloned (v1: it writes to the `tasks`
   * fds it is sent): createSandbox then starts the clone first and makes the cgroups meanwhile. False or
   * absent: the cgroups must exist before the clone (v2: CLONE_INTO_CGROUP places the init at birth).
   */
  readonly joinsAfterClone?: boolean;
  /**
   * creates `fnhost/<nodeId>/<id>` with `limits` applied; on failure nothing is left that `created` did not
   * put in (an init it sent the join to: the caller ends it, then removes the cgroup).
   * `created(h)` runs once the directories exist: with `joinsAfterClone`, before the limits are written, so
   * that an init waiting for its join runs on while they are (nothing of the sandbox runs before create()
   * has returned); other managers call it after.
   */
  create(nodeId: string, id: string, limits: SandboxLimits, created?: (h: CgroupHandle) => void): CgroupHandle;
  /** sandbox ids that exist below fnhost/<nodeId> (for leftovers clean-up). */
  list(nodeId: string): string[];
  /** a handle on an existing sandbox cgroup (for clean-up). */
  open(nodeId: string, id: string): CgroupHandle;
  /** removes fnhost/<nodeId> itself when empty (best effort). */
  removeNode(nodeId: string): void;
}

/** Options shared by both implementations; tests replace `rmdir` for a scratch dir. */
export interface CgroupFsOptions {
  /** how a cgroup directory is removed (cgroupfs: rmdir; a scratch dir: recursive rm). */
  rmdir?: (path: string) => void;
}

export const MiB = 1024 * 1024;
/** cgroup v1 and v2 default CFS period (kernel/sched/core.c default_cfs_period: 100 ms). */
export const CFS_PERIOD_US = 100_000;

/** v1 cpu.cfs_quota_us / v2 cpu.max quota for `cpuMillis` thousandths of a core; null = unlimited. */
export function cfsQuotaUs(cpuMillis: number): number | null {
  return cpuMillis > 0 ? Math.round((cpuMillis * CFS_PERIOD_US) / 1000) : null;
}

/** A cgroup file's integer value; 0 when the file is missing or empty (a controller not mounted). */
export function readInt(file: string): number {
  try {
    return Number.parseInt(readFileSync(file, 'utf8'), 10) || 0;
  } catch {
    return 0;
  }
}

/** The value of `key` in a flat-keyed cgroup file (memory.events, memory.oom_control); 0 when absent. */
export function readKey(file: string, key: string): number {
  try {
    return keyIn(readFileSync(file, 'utf8'), key);
  } catch {
    return 0; // missing file
  }
}

/** The value of `key` in the text of a flat-keyed cgroup file; 0 when absent. */
export function keyIn(text: string, key: string): number {
  for (const line of text.split('\n')) {
    const [k, v] = line.split(/\s+/);
    if (k === key) return Number.parseInt(v ?? '0', 10) || 0;
  }
  return 0;
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}
