/**
 * @module scheduler/instances
 * One node's instances: warm pick, cold start (specialise a pooled sandbox), memory admission, per-function
 * instance caps, keep-alive expiry and retirement. Pure logic over an `Executor`; no Redis.
 *
 * Order of a placement (OpenWhisk's ContainerPool order, reference/peers.md §4):
 *   1. retire live instances of older versions of the same function (a changed memory cap or code is a new
 *      version; DESIGN.md: the next invocation uses it, the old instances go — busy ones when they finish);
 *   2. a warm instance of the same version with a free slot (`fn.concurrency`), most recently used first so
 *      that surplus instances age out;
 *   3. if the function is at `maxInstances` on this node → wait;
 *   4. memory admission: the sum of the caps of live (and starting) instances never exceeds `capacityMb`;
 *      idle instances are evicted least-recently-used first to make room; if that is not enough → wait;
 *   5. cold start: a pooled sandbox of the function's kind (or one created now), specialised.
 * Waiting is bounded (`maxWaitMs`, `maxWaitersPerFunction`); past either the caller gets TooManyRequests.
 * A function whose cap alone is above the node's capacity gets LimitExceeded at once.
 *
 * Invariant kept by construction: `admittedMb` (sum over instances in state starting|live|retiring) ≤ capacityMb.
 * Reservation happens synchronously inside `tryPlace` (no await between the check and the reservation).
 * Pooled sandboxes are outside admission: they are not a function's yet, and their use is bounded by the
 * pool's max per kind × their idle size (~120 KiB bare, tens of MiB with a pre-booted runtime) — which is
 * why the default capacity is half the machine, not all of it.
 */
import type { FunctionVersion, LogLine, StartKind } from '../common/model.ts';
import { LimitExceeded, TooManyRequests, Timeout } from '../common/errors.ts';
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
  private admitted = 0;
  private seq = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly exec: Executor,
    private readonly pool: WarmPool,
    readonly cfg: InstancesConfig,
    private readonly hooks: InstancesHooks = {},
  ) {}

  get admittedMb(): number {
    return this.admitted;
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
    let p = this.tryPlace(fn);
    if (!p) p = await this.wait(fn, deadline);
    const placedAt = Date.now();
    const waitedMs = placedAt - t0;
    if (p.kind === 'warm') return { instance: p.inst, start: 'warm', waitedMs, placedAt };
    await this.coldStart(p.inst);
    return { instance: p.inst, start: 'cold', waitedMs, placedAt };
  }

  /**
   * Returns an instance after an invocation. `fatal` (Timeout / OutOfMemory / Crashed, or the handle says it
   * is not alive) destroys it; otherwise it stays warm for the keep-alive.
   */
  release(inst: Instance, fatal = false): void {
    inst.inFlight--;
    inst.lastUsed = Date.now();
    if (fatal || !inst.handle?.alive) this.destroy(inst, 'fatal');
    else if (inst.state === 'retiring' && inst.inFlight === 0) this.destroy(inst, 'retired');
    else if (inst.state === 'live') this.hooks.onWarm?.(inst.fn, inst.lastUsed + this.cfg.keepAliveMs);
    this.waiters.pump();
  }

  private wait(fn: FunctionVersion, deadline: number): Promise<Placement> {
    const key = fnKey(fn);
    if (this.waiters.countFor((w) => (w as FnWaiter).key === key) >= this.cfg.maxWaitersPerFunction) {
      return Promise.reject(new TooManyRequests('too many invocations waiting for this function on this node', { limit: this.cfg.maxWaitersPerFunction }));
    }
    const limit = Math.min(this.cfg.maxWaitMs, deadline > 0 ? Math.max(0, deadline - Date.now()) : Infinity);
    return new Promise<Placement>((resolve, reject) => {
      const w: FnWaiter = {
        tenant: fn.tenant,
        key,
        attempt: () => this.tryPlace(fn),
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        if (!this.waiters.remove(w)) return;
        if (deadline > 0 && Date.now() >= deadline) reject(new Timeout('no instance became free before the deadline', { timeoutMs: fn.timeoutMs, waitedMs: limit }));
        else reject(new TooManyRequests('no capacity for this function on this node in time', { waitedMs: limit, memoryMb: fn.memoryMb, capacityMb: this.cfg.capacityMb }));
      }, limit);
      this.waiters.push(w);
    });
  }

  /** Synchronous: decides and reserves, or returns undefined (wait). Throws only for closed. */
  private tryPlace(fn: FunctionVersion): Placement | undefined {
    if (this.closed) throw new TooManyRequests('node is shutting down');
    this.retireOlder(fn);
    const key = fnKey(fn);
    const set = this.byKey.get(key);
    let warm: Instance | undefined;
    let count = 0;
    const slots = Math.max(1, Math.min(fn.concurrency || 1, this.exec.maxConcurrency?.(fn) ?? Infinity));
    if (set) {
      for (const i of set) {
        if (i.state === 'starting' || i.state === 'live') count++;
        if (i.state === 'live' && i.inFlight < slots && i.handle?.alive !== false) {
          if (!warm || i.lastUsed > warm.lastUsed) warm = i;
        }
      }
    }
    if (warm) {
      warm.inFlight++;
      warm.invocations++;
      warm.lastUsed = Date.now();
      return { kind: 'warm', inst: warm };
    }
    if (fn.maxInstances !== undefined && fn.maxInstances > 0 && count >= fn.maxInstances) return undefined;
    if (!this.makeRoom(fn.memoryMb)) return undefined;
    const inst: Instance = { seq: ++this.seq, key, fn, memoryMb: fn.memoryMb, state: 'starting', inFlight: 1, lastUsed: Date.now(), invocations: 1 };
    this.add(inst);
    return { kind: 'cold', inst };
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

  private async coldStart(inst: Instance) {
    const t0 = Date.now();
    const kind = this.exec.kindOf(inst.fn);
    try {
      const pooled = this.pool.take(kind) ?? (await this.pool.createNow(kind));
      const fn = inst.fn;
      inst.handle = await this.exec.specialise(pooled, fn, (l) => this.hooks.onLog?.(fn, l));
    } catch (e) {
      this.destroy(inst, 'failed-start');
      this.waiters.pump();
      throw e;
    }
    this.hooks.onSpecialised?.(inst.fn, Date.now() - t0);
    if (inst.state === 'starting') {
      inst.state = 'live';
      this.hooks.onWarm?.(inst.fn, Date.now() + this.cfg.keepAliveMs);
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

interface FnWaiter extends FairWaiter<Placement> {
  key: string;
}
