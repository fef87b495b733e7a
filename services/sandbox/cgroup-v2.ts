/**
 * @module sandbox/cgroup-v2
 * cgroup v2 (Documentation/admin-guide/cgroup-v2.rst): one unified hierarchy. memory.max + memory.swap.max=0,
 * pids.max, cpu.max "<quota> <period>", memory.events "oom_kill", memory.peak, cgroup.kill. Controllers are
 * enabled down the path through each parent's cgroup.subtree_control. The init is born in the cgroup via
 * clone3(CLONE_INTO_CGROUP) with the directory's fd.
 */
import { closeSync, constants, mkdirSync, openSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CFS_PERIOD_US, MiB, cfsQuotaUs, readInt, readKey, type CgroupFsOptions, type CgroupHandle, type CgroupJoin, type CgroupManager, type Controller } from './cgroup.ts';
import { killLoop, readPids, removeDirs } from './cgroup-v1.ts';
import type { MemoryStats, SandboxLimits } from './types.ts';


class V2Handle implements CgroupHandle {
  constructor(
    readonly path: string,
    private readonly dir: string,
    private readonly controllers: readonly Controller[],
    private readonly rmdir: (p: string) => void,
  ) {}

  private has(c: Controller): boolean {
    return this.controllers.includes(c);
  }

  openJoin(): CgroupJoin {
    return { procsFds: [], dirFd: openSync(this.dir, constants.O_RDONLY | constants.O_DIRECTORY) };
  }

  setLimits(l: Partial<SandboxLimits>): void {
    if (this.has('memory') && l.memoryMb !== undefined) {
      writeFileSync(join(this.dir, 'memory.max'), String(l.memoryMb * MiB));
      writeFileSync(join(this.dir, 'memory.swap.max'), '0');
    }
    if (this.has('pids') && l.pidsMax !== undefined) writeFileSync(join(this.dir, 'pids.max'), String(l.pidsMax));
    if (this.has('cpu') && l.cpuMillis !== undefined) {
      const q = cfsQuotaUs(l.cpuMillis);
      writeFileSync(join(this.dir, 'cpu.max'), `${q === null ? 'max' : q} ${CFS_PERIOD_US}`);
    }
  }

  memory(): MemoryStats {
    if (!this.has('memory')) return { currentBytes: 0, peakBytes: 0, oomKills: 0 };
    return {
      currentBytes: readInt(join(this.dir, 'memory.current')),
      peakBytes: readInt(join(this.dir, 'memory.peak')),
      oomKills: readKey(join(this.dir, 'memory.events'), 'oom_kill'),
    };
  }

  oomKills(): number {
    return this.has('memory') ? readKey(join(this.dir, 'memory.events'), 'oom_kill') : 0;
  }

  peakBytes(): number {
    return this.has('memory') ? readInt(join(this.dir, 'memory.peak')) : 0;
  }

  resetPeak(): void {
    // memory.peak is per-open-file resettable only since 6.12; the cgroup-wide value stays. Nothing to do.
  }

  pids(): number[] {
    return readPids(join(this.dir, 'cgroup.procs'));
  }

  async killAll(deadlineMs = 5000): Promise<void> {
    try {
      writeFileSync(join(this.dir, 'cgroup.kill'), '1'); // 5.14+: kills every task, also ones forking now
    } catch {
      /* older kernel: the loop below does it */
    }
    await killLoop(() => this.pids(), deadlineMs);
  }

  async remove(deadlineMs = 5000): Promise<void> {
    await removeDirs([this.dir], this.rmdir, deadlineMs);
  }
}

export class CgroupV2 implements CgroupManager {
  readonly kind = 'v2';
  private readonly rmdir: (p: string) => void;
  private readonly enabled = new Set<string>();

  /** @param root the cgroup2 mount point; @param controllers the ones it holds that we use */
  constructor(private readonly root: string, private readonly controllers: readonly Controller[], opts: CgroupFsOptions = {}) {
    this.rmdir = opts.rmdir ?? ((p) => rmdirSync(p));
  }

  /** cgroup.subtree_control of root, fnhost and fnhost/<node> must enable our controllers for the leaves. */
  private ensureParents(nodeId: string): void {
    const key = nodeId;
    if (this.enabled.has(key)) return;
    const want = this.controllers.map((c) => `+${c}`).join(' ');
    const chain = [this.root, join(this.root, 'fnhost'), join(this.root, 'fnhost', nodeId)];
    for (const d of chain) {
      mkdirSync(d, { recursive: true });
      if (want) writeFileSync(join(d, 'cgroup.subtree_control'), want);
    }
    this.enabled.add(key);
  }

  create(nodeId: string, id: string, limits: SandboxLimits, created?: (h: CgroupHandle) => void): CgroupHandle {
    this.ensureParents(nodeId);
    const rel = join('fnhost', nodeId, id);
    const dir = join(this.root, rel);
    try {
      mkdirSync(dir);
    } catch (e) {
      // the node dir was removed behind our back (clean-up by another process): make the chain again
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      this.enabled.delete(nodeId);
      this.ensureParents(nodeId);
      mkdirSync(dir);
    }
    try {
      const h = new V2Handle(rel, dir, this.controllers, this.rmdir);
      h.setLimits(limits);
      created?.(h);
      return h;
    } catch (e) {
      try { this.rmdir(dir); } catch { /* nothing ran in it */ }
      throw e;
    }
  }

  list(nodeId: string): string[] {
    try {
      return readdirSync(join(this.root, 'fnhost', nodeId), { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    } catch {
      return [];
    }
  }

  open(nodeId: string, id: string): CgroupHandle {
    const rel = join('fnhost', nodeId, id);
    return new V2Handle(rel, join(this.root, rel), this.controllers, this.rmdir);
  }

  removeNode(nodeId: string): void {
    if (this.list(nodeId).length) return;
    try { this.rmdir(join(this.root, 'fnhost', nodeId)); } catch { /* busy or gone */ }
    this.enabled.delete(nodeId);
  }
}

export function closeJoin(j: CgroupJoin): void {
  for (const fd of j.procsFds) closeSync(fd);
  if (j.dirFd >= 0) closeSync(j.dirFd);
}
