/**
 * @module scheduler/job
 * The data of one invocation job on BullMQ, and the wire form of payloads and responses (Buffers travel as
 * base64 in JSON; a body above `INLINE_BODY_MAX` is stored once under `P:payload:I` with a TTL and the job
 * carries a reference, so job hashes stay small and BullMQ's Lua scripts never copy megabytes around).
 *
 * Contract: the client writes `JobData` with `Queue.add(name = mode, data, {jobId: id})`; the scheduler
 * reads it. `deadline` is when the waiting caller gives up (sync/http) — a job picked up after it is dropped
 * as `Timeout` without running; async jobs have no caller deadline (each attempt gets `fn.timeoutMs`).
 */
import { isUtf8 } from 'node:buffer';
import type { FunctionVersion, InvocationMode, InvocationPayload, InvocationResponse } from '../common/model.ts';

/** Bodies up to this size travel inline in the job (16 KiB: a typical JSON event; above it a GET is cheaper than copying through BullMQ's scripts). */
export const INLINE_BODY_MAX = 16 * 1024;

/** `utf8`: a body that is valid UTF-8 travels as a JSON string (no base64 pass either way, and shorter). */
export type WireBody = { b64: string } | { utf8: string } | { ref: string; size: number };

export type WirePayload =
  | { kind: 'event'; body: WireBody; contentType?: string }
  | { kind: 'http'; method: string; path: string; query: string; headers: Record<string, string>; body: WireBody };

export interface JobData {
  id: string;
  mode: InvocationMode;
  fn: FunctionVersion;
  payload: WirePayload;
  createdAt: number;
  /** epoch ms after which nobody waits for the result (sync/http); 0 for async. */
  deadline: number;
  traceparent?: string;
  idempotencyKey?: string;
  /** async only: where the final outcome is POSTed (./callbacks.ts). */
  callbackUrl?: string;
  /** client id whose reply channel gets the result (sync/http). */
  replyTo?: string;
  /** node queue only: the job was routed here because this node advertised a warm instance. */
  routed?: boolean;
}

/**
 * A fast-lane job as it travels (./fast-lane.ts): `fn` may be left out, `fnr` then names it (./fn-refs.ts).
 * The scheduler puts `fn` back before processing.
 */
export type FastJob = Omit<JobData, 'fn'> & { fn?: FunctionVersion; fnr?: string };

export interface WireResponse {
  status: number;
  headers: Record<string, string>;
  body: string; // base64
}

/** Encodes a payload; large bodies are returned in `stash` for the caller to SET under the ref key. */
export function encodePayload(p: InvocationPayload, refKey: string): { wire: WirePayload; stash?: Buffer } {
  const body = p.body ?? Buffer.alloc(0);
  let wb: WireBody;
  let stash: Buffer | undefined;
  if (body.length > INLINE_BODY_MAX) {
    wb = { ref: refKey, size: body.length };
    stash = body;
  } else if (isUtf8(body)) {
    wb = { utf8: body.toString('utf8') };
  } else {
    wb = { b64: body.toString('base64') };
  }
  if (p.kind === 'event') return { wire: { kind: 'event', body: wb, contentType: p.contentType }, stash };
  return { wire: { kind: 'http', method: p.method, path: p.path, query: p.query, headers: p.headers, body: wb }, stash };
}

/**
 * Decodes a payload whose body travels inline, synchronously; undefined for a stashed body (then decodePayload):
 * the common case needs no promise, closure or await.
 */
export function decodeInline(w: WirePayload): InvocationPayload | undefined {
  const b = w.body;
  let body: Buffer;
  if ('utf8' in b) body = Buffer.from(b.utf8, 'utf8');
  else if ('b64' in b) body = Buffer.from(b.b64, 'base64');
  else return undefined;
  if (w.kind === 'event') return { kind: 'event', body, contentType: w.contentType };
  return { kind: 'http', method: w.method, path: w.path, query: w.query, headers: w.headers, body };
}

/** Decodes a payload; `fetchRef` reads a stashed body (null when it expired). */
export async function decodePayload(w: WirePayload, fetchRef: (key: string) => Promise<Buffer | null>): Promise<InvocationPayload> {
  let body: Buffer;
  if ('utf8' in w.body) body = Buffer.from(w.body.utf8, 'utf8');
  else if ('b64' in w.body) body = Buffer.from(w.body.b64, 'base64');
  else {
    const b = await fetchRef(w.body.ref);
    if (!b) throw new Error(`payload ${w.body.ref} expired`);
    body = b;
  }
  if (w.kind === 'event') return { kind: 'event', body, contentType: w.contentType };
  return { kind: 'http', method: w.method, path: w.path, query: w.query, headers: w.headers, body };
}

export function encodeResponse(r: InvocationResponse): WireResponse {
  return { status: r.status, headers: r.headers, body: Buffer.from(r.body).toString('base64') };
}

export function decodeResponse(w: WireResponse): InvocationResponse {
  return { status: w.status, headers: w.headers, body: Buffer.from(w.body, 'base64') };
}
