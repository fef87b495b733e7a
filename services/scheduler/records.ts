/**
 * @module scheduler/records
 * Invocation records in Redis: `P:inv:T:I` is a HASH {s: status, r: record JSON (response body base64)}.
 *
 * The status field sits apart from the JSON so that the one Lua script below can refuse, cheaply and
 * atomically, to move a record out of a final state: if a worker that lost its lock (stalled, then revived)
 * finishes after the retry already did, its late result is dropped — the caller sees exactly one result.
 * The same script publishes the result on the waiting client's reply channel, so "record written" and
 * "caller told" are one step (no window where a caller is told about a result it cannot read back).
 */
import type { Redis, ChainableCommander } from 'ioredis';
import type { InvocationRecord } from './types.ts';
import type { InvocationStatus } from '../common/model.ts';
import { decodeResponse, encodeResponse, type WireResponse } from './job.ts';
import { RECORD_CALLBACK_FIELD, openEntryOf } from './keys.ts';

/** The record as stored: the response's body is base64. */
export type StoredRecord = Omit<InvocationRecord, 'response'> & { response?: WireResponse };

/**
 * KEYS[1] record hash
 * ARGV[1] status, ARGV[2] record JSON, ARGV[3] TTL seconds, ARGV[4] reply channel ('' = none),
 * ARGV[5] invocation id, ARGV[6] 'force' to overwrite a final record (redrive)
 * returns 1 when written (and published), 0 when the record was already final.
 */
const SET_RECORD_LUA = `
local s = redis.call('HGET', KEYS[1], 's')
if ARGV[6] ~= 'force' and (s == 'succeeded' or s == 'failed') then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'r', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\\n' .. ARGV[2]) end
return 1
`;

/**
 * Final records, many in one command (./record-batch.ts): for each KEYS[i], with its status ARGV[3i-1], JSON
 * ARGV[3i] and check flag ARGV[3i+1] ('1' = as SET_RECORD_LUA: never over a final record; '' = unchecked, for
 * records nobody else writes), HSET s, r and EXPIRE ARGV[1]. One command per batch instead of one per record
 * (or an HSET + EXPIRE pair) for ioredis to build, queue and parse: its per-command work was ~5 % of the
 * host's CPU at 32 connections, and a checked EVALSHA per record ~8 µs of the loop per queued call.
 * Returns how many records were written.
 */
const PUT_RECORDS_LUA = `
local ttl = tonumber(ARGV[1])
local n = 0
for i = 1, #KEYS do
  local write = true
  if ARGV[3 * i + 1] == '1' then
    local s = redis.call('HGET', KEYS[i], 's')
    write = not (s == 'succeeded' or s == 'failed')
  end
  if write then
    redis.call('HSET', KEYS[i], 's', ARGV[3 * i - 1], 'r', ARGV[3 * i])
    redis.call('EXPIRE', KEYS[i], ttl)
    n = n + 1
  end
end
return n
`;

/**
 * SET_RECORD_LUA for a final record with a completion callback (./callbacks.ts): the same check and writes, plus
 * the callback put into the outbox in the same atomic step, so "final record written" implies "callback queued
 * eventually" — whatever fails after this script, the outbox entry is there for the next sweep.
 * KEYS[1] record hash, KEYS[2] outbox HASH; ARGV[1..5] as SET_RECORD_LUA, ARGV[6] outbox field (delivery id),
 * ARGV[7] outbox entry. The outbox's TTL is raised to the record's (never lowered): an entry never outlives
 * the longest-kept record it was written with.
 */
const SET_RECORD_OUTBOX_LUA = `
local s = redis.call('HGET', KEYS[1], 's')
if s == 'succeeded' or s == 'failed' then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 's', ARGV[1], 'r', ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[2], ARGV[6], ARGV[7])
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\\n' .. ARGV[2]) end
return 1
`;

type WithSetRecord = Redis & {
  fnhostSetRecord(key: string, status: string, json: string, ttl: number, channel: string, id: string, force: string): Promise<number>;
  fnhostSetRecordOutbox(key: string, outbox: string, status: string, json: string, ttl: number, channel: string, id: string, field: string, entry: string): Promise<number>;
};

/** A completion callback written with a final record (./callbacks.ts `Callbacks.outboxEntry`). */
export interface OutboxWrite {
  /** the outbox HASH */
  key: string;
  /** the delivery id (the callback job's id) */
  field: string;
  /** the entry (JSON) */
  entry: string;
}

/** Defines the scripts on a connection; call before its first command (ioredis' auto-pipelining copies the command table). */
export function defineRecordScript(redis: Redis): void {
  if (typeof (redis as WithSetRecord).fnhostSetRecord !== 'function') redis.defineCommand('fnhostSetRecord', { numberOfKeys: 1, lua: SET_RECORD_LUA });
  if (typeof (redis as Partial<{ fnhostPutRecords: unknown }>).fnhostPutRecords !== 'function') redis.defineCommand('fnhostPutRecords', { lua: PUT_RECORDS_LUA });
  if (typeof (redis as Partial<{ fnhostSetRecordOutbox: unknown }>).fnhostSetRecordOutbox !== 'function') redis.defineCommand('fnhostSetRecordOutbox', { numberOfKeys: 2, lua: SET_RECORD_OUTBOX_LUA });
}

function withScript(redis: Redis): WithSetRecord {
  defineRecordScript(redis);
  return redis as WithSetRecord;
}

/**
 * The record as stored. Spread-then-overwrite, not rest destructuring: `{ response, ...rest }` is a runtime
 * call in V8 (no fast path), measured ~3 µs per record on the warm path; the spread is an inline clone.
 */
export function toStored(r: InvocationRecord): StoredRecord {
  return r.response ? { ...r, response: encodeResponse(r.response) } : (r as StoredRecord);
}

export function fromStored(s: StoredRecord): InvocationRecord {
  return s.response ? { ...s, response: decodeResponse(s.response) } : (s as InvocationRecord);
}

export function isFinal(s: InvocationStatus): boolean {
  return s === 'succeeded' || s === 'failed';
}

/**
 * Writes (or overwrites with `force`) a record unless it is already final; publishes it on `replyChannel`.
 * `outbox`: a final record's completion callback, put into the outbox in the same step (not with `force`).
 */
export async function setRecord(
  redis: Redis,
  key: string,
  rec: StoredRecord,
  ttlS: number,
  opts: { replyChannel?: string; force?: boolean; outbox?: OutboxWrite } = {},
): Promise<boolean> {
  const o = opts.outbox;
  if (o && !opts.force) {
    return (await withScript(redis).fnhostSetRecordOutbox(key, o.key, rec.status, JSON.stringify(rec), ttlS, opts.replyChannel ?? '', rec.id, o.field, o.entry)) === 1;
  }
  // a redriven async invocation (forced back to queued) is open again: indexed before its record changes
  if (opts.force && rec.mode === 'async' && !isFinal(rec.status)) {
    const m = redis.multi();
    addOpen(m, key, Date.now(), ttlS);
    await m.exec();
  }
  const n = await withScript(redis).fnhostSetRecord(key, rec.status, JSON.stringify(rec), ttlS, opts.replyChannel ?? '', rec.id, opts.force ? 'force' : '');
  return n === 1;
}

/**
 * The queued record, added to a pipeline/multi (the client writes it together with the payload). An async
 * record also enters the open-invocations index (`P:invopen`, ./keys.ts) in the same MULTI, so no record
 * exists that the sweeper (./sweeper.ts) cannot find: if every node that hears of its job's end dies before
 * writing the outcome, the sweeper writes it. Two commands more in the same round trip; the final writes do
 * not touch the index (the sweeper drops final entries), so the hot paths pay nothing. `callbackUrl`: an async
 * invocation's X-Callback-Url, kept in the hash (RECORD_CALLBACK_FIELD, not in the record JSON: never rendered) for the sweeper.
 */
export function queueRecord(m: ChainableCommander, key: string, rec: StoredRecord, ttlS: number, callbackUrl?: string): void {
  // an async invocation's callback URL lets the sweeper call back a 'job-lost' outcome (./sweeper.ts)
  if (callbackUrl) m.hset(key, 's', rec.status, 'r', JSON.stringify(rec), RECORD_CALLBACK_FIELD, callbackUrl);
  else m.hset(key, 's', rec.status, 'r', JSON.stringify(rec));
  m.expire(key, ttlS);
  if (rec.mode === 'async') addOpen(m, key, rec.createdAt, ttlS);
}

/** ZADD the record's index entry, and keep the index alive as long as the record (it expires when nobody enqueues). */
function addOpen(m: ChainableCommander | Redis, key: string, at: number, ttlS: number): void {
  const e = openEntryOf(key);
  if (!e) return;
  void m.zadd(e.index, at, e.member);
  void m.expire(e.index, ttlS);
}

export async function getRecord(redis: Redis, key: string): Promise<StoredRecord | null> {
  const j = await redis.hget(key, 'r');
  return j ? (JSON.parse(j) as StoredRecord) : null;
}

/** Parses a reply-channel message: "I\n{record JSON}". */
export function parseReply(msg: string): { id: string; rec: StoredRecord } | null {
  const nl = msg.indexOf('\n');
  if (nl < 0) return null;
  try {
    return { id: msg.slice(0, nl), rec: JSON.parse(msg.slice(nl + 1)) as StoredRecord };
  } catch {
    return null;
  }
}
