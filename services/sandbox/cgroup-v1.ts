/**
 * @module sandbox/cgroup-v1
 * cgroup v1: one hierarchy per controller (Documentation/admin-guide/cgroup-v1/). Memory: limit_in_bytes and,
 * when swap accounting exists, memsw.limit_in_bytes (= limit: no swap); peak = max_usage_in_bytes; OOM kills =
 * memory.oom_control "oom_kill". pids.max. cpu.cfs_quota_us/cfs_period_us. v1 has no cgroup.kill: killAll
 * loops SIGKILL over cgroup.procs until empty (the sandbox's pid namespace usually does it first: killing its
 * init kills everything in it).
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  CFS_PERIOD_US, MiB, cfsQuotaUs, keyIn, readInt, readKey, sleep,
  type CgroupFsOptions, type CgroupHandle, type CgroupJoin, type CgroupManager, type Controller,
} from './cgroup.ts';
import type { MemoryStats, SandboxLimits } from './types.ts';


export function readPids(file: string): number[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').filter(Boolean).map(Number);
}

export async function removeDirs(dirs: string[], rmdir: (p: string) => void, deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  for (const dir of dirs) {
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      try {
        rmdir(dir);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        // EBUSY: tasks that were just killed are still being released by the kernel.
        if (code !== 'EBUSY' || Date.now() > deadline) throw e;
        await sleep(delay);
      }
    }
  }
}

export async function killLoop(pids: () => number[], deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
    const list = pids();
    if (list.length === 0) return;
    for (const pid of list) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    if (Date.now() > deadline) throw new Error(`cgroup still has tasks after ${deadlineMs} ms: ${list.join(',')}`);
    await sleep(delay);
  }
}

/** Reads a cgroup file through an fd opened once: pread at 0 makes the kernel render it afresh (seq_file). */
function preadText(fd: number, buf: Buffer): string {
  return buf.toString('utf8', 0, readSync(fd, buf, 0, buf.length, 0));
}

class V1Handle implements CgroupHandle {
  /**
   * memory.oom_control and memory.max_usage_in_bytes, opened when the cgroup is made: every process's exit
   * status reads both, and a pread costs a fraction of open + read + close of a freshly made cgroup's file
   * (path walk, dentry allocation). Closed by remove().
   */
  private statFds: { oom: number; peak: number; buf: Buffer } | undefined;

  constructor(
    readonly path: string,
    private readonly dirs: Partial<Record<Controller, string>>,
    private readonly memsw: boolean,
    private readonly rmdir: (p: string) => void,
  ) {}

  /** Opens the files the exit status reads (see statFds); best effort, reads fall back to paths. */
  openStats(): void {
    const mem = this.dir('memory');
    if (!mem || this.statFds) return;
    let oom = -1;
    try {
      oom = openSync(join(mem, 'memory.oom_control'), 'r');
      this.statFds = { oom, peak: openSync(join(mem, 'memory.max_usage_in_bytes'), 'r'), buf: Buffer.allocUnsafe(256) };
    } catch {
      if (oom >= 0) closeSync(oom);
    }
  }

  private closeStats(): void {
    if (!this.statFds) return;
    closeSync(this.statFds.oom);
    closeSync(this.statFds.peak);
    this.statFds = undefined;
  }

  private dir(c: Controller): string | undefined {
    return this.dirs[c];
  }

  /** distinct directories: co-mounted controllers (e.g. "cpu,cpuacct" with pids) share one */
  private unique(): string[] {
    return [...new Set(Object.values(this.dirs))];
  }

  openJoin(): CgroupJoin {
    const fds: number[] = [];
    try {
      // `tasks`, not cgroup.procs: see native/addon/addon.cc ChildMain (no global rwsem for a lone thread)
      for (const d of this.unique()) fds.push(openSync(join(d, 'tasks'), 'w'));
    } catch (e) {
      for (const fd of fds) closeSync(fd);
      throw e;
    }
    return { procsFds: fds, dirFd: -1 };
  }

  /** `fresh`: the cgroup was just made, so its limits are the kernel's defaults (unlimited, 100 ms period). */
  setLimits(l: Partial<SandboxLimits>, fresh = false): void {
    const mem = this.dir('memory');
    if (mem && l.memoryMb !== undefined) {
      const bytes = String(l.memoryMb * MiB);
      const limit = join(mem, 'memory.limit_in_bytes');
      const sw = join(mem, 'memory.memsw.limit_in_bytes');
      if (!this.memsw) {
        writeFileSync(limit, bytes);
      } else if (!fresh && l.memoryMb * MiB > readInt(limit)) {
        // the kernel keeps limit <= memsw at every step: raise memsw first, lower limit first
        writeFileSync(sw, bytes);
        writeFileSync(limit, bytes);
      } else {
        writeFileSync(limit, bytes);
        writeFileSync(sw, bytes);
      }
    }
    const pids = this.dir('pids');
    if (pids && l.pidsMax !== undefined) writeFileSync(join(pids, 'pids.max'), String(l.pidsMax));
    const cpu = this.dir('cpu');
    if (cpu && l.cpuMillis !== undefined) {
      const q = cfsQuotaUs(l.cpuMillis);
      if (!fresh) writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(CFS_PERIOD_US));
      if (!fresh || q !== null) writeFileSync(join(cpu, 'cpu.cfs_quota_us'), q === null ? '-1' : String(q));
    }
  }

  memory(): MemoryStats {
    const mem = this.dir('memory');
    if (!mem) return { currentBytes: 0, peakBytes: 0, oomKills: 0 };
    return {
      currentBytes: readInt(join(mem, 'memory.usage_in_bytes')),
      peakBytes: readInt(join(mem, 'memory.max_usage_in_bytes')),
      oomKills: readKey(join(mem, 'memory.oom_control'), 'oom_kill'),
    };
  }

  oomKills(): number {
    const mem = this.dir('memory');
    if (!mem) return 0;
    if (this.statFds) return keyIn(preadText(this.statFds.oom, this.statFds.buf), 'oom_kill');
    return readKey(join(mem, 'memory.oom_control'), 'oom_kill');
  }

  peakBytes(): number {
    const mem = this.dir('memory');
    if (!mem) return 0;
    if (this.statFds) return Number.parseInt(preadText(this.statFds.peak, this.statFds.buf), 10) || 0;
    return readInt(join(mem, 'memory.max_usage_in_bytes'));
  }

  resetPeak(): void {
    const mem = this.dir('memory');
    // Writing 0 resets the watermark to the current usage (cgroup-v1/memory.rst, 5.4).
    if (mem) writeFileSync(join(mem, 'memory.max_usage_in_bytes'), '0');
  }

  pids(): number[] {
    const seen = new Set<number>();
    for (const d of this.unique()) for (const p of readPids(join(d, 'cgroup.procs'))) seen.add(p);
    return [...seen];
  }

  async killAll(deadlineMs = 5000): Promise<void> {
    await killLoop(() => this.pids(), deadlineMs);
  }

  async remove(deadlineMs = 5000): Promise<void> {
    this.closeStats();
    await removeDirs(this.unique(), this.rmdir, deadlineMs);
  }
}

export class CgroupV1 implements CgroupManager {
  readonly kind = 'v1';
  readonly joinsAfterClone = true;
  private readonly memsw: boolean;
  private readonly rmdir: (p: string) => void;
  private readonly nodeDirs = new Set<string>();

  /** @param roots mount point of each v1 controller handled here, e.g. {memory: '/sys/fs/cgroup/memory'} */
  constructor(private readonly roots: Partial<Record<Controller, string>>, opts: CgroupFsOptions = {}) {
    this.memsw = roots.memory ? existsSync(join(roots.memory, 'memory.memsw.limit_in_bytes')) : false;
    this.rmdir = opts.rmdir ?? ((p) => rmdirSync(p));
  }

  private dirsFor(rel: string): Partial<Record<Controller, string>> {
    const out: Partial<Record<Controller, string>> = {};
    for (const [c, root] of Object.entries(this.roots) as Array<[Controller, string]>) out[c] = join(root, rel);
    return out;
  }

  create(nodeId: string, id: string, limits: SandboxLimits, created?: (h: CgroupHandle) => void): CgroupHandle {
    const rel = join('fnhost', nodeId, id);
    const dirs = this.dirsFor(rel);
    const made: string[] = [];
    try {
      for (const [c, d] of Object.entries(dirs) as Array<[Controller, string]>) {
        if (made.includes(d)) continue; // co-mounted with a controller already handled
        const parent = join(this.roots[c]!, 'fnhost', nodeId);
        if (!this.nodeDirs.has(parent)) {
          mkdirSync(parent, { recursive: true });
          this.nodeDirs.add(parent);
        }
        try {
          mkdirSync(d);
        } catch (e) {
          // the node dir was removed behind our back (clean-up by another process): make it again
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          mkdirSync(parent, { recursive: true });
          mkdirSync(d);
        }
        made.push(d);
      }
      const h = new V1Handle(rel, dirs, this.memsw, this.rmdir);
      created?.(h);
      h.setLimits(limits, true);
      h.openStats();
      if (dirs.memory && !this.memsw) {
        // no swap for the sandbox where memsw accounting is off (cgroup-v1/memory.rst, 5.3); with memsw the
        // equal limits already forbid it
        try { writeFileSync(join(dirs.memory, 'memory.swappiness'), '0'); } catch { /* not on every kernel */ }
      }
      return h;
    } catch (e) {
      for (const d of made.reverse()) {
        try { this.rmdir(d); } catch { /* best effort: nothing ran in it */ }
      }
      throw e;
    }
  }

  list(nodeId: string): string[] {
    const ids = new Set<string>();
    for (const root of new Set(Object.values(this.roots))) {
      try {
        for (const e of readdirSync(join(root, 'fnhost', nodeId), { withFileTypes: true })) if (e.isDirectory()) ids.add(e.name);
      } catch {
        /* no such node dir */
      }
    }
    return [...ids];
  }

  open(nodeId: string, id: string): CgroupHandle {
    const rel = join('fnhost', nodeId, id);
    return new V1Handle(rel, this.dirsFor(rel), this.memsw, this.rmdir);
  }

  removeNode(nodeId: string): void {
    if (this.list(nodeId).length) return;
    for (const root of new Set(Object.values(this.roots))) {
      try { this.rmdir(join(root, 'fnhost', nodeId)); } catch { /* busy or gone */ }
      this.nodeDirs.delete(join(root, 'fnhost', nodeId));
    }
  }
}
