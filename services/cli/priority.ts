/**
 * @module cli/priority
 * The scheduling priority of the host's event loop (`fnhost start`, env FNHOST_NICE or `--nice`).
 *
 * Why: one Node thread carries the gateway, the scheduler and the local dispatch of every tenant's calls,
 * while each warm call wakes two other processes (the function's runtime over its wire, the caller over
 * HTTP). The kernel lets a woken task preempt the running one, so at equal priority the loop that every
 * in-flight call waits on is preempted by the very runtimes it just handed work to — measured at 32
 * connections (test/bench/gateway.ts's load, /tmp/fnhost-notes/warm.md): 0.5–1.0 involuntary context
 * switches of the host's main thread per call at nice 0, 0.1–0.4 at nice −10, and more calls/s. A
 * tenant's CPU-bound function likewise cannot starve the API of the others. The functions keep their share
 * of the machine: the loop is one thread, it can take at most one core.
 *
 * Only the calling thread is changed (Linux setpriority on a thread id): the embedded redis-server and the
 * sandboxes, started before or by other threads, keep their own priority. Lowering a nice value needs
 * CAP_SYS_NICE (root, as `fnhost start` is); without it the host runs on at its current priority.
 *
 * @example
 * const r = applyHostNice(process.env, flags['nice']);   // { nice: -10 } or { skipped: 'EACCES' }
 */
import { getPriority, setPriority } from 'node:os';
import { InvalidRequest } from '../common/errors.ts';

/**
 * −10 (CFS/EEVDF weight 9548 vs 1024 at nice 0): measured alternately with off / −5 / −10 at 32 connections
 * on the shared 2-core machine, the host's main thread took 0.5–1.0 / 0.2–0.9 / 0.08–0.4 involuntary context
 * switches per call and served 0.4–2.0k / 0.5–2.8k / 2.2–3.7k calls/s (/tmp/fnhost-notes/warm.md).
 */
export const DEFAULT_HOST_NICE = -10;

/** The nice value asked for: `--nice` wins over FNHOST_NICE; `off` leaves the priority alone (null). */
export function hostNice(env: NodeJS.ProcessEnv, flag?: string): number | null {
  const v = (flag ?? env.FNHOST_NICE ?? '').trim();
  if (v === '') return DEFAULT_HOST_NICE;
  if (v === 'off') return null;
  if (!/^-?[0-9]{1,2}$/.test(v) || Number(v) < -20 || Number(v) > 19) {
    throw new InvalidRequest(`FNHOST_NICE must be a nice value from -20 to 19, or off (got ${JSON.stringify(v)})`, { field: 'nice' });
  }
  return Number(v);
}

/** Applies {@link hostNice} to the calling thread; never throws for lack of privilege. */
export function applyHostNice(env: NodeJS.ProcessEnv, flag?: string): { nice: number } | { skipped: string } {
  const nice = hostNice(env, flag);
  if (nice === null) return { skipped: 'off' };
  try {
    setPriority(nice);
    return { nice: getPriority() };
  } catch (e) {
    return { skipped: (e as NodeJS.ErrnoException).code ?? String(e) };
  }
}
