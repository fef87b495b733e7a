/**
 * @module scheduler/local-dispatch
 * Co-located dispatch: `fnhost start` runs the gateway's invocation client and a scheduler in one process.
 * When that scheduler can place a sync/http call NOW — an idle warm instance of the exact version, or (only
 * node on this Redis) a pooled sandbox and the memory for it — and nothing waits on the node, the client
 * hands the call straight over: no fast-lane push, no BLMPOP, no job JSON, no base64 of the payload, no
 * reply message. Otherwise the call takes the queue as before.
 *
 * What stays the same for users: the final record is written (pipelined, not awaited — the client answers
 * `get()` from an in-process map until Redis has acknowledged it, so a GET right after the response never
 * 404s), logs, metrics (queue wait 0), typed errors, an instance is never reused after a fatal error, and
 * the scheduler's graceful shutdown waits for local calls as for queued ones.
 *
 * Why the conditions: "can place now" keeps the node's local waiting room (round-robin by tenant, see
 * ./fair-queue.ts) the only place where callers wait, so local dispatch never jumps a queue; "only node" for
 * a cold start keeps warm routing to another node's instance (./routing.ts) in charge when there are
 * several nodes. Measured per warm invocation (perf notes, /tmp/fnhost-notes/old/perf.md): the queue path
 * costs 2 EVALSHA + a BLMPOP read + the job's JSON and base64 passes — about a third of the host's CPU.
 *
 * Dispatchers are registered per Redis identity + key prefix: a client only hands calls to a scheduler
 * that serves the same queues (same Redis server and database, same prefix).
 *
 * @example
 * // scheduler side (./scheduler.ts): registerLocalDispatcher(localKey(redis, keys.prefix), dispatcher)
 * // client side (./client.ts):
 * const run = localDispatcher(localKey(redis, keys.prefix))?.tryDispatch(call);
 * if (run) { const { record, error } = await run; ... }
 */
import type { Redis } from 'ioredis';
import type { Span } from '@opentelemetry/api';
import type { FunctionVersion, InvocationMode, InvocationPayload } from '../common/model.ts';
import type { ErrorJSON, InvocationRecord } from './types.ts';
import { ProcessRegistry } from './process-registry.ts';

/** One sync/http call handed over in-process. */
export interface LocalCall {
  id: string;
  mode: Exclude<InvocationMode, 'async'>;
  fn: FunctionVersion;
  payload: InvocationPayload;
  /** epoch ms */
  createdAt: number;
  /** epoch ms after which nobody waits for the answer (a short wait for a busy instance must end by then) */
  deadline: number;
  /** the caller's traceparent ('local dispatch' is its child) */
  traceparent?: string;
  /** the caller's span itself (wins over `traceparent`; in-process, no string to make and look up) */
  parentSpan?: Span;
}

export interface LocalOutcome {
  /** the final record (response body as bytes, not base64) */
  record: InvocationRecord;
  /** set when the invocation failed: the typed error's JSON */
  error?: ErrorJSON;
  /** settles once Redis has the final record (and logs) — rejects if it could not be written */
  written: Promise<unknown>;
}

export interface LocalDispatcher {
  /**
   * Places `call` on this node if it can without waiting (reserving the instance synchronously) and runs
   * it; undefined when the call should take the queue instead. The promise never rejects: failures of the
   * invocation come back as `error` in the outcome.
   */
  tryDispatch(call: LocalCall): Promise<LocalOutcome> | undefined;
}

const dispatchers = new ProcessRegistry<LocalDispatcher>();

/**
 * The identity of the queues a connection reaches: server address (TCP host:port or unix socket path),
 * database and key prefix. Two connections made from the same URL get the same key; different spellings of
 * one server (localhost vs 127.0.0.1) do not, which only costs the optimisation, never correctness.
 */
export function localKey(redis: Redis, prefix: string): string {
  const o = redis.options;
  const addr = o.path ? `unix:${o.path}` : `${o.host ?? '127.0.0.1'}:${o.port ?? 6379}`;
  return `${addr}/${o.db ?? 0}|${prefix}`;
}

/** Registers a scheduler's dispatcher; returns the unregister function. */
export function registerLocalDispatcher(key: string, d: LocalDispatcher): () => void {
  return dispatchers.register(key, d);
}

/** The scheduler in this process serving `key`, if there is one. */
export function localDispatcher(key: string): LocalDispatcher | undefined {
  return dispatchers.get(key);
}
