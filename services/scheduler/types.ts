/**
 * @module scheduler/types
 * The contract between the gateway and the scheduler (issue 5 implements it in services/scheduler/client.ts,
 * the gateway (issue 6) only calls it). Invocations travel on BullMQ/Redis; this interface hides the queue
 * topology, result delivery and log storage.
 */
import type { FunctionVersion, InvocationMode, InvocationPayload, InvocationResponse, InvocationStatus, LogLine, StartKind } from '../common/model.ts';
import type { Span } from '@opentelemetry/api';

export interface InvokeRequest {
  /** the exact version to run (the gateway resolves name / name:3 to a record). */
  fn: FunctionVersion;
  payload: InvocationPayload;
  mode: InvocationMode;
  /** async only: a repeated enqueue with the same key (per tenant) returns the first invocation's id. */
  idempotencyKey?: string;
  /** async only: POSTed the final record, signed, when the invocation ends (./callbacks.ts; validated by ./callback-url.ts). */
  callbackUrl?: string;
  /** W3C traceparent of the caller's span, carried in the job data. */
  traceparent?: string;
  /**
   * The caller's span itself, when the caller runs in the client's process (the gateway's 'http request'):
   * the parent of what the client starts, in place of `traceparent` (which is then only made if the call
   * takes the queue). Never serialised.
   */
  parentSpan?: Span;
}

/** JSON form of a typed error (services/common/errors.ts `toJSON().error`). */
export interface ErrorJSON {
  type: string;
  message: string;
  [k: string]: unknown;
}

export interface InvocationRecord {
  id: string;
  tenant: string;
  function: string;
  version: number;
  mode: InvocationMode;
  status: InvocationStatus;
  start?: StartKind;
  attempts: number;
  createdAt: number;
  startedAt?: number;
  finishedAt?: number;
  durationMs?: number;
  /** the function's response (for event results: status 200, the handler's result as body). */
  response?: InvocationResponse;
  error?: ErrorJSON;
}

export interface SyncResult {
  record: InvocationRecord;
  response: InvocationResponse;
}

export interface LogQuery {
  function?: string;
  invocation?: string;
  /** epoch ms; lines at or after it. */
  since?: number;
  limit?: number;
}

export interface InvocationClient {
  /** sync and http modes: queue, wait, return the response; rejects with the typed error (FunctionError, OutOfMemory, Timeout, TooManyRequests, ...). */
  invoke(req: InvokeRequest): Promise<SyncResult>;
  /** async mode: durable once it resolves; retried per fn.retries; failures end in the dead-letter list. */
  enqueue(req: InvokeRequest): Promise<{ invocationId: string; duplicate: boolean }>;
  get(tenant: string, invocationId: string): Promise<InvocationRecord | null>;
  listDeadLetters(tenant: string): Promise<InvocationRecord[]>;
  redrive(tenant: string, invocationId: string): Promise<{ invocationId: string }>;
  logs(tenant: string, q: LogQuery): Promise<LogLine[]>;
  followLogs(tenant: string, q: LogQuery, signal: AbortSignal): AsyncIterable<LogLine>;
  /** queue depth per tenant, for /metrics and fair-sharing tests. */
  depth(tenant: string): Promise<number>;
  /**
   * Removes everything the scheduler keeps for a tenant: its queues (waiting, delayed, dead letters), records,
   * stashed payloads, logs, idempotency keys, warm-routing records and completion callbacks not yet sent. For
   * tenant deletion; running invocations finish, and their late results expire with their TTL. Optional so test
   * fakes need not have it.
   */
  purgeTenant?(tenant: string): Promise<void>;
  /** true when Redis answers and at least one scheduler node has a fresh heartbeat. */
  ready(): Promise<boolean>;
  close(): Promise<void>;
}
