/**
 * @module sandbox/zygote
 * The host's side of the zygote (native/init/zygote.c): a small static helper, started once per host process,
 * whose clones become sandbox inits — no exec of the init per sandbox, a pre-made network namespace from its
 * pool instead of a fresh CLONE_NEWNET on the hot path. Each init is born a child of THIS process
 * (CLONE_PARENT), so it is reaped, killed and watched exactly like one spawned by the addon's spawnInit.
 *
 * The zygote speaks the init's control protocol (control.ts): `run <reqid> spawn <njoin> <hasdir>` with fds,
 * answered by `ok <reqid> <pid>` / `error <reqid> ...`. Requests are asynchronous: the host wraps the new
 * init's socket while the zygote clones, and reads both answers from its event loop.
 *
 * @example
 * const z = await Zygote.start(INIT_PATH, NEWROOT, 4);  // ≈ a few ms, once
 * const init = z.spawn(cgroup.openJoin());               // the clone starts now
 * const ch = new ControlChannel(init.fd);
 * const pid = await init.pid;                            // host pid of the new init (our child)
 * await z.close();                                    // the zygote and its maker are reaped
 */
import { closeSync } from 'node:fs';
import type { CgroupJoin } from './cgroup.ts';
import { ControlChannel, encodeFrame } from './control.ts';
import { errnoName } from './errors.ts';
import { native } from './native.ts';
import { reap } from './reaper.ts';

/** Building the stage takes ≈1-3 ms; a loaded machine can take far longer, but not this long. */
const READY_TIMEOUT_MS = 5_000;
/** A spawn is one clone3 (≈0.1 ms); past this the zygote is stuck: it is closed and creates fall back. */
const SPAWN_TIMEOUT_MS = 5_000;
/**
 * How long close() waits for the zygote to end its maker and exit before SIGKILL: it is idle in recvmsg and
 * the maker at most one unshare(CLONE_NEWNET) (≈0.5 ms) from reading EOF, so this only bounds a stuck one.
 */
const CLOSE_DEADLINE_MS = 200;
const EPIPE = 32;
const ETIMEDOUT = 110;

function errnoError(message: string, errno: number, syscall: string, path = ''): Error {
  return Object.assign(new Error(message), { code: errnoName(errno), errno: -errno, syscall, ...(path ? { path } : {}) });
}

/** A spawn in flight. */
export interface PendingInit {
  /** host end of the new init's control socket (AF_UNIX stream, close-on-exec): the caller owns it at once. */
  readonly fd: number;
  /** the init's host pid; rejects with Node's errno shape when no child was made (the caller closes `fd`). */
  readonly pid: Promise<number>;
}

/**
 * Sends an init made by {@link Zygote.spawnUnjoined} its v1 `tasks` fds (the first frame on its control
 * socket); it joins each, then goes on to "ready". The caller may close its copies once this returns.
 */
export function sendJoin(fd: number, join: CgroupJoin): void {
  native().sendFrame(fd, encodeFrame(['join']), join.procsFds);
}

export class Zygote {
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(readonly pid: number, readonly fd: number, private readonly ch: ControlChannel) {}

  /**
   * Starts the zygote (its own private mount namespace; `stage` is an empty host directory) with up to
   * `netnsPool` network namespaces made ahead (0: every init gets a fresh CLONE_NEWNET). Rejects on failure.
   */
  static async start(initPath: string, stage: string, netnsPool: number): Promise<Zygote> {
    const n = native();
    const sp = n.spawnInit(initPath, ['--zygote', stage, String(netnsPool)], n.constants.CLONE_NEWNS, [], -1);
    const ch = new ControlChannel(sp.fd);
    // The zygote must not keep the host process alive on its own (it dies with the host anyway: PDEATHSIG).
    ch.unref();
    const z = new Zygote(sp.pid, sp.fd, ch);
    track(z);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        ch.ready,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(errnoError('zygote: no "ready"', ETIMEDOUT, 'read')), READY_TIMEOUT_MS);
        }),
      ]);
    } catch (e) {
      void z.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    return z;
  }

  get isClosed(): boolean {
    return this.closed || this.ch.isClosed;
  }

  /**
   * A new sandbox init: fresh pid/mnt/uts/ipc namespaces, a never-used network namespace, joined to the
   * cgroups of `join` (v1 `tasks` fds, or the v2 dir fd: CLONE_INTO_CGROUP) before it runs anything, its own
   * cgroup namespace. The fds of `join` are in flight when this returns: the caller may close its copies.
   */
  spawn(join: CgroupJoin): PendingInit {
    const fds = [...join.procsFds, ...(join.dirFd >= 0 ? [join.dirFd] : [])];
    return this.request([String(join.procsFds.length), join.dirFd >= 0 ? '1' : '0'], fds);
  }

  /**
   * Like spawn(), but before the cgroups exist (v1 only: `joinsAfterClone`): the zygote clones while the
   * caller makes them, and the new init waits, before anything else, for {@link sendJoin} on its socket.
   * Closing `fd` instead ends it (it exits at EOF; the caller still reaps `pid`).
   */
  spawnUnjoined(): PendingInit {
    return this.request(['0', '0', '1'], []);
  }

  private request(args: string[], fds: number[]): PendingInit {
    if (this.isClosed) throw errnoError('zygote is closed', EPIPE, 'sendmsg');
    const n = native();
    const [mine, theirs] = n.socketpair();
    let reply;
    try {
      // the kernel holds its own reference to `theirs` once it is in flight
      reply = this.ch.request(['spawn', ...args], [theirs, ...fds]).reply;
    } finally {
      closeSync(theirs);
    }
    let timer: NodeJS.Timeout | undefined;
    const pid = Promise.race([
      reply.then((r) => {
        if (r.ok && r.pid > 0) return r.pid;
        if (r.ok) throw errnoError('zygote: no pid in its answer', 71 /* EPROTO */, 'read');
        if (r.errno === EPIPE) void this.close(); // it is gone
        throw errnoError(`zygote: ${r.message}`, r.errno, r.syscall, r.path);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          void this.close(); // stuck: later answers would come too late to matter
          reject(errnoError('zygote: no answer', ETIMEDOUT, 'read'));
        }, SPAWN_TIMEOUT_MS);
        timer.unref();
      }),
    ]).finally(() => clearTimeout(timer));
    pid.catch(() => {}); // observed by the caller; never an unhandled rejection
    return { fd: mine, pid };
  }

  /**
   * Closes the socket: at EOF the zygote ends its netns maker (releasing the pooled namespaces), reaps it and
   * exits; resolves once the zygote is reaped too, so that neither is left behind, not even as a zombie for
   * PID 1 to collect. A zygote still there after CLOSE_DEADLINE_MS is SIGKILLed (its maker then dies by
   * PDEATHSIG). It holds nothing a sandbox needs: inits are this process's children.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    zygotes.delete(this);
    this.ch.close();
    const timer = setTimeout(() => {
      try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
    }, CLOSE_DEADLINE_MS);
    this.closing = reap(this.pid).then(() => clearTimeout(timer));
    return this.closing;
  }

  /**
   * close() for process exit, where nothing asynchronous runs any more: EOF, then up to CLOSE_DEADLINE_MS of
   * waitpid(WNOHANG) polls (the zygote normally needs well under a millisecond), then SIGKILL.
   */
  closeAtExit(): void {
    if (this.closing) return;
    this.closed = true;
    zygotes.delete(this);
    try { closeSync(this.fd); } catch { /* closed already */ }
    const n = native();
    const pause = new Int32Array(new SharedArrayBuffer(4));
    const deadline = Date.now() + CLOSE_DEADLINE_MS;
    for (;;) {
      try {
        if (n.waitpid(this.pid) !== null) return;
      } catch {
        return; // not (or no longer) our child
      }
      if (Date.now() > deadline) break;
      Atomics.wait(pause, 0, 0, 1);
    }
    try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
  }
}

/** Zygotes not yet closed, ended at process exit (closeAtExit) rather than left to PDEATHSIG. */
const zygotes = new Set<Zygote>();
let exitHook = false;

function track(z: Zygote): void {
  zygotes.add(z);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const z of [...zygotes]) z.closeAtExit();
  });
}
