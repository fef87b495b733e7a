/**
 * @module runtime/host/outcome
 * Maps how an invocation ended (process death, deadline) to the typed errors of DESIGN.md, and carries
 * an invocation's log lines on the error. One place, so the node, python and exec instances report the
 * same words for the same events.
 */
import { Crashed, OutOfMemory, Timeout, type FnhostError } from '../../services/common/errors.ts';
import type { FunctionVersion, LogLine } from '../../services/common/model.ts';
import type { ExitStatus, Sandbox } from '../../services/sandbox/types.ts';

const MiB = 1024 * 1024;

/**
 * V8 aborts with this before the cgroup notices when its own heap limit is lower than the memory cap;
 * that is the same event for the user (their function used too much memory), so it is reported as such.
 */
const HEAP_OOM = /JavaScript heap out of memory|Reached heap limit/;

/**
 * The typed error for a process that ended while an invocation (or the load) was in flight.
 *
 * @example
 * throw deathError(await proc.exited, { limitMb: fn.memoryMb, stderrTail });
 */
export function deathError(status: ExitStatus, ctx: { limitMb: number; stderrTail?: string; phase?: string }): FnhostError {
  const peakMb = Math.round((status.peakMemoryBytes / MiB) * 10) / 10;
  const tail = ctx.stderrTail ? ctx.stderrTail.slice(-2048) : undefined;
  const phase = ctx.phase ? { phase: ctx.phase } : {};
  if (status.oomKilled || (tail !== undefined && HEAP_OOM.test(tail))) {
    return new OutOfMemory(`function ran out of memory (cap ${ctx.limitMb} MB)`, { limitMb: ctx.limitMb, peakMb, ...phase });
  }
  const when = ctx.phase === 'load' ? 'while loading the handler' : 'mid-invocation';
  if (status.signal) {
    return new Crashed(`function process was killed by ${status.signal} ${when}`, { signal: status.signal, exitCode: null, stderrTail: tail, ...phase });
  }
  return new Crashed(`function process exited with code ${status.code} ${when}`, { exitCode: status.code, signal: null, stderrTail: tail, ...phase });
}

/**
 * The error for a deadline that passed, read from the cgroup before the sandbox goes: if the OOM killer
 * already fired in it (a child process killed, the runtime stuck behind it) that is the real story; a
 * cgroup thrashing at its cap is still a Timeout, with the peak in details so the user can see why.
 *
 * @example
 * const err = await timeoutError(sandbox, fn); await sandbox.destroy(); throw err;
 */
export async function timeoutError(sandbox: Sandbox, fn: FunctionVersion): Promise<FnhostError> {
  const mem = await sandbox.memory().catch(() => null);
  const peakMb = mem ? Math.round((mem.peakBytes / MiB) * 10) / 10 : undefined;
  if (mem && mem.oomKills > 0) {
    return new OutOfMemory(`function ran out of memory (cap ${fn.memoryMb} MB)`, { limitMb: fn.memoryMb, peakMb });
  }
  return new Timeout(`function did not finish within ${fn.timeoutMs} ms`, { timeoutMs: fn.timeoutMs, ...(peakMb ? { peakMb } : {}) });
}

/**
 * Errors from invoke() carry the invocation's log lines as a non-enumerable `logs` property: available to
 * the scheduler, never part of the error's JSON (logs are not a response).
 */
export function withLogs<E extends FnhostError>(err: E, logs: LogLine[]): E {
  Object.defineProperty(err, 'logs', { value: logs, enumerable: false });
  return err;
}

/**
 * The log lines attached by withLogs (empty when none).
 *
 * @example
 * try { await inst.invoke(req); } catch (e) { for (const l of logsOf(e)) store(l); throw e; }
 */
export function logsOf(err: unknown): LogLine[] {
  return ((err as { logs?: LogLine[] } | null)?.logs) ?? [];
}
