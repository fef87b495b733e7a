/**
 * @module scheduler/executor
 * The seam between the scheduler's logic (pool, warm instances, admission — pure, unit-tested with a fake)
 * and what actually runs code (./runtime-executor.ts: native sandboxes + runtime/host).
 *
 * Contract:
 *   kindOf(fn)           → the pool a function draws from: runtime × base image ("node", "python", "exec",
 *                          "image" — runtime-executor.ts; a fake may use others such as
 *                          "image:<tenant>/<name>"). Sync and total: a bad runtime fails later, in specialise.
 *   createPooled(kind)   → a pre-created sandbox of that kind (namespaces + cgroup, runtime pre-booted where the
 *                          kind allows). Rejects on kernel failure; the pool retries later.
 *   specialise(p, fn)    → turns the pooled sandbox into an instance of fn (consumes `p` either way). Rejects
 *                          with a typed error (FunctionError at load, Crashed, OutOfMemory, Timeout, NotFound).
 *   instance.invoke(req) → the response and the invocation's log lines, or a typed error. After Crashed,
 *                          OutOfMemory or Timeout `alive` is false and the scheduler never reuses it.
 *   destroy()            → idempotent; afterwards nothing of the sandbox is left.
 */
import type { FunctionVersion, InvocationPayload, InvocationResponse, LogLine } from '../common/model.ts';

export interface PooledSandbox {
  readonly kind: string;
  readonly alive: boolean;
  destroy(): Promise<void>;
}

export interface ExecRequest {
  id: string;
  payload: InvocationPayload;
  /** epoch ms */
  deadline: number;
}

export interface ExecResult {
  response: InvocationResponse;
  durationMs: number;
}

export interface InstanceHandle {
  /** sandbox id, for traces and tests ("same instance"). */
  readonly id: string;
  readonly alive: boolean;
  /**
   * the runtime's own time of the last invocation, ms, when it returned a result and the backend can tell
   * (undefined otherwise): the scheduler keeps short functions on a few hot instances by it (./instances.ts).
   */
  readonly lastRunMs?: number;
  /** with lastRunMs, when the runtime sampled it: whether that invocation blocked (I/O, timers) rather than only computed. */
  readonly lastRunSlept?: boolean;
  invoke(req: ExecRequest): Promise<ExecResult>;
  destroy(): Promise<void>;
}

export interface Executor {
  kindOf(fn: FunctionVersion): string;
  createPooled(kind: string): Promise<PooledSandbox>;
  /** `onLog` receives every log line of the instance, tagged with its invocation id, as it is captured. */
  specialise(pooled: PooledSandbox, fn: FunctionVersion, onLog: (line: LogLine) => void): Promise<InstanceHandle>;
  /** start-up: remove this node's leftovers of a previous run (sandboxes, cgroups, mounts); own prefix only. */
  cleanupLeftovers?(nodeId: string): Promise<void>;
  /** idle memory of a pooled sandbox in bytes, when the backend can tell (benchmarks). */
  pooledMemoryBytes?(p: PooledSandbox): Promise<number>;
  /** invocations one instance can run at once, whatever fn.concurrency asks (default: fn.concurrency). */
  maxConcurrency?(fn: FunctionVersion): number;
  /** shutdown: abort pooled sandboxes still being created (their createPooled rejects soon after). */
  cancelPending?(): Promise<void>;
  close?(): Promise<void>;
}
