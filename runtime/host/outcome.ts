/**
 * @module runtime/host/outcome
 * Maps how a function's process ended to the typed errors of DESIGN.md. One place, so the node, python
 * and exec instances report the same words for the same events.
 */
import { Crashed, OutOfMemory, type FnhostError } from '../../services/common/errors.ts';
import type { ExitStatus } from '../../services/sandbox/types.ts';

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
