/**
 * @module sandbox/reaper
 * Reaps this process's children (sandbox inits, the zygote's clones are ours too: CLONE_PARENT) as soon as
 * they end, woken by SIGCHLD.
 *
 * Why not a blocking waitpid on the libuv thread pool per child: an init killed by destroy() takes ≈0.05-0.15 ms
 * to exit (its pid namespace, files, namespaces go), and a thread-pool waitpid then costs two more wake-ups (the
 * worker, then the loop), ≈0.4 ms in all on this 2-core VM, on every destroy. The SIGCHLD listener stays
 * installed once made (adding and removing it costs ≈0.05 ms of sigaction and libuv signal-lock work each
 * time; Node's signal handles do not keep the process alive); libuv's own child-process watcher reaps only
 * the pids it spawned, so the two never take each other's children. While someone waits, a slow timer
 * re-checks in case a signal is ever missed.
 *
 * @example
 * process.kill(initPid, 'SIGKILL');
 * const st = await reap(initPid); // null if it was already reaped elsewhere (ECHILD)
 */
import { native } from './native.ts';
import type { WaitStatus } from '../../native/addon/index.d.ts';

/** Re-check without a signal every this many ms: a backstop only (SIGCHLD normally comes first). */
const RECHECK_MS = 20;

const waiting = new Map<number, Array<(st: WaitStatus | null) => void>>();
let timer: NodeJS.Timeout | undefined;
let listening = false;

/** waitpid(WNOHANG): the status, null while running, or `gone` when it is not (or no longer) our child. */
function tryReap(pid: number): WaitStatus | null | 'gone' {
  try {
    return native().waitpid(pid);
  } catch {
    return 'gone'; // ECHILD: reaped already
  }
}

function check(): void {
  for (const [pid, cbs] of waiting) {
    const st = tryReap(pid);
    if (st === null) continue;
    waiting.delete(pid);
    for (const cb of cbs) cb(st === 'gone' ? null : st);
  }
  if (waiting.size === 0 && timer) {
    clearInterval(timer);
    timer = undefined;
  }
}

/** Resolves once child `pid` has ended and is reaped: its wait status, or null if it was not ours to reap. */
export function reap(pid: number): Promise<WaitStatus | null> {
  const st = tryReap(pid);
  if (st !== null) return Promise.resolve(st === 'gone' ? null : st);
  return new Promise((resolve) => {
    if (!listening) {
      process.on('SIGCHLD', check);
      listening = true;
    }
    timer ??= setInterval(check, RECHECK_MS);
    const cbs = waiting.get(pid);
    if (cbs) cbs.push(resolve);
    else waiting.set(pid, [resolve]);
    // it may have ended between the first waitpid and the listener: nothing would signal it again
    check();
  });
}
