/**
 * `npm run bench:sandbox` — time to run `/bin/true` to completion in a sandbox, ours against the floor and
 * the usual runtimes, on the same busybox rootfs, in one run. One JSON object on stdout, progress on stderr:
 *
 *   {"floor": E, "ours": {"pooled": E, "full": E, "full_with_1g_heap": E}, "runc": E, "crun": E, "bwrap": E}
 *   E = {median_ms, p90_ms, n} | {error}
 *
 * - floor: fork/exec of the rootfs's static busybox `true` on the host (child_process.spawnSync: the same
 *   harness as runc/crun/bwrap below).
 * - ours.pooled: start + exited + destroy of a sandbox created beforehand (the pool's cold-start path).
 * - ours.full: createSandbox + start + exited + destroy.
 * - ours.full_with_1g_heap: `full` while this process holds 1 GiB of live V8 heap (Node's heap is never
 *   forked: sandbox inits are clones of the small zygote, native/init/zygote.c, which itself was started by
 *   clone(CLONE_VM|CLONE_VFORK) straight into exec).
 * - runc / crun: `<tool> run --bundle B <id>` (create+start+wait+delete), read-only root, pid/net/ipc/uts/mnt
 *   namespaces, memory+pids limits like ours. crun 1.8 refuses this host's hybrid cgroup layout, so its
 *   series runs in a private mount namespace with /sys/fs/cgroup/unified unmounted (issue 2).
 * - bwrap: `bwrap --ro-bind R / --proc /proc --dev /dev --unshare-all /bin/true`.
 *
 * Every entry runs in interleaved rounds (--rounds, default 4: a quarter of n each) so that drift of this
 * shared machine hits them alike; the 1 GiB heap is allocated before and dropped after each round's heap series.
 *
 * Usage: npm run bench:sandbox [-- --n 200] [-- --rounds 4]   (env BENCH_N works too)
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { cleanupLeftovers, createSandbox, setNodeId, warmUp, type Sandbox } from '../../services/sandbox/index.ts';
import { makeRootfs } from '../helpers/sandbox-rootfs.ts';

type Entry = { median_ms: number; p90_ms: number; n: number } | { error: string };

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function stats(times: number[]): Entry {
  const s = [...times].sort((a, b) => a - b);
  const rank = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return { median_ms: round(rank(0.5)), p90_ms: round(rank(0.9)), n: s.length };
}

const log = (m: string) => process.stderr.write(`bench:sandbox: ${m}\n`);

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Times `argv` run to completion n times (after 3 warm-up runs); fails on the first non-zero exit. */
function series(argv: string[], n: number): number[] {
  const times: number[] = [];
  for (let i = -3; i < n; i++) {
    const t0 = performance.now();
    const r = spawnSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    const dt = performance.now() - t0;
    if (r.error || r.status !== 0) {
      throw new Error(`${argv.join(' ')} failed: ${r.error?.message ?? `exit ${r.status} ${String(r.stderr).trim().slice(0, 300)}`}`);
    }
    if (i >= 0) times.push(dt);
  }
  return times;
}

// Child mode: run a series inside whatever namespace we were started in (used for crun) and print times.
if (process.argv.includes('--series')) {
  const spec = JSON.parse(argValue('--series')!) as { argv: string[]; n: number; umount?: string };
  if (spec.umount) {
    const u = spawnSync('umount', ['-l', spec.umount], { encoding: 'utf8' });
    if (u.status !== 0) throw new Error(`umount ${spec.umount}: ${u.stderr}`);
  }
  process.stdout.write(JSON.stringify(series(spec.argv, spec.n)));
  process.exit(0);
}

/** One series of an external tool, n runs (+3 warm-up); throws with the tool's error. */
function externalTimes(argv: string[], n: number, privateNsUmount?: string): number[] {
  if (!privateNsUmount) return series(argv, n);
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', '--', process.execPath, '--import', 'tsx', process.argv[1]!,
    '--series', JSON.stringify({ argv, n, umount: privateNsUmount })], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(String(r.stderr).trim().split('\n').slice(-3).join(' '));
  return JSON.parse(r.stdout) as number[];
}

function ociBundle(dir: string, rootfs: string): string {
  mkdirSync(dir, { recursive: true });
  const config = {
    ociVersion: '1.0.2',
    process: {
      terminal: false, user: { uid: 65534, gid: 65534 }, args: ['/bin/true'], env: ['PATH=/bin'], cwd: '/',
      capabilities: { bounding: [], effective: [], permitted: [], ambient: [] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }], noNewPrivileges: true,
    },
    root: { path: rootfs, readonly: true },
    hostname: 'fnhost',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'size=65536k'] },
    ],
    linux: {
      resources: { memory: { limit: 128 * 1024 * 1024, swap: 128 * 1024 * 1024 }, pids: { limit: 64 } },
      namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }],
      maskedPaths: [], readonlyPaths: [],
    },
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return dir;
}

async function oursOnce(sb: Sandbox, layers: string[]): Promise<void> {
  const p = await sb.start({ layers, argv: ['/bin/true'] });
  p.stdin.end();
  const st = await p.exited;
  if (st.code !== 0) throw new Error(`/bin/true exited ${st.code ?? st.signal}`);
  await sb.destroy();
}

async function pooledTimes(layers: string[], n: number): Promise<number[]> {
  const times: number[] = [];
  const batch = 20; // the pool is refilled in batches, outside the timed section
  for (let done = -3; done < n;) {
    const pool = await Promise.all(Array.from({ length: Math.min(batch, n - done) }, () => createSandbox()));
    for (const sb of pool) {
      const t0 = performance.now();
      await oursOnce(sb, layers);
      if (done >= 0) times.push(performance.now() - t0);
      done++;
    }
  }
  return times;
}

async function fullTimes(layers: string[], n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = -3; i < n; i++) {
    const t0 = performance.now();
    await oursOnce(await createSandbox(), layers);
    if (i >= 0) times.push(performance.now() - t0);
  }
  return times;
}

/** After a full GC, V8 still sweeps and unmaps concurrently for a while; 1 s covers it on this machine. */
const SETTLE_MS = 1000;

/** ≈1 GiB of live V8 heap: 128 arrays of 1 Mi doubles (8 MiB each, unboxed FixedDoubleArray). */
function holdHeap(): number[][] {
  const keep: number[][] = [];
  for (let i = 0; i < 128; i++) {
    const a = new Array<number>(1 << 20);
    for (let j = 0; j < a.length; j++) a[j] = j + 0.5;
    keep.push(a);
  }
  return keep;
}

/** Times the floor: fork/exec of the rootfs's static busybox `true`, n runs (+3 warm-up). */
function floorSeries(busybox: string, n: number): number[] {
  return series([busybox, 'true'], n);
}

async function main(): Promise<void> {
  const n = Number(argValue('--n') ?? process.env.BENCH_N ?? 200);
  // The ours/floor series run in interleaved rounds (each a quarter of n) so that drift of this shared
  // 2-core machine hits them alike; the 1 GiB heap is allocated and dropped again in every round.
  const rounds = Number(argValue('--rounds') ?? 4);
  const per = Math.ceil(n / rounds);
  const nodeId = `bench-${process.pid}`;
  setNodeId(nodeId);
  const fx = makeRootfs();
  mkdirSync(join(fx.base, 'sys'), { recursive: true }); // runc/crun want a /sys mount point in the rootfs
  const bundles = join(fx.dir, 'bundles');
  const layers = [fx.base];
  const busybox = join(fx.base, 'bin/busybox');
  setFlagsFromString('--expose_gc');
  const gc = runInNewContext('gc') as () => void;
  const t = {
    floor: [] as number[], pooled: [] as number[], full: [] as number[], heap: [] as number[],
    runc: [] as number[], crun: [] as number[], bwrap: [] as number[],
  };
  const err: Partial<Record<keyof typeof t, string>> = {};
  const collectInto = async (k: keyof typeof t, f: () => Promise<Entry | number[]>) => {
    if (err[k]) return;
    try {
      const r = await f();
      if (Array.isArray(r)) t[k].push(...r);
    } catch (e) {
      err[k] = (e as Error).message;
    }
  };
  const bundle = ociBundle(bundles, fx.base);
  const tools: Array<{ key: 'runc' | 'crun' | 'bwrap'; argv: string[]; privateNsUmount?: string }> = [
    { key: 'runc', argv: ['runc', 'run', '--bundle', bundle, `fnhost-bench-runc-${process.pid}`] },
    // crun 1.8 refuses this host's hybrid cgroup layout: its series runs where cgroup2 is unmounted (issue 2)
    { key: 'crun', argv: ['crun', 'run', '--bundle', bundle, `fnhost-bench-crun-${process.pid}`], privateNsUmount: '/sys/fs/cgroup/unified' },
    { key: 'bwrap', argv: ['bwrap', '--ro-bind', fx.base, '/', '--proc', '/proc', '--dev', '/dev', '--unshare-all', '/bin/true'] },
  ];
  for (const tool of tools) {
    const path = which(tool.argv[0]!);
    if (path) tool.argv[0] = path;
    else err[tool.key] = `${tool.argv[0]} is not installed (bash infra/setup.sh --bench installs it)`;
  }
  try {
    await warmUp();
    for (let r = 0; r < rounds; r++) {
      log(`round ${r + 1}/${rounds}: floor, ours.pooled, ours.full (${per} runs each)`);
      await collectInto('floor', async () => floorSeries(busybox, per));
      await collectInto('pooled', () => pooledTimes(layers, per));
      await collectInto('full', () => fullTimes(layers, per));
      log(`round ${r + 1}/${rounds}: ours.full_with_1g_heap (${per} runs)`);
      let heap: number[][] | undefined = holdHeap();
      // Measure the steady state of a process that holds the heap, not V8's background marking and sweeping
      // of the allocation burst (it competes for this machine's 2 cores): one full GC, then let it settle.
      gc();
      await new Promise((res) => setTimeout(res, SETTLE_MS));
      if (r === 0) log(`heapUsed ${Math.round(process.memoryUsage().heapUsed / 2 ** 20)} MiB`);
      await collectInto('heap', () => fullTimes(layers, per));
      if (heap.length !== 128) throw new Error('heap was collected');
      heap = undefined;
      gc(); // and let the freeing settle before the next round's series
      await new Promise((res) => setTimeout(res, SETTLE_MS));
      // the other runtimes in the same rounds, so that load from other jobs on this shared machine hits
      // every entry alike (a series of each tool back to back at the end was at the mercy of that moment)
      for (const tool of tools) {
        log(`round ${r + 1}/${rounds}: ${tool.key} (${per} runs)`);
        await collectInto(tool.key, async () => externalTimes(tool.argv, per, tool.privateNsUmount));
      }
    }
    const entry = (k: keyof typeof t): Entry => (err[k] ? { error: err[k]! } : stats(t[k]));
    process.stdout.write(`${JSON.stringify({
      floor: entry('floor'),
      ours: { pooled: entry('pooled'), full: entry('full'), full_with_1g_heap: entry('heap') },
      runc: entry('runc'), crun: entry('crun'), bwrap: entry('bwrap'),
    })}\n`);
  } finally {
    await cleanupLeftovers(nodeId).catch(() => {});
    rmSync(fx.dir, { recursive: true, force: true });
  }
}

await main();
