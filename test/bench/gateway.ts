/**
 * `npm run bench:gateway` (issue 6): the whole host over HTTP against a bare Hono hello-world, measured in
 * one run on this machine. ONE JSON object on stdout, progress on stderr:
 *
 *   {"ours": {"warm_c1": {rps, p50_ms, p99_ms}, "warm_c32": {...}, "cold_node": {median_ms, p90_ms, n},
 *    "cold_exec": {...}}, "bare_hono": {"c1": {...}, "c32": {...}}, "ratio_c32",
 *    "ours_traced": {"warm_c32": {rps, p50_ms, p99_ms, loop_us_per_call, spans_exported, spans_dropped, spans_failed,
 *                    invocations_in_segments}, "untraced_warm_c32": {...}, "traced_drop_pct", "traced_drop_pct_q25",
 *                    "traced_drop_pct_q75", "traced_drop_pct_se", "traced_drop_pct_of_medians", "traced_loop_us_per_call_added",
 *                    "traced_loop_us_per_call_added_paired", "rounds",
 *                    "segment_s", "pairs", "cpu_us_per_call": {"untraced": {loop, loop_wait, export_thread, host_other, redis,
 *                    host_children, instances, loadgen, collector, unattributed, unattributed_cores, total, softirq,
 *                    steal, idle_pct},
 *                    "traced": {...}, "added": {...}},
 *                    "hosts": [{host, rps, loop_us_per_call, minor_gc_us_per_call, rss_mib, rss_peak_mib}, …]}}
 *
 * - ours: `fnhost start` as a child process (embedded redis-server, scheduler, native sandboxes), a node
 *   hello-world deployed; warm = POST /v1/functions/hello/invoke with a tenant key and a small JSON body.
 * - bare_hono: a child process serving a Hono app on @hono/node-server that echoes the same JSON body.
 * - load: autocannon in this process, keep-alive, for BENCH_DURATION_S (default 10) after a 2 s warm-up;
 *   latencies are taken from autocannon's per-response times (float ms; its own histogram rounds to 1 ms).
 *   Before c32, rounds of 32 parallel calls until all are warm: 32 connections need 32 warm instances.
 * - cold_*: a new function per sample (deploy, then the first sync invoke, timed at the client), the pool
 *   given BENCH_COLD_GAP_MS (default 300) to refill between samples; n = BENCH_COLD_N (default 30).
 * - ours_traced (issue 7): fresh untraced hosts U and hosts with tracing on T (OTLP/HTTP to a collector process
 *   on loopback, test/helpers/otlp-sink.ts), three of each by default (BENCH_TRACED_PAIRS), all primed and warmed
 *   up (BENCH_TRACED_WARMUP_S, default 8 s of load each), then the same warm_c32 load in short strictly alternating segments U T U T … U: BENCH_TRACED_ROUNDS (default 20) traced segments, one more
 *   untraced, each BENCH_TRACED_SEGMENT_S (default 2.5) s counted after 0.5 s of settling. Each traced segment is
 *   compared with the mean of the two untraced segments around it: a drift of the shared machine that is linear
 *   over ~9 s cancels, and every T has a U before and after it (no position bias: neither host always runs
 *   first or right after the other). traced_drop_pct = median of those drops (traced_drop_pct_q25 / _q75: their
 *   spread; traced_drop_pct_se: the median's standard error, bootstrapped over the drops — with 20 rounds it is
 *   ~1 point in a quiet run and 2–5 when others load the machine), traced_drop_pct_of_medians = 1 − median T rps / median U rps; warm_c32 (traced: + spans_exported
 *   by the collector, spans_dropped / spans_failed from the host's /metrics) and untraced_warm_c32: median
 *   segment rps, latencies over all segments, loop_us_per_call = CPU of the host's event-loop thread (the
 *   bottleneck at c32) per call, median over segments — tracing's added cost in a form the other helpers' load
 *   moves much less than rps (traced_loop_us_per_call_added = traced − untraced, the medians' difference;
 *   traced_loop_us_per_call_added_paired = the median over rounds of each T − the mean of the U before and after it,
 *   as the drops are paired: the same figure with the machine's drift taken out, 2–4× less noisy).
 *   cpu_us_per_call (diagnostic): at c32 BOTH cores are busy (host loop, instances, autocannon, collector, export
 *   thread), so rps falls with the total CPU per call, not only the loop's. Per segment, the CPU per counted call of
 *   each part (CpuParts says what each is and where it is read: per-thread /proc schedstat, exact ns; the machine
 *   from /proc/stat ticks), median over segments for untraced and traced, and `added` = median over rounds of T −
 *   the mean of the U before and after (the drops' pairing). `unattributed` is the machine's CPU that none of the
 *   parts spent (other helpers' work, kernel threads): a segment where it is high ran beside someone else's load;
 *   loop_wait (the loop's run-queue delay per call) shows how much that load kept the bottleneck off a CPU. Each
 *   segment's breakdown is also on stderr, with the host's GC in the segment (scavenges per 1,000 calls, their pause per
 *   call, major GCs; from its /metrics). `hosts`: per host process, the medians of its own segments and its RSS
 *   after ≥ 6 s idle (the spread between identically configured hosts; memory). Why not long rounds: this 2-core machine is shared, and the load
 *   of others changes within seconds; 5 rounds of 2 × 12 s gave pair drops from −10 to +34 % (same total time).
 *   BENCH_GATEWAY_TRACED=0 leaves it out; BENCH_GATEWAY_ONLY=traced runs only this part (development);
 *   BENCH_TRACED_PAIRS=n measures n untraced and n traced host processes taking turns (see TRACED_PAIRS).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { tarGz } from '../../services/cli/pack.ts';
import { findLeftovers } from '../helpers/leaks.ts';
import { startOtlpSinkProcess, type OtlpSinkProcess, type OtlpSinkStats } from '../helpers/otlp-sink.ts';
import { EXPORT_THREAD_NAME } from '../../services/common/trace-export.ts';
import { detectControllers } from '../../services/sandbox/cgroup-detect.ts';

/** The part of autocannon's API used here (the package ships no types). */
interface AutocannonResult {
  errors: number;
  timeouts: number;
}
type AutocannonInstance = Promise<AutocannonResult> & { on(ev: 'response', fn: (client: unknown, status: number, bytes: number, ms: number) => void): void };
const autocannon = createRequire(import.meta.url)('autocannon') as (opts: Record<string, unknown>) => AutocannonInstance;

const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 10);
const WARMUP_S = 2;
const COLD_N = Number(process.env.BENCH_COLD_N ?? 30);
const COLD_GAP_MS = Number(process.env.BENCH_COLD_GAP_MS ?? 300);
const TRACED = process.env.BENCH_GATEWAY_TRACED !== '0';
/** traced segments of ours_traced (there is one untraced segment more: U T U … T U) */
const TRACED_ROUNDS = Math.max(1, Number(process.env.BENCH_TRACED_ROUNDS ?? 20));
/** counted length of one ours_traced segment, s (after SETTLE_S); 20 × 2 × 3 s ≈ the 2 min the traced part always took */
const SEGMENT_S = Math.max(0.5, Number(process.env.BENCH_TRACED_SEGMENT_S ?? 2.5));
/**
 * Not counted at the start of each segment: autocannon's 32 connections open and the host that was idle for a
 * segment gets going (its timers, caches; at ~4,000 rps 0.5 s is ~2,000 calls).
 */
const SETTLE_S = 0.5;
/**
 * Uncounted load per ours_traced host before the first segment, s (BENCH_TRACED_WARMUP_S). A fresh host's loop costs
 * 20–50 % more per call for its first ~30,000 warm calls (V8 still compiling: its helper threads' CPU per call is
 * 3–5 × the steady figure), i.e. ~6–8 s at c32; with 2 s, the first two or three segments of every host ran slow.
 */
const TRACED_WARMUP_S = Math.max(1, Number(process.env.BENCH_TRACED_WARMUP_S ?? 8));
const ONLY_TRACED = process.env.BENCH_GATEWAY_ONLY === 'traced';
/**
 * Host processes per side in ours_traced (BENCH_TRACED_PAIRS, default 3: three untraced, three traced); the segments go
 * U0 T0 U1 T1 U2 T2 U0 …, so every traced segment is compared with two different untraced hosts and the drops mix all
 * traced hosts. Identically configured hosts differ for a whole run: with 8 s of warm-up each, the medians of 3–4 such
 * hosts spread 3–13 µs/call of loop CPU (once 19), about what the segments' own noise gives (sd 6–9 µs, 5–7 segments
 * per host; 2026-11-30); with the 2 s warm-up used before, every host's first two or three segments ran 20–50 % slow,
 * so hosts looked 10–24 µs/call apart. With one process per side such an offset is part of traced_drop_pct; each pair
 * costs ~9 s of start-up and TRACED_WARMUP_S of load (3 pairs: ~4 min for this part).
 */
const TRACED_PAIRS = Math.max(1, Math.floor(Number(process.env.BENCH_TRACED_PAIRS ?? 3)) || 1);
const BODY = JSON.stringify({ hello: 'world' });
const ROOT = process.cwd();

const log = (m: string) => process.stderr.write(`[bench:gateway] ${m}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const r3 = (x: number) => Math.round(x * 1000) / 1000;

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}
function median(sorted: number[]): number {
  const n = sorted.length;
  return n % 2 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
}

/**
 * Standard error of the median of `xs` by bootstrap: resample with replacement, 2,000 times, and take the standard
 * deviation of the resampled medians. A fixed-seed generator (mulberry32), so the same segments give the same figure.
 */
function bootstrapMedianSe(xs: number[]): number {
  if (xs.length < 2) return NaN;
  let seed = 0x9e3779b9;
  const rand = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  const meds: number[] = [];
  for (let b = 0; b < 2000; b++) meds.push(median(xs.map(() => xs[Math.floor(rand() * xs.length)]!).sort((a, c) => a - c)));
  const mean = meds.reduce((a, c) => a + c, 0) / meds.length;
  return Math.sqrt(meds.reduce((a, c) => a + (c - mean) ** 2, 0) / (meds.length - 1));
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

interface Load {
  rps: number;
  p50_ms: number;
  p99_ms: number;
}

/** autocannon for `duration` s; exact latencies from its per-response event. */
async function load(url: string, connections: number, headers: Record<string, string>, duration = DURATION_S): Promise<Load> {
  const times: number[] = [];
  let non2xx = 0;
  const inst = autocannon({ url, connections, duration, method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: BODY });
  inst.on('response', (_c, status, _b, ms) => {
    if (status >= 200 && status < 300) times.push(ms);
    else non2xx++;
  });
  const res = await inst;
  if (non2xx || res.errors || res.timeouts) log(`  ${url} c${connections}: ${non2xx} non-2xx, ${res.errors} errors, ${res.timeouts} timeouts`);
  times.sort((a, b) => a - b);
  return { rps: Math.round(times.length / duration), p50_ms: r3(median(times)), p99_ms: r3(quantile(times, 0.99)) };
}

/** One ours_traced segment: the 2xx responses that arrived in the counted window, and their latencies. */
interface Segment {
  rps: number;
  /** CPU of the host's event-loop thread per counted call, µs (/proc: 10 ms ticks, ~1 µs/call resolution here) */
  loopUs: number;
  /** latencies (ms) of the counted responses */
  times: number[];
  /** every 2xx response, settling included (to account for the spans the host exported) */
  all: number;
  /** CPU per counted call of every part involved, µs (see CpuParts) */
  cpu: CpuParts;
  /** the busiest processes outside the measurement during the segment (stderr only) */
  others: string;
}

/**
 * `connections` in parallel for SETTLE_S + SEGMENT_S; only responses arriving in the last SEGMENT_S count (our own
 * timestamps: autocannon stops at its next sample tick, so its duration is not the window).
 */
async function segment(url: string, connections: number, headers: Record<string, string>, pid: number, who: CpuWho, snapper: Snapper): Promise<Segment> {
  const times: number[] = [];
  let all = 0;
  let bad = 0;
  const t0 = performance.now();
  const from = t0 + SETTLE_S * 1000;
  const to = from + SEGMENT_S * 1000;
  let loop0 = 0;
  let loop1 = 0;
  const targets = cpuTargets(who);
  let cpu0: Promise<CpuSnap> | undefined;
  let cpu1: Promise<CpuSnap> | undefined;
  const timers = [
    setTimeout(() => ((loop0 = loopTicks(pid)), (cpu0 = snapper.snap(targets))), SETTLE_S * 1000),
    setTimeout(() => ((loop1 = loopTicks(pid)), (cpu1 = snapper.snap(targets))), (SETTLE_S + SEGMENT_S) * 1000),
  ];
  const inst = autocannon({
    url, connections, duration: SETTLE_S + SEGMENT_S, sampleInt: 100, method: 'POST',
    headers: { 'content-type': 'application/json', ...headers }, body: BODY,
  });
  inst.on('response', (_c, status, _b, ms) => {
    if (status < 200 || status >= 300) return void bad++;
    all++;
    const now = performance.now();
    if (now >= from && now < to) times.push(ms);
  });
  const res = await inst;
  for (const t of timers) clearTimeout(t);
  if (bad || res.errors || res.timeouts) log(`  ${url} c${connections}: ${bad} non-2xx, ${res.errors} errors, ${res.timeouts} timeouts`);
  const [a, b] = cpu0 && cpu1 ? await Promise.all([cpu0, cpu1]) : await Promise.all([snapper.snap(targets), snapper.snap(targets)]);
  const cpu = cpuPerCall(targets, a, b, cpu0 && cpu1 ? times.length : 0);
  return { rps: times.length / SEGMENT_S, loopUs: times.length ? ((loop1 - loop0) * 1e6) / CLOCK_TICKS / times.length : NaN, times, all, cpu, others: topOthers(a, b, SEGMENT_S) };
}

/** USER_HZ of /proc/<pid>/task/<tid>/stat times (100 on Linux) */
const CLOCK_TICKS = 100;

/** utime + stime of a process's main (event-loop) thread, in clock ticks */
function loopTicks(pid: number): number {
  const s = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/**
 * Where the CPU of a segment went, per counted call, µs (ours_traced.cpu_us_per_call; diagnostic). On this 2-core
 * machine both cores are busy at c32, so throughput falls with the TOTAL CPU per call, not only the loop's.
 * Threads and processes from /proc/<pid>/task/<tid>/schedstat (run time in ns, exact; its 2nd field is the time
 * spent runnable but waiting for a CPU), the machine from /proc/stat (USER_HZ ticks, sampled by the scheduler tick).
 */
interface CpuParts {
  /** the host's event-loop (main) thread; ns-exact, otherwise what loop_us_per_call measures */
  loop: number;
  /** time the loop thread was runnable but waited for a CPU (run-queue delay), not CPU */
  loop_wait: number;
  /** the host's OTLP export thread (it names itself EXPORT_THREAD_NAME; 0 untraced: there is none) */
  export_thread: number;
  /** the host's other threads: V8's platform workers (GC, compilation) and libuv's pool (Node 20 names none of them) */
  host_other: number;
  /** the host's embedded redis-server */
  redis: number;
  /** other processes below the host (the sandbox zygote, tsx's esbuild, …) */
  host_children: number;
  /** the function instances: every process in the host's sandbox cgroups (fnhost/<node id>/…: init + runtime) */
  instances: number;
  /** this bench process (autocannon's 32 connections and the response bookkeeping), but its snapshot thread */
  loadgen: number;
  /** the OTLP collector process (0 untraced: it idles) */
  collector: number;
  /** everything else the machine ran: other helpers' work, kernel threads (ksoftirqd, kworkers) — total minus the parts above */
  unattributed: number;
  /**
   * the same as a rate, in cores (unattributed × calls/s): how much of the 2 cores others took during the segment,
   * which unlike a per-call figure does not grow when our rps falls
   */
  unattributed_cores: number;
  /** all CPU the machine spent (user + nice + system + irq + softirq of /proc/stat), per call */
  total: number;
  /**
   * softirq time (/proc/stat), per call: NOT an extra part — without CONFIG_IRQ_TIME_ACCOUNTING (this kernel) it
   * is charged to whichever task it interrupted (loopback TCP's receive side runs in the sender's syscall), so it
   * is already inside the parts above; shown because network load shows up here
   */
  softirq: number;
  /** time the hypervisor ran something else while we had work (/proc/stat steal), per call */
  steal: number;
  /** % of the machine's time idle during the segment */
  idle_pct: number;
}
const CPU_PARTS = ['loop', 'loop_wait', 'export_thread', 'host_other', 'redis', 'host_children', 'instances', 'loadgen', 'collector', 'unattributed', 'unattributed_cores', 'total', 'softirq', 'steal', 'idle_pct'] as const;

/** what to account for: the host under load (its pid and node id: its sandbox cgroups) and the collector */
interface CpuWho {
  hostPid: number;
  nodeId: string;
  collectorPid?: number;
}

/**
 * The schedstat files of one segment, resolved before it starts (listing the instances' cgroups and the host's
 * process tree costs ~10–50 ms of this process's loop, which also drives the load): a snapshot then only reads
 * them (~400 small files). A thread or process born during the segment is not counted; at warm c32 none are.
 */
interface CpuTargets {
  loopPath: string;
  /** [bucket, schedstat path] per thread */
  files: [string, string][];
  /** every process above, and this one: the rest of the machine is "others" */
  ours: Set<number>;
}

interface CpuSnap {
  /** run ns per file of CpuTargets.files (0: the thread is gone) */
  runs: number[];
  loop: number;
  loopWait: number;
  /** this process's CPU, ns: its threads but the snapshot worker's own (see SNAP_WORKER) */
  self: number;
  /** /proc/stat `cpu` line: user nice system idle iowait irq softirq steal (USER_HZ ticks) */
  stat: number[];
  /** every other process: pid → [comm, utime + stime in USER_HZ ticks] (to name who took the unattributed CPU) */
  others: Map<number, [string, number]>;
}

function readDir(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** the pids controller's hierarchy (every sandbox has a pids cgroup: fnhost/<node id>/<sandbox id>) */
const PIDS_MOUNT = (() => {
  const p = detectControllers(readText('/proc/self/mountinfo'), (mp) => readText(join(mp, 'cgroup.controllers')).trim().split(/\s+/)).find((c) => c.controller === 'pids');
  return p?.mountpoint;
})();

/** every process in the host's sandbox cgroups */
function instancePids(nodeId: string): number[] {
  const out: number[] = [];
  const walk = (dir: string) => {
    for (const l of readText(join(dir, 'cgroup.procs')).split('\n')) if (l) out.push(Number(l));
    for (const e of readDir(dir)) if (existsSync(join(dir, e, 'cgroup.procs'))) walk(join(dir, e));
  };
  if (PIDS_MOUNT) walk(join(PIDS_MOUNT, 'fnhost', nodeId));
  return out;
}

/** processes below `pid` (through /proc/<pid>/task/<tid>/children), not `pid` itself */
function descendants(pid: number): number[] {
  const out: number[] = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.pop()!;
    for (const t of readDir(`/proc/${p}/task`)) {
      for (const c of readText(`/proc/${p}/task/${t}/children`).split(' ')) {
        if (c.trim()) {
          out.push(Number(c));
          todo.push(Number(c));
        }
      }
    }
  }
  return out;
}

function cpuTargets(who: CpuWho): CpuTargets {
  const files: [string, string][] = [];
  const ours = new Set([process.pid, who.hostPid]);
  const threads = (bucket: string, pid: number) => {
    ours.add(pid);
    for (const t of readDir(`/proc/${pid}/task`)) files.push([bucket, `/proc/${pid}/task/${t}/schedstat`]);
  };
  for (const t of readDir(`/proc/${who.hostPid}/task`)) {
    if (Number(t) === who.hostPid) continue;
    const comm = readText(`/proc/${who.hostPid}/task/${t}/comm`).trim();
    files.push([comm === EXPORT_THREAD_NAME ? 'export_thread' : 'host_other', `/proc/${who.hostPid}/task/${t}/schedstat`]);
  }
  const inst = new Set(instancePids(who.nodeId));
  for (const p of inst) threads('instances', p);
  for (const p of descendants(who.hostPid)) {
    if (!inst.has(p)) threads(readText(`/proc/${p}/comm`).trim() === 'redis-server' ? 'redis' : 'host_children', p);
  }
  if (who.collectorPid) threads('collector', who.collectorPid);
  for (const p of descendants(process.pid)) ours.add(p);
  return { loopPath: `/proc/${who.hostPid}/task/${who.hostPid}/schedstat`, files, ours };
}

/**
 * The snapshot's reads (~400 small /proc files, ~10 ms) run on a worker thread: on this process's event loop they
 * would hold autocannon for that long at the start of every counted window. Plain JS (eval'd: a worker gets no
 * TypeScript loader). Besides the targets it reads /proc/stat, every process outside `ours` (to name who took the
 * unattributed CPU) and this process's threads but its own (the load generator's CPU).
 */
const SNAP_WORKER = `
const { parentPort } = require('node:worker_threads');
const { readFileSync, readdirSync } = require('node:fs');
const text = (p) => { try { return readFileSync(p, 'utf8'); } catch { return ''; } };
const dir = (p) => { try { return readdirSync(p); } catch { return []; } };
const sched = (p) => { const f = text(p).split(' '); return f.length > 1 ? [Number(f[0]), Number(f[1])] : [0, 0]; };
const me = text('/proc/thread-self/stat').split(' ')[0];
parentPort.on('message', ({ id, loopPath, files, ours }) => {
  const [loop, loopWait] = sched(loopPath);
  const runs = files.map((f) => sched(f)[0]);
  let self = 0;
  for (const t of dir('/proc/self/task')) if (t !== me) self += sched('/proc/self/task/' + t + '/schedstat')[0];
  const stat = text('/proc/stat').split('\\n')[0].trim().split(/\\s+/).slice(1, 9).map(Number);
  const skip = new Set(ours);
  const others = [];
  for (const e of dir('/proc')) {
    const pid = Number(e);
    if (!pid || skip.has(pid)) continue;
    const st = text('/proc/' + pid + '/stat');
    const close = st.lastIndexOf(')');
    if (close < 0) continue;
    const f = st.slice(close + 2).split(' ');
    others.push([pid, st.slice(st.indexOf('(') + 1, close), Number(f[11]) + Number(f[12])]);
  }
  parentPort.postMessage({ id, runs, loop, loopWait, self, stat, others });
});
`;

/** takes CPU snapshots on its own thread (SNAP_WORKER) */
class Snapper {
  private readonly w = new Worker(SNAP_WORKER, { eval: true });
  private next = 0;
  private readonly waiting = new Map<number, (s: CpuSnap) => void>();
  constructor() {
    this.w.on('message', (m: Omit<CpuSnap, 'others'> & { id: number; others: [number, string, number][] }) => {
      const others = new Map(m.others.map(([pid, comm, ticks]) => [pid, [comm, ticks] as [string, number]]));
      this.waiting.get(m.id)?.({ runs: m.runs, loop: m.loop, loopWait: m.loopWait, self: m.self, stat: m.stat, others });
      this.waiting.delete(m.id);
    });
  }
  snap(t: CpuTargets): Promise<CpuSnap> {
    const id = this.next++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.w.postMessage({ id, loopPath: t.loopPath, files: t.files.map(([, f]) => f), ours: [...t.ours] });
    });
  }
  close(): Promise<number> {
    return this.w.terminate();
  }
}

/** CPU per call between two snapshots of the same targets (a thread gone by the second one counts 0) */
function cpuPerCall(t: CpuTargets, a: CpuSnap, b: CpuSnap, calls: number): CpuParts {
  const ns: Record<string, number> = { loop: b.loop - a.loop };
  t.files.forEach(([bucket], i) => (ns[bucket] = (ns[bucket] ?? 0) + (b.runs[i]! ? b.runs[i]! - a.runs[i]! : 0)));
  const per = (nsTotal: number) => (calls ? nsTotal / 1000 / calls : NaN);
  const tick = (i: number) => ((b.stat[i]! - a.stat[i]!) * 1e9) / CLOCK_TICKS;
  const [user, nice, system, idle, iowait, irq, softirq, steal] = [0, 1, 2, 3, 4, 5, 6, 7].map(tick) as number[];
  const total = user! + nice! + system! + irq! + softirq!;
  const parts: CpuParts = {
    loop: per(ns.loop ?? 0),
    loop_wait: per(b.loopWait - a.loopWait),
    export_thread: per(ns.export_thread ?? 0),
    host_other: per(ns.host_other ?? 0),
    redis: per(ns.redis ?? 0),
    host_children: per(ns.host_children ?? 0),
    instances: per(ns.instances ?? 0),
    loadgen: per(b.self - a.self),
    collector: per(ns.collector ?? 0),
    unattributed: 0,
    unattributed_cores: 0,
    total: per(total),
    softirq: per(softirq!),
    steal: per(steal!),
    idle_pct: (100 * (idle! + iowait!)) / (total + idle! + iowait! + steal!),
  };
  parts.unattributed = parts.total - (parts.loop + parts.export_thread + parts.host_other + parts.redis + parts.host_children + parts.instances + parts.loadgen + parts.collector);
  parts.unattributed_cores = (parts.unattributed * calls) / SEGMENT_S / 1e6;
  return parts;
}

/** the processes outside the measurement that used most CPU between two snapshots, in cores: "comm(pid) 0.42, …" */
function topOthers(a: CpuSnap, b: CpuSnap, seconds: number, n = 3): string {
  const used: [string, number][] = [];
  for (const [pid, [comm, ticks]] of b.others) {
    const d = ticks - (a.others.get(pid)?.[1] ?? 0);
    if (d > 0) used.push([`${comm}(${pid})`, d / CLOCK_TICKS / seconds]);
  }
  return used.sort((x, y) => y[1] - x[1]).slice(0, n).map(([w, c]) => `${w} ${c.toFixed(2)}`).join(', ');
}

/** medians per part (one decimal) */
function cpuMedians(rows: CpuParts[]): CpuParts {
  const out = {} as CpuParts;
  for (const k of CPU_PARTS) out[k] = Math.round(median(rows.map((r) => r[k]).filter((v) => Number.isFinite(v)).sort((x, y) => x - y)) * (k === 'unattributed_cores' ? 100 : 10)) / (k === 'unattributed_cores' ? 100 : 10);
  return out;
}

async function measure(url: string, connections: number, headers: Record<string, string>): Promise<Load> {
  await load(url, connections, headers, WARMUP_S);
  return load(url, connections, headers);
}

interface Child {
  proc: ChildProcess;
  out: () => string;
  stop(): Promise<void>;
}

function startChild(args: string[], env: NodeJS.ProcessEnv, ready: RegExp, what: string): Promise<Child> {
  const proc = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b) => (out += b));
  proc.stderr!.on('data', (b) => (err += b));
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  const child: Child = {
    proc,
    out: () => out,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      // The host bounds each shutdown step (scheduler 35 s, others 15 s); SIGKILL only past all of them, since a
      // killed host leaves its sandboxes' cgroups and its embedded redis-server behind.
      const t = setTimeout(() => proc.kill('SIGKILL'), 90_000);
      await exited;
      clearTimeout(t);
    },
  };
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 60_000;
    const poll = setInterval(() => {
      if (ready.test(out)) {
        clearInterval(poll);
        resolve(child);
      } else if (proc.exitCode !== null || Date.now() > deadline) {
        clearInterval(poll);
        reject(new Error(`${what} did not start: ${err.slice(-2000)}`));
      }
    }, 20);
  });
}

interface OurHost {
  url: string;
  key: string;
  child: Child;
  stateDir: string;
  nodeId: string;
}

async function startOurs(name: string, extraEnv: Record<string, string> = {}): Promise<OurHost> {
  const port = await freePort();
  const stateDir = mkdtempSync(join(tmpdir(), `fnhost-bench-${name}-`));
  const env: NodeJS.ProcessEnv = { ...process.env, FNHOST_LOG_LEVEL: 'warn', FNHOST_LOG_JSON: '1', ...extraEnv };
  delete env.REDIS_URL; // the embedded redis-server, as `npm start` runs it
  delete env.FNHOST_ADMIN_KEY;
  const nodeId = `bench-gw-${name}-${randomBytes(2).toString('hex')}`;
  const child = await startChild(
    [join(ROOT, 'bin/fnhost.mjs'), 'start', '--port', String(port), '--host', '127.0.0.1', '--state-dir', stateDir, '--node-id', nodeId],
    env,
    /admin key[^\n]*\n\s+fnh_\S+/,
    `host ${name}`,
  );
  const adminKey = /admin key[^\n]*\n\s+(fnh_\S+)/.exec(child.out())![1]!;
  const url = `http://127.0.0.1:${port}`;
  const t = await fetch(`${url}/v1/tenants`, { method: 'POST', headers: { authorization: `Bearer ${adminKey}` }, body: JSON.stringify({ name: 'bench' }) });
  const { apiKey } = (await t.json()) as { apiKey: string };
  return { url, key: apiKey, child, stateDir, nodeId };
}

async function deploy(h: OurHost, name: string, config: Record<string, unknown>, code: Buffer) {
  const f = new FormData();
  f.set('config', JSON.stringify(config));
  f.set('code', new Blob([code]), 'code.tgz');
  const r = await fetch(`${h.url}/v1/functions/${name}`, { method: 'PUT', headers: { authorization: `Bearer ${h.key}` }, body: f });
  if (r.status !== 201) throw new Error(`deploy ${name}: ${r.status} ${await r.text()}`);
}

/**
 * One sync invoke, timed at the client. node:http with a keep-alive agent, not fetch(): undici's fetch adds
 * ~0.7 ms per call after an idle spell on this machine (measured against a bare Hono server: 1.66 vs 0.98 ms
 * median after 300 ms idle) — client cost, not the host's; the warm figures come from autocannon's raw sockets.
 */
const invokeAgent = new Agent({ keepAlive: true });
function invokeOnce(h: OurHost, name: string): Promise<{ ms: number; start: string | null }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request(`${h.url}/v1/functions/${name}/invoke`, {
      method: 'POST', agent: invokeAgent,
      headers: { authorization: `Bearer ${h.key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) },
    }, (r) => {
      const chunks: Buffer[] = [];
      r.on('data', (c: Buffer) => chunks.push(c));
      r.on('end', () => {
        const ms = performance.now() - t0;
        if (r.statusCode !== 200) return reject(new Error(`invoke ${name}: ${r.statusCode} ${Buffer.concat(chunks).toString('utf8').slice(0, 500)}`));
        const start = r.headers['x-fnhost-start'];
        resolve({ ms, start: typeof start === 'string' ? start : null });
      });
      r.on('error', reject);
    });
    req.on('error', reject);
    req.end(BODY);
  });
}

/**
 * Concurrency `connections` needs that many warm instances (a function's concurrency is 1 per instance by
 * default); their cold starts are not what warm_* measures. Rounds of `connections` parallel calls until a
 * whole round is warm (bounded: 2 min).
 */
async function prime(h: OurHost, name: string, connections: number) {
  const deadline = Date.now() + 120_000;
  for (let round = 1; ; round++) {
    const rs = await Promise.all(Array.from({ length: connections }, () => invokeOnce(h, name)));
    const cold = rs.filter((r) => r.start !== 'warm').length;
    if (cold === 0) return log(`  primed ${connections} warm instances in ${round} round(s)`);
    if (Date.now() > deadline) return log(`  prime: ${cold} cold starts still in the last round after 2 min`);
  }
}

const NODE_CODE = tarGz({ 'index.js': 'exports.handler = async (e) => e;\n' });
const EXEC_CODE = tarGz({ run: '#!/bin/sh\ncat\n' }, ['run']);

async function cold(h: OurHost, kind: 'node' | 'exec'): Promise<{ median_ms: number; p90_ms: number; n: number }> {
  const times: number[] = [];
  for (let i = 0; i < COLD_N; i++) {
    const name = `cold-${kind}-${i}`;
    await deploy(h, name, kind === 'node' ? { runtime: 'node' } : { runtime: 'exec', handler: 'run' }, kind === 'node' ? NODE_CODE : EXEC_CODE);
    await sleep(COLD_GAP_MS); // the pool refills between samples: "pool warm"
    const r = await invokeOnce(h, name);
    if (r.start !== 'cold') log(`  ${name}: start=${r.start}, expected cold`);
    times.push(r.ms);
  }
  times.sort((a, b) => a - b);
  return { median_ms: r3(median(times)), p90_ms: r3(quantile(times, 0.9)), n: times.length };
}

/** A stopped host must leave nothing of its node behind; say so loudly if it did (the numbers are then suspect too). */
function reportLeftovers(h: OurHost) {
  const l = findLeftovers(h.nodeId, [h.stateDir]);
  if (l.cgroups.length || l.processes.length || l.mounts.length) log(`LEAK after stopping ${h.nodeId}: ${JSON.stringify(l).slice(0, 500)}`);
}

const BARE_HONO = `
import { Hono } from 'hono';
import { serve } from '@hono/node-server';
const app = new Hono();
app.post('/', async (c) => c.json(await c.req.json()));
serve({ fetch: app.fetch, port: Number(process.env.PORT), hostname: '127.0.0.1' }, () => console.log('ready'));
`;

/** ours warm c1/c32 (interleaved with bare Hono), cold node/exec; returns the host (the traced part stops it). */
async function mainPart(out: Record<string, unknown>, cleanup: (() => Promise<void>)[]): Promise<OurHost> {
  log('starting the host (embedded Redis, scheduler, sandboxes)');
  const ours = await startOurs('plain');
  cleanup.push(async () => {
    await ours.child.stop();
    reportLeftovers(ours);
    rmSync(ours.stateDir, { recursive: true, force: true });
  });
  await deploy(ours, 'hello', { runtime: 'node' }, NODE_CODE);
  await invokeOnce(ours, 'hello');
  const invokeUrl = `${ours.url}/v1/functions/hello/invoke`;
  const auth = { authorization: `Bearer ${ours.key}` };

  log('bare Hono');
  const barePort = await freePort();
  const bare = await startChild(['--input-type=module', '-e', BARE_HONO], { ...process.env, PORT: String(barePort) }, /ready/, 'bare hono');
  cleanup.push(() => bare.stop());
  const bareUrl = `http://127.0.0.1:${barePort}/`;

  // Interleaved: ours c1, bare c1, ours c32, bare c32 — drift of the shared machine hits both alike.
  log('warm c1: ours');
  const warm_c1 = await measure(invokeUrl, 1, auth);
  log(`  ${JSON.stringify(warm_c1)}`);
  log('c1: bare hono');
  const bare_c1 = await measure(bareUrl, 1, {});
  log(`  ${JSON.stringify(bare_c1)}`);
  log('warm c32: ours');
  await prime(ours, 'hello', 32);
  const warm_c32 = await measure(invokeUrl, 32, auth);
  log(`  ${JSON.stringify(warm_c32)}`);
  log('c32: bare hono');
  const bare_c32 = await measure(bareUrl, 32, {});
  log(`  ${JSON.stringify(bare_c32)}`);
  await bare.stop();

  log(`cold node (n=${COLD_N})`);
  const cold_node = await cold(ours, 'node');
  log(`  ${JSON.stringify(cold_node)}`);
  log(`cold exec (n=${COLD_N})`);
  const cold_exec = await cold(ours, 'exec');
  log(`  ${JSON.stringify(cold_exec)}`);

  out.ours = { warm_c1, warm_c32, cold_node, cold_exec };
  out.bare_hono = { c1: bare_c1, c32: bare_c32 };
  out.ratio_c32 = r3(warm_c32.rps / bare_c32.rps);
  return ours;
}

/** what the traced host itself says it lost: spans dropped (queue full) and spans in failed exports, from /metrics */
async function traceLoss(h: OurHost): Promise<{ spans_dropped: number; spans_failed: number }> {
  const text = await (await fetch(`${h.url}/metrics`)).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  return { spans_dropped: value('fnhost_trace_spans_dropped_total'), spans_failed: value('fnhost_trace_spans_export_failed_total') };
}

/**
 * The collector's counts once the traced host has sent everything: its last partial batch goes out on the batch
 * timer (OTEL_BSP_SCHEDULE_DELAY, 5 s by default), so wait until nothing new arrived for longer than that.
 */
async function settled(sink: OtlpSinkProcess): Promise<OtlpSinkStats> {
  const deadline = Date.now() + 20_000;
  let last = await sink.waitFor(1, 10_000);
  let since = Date.now();
  while (Date.now() < deadline && Date.now() - since < 6_000) {
    await sleep(500);
    const s = await sink.stats();
    if (s.spanCount !== last.spanCount) since = Date.now();
    last = s;
  }
  return last;
}

/** a host's GC totals so far and its new space's size, from its /metrics (prom-client's default metrics) */
async function gcStats(url: string): Promise<{ minorN: number; minorS: number; majorN: number; majorS: number; newBytes: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const v = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
  return {
    minorN: v(/^nodejs_gc_duration_seconds_count\{kind="minor"\} (\S+)$/m),
    minorS: v(/^nodejs_gc_duration_seconds_sum\{kind="minor"\} (\S+)$/m),
    majorN: v(/^nodejs_gc_duration_seconds_count\{kind="major"\} (\S+)$/m) || 0,
    majorS: v(/^nodejs_gc_duration_seconds_sum\{kind="major"\} (\S+)$/m) || 0,
    newBytes: v(/^nodejs_heap_space_size_total_bytes\{space="new"\} (\S+)$/m),
  };
}

const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ')[0];

async function main() {
  const out: Record<string, unknown> = {};
  const cleanup: (() => Promise<void>)[] = [];
  try {
    let ours: OurHost | undefined;
    if (!ONLY_TRACED) ours = await mainPart(out, cleanup);

    if (TRACED) {
      // Tracing overhead, paired: a fresh untraced host and a traced one, prepared alike, measured in short
      // alternating segments (see the header). The collector is its own process on loopback (a real collector
      // would be), checking the OTLP/HTTP protobuf it gets and counting its spans.
      if (ours) await ours.child.stop();
      log(`tracing overhead: untraced (U) vs traced (T) host, U T … U in ${2 * TRACED_ROUNDS + 1} segments of ${SETTLE_S} + ${SEGMENT_S} s; OTLP/HTTP to a collector process on loopback`);
      const sink = await startOtlpSinkProcess();
      cleanup.push(() => sink.close());
      // hosts[2p] untraced, hosts[2p + 1] traced, for each of the TRACED_PAIRS pairs
      const hosts: OurHost[] = [];
      const specs = Array.from({ length: TRACED_PAIRS }, (_, p) => [[`untraced${p || ''}`, {}], [`traced${p || ''}`, sink.env]] as const).flat();
      for (const [name, env] of specs) {
        const h = await startOurs(name, env);
        hosts.push(h);
        cleanup.push(async () => {
          await h.child.stop();
          reportLeftovers(h);
          rmSync(h.stateDir, { recursive: true, force: true });
        });
        await deploy(h, 'hello', { runtime: 'node' }, NODE_CODE);
        // Priming only warms instances: one failed call among 32 parallel cold starts (seen twice on the loaded
        // bench machine, HTTP 500) gets one more round instead of losing the whole comparison.
        await prime(h, 'hello', 32).catch((e) => {
          log(`  prime ${name}: ${(e as Error).message}; priming again`);
          return prime(h, 'hello', 32);
        });
      }
      const target = (h: number) => [`${hosts[h]!.url}/v1/functions/hello/invoke`, { authorization: `Bearer ${hosts[h]!.key}` }] as const;
      // JIT and caches of every host warm before anything counts: TRACED_WARMUP_S per host, in 1 s turns in
      // segment order (every host is as warm as the others when counting starts)
      for (let t = 0; t < Math.max(1, Math.round(TRACED_WARMUP_S)); t++) for (let h = 0; h < hosts.length; h++) await load(target(h)[0], 32, target(h)[1], 1);
      const snapper = new Snapper();
      cleanup.push(async () => void (await snapper.close()));
      const segs: Segment[][] = [[], []];
      // per host: [rps, loop µs/call, minor GC µs/call] of each of its segments (ours_traced.hosts)
      const perHost: [number, number, number][][] = hosts.map(() => []);
      const gcPrev = new Map<string, Awaited<ReturnType<typeof gcStats>>>();
      for (const h of hosts) gcPrev.set(h.url, await gcStats(h.url));
      for (let i = 0; i < 2 * TRACED_ROUNDS + 1; i++) {
        // U T U T …, the pairs taking turns: U0 T0 U1 T1 U2 T2 U0 … with three
        const k = i % 2;
        const pair = Math.floor(i / 2) % TRACED_PAIRS;
        const h = hosts[2 * pair + k]!;
        const r = await segment(target(2 * pair + k)[0], 32, target(2 * pair + k)[1], h.child.proc.pid!, { hostPid: h.child.proc.pid!, nodeId: h.nodeId, collectorPid: sink.pid }, snapper);
        segs[k]!.push(r);
        const g = await gcStats(h.url);
        const g0 = gcPrev.get(h.url) ?? { minorN: 0, minorS: 0, majorN: 0, majorS: 0, newBytes: 0 };
        gcPrev.set(h.url, g);
        const minorUs = (1e6 * (g.minorS - g0.minorS)) / r.all;
        perHost[2 * pair + k]!.push([r.rps, r.loopUs, minorUs]);
        const gcLine = `gc: minor/1k ${((1000 * (g.minorN - g0.minorN)) / r.all).toFixed(2)} minor µs/call ${minorUs.toFixed(2)} major n ${g.majorN - g0.majorN} major µs/call ${((1e6 * (g.majorS - g0.majorS)) / r.all).toFixed(2)} new ${(g.newBytes / 2 ** 20).toFixed(0)}MB`;
        const c = Object.entries(r.cpu).map(([p, v]) => `${p} ${p === 'unattributed_cores' ? v.toFixed(2) : Math.round(v)}`).join(', ');
        log(`  segment ${i + 1} ${k ? 'T' : 'U'}${TRACED_PAIRS > 1 ? pair : ''} ${Math.round(r.rps)} rps, loop ${Math.round(r.loopUs)} µs/call (load ${loadavg()}); cpu µs/call: ${c}${r.cpu.unattributed_cores >= 0.2 ? `; others' busiest (cores): ${r.others}` : ''}; ${gcLine}`);
      }
      // each T against the mean of the U just before and just after it
      const drops = segs[1]!.map((t, i) => 100 * (1 - t.rps / ((segs[0]![i]!.rps + segs[0]![i + 1]!.rps) / 2))).sort((a, b) => a - b);
      const summary = (ss: Segment[]) => {
        const times = ss.flatMap((x) => x.times).sort((a, b) => a - b);
        const loop = median(ss.map((x) => x.loopUs).sort((a, b) => a - b));
        return { rps: Math.round(median(ss.map((x) => x.rps).sort((a, b) => a - b))), p50_ms: r3(median(times)), p99_ms: r3(quantile(times, 0.99)), loop_us_per_call: Math.round(loop * 10) / 10 };
      };
      const [plain, traced] = [summary(segs[0]!), summary(segs[1]!)];
      // where tracing's CPU goes: each T's parts against the mean of the U just before and after it, as the drops
      const added = cpuMedians(
        segs[1]!.map((t, i) => {
          const d = {} as CpuParts;
          for (const p of CPU_PARTS) d[p] = t.cpu[p] - (segs[0]![i]!.cpu[p] + segs[0]![i + 1]!.cpu[p]) / 2;
          return d;
        }),
      );
      // every span accounted for: what the collector got, and what the host says it dropped or failed to send
      // (its batch timer sends the last partial batch within OTEL_BSP_SCHEDULE_DELAY, 5 s by default)
      const invocations = segs[1]!.reduce((n, x) => n + x.all, 0);
      const st = await settled(sink);
      // per host process (after ≥ 6 s idle in settled()): the spread between identically configured hosts, and memory
      const perHostOut = hosts.map((h, i) => {
        const status = readText(`/proc/${h.child.proc.pid!}/status`);
        const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
        const col = (j: number) => median(perHost[i]!.map((x) => x[j]!).filter((v) => Number.isFinite(v)).sort((a, b) => a - b));
        return {
          host: `${i % 2 ? 'T' : 'U'}${Math.floor(i / 2)}`,
          rps: Math.round(col(0)),
          loop_us_per_call: Math.round(col(1) * 10) / 10,
          minor_gc_us_per_call: Math.round(col(2) * 10) / 10,
          rss_mib: Math.round(kib('VmRSS') / 1024),
          rss_peak_mib: Math.round(kib('VmHWM') / 1024),
        };
      });
      const lost = { spans_dropped: 0, spans_failed: 0 };
      for (let p = 0; p < TRACED_PAIRS; p++) {
        const l = await traceLoss(hosts[2 * p + 1]!);
        lost.spans_dropped += l.spans_dropped;
        lost.spans_failed += l.spans_failed;
      }
      out.ours_traced = {
        warm_c32: { ...traced, spans_exported: st.spanCount, ...lost, invocations_in_segments: invocations },
        untraced_warm_c32: plain,
        traced_drop_pct: r3(median(drops)),
        traced_drop_pct_q25: r3(quantile(drops, 0.25)),
        traced_drop_pct_q75: r3(quantile(drops, 0.75)),
        traced_drop_pct_se: r3(bootstrapMedianSe(drops)),
        traced_drop_pct_of_medians: r3(100 * (1 - traced.rps / plain.rps)),
        traced_loop_us_per_call_added: Math.round((traced.loop_us_per_call - plain.loop_us_per_call) * 10) / 10,
        traced_loop_us_per_call_added_paired: Math.round(added.loop * 10) / 10,
        rounds: TRACED_ROUNDS,
        segment_s: SEGMENT_S,
        pairs: TRACED_PAIRS,
        cpu_us_per_call: { untraced: cpuMedians(segs[0]!.map((x) => x.cpu)), traced: cpuMedians(segs[1]!.map((x) => x.cpu)), added },
        hosts: perHostOut,
      };
      log(`  ${JSON.stringify(out.ours_traced)}`);
    }
  } finally {
    for (const c of cleanup.reverse()) await c().catch((e) => log(`cleanup: ${e}`));
    invokeAgent.destroy();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  log(`failed: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
