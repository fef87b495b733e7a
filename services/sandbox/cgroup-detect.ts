/**
 * @module sandbox/cgroup-detect
 * Finds, per controller, which hierarchy holds it: a v1 mount whose super options name it, or the cgroup2
 * mount whose cgroup.controllers lists it (hybrid hosts have both: here memory/pids/cpu are v1 and the
 * cgroup2 mount holds only hugetlb). Builds the manager: v1, v2, or both side by side.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONTROLLERS, type CgroupHandle, type CgroupJoin, type CgroupManager, type Controller } from './cgroup.ts';
import { CgroupV1 } from './cgroup-v1.ts';
import { CgroupV2 } from './cgroup-v2.ts';
import type { MemoryStats, SandboxLimits } from './types.ts';

export interface ControllerPlacement {
  controller: Controller;
  version: 1 | 2;
  mountpoint: string;
}

/** Parses /proc/self/mountinfo text (exported for unit tests). */
export function detectControllers(mountinfo: string, readControllers: (mp: string) => string[]): ControllerPlacement[] {
  const v1 = new Map<Controller, string>();
  let v2: string | undefined;
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const [fstype, , superOpts = ''] = line.slice(sep + 3).split(' ');
    const mountpoint = left[4];
    if (!mountpoint) continue;
    if (fstype === 'cgroup') {
      const opts = superOpts.split(',');
      for (const c of CONTROLLERS) if (opts.includes(c) && !v1.has(c)) v1.set(c, mountpoint);
    } else if (fstype === 'cgroup2' && !v2) {
      v2 = mountpoint;
    }
  }
  const v2ctl = v2 ? readControllers(v2) : [];
  const out: ControllerPlacement[] = [];
  for (const c of CONTROLLERS) {
    const m1 = v1.get(c);
    if (m1) out.push({ controller: c, version: 1, mountpoint: m1 });
    else if (v2 && v2ctl.includes(c)) out.push({ controller: c, version: 2, mountpoint: v2 });
  }
  return out;
}

/** Fans every operation out to a v1 and a v2 manager (controllers split across both hierarchies). */
export class CombinedCgroups implements CgroupManager {
  readonly kind = 'mixed';
  constructor(private readonly a: CgroupManager, private readonly b: CgroupManager) {}
  private both(ha: CgroupHandle, hb: CgroupHandle): CgroupHandle {
    return {
      path: ha.path,
      openJoin: (): CgroupJoin => {
        const ja = ha.openJoin();
        const jb = hb.openJoin();
        return { procsFds: [...ja.procsFds, ...jb.procsFds], dirFd: ja.dirFd >= 0 ? ja.dirFd : jb.dirFd };
      },
      setLimits: (l: Partial<SandboxLimits>) => { ha.setLimits(l); hb.setLimits(l); },
      memory: (): MemoryStats => {
        const x = ha.memory();
        const y = hb.memory();
        return { currentBytes: x.currentBytes + y.currentBytes, peakBytes: x.peakBytes + y.peakBytes, oomKills: x.oomKills + y.oomKills };
      },
      oomKills: () => ha.oomKills() + hb.oomKills(),
      peakBytes: () => ha.peakBytes() + hb.peakBytes(),
      resetPeak: () => { ha.resetPeak(); hb.resetPeak(); },
      pids: () => [...new Set([...ha.pids(), ...hb.pids()])],
      killAll: async (d?: number) => { await Promise.all([ha.killAll(d), hb.killAll(d)]); },
      remove: async (d?: number) => { await ha.remove(d); await hb.remove(d); },
    };
  }
  create(nodeId: string, id: string, limits: SandboxLimits, created?: (h: CgroupHandle) => void): CgroupHandle {
    const ha = this.a.create(nodeId, id, limits);
    let h: CgroupHandle;
    try {
      h = this.both(ha, this.b.create(nodeId, id, limits));
    } catch (e) {
      void ha.remove();
      throw e;
    }
    created?.(h);
    return h;
  }
  list(nodeId: string): string[] {
    return [...new Set([...this.a.list(nodeId), ...this.b.list(nodeId)])];
  }
  open(nodeId: string, id: string): CgroupHandle {
    return this.both(this.a.open(nodeId, id), this.b.open(nodeId, id));
  }
  removeNode(nodeId: string): void {
    this.a.removeNode(nodeId);
    this.b.removeNode(nodeId);
  }
}

export function buildManager(placements: ControllerPlacement[]): CgroupManager {
  const v1: Partial<Record<Controller, string>> = {};
  const v2: Controller[] = [];
  let v2root = '';
  for (const p of placements) {
    if (p.version === 1) v1[p.controller] = p.mountpoint;
    else { v2.push(p.controller); v2root = p.mountpoint; }
  }
  if (!placements.some((p) => p.controller === 'memory')) {
    throw new Error('no memory cgroup controller is mounted (neither cgroup v1 nor v2): memory caps cannot be enforced');
  }
  const m1 = Object.keys(v1).length ? new CgroupV1(v1) : undefined;
  const m2 = v2.length ? new CgroupV2(v2root, v2) : undefined;
  if (m1 && m2) return new CombinedCgroups(m1, m2);
  return (m1 ?? m2)!;
}

let cached: CgroupManager | undefined;

/** The host's cgroup manager, detected once from /proc/self/mountinfo. */
export function hostCgroups(): CgroupManager {
  if (!cached) {
    const placements = detectControllers(readFileSync('/proc/self/mountinfo', 'utf8'), (mp) => {
      try {
        return readFileSync(join(mp, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
      } catch {
        return [];
      }
    });
    cached = buildManager(placements);
  }
  return cached;
}
