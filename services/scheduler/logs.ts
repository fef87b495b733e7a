/**
 * @module scheduler/logs
 * Function logs: one capped Redis stream per tenant and function (`P:logs:T:F`, entries {i, s, t, l}),
 * trimmed approximately to `maxLen` entries on every write and expiring `ttlS` after the last write, plus
 * a set `P:logfns:T` of the functions that have a stream (a tenant-wide query merges them).
 * Approximate trimming (`MAXLEN ~`) lets Redis drop whole macro-nodes, which is what keeps XADD O(1).
 */
import type { Redis } from 'ioredis';
import type { LogLine } from '../common/model.ts';
import type { LogQuery } from './types.ts';
import type { Keys } from './keys.ts';

export interface LogRetention {
  /** entries kept per function stream (default 10,000). */
  maxLen: number;
  /** seconds a stream lives after its last write (default 7 days). */
  ttlS: number;
}

export const DEFAULT_LOG_RETENTION: LogRetention = { maxLen: 10_000, ttlS: 7 * 24 * 3600 };

/** Appends lines in one round trip. */
export async function appendLogs(redis: Redis, keys: Keys, tenant: string, fn: string, lines: LogLine[], ret: LogRetention): Promise<void> {
  if (lines.length === 0) return;
  const key = keys.logs(tenant, fn);
  const m = redis.multi();
  for (const l of lines) {
    m.xadd(key, 'MAXLEN', '~', String(ret.maxLen), '*', 'i', l.invocationId, 's', l.stream, 't', String(l.ts), 'l', l.line);
  }
  m.expire(key, ret.ttlS);
  m.sadd(keys.logFunctions(tenant), fn);
  m.expire(keys.logFunctions(tenant), ret.ttlS);
  await m.exec();
}

type XEntry = [id: string, fields: string[]];

function toLine(fields: string[]): LogLine {
  const o: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) o[fields[i]!] = fields[i + 1]!;
  return { invocationId: o.i ?? '', stream: o.s === 'stderr' ? 'stderr' : 'stdout', ts: Number(o.t ?? 0), line: o.l ?? '' };
}

function matches(l: LogLine, q: LogQuery): boolean {
  if (q.invocation && l.invocationId !== q.invocation) return false;
  if (q.since !== undefined && l.ts < q.since) return false;
  return true;
}

async function streamsFor(redis: Redis, keys: Keys, tenant: string, q: LogQuery): Promise<string[]> {
  if (q.function) return [keys.logs(tenant, q.function)];
  const fns = await redis.smembers(keys.logFunctions(tenant));
  return fns.sort().map((f) => keys.logs(tenant, f));
}

/** Reads up to `limit` (default 1,000) lines in time order, the oldest first. */
export async function readLogs(redis: Redis, keys: Keys, tenant: string, q: LogQuery): Promise<LogLine[]> {
  const limit = Math.max(1, Math.min(q.limit ?? 1000, 10_000));
  const start = q.since !== undefined ? `${Math.max(0, Math.floor(q.since))}-0` : '-';
  const out: LogLine[] = [];
  for (const key of await streamsFor(redis, keys, tenant, q)) {
    // Stream ids are insertion times; an invocation filter can skip many entries, so read all in range.
    const entries = (await redis.xrange(key, start, '+')) as XEntry[];
    for (const [, f] of entries) {
      const l = toLine(f);
      if (matches(l, q)) out.push(l);
    }
  }
  out.sort((a, b) => a.ts - b.ts);
  return out.length > limit ? out.slice(out.length - limit) : out;
}

/**
 * Yields the lines matching `q` that exist now, then new ones as they are written, until `signal` aborts.
 * Uses its own blocking connection (a duplicate of `redis`), closed when the iteration ends.
 */
export async function* followLogs(redis: Redis, keys: Keys, tenant: string, q: LogQuery, signal: AbortSignal): AsyncIterable<LogLine> {
  // Pin each stream's last id first, then replay history up to it: no line is lost or shown twice.
  const last = new Map<string, string>();
  let streams = await streamsFor(redis, keys, tenant, q);
  const history: LogLine[] = [];
  const start = q.since !== undefined ? `${Math.max(0, Math.floor(q.since))}-0` : '-';
  for (const s of streams) {
    const tail = (await redis.xrevrange(s, '+', '-', 'COUNT', 1)) as XEntry[];
    const lastId = tail[0]?.[0] ?? '0-0';
    last.set(s, lastId);
    if (tail.length) for (const [, f] of (await redis.xrange(s, start, lastId)) as XEntry[]) {
      const l = toLine(f);
      if (matches(l, q)) history.push(l);
    }
  }
  history.sort((a, b) => a.ts - b.ts);
  const limit = Math.max(1, Math.min(q.limit ?? 1000, 10_000));
  for (const l of history.length > limit ? history.slice(history.length - limit) : history) {
    if (signal.aborted) return;
    yield l;
  }
  const blocking = redis.duplicate();
  const onAbort = () => blocking.disconnect();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    let refreshed = Date.now();
    while (!signal.aborted) {
      if (!q.function && Date.now() - refreshed > 1000) {
        // A function that logs for the first time gets a new stream; pick it up within a second.
        streams = await streamsFor(redis, keys, tenant, q);
        for (const s of streams) if (!last.has(s)) last.set(s, '0-0');
        refreshed = Date.now();
      }
      if (streams.length === 0) {
        await new Promise((r) => setTimeout(r, 250));
        continue;
      }
      let res: Array<[string, XEntry[]]> | null;
      try {
        res = (await blocking.xread('COUNT', 500, 'BLOCK', 1000, 'STREAMS', ...streams, ...streams.map((s) => last.get(s)!))) as Array<[string, XEntry[]]> | null;
      } catch (e) {
        if (signal.aborted) return;
        throw e;
      }
      if (!res) continue;
      for (const [key, entries] of res) {
        for (const [id, f] of entries) {
          last.set(key, id);
          const l = toLine(f);
          if (matches(l, q)) yield l;
          if (signal.aborted) return;
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
    blocking.disconnect();
  }
}
