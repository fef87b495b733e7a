/**
 * Conformance of the two cgroup backends (services/sandbox/cgroup-v1.ts, cgroup-v2.ts) through the one
 * CgroupManager table: the same suite runs against (a) this host's real v1 hierarchies, (b) a scratch
 * directory laid out like a v1 cgroupfs and (c) one laid out like cgroup2. Plus per-controller detection
 * from mountinfo, and a real spawn through clone3(CLONE_INTO_CGROUP) into this host's cgroup2 mount.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { CgroupManager } from '../../services/sandbox/cgroup.ts';
import { CombinedCgroups, buildManager, detectControllers } from '../../services/sandbox/cgroup-detect.ts';
import { CgroupV1 } from '../../services/sandbox/cgroup-v1.ts';
import { CgroupV2 } from '../../services/sandbox/cgroup-v2.ts';
import { cleanupLeftovers, setCgroupManagerForTests } from '../../services/sandbox/index.ts';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('cgroup');
const root = process.getuid?.() === 0;
const scratch = mkdtempSync(join(tmpdir(), 'fnhost-cgscratch-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
const rmrf = (p: string) => rmSync(p, { recursive: true });

interface Backend {
  name: string;
  make(): CgroupManager;
  /** file holding a given value, relative to the sandbox's dir in the given controller */
  file(id: string, what: 'memory' | 'memsw' | 'swap' | 'pids' | 'cpu'): string | undefined;
  expect: { memory: string; swap?: string; pids: string; cpu: string; cpuUnlimited: string };
  /** prepares stats files a scratch dir lacks (the real kernel provides them) */
  fakeStats?(id: string): void;
  real: boolean;
}

function v1Scratch(): Backend {
  const base = join(scratch, 'v1');
  const roots = { memory: join(base, 'memory'), pids: join(base, 'pids'), cpu: join(base, 'cpu') };
  for (const r of Object.values(roots)) mkdirSync(r, { recursive: true });
  writeFileSync(join(roots.memory, 'memory.memsw.limit_in_bytes'), '9223372036854771712');
  return {
    name: 'v1 (scratch)', real: false,
    make: () => new CgroupV1(roots, { rmdir: rmrf }),
    file: (id, w) => ({
      memory: join(roots.memory, 'fnhost/n1', id, 'memory.limit_in_bytes'),
      memsw: join(roots.memory, 'fnhost/n1', id, 'memory.memsw.limit_in_bytes'),
      swap: undefined,
      pids: join(roots.pids, 'fnhost/n1', id, 'pids.max'),
      cpu: join(roots.cpu, 'fnhost/n1', id, 'cpu.cfs_quota_us'),
    })[w],
    expect: { memory: String(64 << 20), pids: '33', cpu: '25000', cpuUnlimited: '-1' },
    fakeStats: (id) => {
      const d = join(roots.memory, 'fnhost/n1', id);
      writeFileSync(join(d, 'memory.usage_in_bytes'), '1000');
      writeFileSync(join(d, 'memory.max_usage_in_bytes'), '2000');
      writeFileSync(join(d, 'memory.oom_control'), 'oom_kill_disable 0\nunder_oom 0\noom_kill 3\n');
    },
  };
}

function v2Scratch(): Backend {
  const base = join(scratch, 'v2');
  mkdirSync(base, { recursive: true });
  return {
    name: 'v2 (scratch)', real: false,
    make: () => new CgroupV2(base, ['memory', 'pids', 'cpu'], { rmdir: rmrf }),
    file: (id, w) => ({
      memory: join(base, 'fnhost/n1', id, 'memory.max'), memsw: undefined,
      swap: join(base, 'fnhost/n1', id, 'memory.swap.max'),
      pids: join(base, 'fnhost/n1', id, 'pids.max'),
      cpu: join(base, 'fnhost/n1', id, 'cpu.max'),
    })[w],
    expect: { memory: String(64 << 20), swap: '0', pids: '33', cpu: '25000 100000', cpuUnlimited: 'max 100000' },
    fakeStats: (id) => {
      const d = join(base, 'fnhost/n1', id);
      writeFileSync(join(d, 'memory.current'), '1000');
      writeFileSync(join(d, 'memory.peak'), '2000');
      writeFileSync(join(d, 'memory.events'), 'low 0\nhigh 0\nmax 5\noom 3\noom_kill 3\n');
    },
  };
}

function v1Real(): Backend {
  const r = '/sys/fs/cgroup';
  return {
    name: 'v1 (this host)', real: true,
    make: () => new CgroupV1({ memory: `${r}/memory`, pids: `${r}/pids`, cpu: `${r}/cpu` }),
    file: (id, w) => ({
      memory: `${r}/memory/fnhost/n1/${id}/memory.limit_in_bytes`, memsw: `${r}/memory/fnhost/n1/${id}/memory.memsw.limit_in_bytes`,
      swap: undefined, pids: `${r}/pids/fnhost/n1/${id}/pids.max`, cpu: `${r}/cpu/fnhost/n1/${id}/cpu.cfs_quota_us`,
    })[w],
    expect: { memory: String(64 << 20), pids: '33', cpu: '25000', cpuUnlimited: '-1' },
  };
}

const backends = [v1Scratch(), v2Scratch(), ...(root && existsSync('/sys/fs/cgroup/memory/cgroup.procs') ? [v1Real()] : [])];

describe.each(backends)('cgroup backend conformance: $name', (b) => {
  // The real-host backend writes below fnhost/n1: use the file's own id prefix to stay unique.
  const id = `cg-${process.pid}`;

  it('create applies every limit; setLimits raises and lowers memory; remove leaves nothing', async () => {
    const m = b.make();
    const h = m.create('n1', id, { memoryMb: 64, pidsMax: 33, cpuMillis: 250 });
    const read = (w: Parameters<Backend['file']>[1]) => readFileSync(b.file(id, w)!, 'utf8').trim();
    expect(read('memory')).toBe(b.expect.memory);
    if (b.file(id, 'memsw')) expect(read('memsw')).toBe(b.expect.memory);
    if (b.expect.swap) expect(read('swap')).toBe(b.expect.swap);
    expect(read('pids')).toBe(b.expect.pids);
    expect(read('cpu')).toBe(b.expect.cpu);
    expect(m.list('n1')).toContain(id);
    h.setLimits({ memoryMb: 256 });
    expect(read('memory')).toBe(String(256 << 20));
    if (b.file(id, 'memsw')) expect(read('memsw')).toBe(String(256 << 20));
    h.setLimits({ memoryMb: 32, cpuMillis: 0 });
    expect(read('memory')).toBe(String(32 << 20));
    expect(read('cpu')).toBe(b.expect.cpuUnlimited);
    b.fakeStats?.(id);
    const mem = h.memory();
    if (b.real) {
      expect(mem).toMatchObject({ currentBytes: 0, oomKills: 0 });
    } else {
      expect(mem).toEqual({ currentBytes: 1000, peakBytes: 2000, oomKills: 3 });
    }
    expect(h.pids()).toEqual([]);
    await h.killAll();
    await h.remove();
    expect(m.list('n1')).not.toContain(id);
    await h.remove(); // idempotent
    m.removeNode('n1');
  });

  it('a node dir removed behind the manager\'s back (another process cleaning up) is made again', async () => {
    const m = b.make();
    const h1 = m.create('n1', `${id}-a`, { memoryMb: 64, pidsMax: 33, cpuMillis: 250 });
    await h1.remove();
    b.make().removeNode('n1'); // another manager (process) removes fnhost/n1; m still has it cached
    expect(m.list('n1')).toEqual([]);
    const h2 = m.create('n1', `${id}-b`, { memoryMb: 64, pidsMax: 33, cpuMillis: 250 });
    expect(m.list('n1')).toEqual([`${id}-b`]);
    await h2.remove();
    m.removeNode('n1');
  });

  it('openJoin gives what the spawner needs (v1: `tasks` fds; v2: the directory fd)', async () => {
    const m = b.make();
    const h = m.create('n1', `${id}-j`, { memoryMb: 64, pidsMax: 33, cpuMillis: 250 });
    const j = h.openJoin();
    if (m.kind === 'v1') {
      expect(j.procsFds.length).toBe(3);
      expect(j.dirFd).toBe(-1);
    } else {
      expect(j.procsFds).toEqual([]);
      expect(j.dirFd).toBeGreaterThanOrEqual(0);
    }
    const { closeJoin } = await import('../../services/sandbox/cgroup-v2.ts');
    closeJoin(j);
    await h.remove();
    m.removeNode('n1');
  });
});

describe('cgroup v1 with co-mounted controllers (e.g. pids and cpu on one hierarchy)', () => {
  it('one directory is made, joined and removed once', async () => {
    const base = join(scratch, 'v1-comount');
    mkdirSync(join(base, 'memory'), { recursive: true });
    mkdirSync(join(base, 'pids_cpu'), { recursive: true });
    const m = new CgroupV1({ memory: join(base, 'memory'), pids: join(base, 'pids_cpu'), cpu: join(base, 'pids_cpu') }, { rmdir: rmrf });
    const h = m.create('n1', 'co', { memoryMb: 64, pidsMax: 9, cpuMillis: 100 });
    expect(readFileSync(join(base, 'pids_cpu/fnhost/n1/co/pids.max'), 'utf8')).toBe('9');
    expect(readFileSync(join(base, 'pids_cpu/fnhost/n1/co/cpu.cfs_quota_us'), 'utf8')).toBe('10000');
    const j = h.openJoin();
    expect(j.procsFds.length).toBe(2);
    const { closeJoin } = await import('../../services/sandbox/cgroup-v2.ts');
    closeJoin(j);
    await h.remove();
    expect(m.list('n1')).toEqual([]);
  });
});

describe('controller detection', () => {
  const line = (mp: string, fstype: string, opts: string) => `30 25 0:26 / ${mp} rw,relatime shared:1 - ${fstype} cgroup ${opts}`;

  it('this host: memory/pids/cpu on v1 even though a cgroup2 mount exists (hybrid)', () => {
    const info = [
      line('/sys/fs/cgroup/cpu', 'cgroup', 'rw,cpu'), line('/sys/fs/cgroup/memory', 'cgroup', 'rw,memory'),
      line('/sys/fs/cgroup/pids', 'cgroup', 'rw,pids'), line('/sys/fs/cgroup/unified', 'cgroup2', 'rw'),
    ].join('\n');
    expect(detectControllers(info, () => ['hugetlb'])).toEqual([
      { controller: 'memory', version: 1, mountpoint: '/sys/fs/cgroup/memory' },
      { controller: 'pids', version: 1, mountpoint: '/sys/fs/cgroup/pids' },
      { controller: 'cpu', version: 1, mountpoint: '/sys/fs/cgroup/cpu' },
    ]);
  });

  it('pure v2 host, and a split host (memory on v2, the rest on v1)', () => {
    const v2 = line('/sys/fs/cgroup', 'cgroup2', 'rw,nsdelegate');
    expect(detectControllers(v2, () => ['cpuset', 'cpu', 'io', 'memory', 'pids']).map((p) => p.version)).toEqual([2, 2, 2]);
    expect(buildManager(detectControllers(v2, () => ['cpu', 'memory', 'pids'])).kind).toBe('v2');
    const split = [line('/sys/fs/cgroup/unified', 'cgroup2', 'rw'), line('/sys/fs/cgroup/pids', 'cgroup', 'rw,pids'), line('/sys/fs/cgroup/cpu,cpuacct', 'cgroup', 'rw,cpu,cpuacct')].join('\n');
    const placed = detectControllers(split, () => ['memory']);
    expect(placed).toEqual([
      { controller: 'memory', version: 2, mountpoint: '/sys/fs/cgroup/unified' },
      { controller: 'pids', version: 1, mountpoint: '/sys/fs/cgroup/pids' },
      { controller: 'cpu', version: 1, mountpoint: '/sys/fs/cgroup/cpu,cpuacct' },
    ]);
    expect(buildManager(placed).kind).toBe('mixed');
  });

  it('no memory controller anywhere is refused with a clear error', () => {
    expect(() => buildManager([])).toThrow(/memory/);
  });
});

const unified = '/sys/fs/cgroup/unified';
describe.skipIf(!root || !existsSync(`${unified}/cgroup.procs`))('clone3(CLONE_INTO_CGROUP) on this host\'s cgroup2 mount', () => {
  it('the init is born in the v2 cgroup and in the v1 ones at once (combined backends)', async () => {
    const r = '/sys/fs/cgroup';
    setCgroupManagerForTests(new CombinedCgroups(
      new CgroupV1({ memory: `${r}/memory`, pids: `${r}/pids`, cpu: `${r}/cpu` }),
      new CgroupV2(unified, []), // hugetlb only there: no controller of ours, but a real v2 cgroup to be born in
    ));
    try {
      const sb = await env.create();
      // through the zygote (native/init/zygote.c: clone3 with CLONE_INTO_CGROUP), not the exec fallback
      expect(readFileSync(`/proc/${sb.initPid}/cmdline`, 'utf8').split('\0')[1]).toBe('--init');
      const cg = readFileSync(`/proc/${sb.initPid}/cgroup`, 'utf8');
      expect(cg).toContain(`0::/fnhost/${env.nodeId}/${sb.id}`);
      expect(cg).toContain(`memory:/fnhost/${env.nodeId}/${sb.id}`);
      const res = await collect(await sb.start({ layers: [env.fx().base], argv: ['/bin/echo', 'v2 ok'] }));
      expect(res.stdout).toBe('v2 ok\n');
      await sb.destroy();
      expect(existsSync(`${unified}/fnhost/${env.nodeId}/${sb.id}`)).toBe(false);
      await cleanupLeftovers(env.nodeId);
      expect(existsSync(`${unified}/fnhost/${env.nodeId}`)).toBe(false);
    } finally {
      setCgroupManagerForTests(undefined);
    }
  });
});
