/**
 * @module gateway/admission
 * A tenant's `maxConcurrency`: sync and HTTP-endpoint invocations of one tenant in flight at once. Past it
 * the caller gets 429 TooManyRequests at once. (Async invocations are not counted here: they wait in the
 * tenant's queue, whose bound the scheduler's client enforces.)
 *
 * The count is kept in this process, so admitting costs no Redis round trip on the invocation's path (one
 * round trip is a tenth of a warm invocation here, more on a loaded machine). With several gateways the
 * limit is split between them: every gateway heartbeats into `<prefix>gateways` (a sorted set scored by
 * time), counts the live ones, G, once a second, and admits up to max(1, ⌊M / G⌋) of the tenant's M. The
 * total stays within M (or G when M < G), and a gateway that dies takes its counts with it: nothing leaks.
 * The price is that one gateway cannot lend its unused share to another; behind a load balancer the
 * shares are used evenly.
 *
 * @example
 * const admission = new Admission(store);        // start() for the heartbeat, close() to leave
 * const release = await admission.admit(fn);     // TooManyRequests when the tenant is at its share
 * try { ... } finally { release(); }
 */
import { randomBytes } from 'node:crypto';
import { NotFound, TooManyRequests } from '../common/errors.ts';
import type { FunctionVersion } from '../common/model.ts';
import type { MetadataStore } from '../store/metadata.ts';

/** 1 s heartbeats; a gateway silent for 3 of them is gone (the scheduler's node heartbeat uses the same rhythm). */
const HEARTBEAT_MS = 1000;
const STALE_MS = 3 * HEARTBEAT_MS;

export class Admission {
  readonly gatewayId = randomBytes(6).toString('hex');
  private readonly inflight = new Map<string, number>();
  private gateways = 1;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly store: MetadataStore) {}

  private get key() {
    return `${this.store.prefix}gateways`;
  }

  /** Joins the set of live gateways and keeps G current. Without it this gateway assumes it is alone. */
  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void this.beat().catch(() => {}), HEARTBEAT_MS);
    this.timer.unref();
  }

  private async beat() {
    const now = Date.now();
    const [, , [, live]] = (await this.store.redis
      .multi()
      .zadd(this.key, now, this.gatewayId)
      .zremrangebyscore(this.key, '-inf', now - STALE_MS)
      .zcard(this.key)
      .exec()) as [unknown, unknown, [unknown, number]];
    this.gateways = Math.max(1, live);
  }

  /** This gateway's share of a limit of `max`. */
  share(max: number): number {
    return Math.max(1, Math.floor(max / this.gateways));
  }

  /** Takes one of the tenant's slots for `fn`'s invocation; resolves with the (idempotent) release function. */
  async admit(fn: FunctionVersion): Promise<() => void> {
    const t = await this.store.getTenant(fn.tenant);
    if (!t) throw new NotFound(`tenant ${fn.tenant} not found`);
    const n = this.inflight.get(fn.tenant) ?? 0;
    const share = this.share(t.limits.maxConcurrency);
    if (n >= share) {
      throw new TooManyRequests(`tenant ${fn.tenant} is at its limit of ${t.limits.maxConcurrency} concurrent invocations`, {
        limit: t.limits.maxConcurrency,
        ...(this.gateways > 1 ? { gateways: this.gateways, share } : {}),
      });
    }
    this.inflight.set(fn.tenant, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.inflight.get(fn.tenant) ?? 1) - 1;
      if (left > 0) this.inflight.set(fn.tenant, left);
      else this.inflight.delete(fn.tenant);
    };
  }

  /** Sync invocations of `tenant` in flight through this gateway. */
  inFlight(tenant: string): number {
    return this.inflight.get(tenant) ?? 0;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.store.redis.zrem(this.key, this.gatewayId).catch(() => {});
  }
}
