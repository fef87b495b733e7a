/**
 * @module scheduler/instances
 * One node's instances: warm pick, cold start (specialise a pooled sandbox), memory admission, per-function
 * instance caps, keep-alive expiry and retirement. Pure logic over an `Executor`; no Redis.
 *
 * Order of a placement (OpenWhisk's ContainerPool order, reference/peers.md §4):
 *   1. retire live instances of older versions of the same function (a changed memory cap or code is a new
 *      version; DESIGN.md: the next invocation uses it, the old instances go — busy ones when they finish);
 *   2. a warm instance of the same version with a free slot (`fn.concurrency`), most recently used first so
 *      that surplus instances age out — unless the function's hot set is busy (below) → wait;
 *   3. if the function is at `maxInstances` on this node → wait;
 *   4. memory admission: the sum of the caps of live (and starting) instances never exceeds `capacityMb`;
 *      idle instances are evicted least-recently-used first to make room; if that is not enough → wait;
 *   5. cold start: a pooled sandbox of the function's kind (or one created now), specialised.
 * Waiting is bounded (`maxWaitMs`, `maxWaitersPerFunction`); past either the caller gets TooManyRequests.
 *
 * Hot set: a short function runs on at most `hotInstances` instances at once, even below its `maxInstances`;
 * further calls wait in its FIFO and get the next instance that frees up (handed over in `release()`).
 * Measured here with 64 calls in flight of a node echo function: 16 busy instances cost 140–190 µs of
 * runtime CPU per call, 4 cost 55–70 µs (a process that runs again at once has warm caches and needs no
 * wake-up), and served 1.5–2× the calls per second.
 *   - short: at least a quarter of its recent calls took the runtime less than `shortRunMs` by its own clock
 *     (`InstanceHandle.lastRunMs`) — a low quantile, not a mean: on a loaded machine preempted calls take
 *     whole time slices (with 16 busy runtimes on 2 cores under other load, most calls did) — and most of
 *     its sampled calls did not block (`lastRunSlept`): a call that waits for I/O a little is served better
 *     by more instances at once, while one that only computes a little gains nothing from them;
 *   - a call held longer than `stuck` = max(`HOT_STUCK_MS`, `HOT_STUCK_HOLDS` × the usual hold of the
 *     function's fast calls — placement to release as the host sees it, which grows with the host's load:
 *     tens of ms for a 0.1 ms call on a loaded 2-core machine) stops counting, so the long calls of a mostly
 *     short function do not hold its waiters back; while other calls of the function keep returning, only
 *     past `HOT_STUCK_MOVING` × stuck (a host that was merely descheduled sees every call as old while the
 *     results are arriving: it keeps its hot set).
 * A function whose cap alone is above the node's capacity gets LimitExceeded at once.
 *
 * Invariant kept by construction: `admittedMb` (sum over instances in state starting|live|retiring) ≤ capacityMb.
 * Reservation happens synchronously inside `tryPlace` (no await between the check and the reservation).
 * Pooled sandboxes are outside admission: they are not a function's yet, and their use is bounded by the
 * pool's max per kind × their idle size (~120 KiB bare, tens of MiB with a pre-booted runtime) — which is
 * why the default capacity is half the machine, not all of it.
 */
import { availableParallelism } from 'node:os';
import type { FunctionVersion, LogLine, StartKind } from '../common/model.ts';
import { LimitExceeded, TooManyRequests, Timeout } from '../common/errors.ts';
import { activeSpan, runInSpan, type Span } from '../common/telemetry.ts';
import type { Executor, InstanceHandle } from './executor.ts';
import { FairQueue, type FairWaiter } from './fair-queue.ts';
import type { WarmPool } from './pool.ts';

export interface InstancesConfig {
  /** memory for function instances on this node, MiB. */
  capacityMb: number;
  /** how long an idle instance stays warm (default 5 min; OpenWhisk reaps at 10, Lambda ~5–15). */
  keepAliveMs: number;
  /** how long an invocation may wait on this node for memory or an instance slot (default 30 s). */
  maxWaitMs: number;
  /** waiting invocations per function version above which new ones are refused (default 1,000). */
  maxWaitersPerFunction: number;
  /** instances a short function keeps busy at once (default 2 per core; 0 = no hot set). See the module header. */
  hotInstances?: number;
  /** a function a quarter of whose calls take less than this (runtime's own time, ms) is short (default 2). */
  shortRunMs?: number;
}

/** 2 busy instances per core: measured best with 2–8 (55–85 µs of runtime CPU per call) vs 16 (140–190 µs). */
const DEFAULT_HOT_PER_CORE = 2;
const DEFAULT_SHORT_RUN_MS = 2;
/** share of recent calls under shortRunMs that makes a function short (see the module header) */
const SHORT_SHARE = 0.25;
/**
 * `stuck` (module header): 10 ms ≈ 100 calls' worth of a 0.1 ms function, far past a fast call's hold on a
 * quiet host (~0.3 ms); the multiples of the usual hold keep it well past the hold on a loaded one.
 */
const HOT_STUCK_MS = 10;
const HOT_STUCK_HOLDS = 8;
const HOT_STUCK_MOVING = 4;
/** calls seen before a function can count as short (a new function is never held back) */
const MIN_SAMPLES = 16;
/** weight of the newest call in the running shares and averages (≈ the last 10–20 calls count) */
const EWMA_ALPHA = 0.1;
/** the same for `slept`, which runtimes report on every 8th call */
const SLEEP_ALPHA = 0.3;

interface RunStats {
  /** running share of calls that took the runtime less than shortRunMs */
  fastShare: number;
  /** running share of the sampled calls during which the runtime blocked */
  sleepShare: number;
  samples: number;
  /** placement to release, host-side, of the fast calls */
  holdMs: number;
  /** performance.now() of the latest release */
  lastRelease: number;
}

export type InstanceState = 'starting' | 'live' | 'retiring' | 'dead';

export interface Instance {
  readonly seq: number;
  readonly key: string;
  readonly fn: FunctionVersion;
  readonly memoryMb: number;
  state: InstanceState;
  inFlight: number;
  lastUsed: number;
  /** performance.now() when its current (latest) call was placed */
  busySince: number;
  invocations: number;
  handle?: InstanceHandle;
}

export interface Lease {
  instance: Instance;
  start: StartKind;
  /** ms spent waiting for memory / a slot on this node */
  waitedMs: number;
  /** epoch ms when the placement was decided (before specialisation on a cold start) */
  placedAt: number;
}

type Placement = { kind: 'warm'; inst: Instance } | { kind: 'cold'; inst: Instance };

export interface InstancesHooks {
  /** an instance of (fn) became usable or was used: it stays warm until `untilMs` (0 = none left on this node). */
  onWarm?(fn: FunctionVersion, untilMs: number): void;
  onDestroyed?(inst: Instance, reason: 'keepalive' | 'evicted' | 'retired' | 'fatal' | 'shutdown' | 'failed-start'): void;
  onSpecialised?(fn: FunctionVersion, ms: number): void;
  /** every log line of every instance (tagged with its invocation id). */
  onLog?(fn: FunctionVersion, line: LogLine): void;
}

export const fnKey = (fn: Pick<FunctionVersion, 'tenant' | 'name' | 'version'>) => `${fn.tenant}\u0000${fn.name}\u0000${fn.version}`;
const nameKey = (fn: Pick<FunctionVersion, 'tenant' | 'name'>) => `${fn.tenant}\u0000${fn.name}`;

/**
 * @example
 * const instances = new Instances(executor, pool, { capacityMb: 4096, keepAliveMs: 300_000, maxWaitMs: 30_000, maxWaitersPerFunction: 1000 });
 * instances.start();
 * const { instance, start } = await instances.acquire(fn, deadline);   // start: 'cold' | 'warm'
 * try { await instance.handle!.invoke(req); instances.release(instance); } catch (e) { instances.release(instance, isFatal(e)); }
 */
export class Instances {
  private readonly all = new Set<Instance>();
  private readonly byKey = new Map<string, Set<Instance>>();
  private readonly newestVersion = new Map<string, number>();
  private readonly waiters = new FairQueue<Placement>();
  private readonly destroying = new Set<Promise<void>>();
  private readonly runStats = new Map<string, RunStats>();
  private readonly hot: number;
  private readonly shortRunMs: number;
  private coolTimer: NodeJS.Timeout | undefined;
  private coolAt = Infinity;
  private admitted = 0;
  private seq = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly exec: Executor,
    private readonly pool: WarmPool,
    readonly cfg: InstancesConfig,
    private readonly hooks: InstancesHooks = {},
  ) {
    this.hot = cfg.hotInstances ?? DEFAULT_HOT_PER_CORE * availableParallelism();
    this.shortRunMs = cfg.shortRunMs ?? DEFAULT_SHORT_RUN_MS;
  }

  get admittedMb(): number {
    return this.admitted;
  }

  /**
   * Retires the instances whose function version `match` selects (a deleted version: no call may reach them
   * again): idle ones are destroyed now and their memory freed, busy or starting ones when their calls return —
   * as an older version's are when a newer one is placed. Returns how many were matched.
   * @example
   * instances.retire((fn) => fn.tenant === 'acme' && fn.name === 'hello' && fn.version === 1);
   */
  retire(match: (fn: FunctionVersion) => boolean): number {
    let n = 0;
    let freed = false;
    for (const i of [...this.all]) {
      if ((i.state !== 'live' && i.state !== 'starting') || !match(i.fn)) continue;
      n++;
      if (i.inFlight === 0 && i.state === 'live') {
        this.destroy(i, 'retired');
        freed = true;
      } else i.state = 'retiring';
    }
    // memory freed: waiters of other functions may fit now
    if (freed && this.waiters.size) this.waiters.pump();
    return n;
  }

  /** live/starting/retiring instances (tests, metrics). */
  list(): Instance[] {
    return [...this.all];
  }

  waiting(): number {
    return this.waiters.size;
  }

  start(sweepEveryMs = Math.max(50, Math.min(1000, Math.floor(this.cfg.keepAliveMs / 4)))): void {
    this.sweepTimer = setInterval(() => this.sweep(), sweepEveryMs);
    this.sweepTimer.unref();
  }

  /**
   * Places an invocation of `fn`: a warm instance, or a cold start. Resolves once the instance can take the
   * invocation (specialised); the caller must `release()` it exactly once.
   * @param deadline epoch ms after which nobody waits for the result (0 = none: async)
   */
  async acquire(fn: FunctionVersion, deadline = 0): Promise<Lease> {
    if (this.closed) throw new TooManyRequests('node is shutting down');
    if (fn.memoryMb > this.cfg.capacityMb) {
      throw new LimitExceeded(`memory cap ${fn.memoryMb} MiB is above this node's capacity`, { memoryMb: fn.memoryMb, capacityMb: this.cfg.capacityMb });
    }
    const t0 = Date.now();
    // the caller's span, captured before any await: a cold start's 'specialise' hangs under it
    const parent = activeSpan();
    const p = this.tryPlace(fn);
    return this.settle(p ?? (await this.wait(fn, deadline)), t0, parent);
  }

  /** The lease of a placement: at once for a warm one (no async frame: most calls that wait get a warm instance). */
  private settle(p: Placement, t0: number, parent: Span | undefined): Lease | Promise<Lease> {
    const placedAt = Date.now();
    const waitedMs = placedAt - t0;
    if (p.kind === 'warm') return { instance: p.inst, start: 'warm', waitedMs, placedAt };
    return this.coldStart(p.inst, parent).then((): Lease => ({ instance: p.inst, start: 'cold', waitedMs, placedAt }));
  }

  private acquireAfterWait(fn: FunctionVersion, deadline: number): Promise<Lease> {
    const t0 = Date.now();
    const parent = activeSpan();
    return this.wait(fn, deadline).then((p) => this.settle(p, t0, parent));
  }

  /** runs on its hot set: short, and an instance of it is live or starting here. */
  private briefWait(fn: FunctionVersion): boolean {
    const key = fnKey(fn);
    if (!this.isShort(key, fn)) return false;
    for (const i of this.byKey.get(key) ?? []) if (i.state === 'live' || i.state === 'starting') return true;
    return false;
  }

  private isShort(key: string, fn: FunctionVersion): boolean {
    if (this.hot <= 0 || this.slotsOf(fn) !== 1) return false;
    const st = this.runStats.get(key);
    return st !== undefined && st.samples >= MIN_SAMPLES && st.fastShare >= SHORT_SHARE && st.sleepShare < 0.5;
  }

  private slotsOf(fn: FunctionVersion): number {
    return Math.max(1, Math.min(fn.concurrency || 1, this.exec.maxConcurrency?.(fn) ?? Infinity));
  }

  /** pump once the oldest hot call passes HOT_STUCK_MS (a waiter may then go to another instance). */
  private armCool(at: number) {
    if (at >= this.coolAt || this.closed) return;
    if (this.coolTimer) clearTimeout(this.coolTimer);
    this.coolAt = at;
    // The pump runs in the check phase (setImmediate), after the poll phase: when the host was descheduled
    // past `at`, the results that arrived meanwhile are taken (and their instances handed over) first.
    this.coolTimer = setTimeout(() => {
      setImmediate(() => {
        this.coolTimer = undefined;
        this.coolAt = Infinity;
        if (this.waiters.size > 0 && !this.closed) this.waiters.pump();
      });
    }, Math.max(1, Math.ceil(at - performance.now())));
  }

  /**
   * Placement that never waits, for callers with another place to go (co-located dispatch: the gateway runs the
   * call in-process if this node can take it now, else enqueues it). Synchronous: decides and reserves in
   * the same tick, so a non-undefined result is the caller's to `release()` exactly once, like `acquire()`.
   *   - a warm instance of `fn` with a free slot → that `Lease` (start 'warm') at once;
   *   - else, with `cold` (default true), if a cold start can begin now (under `fn.maxInstances`, memory fits,
   *     evicting idle instances LRU if needed) → a `Promise<Lease>` that resolves once specialised (rejects
   *     with the specialisation's typed error; the reservation is freed then, nothing to release);
   *   - a short function whose hot set is busy (or that already has invocations waiting here), with an
   *     instance live or starting → a `Promise<Lease>`: it joins the function's FIFO behind those and gets
   *     the next instance that frees (a short wait: that is what the hot set is for; see the module header);
   *   - else `undefined`: the call would have to wait (at the instance cap, memory full, invocations of this
   *     function already waiting here — never overtaken — or, for a cold start, anything waiting on this
   *     node), or it cannot run here at all (shutting down, cap above capacity): enqueue it.
   * Never throws.
   * @example
   * const got = instances.acquireNow(fn);
   * if (!got) return enqueue(job);
   * const lease = got instanceof Promise ? await got : got;
   * try { await lease.instance.handle!.invoke(req); instances.release(lease.instance); } catch (e) { instances.release(lease.instance, isFatal(e)); }
   */
  acquireNow(fn: FunctionVersion, cold = true, deadline = 0): Lease | Promise<Lease> | undefined {
    if (this.closed || fn.memoryMb > this.cfg.capacityMb) return undefined;
    if (this.waiters.size > 0 && this.waitingFor(fn) > 0) return this.briefWait(fn) ? this.acquireAfterWait(fn, deadline) : undefined;
    const p = this.tryPlace(fn, cold && this.waiters.size === 0);
    if (!p) return this.briefWait(fn) ? this.acquireAfterWait(fn, deadline) : undefined;
    const placedAt = Date.now();
    if (p.kind === 'warm') return { instance: p.inst, start: 'warm', waitedMs: 0, placedAt };
    return this.coldStart(p.inst).then(() => ({ instance: p.inst, start: 'cold', waitedMs: 0, placedAt }) satisfies Lease);
  }

  /**
   * `acquireNow(fn, false)`: a warm instance with a free slot, reserved, or undefined. Synchronous, never throws.
   * @example
   * const lease = instances.tryAcquireNow(fn);   // Lease | undefined
   */
  tryAcquireNow(fn: FunctionVersion): Lease | undefined {
    if (this.closed || fn.memoryMb > this.cfg.capacityMb) return undefined;
    if (this.waiters.size > 0 && this.waitingFor(fn) > 0) return undefined;
    const p = this.tryPlace(fn, false);
    return p?.kind === 'warm' ? { instance: p.inst, start: 'warm', waitedMs: 0, placedAt: Date.now() } : undefined;
  }

  /**
   * What `acquireNow(fn)` would do now, without reserving anything: 'warm', 'cold' or undefined (would wait /
   * cannot run here). Only a hint: the answer may change at the next await.
   * @example
   * if (instances.canPlaceNow(fn) === 'warm') runLocally(); else enqueue();
   */
  canPlaceNow(fn: FunctionVersion): StartKind | undefined {
    if (this.closed || fn.memoryMb > this.cfg.capacityMb) return undefined;
    if (this.briefWait(fn)) return 'warm';
    if (this.waiters.size > 0 && this.waitingFor(fn) > 0) return undefined;
    return this.peek(fn, this.waiters.size === 0);
  }

  /**
   * Returns an instance after an invocation. `fatal` (Timeout / OutOfMemory / Crashed, or the handle says it
   * is not alive) destroys it; otherwise it stays warm for the keep-alive.
   */
  release(inst: Instance, fatal = false): void {
    inst.inFlight--;
    inst.lastUsed = Date.now();
    const ms = inst.handle?.lastRunMs;
    if (ms !== undefined) {
      const now = performance.now();
      const hold = now - inst.busySince;
      const fast = ms < this.shortRunMs ? 1 : 0;
      const st = this.runStats.get(inst.key);
      const slept = inst.handle?.lastRunSlept;
      if (!st) this.runStats.set(inst.key, { fastShare: fast, sleepShare: slept ? 1 : 0, samples: 1, holdMs: hold, lastRelease: now });
      else {
        if (slept !== undefined) st.sleepShare += SLEEP_ALPHA * ((slept ? 1 : 0) - st.sleepShare);
        st.fastShare += EWMA_ALPHA * (fast - st.fastShare);
        if (fast) st.holdMs += EWMA_ALPHA * (hold - st.holdMs);
        st.samples++;
        st.lastRelease = now;
      }
    }
    if (fatal || !inst.handle?.alive) this.destroy(inst, 'fatal');
    else if (inst.state === 'retiring' && inst.inFlight === 0) this.destroy(inst, 'retired');
    else if (inst.state === 'live') {
      this.hooks.onWarm?.(inst.fn, inst.lastUsed + this.cfg.keepAliveMs);
      // Only this function version waits: hand the freed slot straight to its oldest waiter (no round of
      // attempts). With anyone else waiting the pump decides: an idle instance may be evicted to make room
      // for another tenant's waiter, whose turn it may be. Not while the function's hot set is full without
      // this instance (it grew past it while calls looked stuck): the instance then stays idle and ages out.
      if (
        this.waiters.size > 0 &&
        !this.closed &&
        this.waiters.countGroup(inst.fn.tenant, inst.key) === this.waiters.size &&
        !this.findWarm(inst.fn, inst.key).hotFull
      ) {
        const w = this.waiters.shiftGroup(inst.fn.tenant, inst.key) as FnWaiter | undefined;
        if (w) {
          inst.inFlight++;
          inst.invocations++;
          inst.busySince = performance.now();
          w.resolve({ kind: 'warm', inst });
          return;
        }
      }
    }
    if (this.waiters.size > 0) this.waiters.pump();
  }

  /** waiters of this function version on this node. */
  private waitingFor(fn: FunctionVersion): number {
    return this.waiters.countGroup(fn.tenant, fnKey(fn));
  }

  /**
   * Waits in the fair queue. One FIFO per function version, no timer per waiter: one timer armed for the
   * earliest expiry sweeps the expired (with a function's hot set busy most invocations wait here, so the
   * waiting path is on the hot path).
   */
  private wait(fn: FunctionVersion, deadline: number): Promise<Placement> {
    const key = fnKey(fn);
    if (this.waiters.countGroup(fn.tenant, key) >= this.cfg.maxWaitersPerFunction) {
      return Promise.reject(new TooManyRequests('too many invocations waiting for this function on this node', { limit: this.cfg.maxWaitersPerFunction }));
    }
    const now = Date.now();
    const limit = Math.min(this.cfg.maxWaitMs, deadline > 0 ? Math.max(0, deadline - now) : Infinity);
    return new Promise<Placement>((resolve, reject) => {
      const w = new FnWaiter(this, fn, key, deadline, limit, now + limit, resolve, reject);
      this.waiters.push(w);
      this.armExpiry(w.expiresAt);
    });
  }

  private expiryTimer: NodeJS.Timeout | undefined;
  private expiryAt = Infinity;

  private armExpiry(at: number) {
    if (at >= this.expiryAt) return;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryAt = at;
    this.expiryTimer = setTimeout(() => this.expireWaiters(), Math.max(0, at - Date.now()));
  }

  /** Rejects waiters whose time is up; re-arms for the next expiry. */
  private expireWaiters(now = Date.now()) {
    this.expiryTimer = undefined;
    this.expiryAt = Infinity;
    let next = Infinity;
    const expired: FnWaiter[] = [];
    for (const x of this.waiters.waiters()) {
      const w = x as FnWaiter;
      if (w.expiresAt <= now) expired.push(w);
      else if (w.expiresAt < next) next = w.expiresAt;
    }
    for (const w of expired) {
      this.waiters.remove(w);
      if (w.deadline > 0 && now >= w.deadline) w.reject(new Timeout('no instance became free before the deadline', { timeoutMs: w.fn.timeoutMs, waitedMs: w.limit }));
      else w.reject(new TooManyRequests('no capacity for this function on this node in time', { waitedMs: w.limit, memoryMb: w.fn.memoryMb, capacityMb: this.cfg.capacityMb }));
    }
    if (next < Infinity) this.armExpiry(next);
  }

  /**
   * The most recently used live instance of `key` with a free slot, how many count against maxInstances,
   * and — for a short function — whether its hot set is full (then `coolAt`: when its oldest call stops counting).
   */
  private findWarm(fn: FunctionVersion, key: string): { warm: Instance | undefined; count: number; hotFull: boolean; coolAt: number } {
    const set = this.byKey.get(key);
    let warm: Instance | undefined;
    let count = 0;
    let hotBusy = 0;
    let coolAt = Infinity;
    if (set) {
      const slots = this.slotsOf(fn);
      const short = this.isShort(key, fn);
      const now = short ? performance.now() : 0;
      const st = short ? this.runStats.get(key)! : undefined;
      const stuck = st ? Math.max(HOT_STUCK_MS, HOT_STUCK_HOLDS * st.holdMs) : 0;
      const moving = st !== undefined && now - st.lastRelease < stuck;
      for (const i of set) {
        if (i.state === 'starting' || i.state === 'live') {
          count++;
          const held = now - i.busySince;
          if (short && i.inFlight > 0 && (held < stuck || (moving && held < HOT_STUCK_MOVING * stuck))) {
            hotBusy++;
            coolAt = Math.min(coolAt, held < stuck ? i.busySince + stuck : Math.min(i.busySince + HOT_STUCK_MOVING * stuck, st!.lastRelease + stuck));
          }
        }
        // the handle's liveness (a getter chain down to the channel) only for a better candidate
        if (i.state === 'live' && i.inFlight < slots && (!warm || i.lastUsed > warm.lastUsed) && i.handle?.alive !== false) warm = i;
      }
      if (short && hotBusy >= this.hot) return { warm: undefined, count, hotFull: true, coolAt };
    }
    return { warm, count, hotFull: false, coolAt };
  }

  private atCap(fn: FunctionVersion, count: number): boolean {
    return fn.maxInstances !== undefined && fn.maxInstances > 0 && count >= fn.maxInstances;
  }

  /** @internal a waiter's attempt (FnWaiter): tryPlace with cold starts allowed */
  placeWaiting(fn: FunctionVersion): Placement | undefined {
    return this.tryPlace(fn);
  }

  /**
   * Synchronous: decides and reserves, or returns undefined (wait). Throws only for closed.
   * `allowCold` false: a warm instance or nothing.
   */
  private tryPlace(fn: FunctionVersion, allowCold = true): Placement | undefined {
    if (this.closed) throw new TooManyRequests('node is shutting down');
    this.retireOlder(fn);
    const key = fnKey(fn);
    const { warm, count, hotFull, coolAt } = this.findWarm(fn, key);
    if (hotFull) {
      this.armCool(coolAt);
      return undefined;
    }
    if (warm) {
      warm.inFlight++;
      warm.invocations++;
      warm.lastUsed = Date.now();
      warm.busySince = performance.now();
      return { kind: 'warm', inst: warm };
    }
    if (!allowCold || this.atCap(fn, count)) return undefined;
    if (!this.makeRoom(fn.memoryMb)) return undefined;
    const inst: Instance = { seq: ++this.seq, key, fn, memoryMb: fn.memoryMb, state: 'starting', inFlight: 1, lastUsed: Date.now(), busySince: performance.now(), invocations: 1 };
    this.add(inst);
    return { kind: 'cold', inst };
  }

  /** tryPlace without reserving, evicting or retiring anything. */
  private peek(fn: FunctionVersion, allowCold: boolean): StartKind | undefined {
    const { warm, count, hotFull } = this.findWarm(fn, fnKey(fn));
    if (warm) return 'warm';
    if (hotFull) return undefined;
    if (!allowCold || this.atCap(fn, count)) return undefined;
    return this.fits(fn.memoryMb) ? 'cold' : undefined;
  }

  /** whether `mb` fits now, counting idle instances that could be evicted. */
  private fits(mb: number): boolean {
    let free = this.cfg.capacityMb - this.admitted;
    if (free >= mb) return true;
    for (const i of this.all) {
      if (i.state === 'live' && i.inFlight === 0) free += i.memoryMb;
      if (free >= mb) return true;
    }
    return false;
  }

  /** Evicts idle instances, least recently used first, until `mb` fits; false if it cannot fit now. */
  private makeRoom(mb: number): boolean {
    if (this.admitted + mb <= this.cfg.capacityMb) return true;
    const idle = [...this.all].filter((i) => i.state === 'live' && i.inFlight === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    let free = this.cfg.capacityMb - this.admitted;
    const victims: Instance[] = [];
    for (const i of idle) {
      if (free >= mb) break;
      victims.push(i);
      free += i.memoryMb;
    }
    if (free < mb) return false; // evicting would not be enough: keep the warm instances, wait
    for (const v of victims) this.destroy(v, 'evicted');
    return true;
  }

  private retireOlder(fn: FunctionVersion) {
    const nk = nameKey(fn);
    const newest = this.newestVersion.get(nk) ?? 0;
    if (fn.version <= newest) return;
    this.newestVersion.set(nk, fn.version);
    for (const i of this.all) {
      if (i.fn.tenant === fn.tenant && i.fn.name === fn.name && i.fn.version < fn.version && (i.state === 'live' || i.state === 'starting')) {
        if (i.inFlight === 0 && i.state === 'live') this.destroy(i, 'retired');
        else i.state = 'retiring';
      }
    }
  }

  /** `parent`: the span the executor's 'specialise' hangs under (default: the one running now, for acquireNow). */
  private async coldStart(inst: Instance, parent: Span | undefined = activeSpan()) {
    const t0 = Date.now();
    const kind = this.exec.kindOf(inst.fn);
    try {
      const pooled = this.pool.take(kind) ?? (await this.pool.createNow(kind));
      const fn = inst.fn;
      inst.handle = await runInSpan(parent, () => this.exec.specialise(pooled, fn, (l) => this.hooks.onLog?.(fn, l)));
    } catch (e) {
      this.destroy(inst, 'failed-start');
      this.waiters.pump();
      throw e;
    }
    this.hooks.onSpecialised?.(inst.fn, Date.now() - t0);
    if (inst.state === 'starting') {
      inst.state = 'live';
      // After the caller's first invocation is on its way (the rest of this tick): the advertisement is a
      // Redis write the cold start need not wait behind.
      const fn = inst.fn;
      setImmediate(() => {
        if (inst.state === 'live') this.hooks.onWarm?.(fn, Date.now() + this.cfg.keepAliveMs);
      });
    }
    if (this.closed) {
      // shut down while specialising: the caller still gets to run on it; release() will destroy it
      inst.state = 'retiring';
    }
  }

  private add(inst: Instance) {
    this.all.add(inst);
    let s = this.byKey.get(inst.key);
    if (!s) this.byKey.set(inst.key, (s = new Set()));
    s.add(inst);
    this.admitted += inst.memoryMb;
  }

  private destroy(inst: Instance, reason: Parameters<NonNullable<InstancesHooks['onDestroyed']>>[1]) {
    if (inst.state === 'dead') return;
    inst.state = 'dead';
    this.all.delete(inst);
    const s = this.byKey.get(inst.key);
    s?.delete(inst);
    if (s && s.size === 0) {
      this.byKey.delete(inst.key);
      this.runStats.delete(inst.key);
      this.hooks.onWarm?.(inst.fn, 0);
    }
    this.admitted -= inst.memoryMb;
    this.hooks.onDestroyed?.(inst, reason);
    if (inst.handle) {
      const p = inst.handle
        .destroy()
        .catch(() => {})
        .finally(() => this.destroying.delete(p));
      this.destroying.add(p);
    }
  }

  /** Keep-alive expiry and dead-handle clean-up; runs on a timer, callable from tests. */
  sweep(now = Date.now()): void {
    let freed = false;
    for (const i of [...this.all]) {
      if (i.state === 'live' && i.inFlight === 0 && (now - i.lastUsed >= this.cfg.keepAliveMs || i.handle?.alive === false)) {
        this.destroy(i, i.handle?.alive === false ? 'fatal' : 'keepalive');
        freed = true;
      }
    }
    if (freed || this.waiters.size) this.waiters.pump();
  }

  /** Destroys idle instances now, refuses new placements, waits for busy ones up to `graceMs`, then destroys all. */
  async close(graceMs = 10_000): Promise<void> {
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    if (this.coolTimer) clearTimeout(this.coolTimer);
    this.coolTimer = undefined;
    this.waiters.pump(); // every waiter's attempt throws "shutting down" and is rejected
    const deadline = Date.now() + graceMs;
    for (;;) {
      for (const i of [...this.all]) if (i.inFlight === 0 && i.state !== 'starting') this.destroy(i, 'shutdown');
      if (this.all.size === 0 || Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    for (const i of [...this.all]) this.destroy(i, 'shutdown');
    await Promise.all([...this.destroying]);
  }
}

/** A waiting invocation (a class, not a literal with an `attempt` closure: one object per waiting call). */
class FnWaiter implements FairWaiter<Placement> {
  readonly tenant: string;
  constructor(
    private readonly owner: Instances,
    readonly fn: FunctionVersion,
    readonly group: string,
    /** the invocation's deadline, epoch ms (0 = none) */
    readonly deadline: number,
    /** ms it may wait here */
    readonly limit: number,
    readonly expiresAt: number,
    readonly resolve: (p: Placement) => void,
    readonly reject: (e: unknown) => void,
  ) {
    this.tenant = fn.tenant;
  }

  attempt(): Placement | undefined {
    return this.owner.placeWaiting(this.fn);
  }
}
