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
 * Final records written without the check, many in one command (./record-batch.ts): for each KEYS[i], HSET
 * s = ARGV[2i], r = ARGV[2i+1] and EXPIRE ARGV[1] — one command instead of an HSET + EXPIRE pair per record
 * for ioredis to build, queue and parse (its per-command work was ~5 % of the host's CPU at 32 connections).
 */
const PUT_RECORDS_LUA = `
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 's', ARGV[2 * i], 'r', ARGV[2 * i + 1])
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
`;

type WithSetRecord = Redis & {
  fnhostSetRecord(key: string, status: string, json: string, ttl: number, channel: string, id: string, force: string): Promise<number>;
};

/** Defines the scripts on a connection; call before its first command (ioredis' auto-pipelining copies the command table). */
export function defineRecordScript(redis: Redis): void {
  if (typeof (redis as WithSetRecord).fnhostSetRecord !== 'function') redis.defineCommand('fnhostSetRecord', { numberOfKeys: 1, lua: SET_RECORD_LUA });
  if (typeof (redis as Partial<{ fnhostPutRecords: unknown }>).fnhostPutRecords !== 'function') redis.defineCommand('fnhostPutRecords', { lua: PUT_RECORDS_LUA });
}

function withScript(redis: Redis): WithSetRecord {
  defineRecordScript(redis);
  return redis as WithSetRecord;
}

export function toStored(r: InvocationRecord): StoredRecord {
  const { response, ...rest } = r;
  return response ? { ...rest, response: encodeResponse(response) } : rest;
}

export function fromStored(s: StoredRecord): InvocationRecord {
  const { response, ...rest } = s;
  return response ? { ...rest, response: decodeResponse(response) } : rest;
}

export function isFinal(s: InvocationStatus): boolean {
  return s === 'succeeded' || s === 'failed';
}

/** Writes (or overwrites with `force`) a record unless it is already final; publishes it on `replyChannel`. */
export async function setRecord(
  redis: Redis,
  key: string,
  rec: StoredRecord,
  ttlS: number,
  opts: { replyChannel?: string; force?: boolean } = {},
): Promise<boolean> {
  const n = await withScript(redis).fnhostSetRecord(key, rec.status, JSON.stringify(rec), ttlS, opts.replyChannel ?? '', rec.id, opts.force ? 'force' : '');
  return n === 1;
}

/** The queued record, added to a pipeline/multi (the client writes it together with the payload). */
export function queueRecord(m: ChainableCommander, key: string, rec: StoredRecord, ttlS: number): void {
  m.hset(key, 's', rec.status, 'r', JSON.stringify(rec));
  m.expire(key, ttlS);
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
