/**
 * `npm run bench:gateway` (issue 6): the whole host over HTTP against a bare Hono hello-world, measured in
 * one run on this machine. ONE JSON object on stdout, progress on stderr:
 *
 *   {"ours": {"warm_c1": {rps, p50_ms, p99_ms}, "warm_c32": {...}, "cold_node": {median_ms, p90_ms, n},
 *    "cold_exec": {...}}, "bare_hono": {"c1": {...}, "c32": {...}}, "ratio_c32",
 *    "ours_traced": {"warm_c32": {rps, p50_ms, p99_ms, loop_us_per_call, spans_exported, spans_dropped, spans_failed,
 *                    invocations_in_segments}, "untraced_warm_c32": {...}, "traced_drop_pct", "traced_drop_pct_q25",
 *                    "traced_drop_pct_q75", "traced_drop_pct_of_medians", "traced_loop_us_per_call_added", "rounds",
 *                    "segment_s"}}
 *
 * - ours: `fnhost start` as a child process (embedded redis-server, scheduler, native sandboxes), a node
 *   hello-world deployed; warm = POST /v1/functions/hello/invoke with a tenant key and a small JSON body.
 * - bare_hono: a child process serving a Hono app on @hono/node-server that echoes the same JSON body.
 * - load: autocannon in this process, keep-alive, for BENCH_DURATION_S (default 10) after a 2 s warm-up;
 *   latencies are taken from autocannon's per-response times (float ms; its own histogram rounds to 1 ms).
 *   Before c32, rounds of 32 parallel calls until all are warm: 32 connections need 32 warm instances.
 * - cold_*: a new function per sample (deploy, then the first sync invoke, timed at the client), the pool
 *   given BENCH_COLD_GAP_MS (default 300) to refill between samples; n = BENCH_COLD_N (default 30).
 * - ours_traced (issue 7): a fresh untraced host U and a host with tracing on T (OTLP/HTTP to a collector process
 *   on loopback, test/helpers/otlp-sink.ts), both primed and warmed up, then the same warm_c32 load in short
 *   strictly alternating segments U T U T … U: BENCH_TRACED_ROUNDS (default 20) traced segments, one more
 *   untraced, each BENCH_TRACED_SEGMENT_S (default 2.5) s counted after 0.5 s of settling. Each traced segment is
 *   compared with the mean of the two untraced segments around it: a drift of the shared machine that is linear
 *   over ~9 s cancels, and every T has a U before and after it (no position bias: neither host always runs
 *   first or right after the other). traced_drop_pct = median of those drops (traced_drop_pct_q25 / _q75: their
 *   spread), traced_drop_pct_of_medians = 1 − median T rps / median U rps; warm_c32 (traced: + spans_exported
 *   by the collector, spans_dropped / spans_failed from the host's /metrics) and untraced_warm_c32: median
 *   segment rps, latencies over all segments, loop_us_per_call = CPU of the host's event-loop thread (the
 *   bottleneck at c32) per call, median over segments — tracing's added cost in a form the other helpers' load
 *   moves much less than rps (traced_loop_us_per_call_added = traced − untraced). Why not long rounds: this 2-core machine is shared, and the load
 *   of others changes within seconds; 5 rounds of 2 × 12 s gave pair drops from −10 to +34 % (same total time).
 *   BENCH_GATEWAY_TRACED=0 leaves it out; BENCH_GATEWAY_ONLY=traced runs only this part (development).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { tarGz } from '../../services/cli/pack.ts';
import { findLeftovers } from '../helpers/leaks.ts';
import { startOtlpSinkProcess, type OtlpSinkProcess, type OtlpSinkStats } from '../helpers/otlp-sink.ts';

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
const ONLY_TRACED = process.env.BENCH_GATEWAY_ONLY === 'traced';
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
}

/**
 * `connections` in parallel for SETTLE_S + SEGMENT_S; only responses arriving in the last SEGMENT_S count (our own
 * timestamps: autocannon stops at its next sample tick, so its duration is not the window).
 */
async function segment(url: string, connections: number, headers: Record<string, string>, pid: number): Promise<Segment> {
  const times: number[] = [];
  let all = 0;
  let bad = 0;
  const t0 = performance.now();
  const from = t0 + SETTLE_S * 1000;
  const to = from + SEGMENT_S * 1000;
  let loop0 = 0;
  let loop1 = 0;
  const timers = [setTimeout(() => (loop0 = loopTicks(pid)), SETTLE_S * 1000), setTimeout(() => (loop1 = loopTicks(pid)), (SETTLE_S + SEGMENT_S) * 1000)];
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
  return { rps: times.length / SEGMENT_S, loopUs: times.length ? ((loop1 - loop0) * 1e6) / CLOCK_TICKS / times.length : NaN, times, all };
}

/** USER_HZ of /proc/<pid>/task/<tid>/stat times (100 on Linux) */
const CLOCK_TICKS = 100;

/** utime + stime of a process's main (event-loop) thread, in clock ticks */
function loopTicks(pid: number): number {
  const s = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
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
      const hosts: OurHost[] = [];
      for (const [name, env] of [['untraced', {}], ['traced', sink.env]] as const) {
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
      const target = (k: number) => [`${hosts[k]!.url}/v1/functions/hello/invoke`, { authorization: `Bearer ${hosts[k]!.key}` }] as const;
      // JIT and caches of both hosts warm before anything counts
      for (const k of [0, 1, 0, 1]) await load(target(k)[0], 32, target(k)[1], WARMUP_S / 2);
      const segs: Segment[][] = [[], []];
      for (let i = 0; i < 2 * TRACED_ROUNDS + 1; i++) {
        const k = i % 2;
        const r = await segment(target(k)[0], 32, target(k)[1], hosts[k]!.child.proc.pid!);
        segs[k]!.push(r);
        log(`  segment ${i + 1} ${k ? 'T' : 'U'} ${Math.round(r.rps)} rps, loop ${Math.round(r.loopUs)} µs/call (load ${loadavg()})`);
      }
      // each T against the mean of the U just before and just after it
      const drops = segs[1]!.map((t, i) => 100 * (1 - t.rps / ((segs[0]![i]!.rps + segs[0]![i + 1]!.rps) / 2))).sort((a, b) => a - b);
      const summary = (ss: Segment[]) => {
        const times = ss.flatMap((x) => x.times).sort((a, b) => a - b);
        const loop = median(ss.map((x) => x.loopUs).sort((a, b) => a - b));
        return { rps: Math.round(median(ss.map((x) => x.rps).sort((a, b) => a - b))), p50_ms: r3(median(times)), p99_ms: r3(quantile(times, 0.99)), loop_us_per_call: Math.round(loop * 10) / 10 };
      };
      const [plain, traced] = [summary(segs[0]!), summary(segs[1]!)];
      // every span accounted for: what the collector got, and what the host says it dropped or failed to send
      // (its batch timer sends the last partial batch within OTEL_BSP_SCHEDULE_DELAY, 5 s by default)
      const invocations = segs[1]!.reduce((n, x) => n + x.all, 0);
      const st = await settled(sink);
      const lost = await traceLoss(hosts[1]!);
      out.ours_traced = {
        warm_c32: { ...traced, spans_exported: st.spanCount, ...lost, invocations_in_segments: invocations },
        untraced_warm_c32: plain,
        traced_drop_pct: r3(median(drops)),
        traced_drop_pct_q25: r3(quantile(drops, 0.25)),
        traced_drop_pct_q75: r3(quantile(drops, 0.75)),
        traced_drop_pct_of_medians: r3(100 * (1 - traced.rps / plain.rps)),
        traced_loop_us_per_call_added: Math.round((traced.loop_us_per_call - plain.loop_us_per_call) * 10) / 10,
        rounds: TRACED_ROUNDS,
        segment_s: SEGMENT_S,
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
