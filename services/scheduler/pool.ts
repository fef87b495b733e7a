/**
 * @module scheduler/pool
 * The warm pool: per kind (runtime × base image), sandboxes created before anyone asks.
 *
 * Sizing (OpenWhisk's reactive prewarm, reference/peers.md §4): each kind's target is the number of cold
 * starts it served in the last `demandWindowMs` (default 10 s), clamped to [min, max] — enough to serve the
 * same burst again without creating a sandbox on the request path. Pooled sandboxes above the target are
 * destroyed one per sweep once they have been idle for `idleTtlMs`, so a burst's pool shrinks slowly.
 *
 * Refill runs in the background at a bounded rate (a token bucket of `refillPerSec`, at most
 * `refillConcurrency` creations at once; faster — `idleRefillPerSec`, `idleRefillConcurrency` — while the
 * node runs no invocation) and yields to the event loop between creations, so refilling never
 * takes the CPU that invocations need. A used sandbox never returns to the pool: only fresh ones enter it.
 */
import type { Executor, PooledSandbox } from './executor.ts';

export interface PoolKindConfig {
  min: number;
  max: number;
}

export interface PoolConfig {
  /** per kind; kinds not listed use `default`. */
  kinds: Record<string, PoolKindConfig>;
  default: PoolKindConfig;
  /** sandboxes created per second at most (default 400: above the 300/s target with headroom, ≈ the ~2.6 ms clone+exec cost per core measured in reference/sandbox-startup-here.md). */
  refillPerSec: number;
  /** creations in flight at once (default 2: one per core on this machine). */
  refillConcurrency: number;
  /**
   * the same two while no invocation runs on the node (nothing to starve): default 2,000/s (not the limit:
   * creation is), 2 at once — 2 measured best on this 2-core machine (≈510/s vs ≈400 with 1, ≈450 with 3 or 4)
   */
  idleRefillPerSec: number;
  idleRefillConcurrency: number;
  demandWindowMs: number;
  idleTtlMs: number;
  /**
   * after a sandbox is taken, refills wait this long (default 25 ms): the cold start that took it
   * (specialise + first run, ~5–10 ms here) then has the CPU to itself instead of racing a ~100 ms node boot
   * on a 2-core machine.
   */
  holdAfterTakeMs: number;
}

export const DEFAULT_POOL_CONFIG: PoolConfig = {
  // "image" (image:<name> functions, runtime-executor.ts): none kept idle by default — they are rarer than the
  // base runtimes; demand (a cold start) sizes it like any kind.
  kinds: { exec: { min: 2, max: 64 }, node: { min: 2, max: 32 }, python: { min: 1, max: 16 }, image: { min: 0, max: 16 } },
  default: { min: 0, max: 8 },
  refillPerSec: 400,
  refillConcurrency: 2,
  idleRefillPerSec: 2000,
  idleRefillConcurrency: 2,
  demandWindowMs: 10_000,
  idleTtlMs: 60_000,
  holdAfterTakeMs: 25,
};

interface Entry {
  sb: PooledSandbox;
  since: number;
}

interface KindState {
  cfg: PoolKindConfig;
  idle: Entry[];
  creating: number;
  colds: number[];
  created: number;
  failures: number;
  retryAt: number;
}

export interface PoolStats {
  kinds: Record<string, { idle: number; creating: number; target: number; created: number }>;
}

/**
 * @example
 * const pool = new WarmPool(executor, DEFAULT_POOL_CONFIG, { busy: () => instances.waiting() > 0 });
 * pool.start();
 * const sb = pool.take('node') ?? (await pool.createNow('node'));
 */
export class WarmPool {
  private readonly kinds = new Map<string, KindState>();
  private tokens: number;
  private lastRefillAt = Date.now();
  private inFlight = 0;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly destroying = new Set<Promise<void>>();
  private kick: (() => void) | undefined;
  private holdUntil = 0;
  private holdTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly exec: Executor,
    readonly cfg: PoolConfig,
    private readonly hooks: { onCreated?: (kind: string) => void; onError?: (kind: string, e: unknown) => void; busy?: () => boolean } = {},
  ) {
    this.tokens = Math.max(1, cfg.refillConcurrency);
    for (const k of Object.keys(cfg.kinds)) this.state(k);
  }

  private state(kind: string): KindState {
    let s = this.kinds.get(kind);
    if (!s) {
      s = { cfg: this.cfg.kinds[kind] ?? this.cfg.default, idle: [], creating: 0, colds: [], created: 0, failures: 0, retryAt: 0 };
      this.kinds.set(kind, s);
    }
    return s;
  }

  target(kind: string, now = Date.now()): number {
    const s = this.state(kind);
    while (s.colds.length && s.colds[0]! < now - this.cfg.demandWindowMs) s.colds.shift();
    return Math.max(s.cfg.min, Math.min(s.cfg.max, s.colds.length));
  }

  /** Takes a fresh pooled sandbox of `kind`, or null when none is ready; counts the demand either way. */
  take(kind: string): PooledSandbox | null {
    const s = this.state(kind);
    s.colds.push(Date.now());
    this.holdUntil = Date.now() + this.cfg.holdAfterTakeMs;
    let e: Entry | undefined;
    while ((e = s.idle.pop())) {
      if (e.sb.alive) {
        this.wakeAfterHold();
        return e.sb;
      }
      this.track(e.sb.destroy());
    }
    this.wakeAfterHold();
    return null;
  }

  /**
   * The refill loop learns of a take once the hold is over: woken at once, it would only work out that it must
   * wait — inside the cold start that took the sandbox, between its take and its first frame to the init.
   */
  private wakeAfterHold() {
    if (this.holdTimer) return;
    this.holdTimer = setTimeout(() => {
      this.holdTimer = undefined;
      this.wake();
    }, this.cfg.holdAfterTakeMs).unref();
  }

  /** Creates one sandbox of `kind` on the request path (the pool was empty). */
  createNow(kind: string): Promise<PooledSandbox> {
    return this.exec.createPooled(kind);
  }

  stats(): PoolStats {
    const kinds: PoolStats['kinds'] = {};
    for (const [k, s] of this.kinds) kinds[k] = { idle: s.idle.length, creating: s.creating, target: this.target(k), created: s.created };
    return { kinds };
  }

  idleCount(kind?: string): number {
    if (kind) return this.kinds.get(kind)?.idle.length ?? 0;
    let n = 0;
    for (const s of this.kinds.values()) n += s.idle.length;
    return n;
  }

  /** Starts the background refill loop. */
  start(): void {
    void this.loop();
    this.timer = setInterval(() => this.wake(), 250);
    this.timer.unref();
  }

  private wake() {
    const k = this.kick;
    this.kick = undefined;
    k?.();
  }

  private async loop() {
    while (!this.closed) {
      const job = this.nextKind();
      if (!job) {
        this.shrink();
        await new Promise<void>((r) => (this.kick = r));
        continue;
      }
      const hold = this.holdUntil - Date.now();
      if (hold > 0) {
        await new Promise((r) => setTimeout(r, hold).unref());
        continue;
      }
      const { rate, concurrency } = this.limits();
      if (this.inFlight >= concurrency || !this.takeToken()) {
        await new Promise<void>((r) => {
          this.kick = r;
          setTimeout(r, Math.max(1, Math.ceil(1000 / rate))).unref();
        });
        continue;
      }
      this.inFlight++;
      const s = this.state(job);
      s.creating++;
      this.exec
        .createPooled(job)
        .then((sb) => {
          s.created++;
          s.failures = 0;
          if (this.closed) this.track(sb.destroy());
          else s.idle.push({ sb, since: Date.now() });
          this.hooks.onCreated?.(job);
        })
        .catch((e) => {
          s.failures++;
          s.retryAt = Date.now() + Math.min(30_000, 100 * 2 ** Math.min(s.failures, 9)); // 0.2 s, 0.4 s ... capped at 30 s
          if (!this.closed) this.hooks.onError?.(job, e); // at shutdown, cancelled boots fail by design
        })
        .finally(() => {
          s.creating--;
          this.inFlight--;
          this.wake();
        });
      // Yield so invocations queued on the event loop run between creations.
      await new Promise((r) => setImmediate(r));
    }
  }

  private limits(): { rate: number; concurrency: number } {
    const busy = this.hooks.busy?.() ?? true;
    return busy
      ? { rate: this.cfg.refillPerSec, concurrency: this.cfg.refillConcurrency }
      : { rate: this.cfg.idleRefillPerSec, concurrency: this.cfg.idleRefillConcurrency };
  }

  private takeToken(): boolean {
    const now = Date.now();
    const { rate, concurrency } = this.limits();
    const burst = Math.max(1, concurrency * 2);
    this.tokens = Math.min(burst, this.tokens + ((now - this.lastRefillAt) / 1000) * rate);
    this.lastRefillAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private nextKind(): string | null {
    let best: string | null = null;
    let bestGap = 0;
    for (const [k, s] of this.kinds) {
      // A kind that keeps failing (e.g. its image is missing) backs off instead of spinning.
      if (Date.now() < s.retryAt) continue;
      const gap = this.target(k) - s.idle.length - s.creating;
      if (gap > bestGap) {
        best = k;
        bestGap = gap;
      }
    }
    return best;
  }

  private shrink() {
    const now = Date.now();
    for (const [k, s] of this.kinds) {
      if (s.idle.length > this.target(k, now) && s.idle[0] && now - s.idle[0].since > this.cfg.idleTtlMs) {
        this.track(s.idle.shift()!.sb.destroy());
      }
    }
  }

  private track(p: Promise<void>) {
    const q = p.catch(() => {}).finally(() => this.destroying.delete(q));
    this.destroying.add(q);
  }

  /** Stops refilling and destroys every pooled sandbox. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.holdTimer) clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.wake();
    for (const s of this.kinds.values()) for (const e of s.idle.splice(0)) this.track(e.sb.destroy());
    // creations in flight destroy their sandbox when they land (closed is set); a runtime still booting is
    // cut short rather than waited for (a boot can take up to its 10 s timeout on a loaded machine)
    if (this.inFlight > 0) await this.exec.cancelPending?.();
    const deadline = Date.now() + 10_000;
    while ((this.inFlight > 0 || this.destroying.size > 0) && Date.now() < deadline) {
      // Always wait for a macrotask: with nothing being destroyed, Promise.all([]) is already resolved and a
      // race on it settles in a microtask, so the loop would spin without ever running the event loop — the
      // in-flight creation it waits for could never finish (its boot then timed out: debug notes 02:30).
      const tick = new Promise((r) => setTimeout(r, 10));
      await (this.destroying.size > 0 ? Promise.race([Promise.all(this.destroying), tick]) : tick);
    }
  }
}
