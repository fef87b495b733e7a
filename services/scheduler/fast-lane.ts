/**
 * @module scheduler/fast-lane
 * The lean hot path for sync/http invocations: plain Redis lists instead of BullMQ jobs.
 *
 * Why: measured here (2 cores, Redis 7.0), BullMQ add → worker → reply costs 0.81 ms median sequential and
 * tops out at ~2,900 no-op jobs/s with 64 in flight (three Lua scripts and a lock per job). A sync call does
 * not need what those buy — it is never retried or dead-lettered (the waiting caller decides) — so it
 * travels as one LPUSH and is taken by a BLMPOP that returns up to 64 jobs at once. Async invocations keep
 * BullMQ (durable, retried, dead-lettered, stalled-job recovery).
 *
 * Lists: `P:fast:T` per tenant, `P:fastn:N` per node (routed: N advertised a warm instance). One Lua script
 * on the client writes the queued record, picks the list (routing as in ./routing.ts, with the node list's
 * length as its bound) and pushes — one round trip, for one job or a batch (fastPushMany). Each list's TTL is pushed forward to cover the last
 * job's deadline, so a list of a vanished node or tenant expires by itself.
 *
 * Fair sharing: each BLMPOP names the node list first, then the tenant lists in an order rotated by one
 * per call; BLMPOP pops from the first non-empty list, so every tenant with work gets a turn per round,
 * however long another tenant's list is. Jobs a node has taken but cannot place yet wait in the
 * round-robin FairQueue of ./instances.ts.
 *
 * Durability: a node that dies holding popped sync jobs loses them; their callers get `Timeout` at their
 * deadline (sync semantics: nothing was promised beyond an answer or an error). Jobs still in a dead node's
 * own list are taken over: every node also pulls the lists of nodes in `P:fastnodes` whose heartbeat is
 * stale ("orphans", after its own list, before the tenants'). A node stopping gracefully first stops being
 * routed to, then drains its own list.
 */
import type { Redis } from 'ioredis';
import type { Keys } from './keys.ts';
import type { FastJob, JobData } from './job.ts';

/**
 * One or more jobs in one call (the client batches the pushes issued in one tick: one EVALSHA, one Redis command
 * to parse and run, instead of one per job). Per job, in order: write the queued record, pick the list (routing
 * as in ./routing.ts, with the node list's length as its bound), LPUSH, push the list's TTL forward.
 * KEYS[1] nodes zset; per job j (0-based) KEYS[2+3j] warm hash, KEYS[3+3j] tenant list, KEYS[4+3j] record hash
 * ARGV[1] now ms, ARGV[2] stale-before ms, ARGV[3] max routed pending, ARGV[4] prefix, ARGV[5] '1' = routing on,
 * ARGV[6] record TTL s; per job ARGV[7+3j] job JSON, ARGV[8+3j] record JSON, ARGV[9+3j] list TTL ms
 * returns per job the node routed to, or '' (tenant list).
 */
const PUSH_LUA = `
local now, staleBefore, maxPending = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, routing, recTtl = ARGV[4], ARGV[5] == '1', tonumber(ARGV[6])
local out = {}
for j = 0, (#KEYS - 1) / 3 - 1 do
  local warm, list, rec = KEYS[2 + 3 * j], KEYS[3 + 3 * j], KEYS[4 + 3 * j]
  local listTtl = ARGV[9 + 3 * j]
  redis.call('HSET', rec, 's', 'queued', 'r', ARGV[8 + 3 * j])
  redis.call('EXPIRE', rec, recTtl)
  local target, routed = list, ''
  if routing then
    local h = redis.call('HGETALL', warm)
    local bestExp = 0
    for i = 1, #h, 2 do
      local exp = tonumber(h[i + 1])
      if exp > now and exp > bestExp then
        local hb = redis.call('ZSCORE', KEYS[1], h[i])
        if hb and tonumber(hb) >= staleBefore then
          local l = prefix .. ':fastn:' .. h[i]
          if redis.call('LLEN', l) < maxPending then target, routed, bestExp = l, h[i], exp end
        end
      end
    end
  end
  redis.call('LPUSH', target, ARGV[7 + 3 * j])
  redis.call('PEXPIRE', target, listTtl, 'NX')
  redis.call('PEXPIRE', target, listTtl, 'GT')
  out[j + 1] = routed
end
return out
`;

type WithPush = Redis & {
  /** numkeys first: the script takes a variable number of keys */
  fnhostFastPush(numKeys: number, ...args: Array<string | number>): Promise<string[]>;
};

/** Defines the script on a connection; call before its first command. */
export function defineFastLaneScript(redis: Redis): void {
  if (typeof (redis as WithPush).fnhostFastPush !== 'function') redis.defineCommand('fnhostFastPush', { lua: PUSH_LUA });
}

export interface FastPushOptions {
  recordTtlS: number;
  routing: boolean;
  maxPending: number;
  staleMs: number;
}

/** One job of {@link fastPushMany}. */
export interface FastPushItem {
  data: JobData;
  /** the queued record, serialised */
  recJson: string;
  /** how long the list must live: past this job's deadline */
  listTtlMs: number;
  /** the job as it travels when the caller serialised it itself (e.g. without `fn`, see ./fn-refs.ts); default JSON.stringify(data) */
  jobJson?: string;
}

/**
 * Writes the queued records, routes and pushes several jobs in ONE script call, in order; resolves with the
 * node each was routed to ('' = its tenant's list).
 *
 * @example
 * const routed = await fastPushMany(redis, keys, [{ data, recJson, listTtlMs }, …], { recordTtlS, routing: true, maxPending: 64, staleMs });
 */
export function fastPushMany(redis: Redis, keys: Keys, items: FastPushItem[], opts: FastPushOptions): Promise<string[]> {
  if (items.length === 0) return Promise.resolve([]);
  defineFastLaneScript(redis);
  const ks: string[] = [keys.nodes()];
  const now = Date.now();
  const args: Array<string | number> = [now, now - opts.staleMs, opts.maxPending, keys.prefix, opts.routing ? '1' : '', opts.recordTtlS];
  for (const it of items) {
    const fn = it.data.fn;
    ks.push(keys.warm(fn.tenant, fn.name, fn.version), keys.fastTenant(fn.tenant), keys.record(fn.tenant, it.data.id));
    args.push(it.jobJson ?? JSON.stringify(it.data), it.recJson, it.listTtlMs);
  }
  return (redis as WithPush).fnhostFastPush(ks.length, ...ks, ...args);
}

/**
 * Writes the queued record, routes and pushes one job. `opts.jobJson`: the job as it travels when the caller
 * serialised it itself (e.g. without `fn`, see ./fn-refs.ts); default JSON.stringify(data).
 */
export function fastPush(
  redis: Redis,
  keys: Keys,
  data: JobData,
  recJson: string,
  opts: FastPushOptions & { listTtlMs: number; jobJson?: string },
): Promise<string> {
  return fastPushMany(redis, keys, [{ data, recJson, listTtlMs: opts.listTtlMs, jobJson: opts.jobJson }], opts).then((r) => r[0] ?? '');
}

/** BLMPOP's block time: how long close() may wait for the current call (seconds; 0.5 keeps shutdown snappy). */
const BLOCK_S = 0.5;

/**
 * Parallel BLMPOP connections per node. One connection takes at most one batch per Redis round trip; when
 * jobs arrive one at a time (64 callers each waiting for their previous answer) that caps pick-up at
 * 1/RTT — measured ~1,400 jobs/s on this loaded 2-core machine with one puller, the consumer's event loop
 * two-thirds idle. Four pull in parallel.
 */
const PULLERS = 4;

interface Puller {
  conn: Redis;
  id?: number;
  /** lists left out of this puller's BLMPOP in progress (at their cap): when one drops below it, the call is cut short */
  excluded: Set<string>;
  done?: Promise<void>;
  /** BLMPOP calls issued so far; `blocking` while the latest has not returned */
  calls: number;
  blocking: boolean;
}

/** Takes fast-lane jobs for one node: its own list first, then the tenants' lists round-robin. */
export class FastLaneConsumer {
  private readonly pullers: Puller[];
  private tenants: string[] = [];
  /** the tenants' list keys (computed when the tenant set changes, not per BLMPOP) */
  private tenantKeys: string[] = [];
  private orphans: string[] = [];
  private cursor = 0;
  private inFlight = 0;
  private closed = false;
  private slotWaiters: Array<() => void> = [];
  private readonly running = new Set<Promise<void>>();
  private readonly perList = new Map<string, number>();
  /** one list (tenant) may hold at most 3/4 of the slots, so a flood never takes the last quarter from the others */
  private readonly perListMax: number;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly nodeId: string,
    private readonly concurrency: number,
    private readonly handle: (d: FastJob, list: string) => Promise<void>,
    private readonly onError: (e: unknown) => void = () => {},
  ) {
    this.pullers = Array.from({ length: Math.max(1, Math.min(PULLERS, concurrency)) }, () => ({ conn: redis.duplicate(), excluded: new Set<string>(), calls: 0, blocking: false }));
    this.perListMax = Math.max(1, Math.ceil((concurrency * 3) / 4));
  }

  /**
   * Cuts the puller's BLMPOP short. UNBLOCK travels on another connection, so it can reach Redis before the
   * BLMPOP it is meant for; it then returns 0 and the BLMPOP would sit out its whole BLOCK_S on a list set
   * that leaves out a list that has room again. Measured (64 in flight, 2 instances, /tmp/perf/tput.mts):
   * that race held throughput at ~180/s instead of ~2,300/s, and cost 16 instances ~30%. So while the same
   * call is still out, retry until Redis says it unblocked it.
   */
  private unblock(p: Puller, tries = 0) {
    if (p.id === undefined || !p.blocking) return;
    const call = p.calls;
    void this.redis.client('UNBLOCK', p.id).then(
      (n) => {
        if (Number(n) === 0 && p.blocking && p.calls === call && !this.closed && tries < 1000) setImmediate(() => this.unblock(p, tries + 1));
      },
      () => {},
    );
  }

  /** Replaces the tenant set; BLMPOPs in progress return at once to pick the new set up. */
  setTenants(tenants: Iterable<string>): void {
    const next = [...new Set(tenants)].sort();
    const changed = next.length !== this.tenants.length || next.some((t, i) => t !== this.tenants[i]);
    this.tenants = next;
    if (changed) {
      this.tenantKeys = next.map((t) => this.keys.fastTenant(t));
      for (const p of this.pullers) this.unblock(p);
    }
  }

  /** Lists of dead nodes to take over (see the module header). */
  setOrphans(lists: string[]): void {
    const next = [...new Set(lists)].sort();
    const changed = next.length !== this.orphans.length || next.some((l, i) => l !== this.orphans[i]);
    this.orphans = next;
    if (changed) for (const p of this.pullers) this.unblock(p);
  }

  async start(): Promise<void> {
    for (const p of this.pullers) p.id = Number(await p.conn.client('ID'));
    for (const p of this.pullers) p.done = this.loop(p);
  }

  private waitSlot(): Promise<void> {
    return new Promise<void>((r) => this.slotWaiters.push(r));
  }

  private async loop(p: Puller) {
    while (!this.closed) {
      const free = this.concurrency - this.inFlight;
      if (free <= 0) {
        await this.waitSlot();
        continue;
      }
      const tk = this.tenantKeys;
      const n = tk.length;
      const rotated = n ? [...tk.slice(this.cursor % n), ...tk.slice(0, this.cursor % n)] : [];
      this.cursor = n ? (this.cursor + 1) % n : 0;
      const all = [this.keys.fastNode(this.nodeId), ...this.orphans, ...rotated];
      const lists = all.filter((l) => (this.perList.get(l) ?? 0) < this.perListMax);
      const excluded = new Set(all.filter((l) => !lists.includes(l)));
      // A list is at its cap and another puller already blocks on the others: wait here for a slot instead.
      // The job that frees it wakes this puller at once, with no UNBLOCK round trip (see the release below).
      if (excluded.size > 0 && this.pullers.some((q) => q !== p && q.blocking && q.excluded.size > 0)) {
        p.excluded = new Set();
        await this.waitSlot();
        continue;
      }
      p.excluded = excluded;
      if (lists.length === 0) {
        await this.waitSlot();
        continue;
      }
      // Split the free slots between the pullers so they cannot together take far more than there is room for.
      const want = Math.max(1, Math.min(Math.ceil(free / this.pullers.length), this.perListMax));
      let res: [string, string[]] | null;
      p.calls++;
      p.blocking = true;
      try {
        res = (await p.conn.call('BLMPOP', BLOCK_S, lists.length, ...lists, 'RIGHT', 'COUNT', want)) as [string, string[]] | null;
      } catch (e) {
        p.blocking = false;
        if (this.closed) break;
        this.onError(e);
        await new Promise((r) => setTimeout(r, 200)); // Redis away: retry without spinning
        continue;
      }
      p.blocking = false;
      if (!res) continue;
      const [list, items] = res;
      for (const item of items) {
        let d: FastJob;
        try {
          d = JSON.parse(item) as FastJob;
        } catch (e) {
          this.onError(e);
          continue;
        }
        this.inFlight++;
        this.perList.set(list, (this.perList.get(list) ?? 0) + 1);
        const job: Promise<void> = this.handle(d, list)
          .catch((e) => this.onError(e))
          .finally(() => {
            this.inFlight--;
            const c = (this.perList.get(list) ?? 1) - 1;
            if (c > 0) this.perList.set(list, c);
            else this.perList.delete(list);
            // One slot came free: one puller is enough to take a job of `list` (unblocking all of them cost
            // ~0.6 extra UNBLOCK + BLMPOP round trips per job at 64 in flight, measured with INFO commandstats).
            // A puller waiting for a slot here (woken below) takes it without any UNBLOCK.
            const q = this.slotWaiters.length > 0 ? undefined : (this.pullers.find((x) => x.blocking && x.excluded.has(list)) ?? this.pullers.find((x) => x.excluded.has(list)));
            if (q) {
              q.excluded.delete(list);
              this.unblock(q);
            }
            this.running.delete(job);
            const ws = this.slotWaiters;
            this.slotWaiters = [];
            for (const w of ws) w();
          });
        this.running.add(job);
      }
    }
  }

  /** Stops taking jobs (at once: blocked BLMPOPs are cut short), waits for the jobs it took. */
  async close(): Promise<void> {
    this.closed = true;
    const ws = this.slotWaiters;
    this.slotWaiters = [];
    for (const w of ws) w();
    // UNBLOCK makes a blocked BLMPOP return an empty reply: nothing popped is lost.
    await Promise.all(this.pullers.map((p) => (p.id !== undefined ? this.redis.client('UNBLOCK', p.id).catch(() => {}) : undefined)));
    await Promise.all(this.pullers.map((p) => p.done));
    await Promise.all([...this.running]);
    for (const p of this.pullers) p.conn.disconnect();
  }
}
