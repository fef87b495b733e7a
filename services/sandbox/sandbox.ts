/**
 * @module sandbox/sandbox
 * One sandbox: its init (PID 1 of fresh namespaces), its cgroup(s) and its control channel. Implements the
 * `Sandbox` contract of types.ts; created by createSandbox() in index.ts.
 */
import { close, closeSync, readFileSync } from 'node:fs';
import { Socket, type SocketConstructorOpts } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Duplex, Readable, Writable } from 'node:stream';
import { Conflict, InvalidRequest } from '../common/errors.ts';
import { MiB, type CgroupHandle } from './cgroup.ts';
import { ControlChannel } from './control.ts';
import { SandboxError, errnoName, fromNodeError } from './errors.ts';
import { native } from './native.ts';
import { reap } from './reaper.ts';
import type {
  ExecSpec, ExitStatus, MemoryStats, Sandbox, SandboxLimits, SandboxProcess, SandboxState, StartSpec,
} from './types.ts';
import {
  checkExecMounts, existsInRootfs, validateLimits, validateMount, validateProcess, validateStart, type NormalProcess, type RootfsView,
} from './validate.ts';

export { EMPTY_LAYER, NEWROOT, RUN_DIR, SKELETON_LAYER, ensureRunDir, lowerdir } from './paths.ts';
import { ensureRunDir, lowerdir } from './paths.ts';

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([n, v]) => [v as number, n]));

function closeQuietly(fd: number | undefined): void {
  if (fd === undefined || fd < 0) return;
  try { closeSync(fd); } catch { /* already closed */ }
}

/** The host pid of the init's child whose pid in the sandbox's namespace is `nspid` (-1 if gone). */
function hostPidOf(initPid: number, nspid: number): number {
  let children: string[];
  try {
    children = readFileSync(`/proc/${initPid}/task/${initPid}/children`, 'utf8').trim().split(' ').filter(Boolean);
  } catch {
    return -1;
  }
  for (const c of children) {
    try {
      const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${c}/status`, 'utf8'));
      const ids = m?.[1]?.trim().split(/\s+/) ?? [];
      if (Number(ids[ids.length - 1]) === nspid) return Number(c);
    } catch {
      /* exited meanwhile */
    }
  }
  return -1;
}

interface ProcEntry {
  baselineOom: number;
  resolve: (s: ExitStatus) => void;
  streams: Array<Socket>;
  done: boolean;
}

class Process implements SandboxProcess {
  private hostPid: number | undefined;
  constructor(
    private readonly initPid: number,
    private readonly nsPid: number,
    readonly stdin: Writable,
    readonly stdout: Readable,
    readonly stderr: Readable,
    readonly wire: Duplex | null,
    readonly exited: Promise<ExitStatus>,
  ) {}

  /** Looked up in /proc on first use (≈0.1 ms that the cold-start path does not pay); -1 if the process had
   * already ended by then. */
  get pid(): number {
    this.hostPid ??= hostPidOf(this.initPid, this.nsPid);
    return this.hostPid;
  }
}

export class SandboxImpl implements Sandbox {
  private stateValue: SandboxState = 'created';
  private busy = false;
  private readonly procs = new Map<number, ProcEntry>();
  /** host ends of every process's stdio: a stream nobody reads never sees EOF, so destroy() closes them */
  private readonly streams = new Set<Socket>();
  private view: RootfsView | undefined;
  /** set once the init is known to be ending (its socket closed, or we killed it): resolves when reaped */
  private initReaped: Promise<void> | undefined;
  private reaped = false;
  private destroying: Promise<void> | undefined;
  private limits: SandboxLimits;
  readonly ready: Promise<void>;

  constructor(
    readonly id: string,
    readonly initPid: number,
    private readonly ch: ControlChannel,
    private readonly cg: CgroupHandle,
    limits: SandboxLimits,
    private readonly onGone: (sb: SandboxImpl) => void,
    /** the sandbox's mount namespace (/proc/<init>/ns/mnt), held so that its teardown is not on any hot path */
    private mntNsFd: number,
  ) {
    this.limits = { ...limits };
    this.ready = ch.ready;
    ch.onExited = (m) => {
      const e = this.procs.get(m.reqid);
      if (!e) return;
      this.finish(e, m.code, m.signal === null ? null : m.signal);
      this.procs.delete(m.reqid);
    };
    void ch.closed.then(() => this.reapInitOnce());
  }

  get state(): SandboxState {
    return this.stateValue;
  }

  private finish(e: ProcEntry, code: number | null, signal: number | null): void {
    if (e.done) return;
    e.done = true;
    // nobody can read the process's stdin any more; its stdout/stderr/wire end by themselves at EOF
    e.streams[0]?.destroy();
    let oomKills = 0;
    let peak = 0;
    try {
      oomKills = this.cg.oomKills();
      peak = this.cg.peakBytes();
    } catch { /* cgroup gone: report zeros */ }
    e.resolve({
      code,
      signal: signal === null ? null : (SIGNAL_NAMES.get(signal) ?? `SIG${signal}`),
      oomKilled: oomKills > e.baselineOom,
      peakMemoryBytes: peak,
    });
  }

  private reapInitOnce(): Promise<void> {
    this.initReaped ??= this.reapInit();
    return this.initReaped;
  }

  private async reapInit(): Promise<void> {
    // SIGCHLD wakes us the moment it is a zombie (reaper.ts); null = someone reaped it already
    await reap(this.initPid);
    this.reaped = true;
    // The init's exit did not have to unmount the sandbox's tree: we still hold its mount namespace. Drop it
    // on the thread pool, where the umounts (and their RCU grace period) cost the event loop nothing.
    if (this.mntNsFd >= 0) {
      close(this.mntNsFd, () => {});
      this.mntNsFd = -1;
    }
    // "exited" messages the init sent before it died are still to be read, unless destroy() dropped them
    if (!this.destroying) await this.ch.closed;
    // Whatever was still running died with the pid namespace (SIGKILL from the kernel).
    for (const e of this.procs.values()) this.finish(e, null, 9);
    this.procs.clear();
  }

  private assertUsable(want: SandboxState, what: string): void {
    // `destroying`: destroy() has closed the control fd already (state says 'destroyed' only once it is done)
    if (this.stateValue !== want || this.busy || this.ch.isClosed || this.destroying) {
      const why = this.destroying && this.stateValue !== 'destroyed' ? 'being destroyed'
        : this.ch.isClosed && this.stateValue !== 'destroyed' ? 'dead' : this.busy ? 'busy' : this.stateValue;
      throw new Conflict(`cannot ${what}: sandbox ${this.id} is ${why}`, { sandboxId: this.id, state: this.stateValue });
    }
  }

  async start(spec: StartSpec): Promise<SandboxProcess> {
    this.assertUsable('created', 'start');
    const s = validateStart(spec);
    this.busy = true;
    try {
      if (Object.keys(s.limits).length) this.applyLimits(s.limits);
      ensureRunDir();
      // The init's root is its stage (native/init/mount.c mnt_stage): /root empty, /dev and /proc ready, the
      // host's tree already detached. The overlays are built here, in the host's namespace where the layer
      // dirs are, as detached mounts, and sent along (SCM_RIGHTS) for the init to move_mount into place.
      const ops: string[] = ['attach', '/root'];
      for (const m of s.mounts) ops.push('attach', `/root${m.target}`);
      ops.push(
        // /tmp: the tmpfs the init made while this frame was being prepared, resized if tmpfsMb is not the default
        'tmp', String(s.tmpfsMb * MiB), '/root/tmp',
        'move', '/proc', '/root/proc',
        'move', '/dev', '/root/dev',
        // the rootfs becomes the root (native/init/mount.c mnt_enter: the stage below it never held a host mount)
        'enter', '/root',
        'hostname', s.hostname,
      );
      const mountFds: number[] = [];
      try {
        for (const layers of [s.layers, ...s.mounts.map((m) => m.layers)]) mountFds.push(native().overlayMount(lowerdir(layers)));
      } catch (e) {
        mountFds.forEach(closeQuietly);
        throw fromNodeError('start: building the rootfs overlay', e);
      }
      const proc = await this.spawn(ops, mountFds, s, 'start');
      this.view = { layers: s.layers, mounts: s.mounts };
      this.stateValue = 'started';
      return proc;
    } catch (e) {
      // A half-specialised sandbox is never reused: its mounts may be partly made.
      this.busy = false;
      await this.destroy();
      throw e;
    } finally {
      this.busy = false;
    }
  }

  async exec(spec: ExecSpec): Promise<SandboxProcess> {
    this.assertUsable('started', 'exec');
    const p = validateProcess(spec);
    if (spec.mounts !== undefined) return this.attachAndSpawn(spec.mounts, p);
    checkExecMounts(this.view!, [], p); // argv[0] is in the rootfs (memoised: a warm exec repeats the same one)
    try { this.cg.resetPeak(); } catch { /* best effort */ }
    return this.spawn([], [], p, 'exec');
  }

  /** exec() with ExecSpec.mounts: the same checks as attach() for each, then ONE frame: attach… + spawn. */
  private async attachAndSpawn(mounts: ExecSpec['mounts'], p: NormalProcess): Promise<SandboxProcess> {
    if (!Array.isArray(mounts)) bad('mounts', 'mounts must be a list');
    const ms = mounts.map((m, i) => validateMount(m?.target, m?.layers, `mounts[${i}].target`, `mounts[${i}].layers`));
    // targets must already exist (the rootfs is read-only); argv[0] may be in one of the new mounts
    checkExecMounts(this.view!, ms, p);
    const fds: number[] = [];
    try {
      for (const m of ms) fds.push(native().overlayMount(lowerdir(m.layers)));
    } catch (e) {
      fds.forEach(closeQuietly);
      throw fromNodeError('exec: building an overlay to attach', e);
    }
    try { this.cg.resetPeak(); } catch { /* best effort */ }
    const ops: string[] = [];
    for (const m of ms) ops.push('attach', m.target);
    this.view!.mounts.push(...ms);
    try {
      return await this.spawn(ops, fds, p, 'exec');
    } catch (e) {
      // Some of the frame's steps may be done (the init stops at the first failure): this sandbox's rootfs is
      // no longer known exactly, so it is not used again (as after a failed start).
      await this.destroy();
      throw e;
    }
  }

  async attach(target: string, layers: string[]): Promise<void> {
    this.assertUsable('started', 'attach');
    const m = validateMount(target, layers, 'target', 'layers');
    // the target must already exist: the rootfs is read-only, nothing can be created in it
    if (!existsInRootfs(this.view!, m.target, true)) bad('target', `attach target ${m.target} is not a directory in the rootfs`);
    let fd: number;
    try {
      fd = native().overlayMount(lowerdir(m.layers));
    } catch (e) {
      throw fromNodeError(`attach ${m.target}: building the overlay`, e);
    }
    // In the view before the init has answered: an exec() issued right behind this attach (not awaited) then
    // finds its command in the new mount, and its spawn frame follows the attach frame, which the init handles
    // first (frames run in order). A failed attach takes it out again; that exec then fails in the init.
    this.view!.mounts.push(m);
    try {
      const r = await this.ch.request(['attach', m.target], [fd]).reply;
      if (!r.ok) throw initError(`attach ${m.target}`, r);
    } catch (e) {
      const i = this.view!.mounts.indexOf(m);
      if (i >= 0) this.view!.mounts.splice(i, 1);
      throw e;
    } finally {
      closeQuietly(fd);
    }
  }

  private applyLimits(l: Partial<SandboxLimits>): void {
    try {
      this.cg.setLimits(l);
    } catch (e) {
      throw fromNodeError(`setting limits of sandbox ${this.id}`, e);
    }
    this.limits = { ...this.limits, ...l };
  }

  async setLimits(limits: Partial<SandboxLimits>): Promise<void> {
    if (this.stateValue === 'destroyed') throw new Conflict(`sandbox ${this.id} is destroyed`, { sandboxId: this.id });
    this.applyLimits(validateLimits(limits));
  }

  async memory(): Promise<MemoryStats> {
    if (this.stateValue === 'destroyed') throw new Conflict(`sandbox ${this.id} is destroyed`, { sandboxId: this.id });
    return this.cg.memory();
  }

  /** Sends `preOps` (their fds `preFds` first) and a spawn of `p`; closes `preFds` once sent. */
  private async spawn(preOps: string[], preFds: number[], p: NormalProcess, what: string): Promise<SandboxProcess> {
    const n = native();
    const hostFds: number[] = [];
    const childFds: number[] = [];
    try {
      const stdin = n.pipe();
      hostFds.push(stdin[1]); childFds.push(stdin[0]);
      const stdout = n.pipe();
      hostFds.push(stdout[0]); childFds.push(stdout[1]);
      const stderr = n.pipe();
      hostFds.push(stderr[0]); childFds.push(stderr[1]);
      if (p.wire) {
        const w = n.socketpair();
        hostFds.push(w[0]); childFds.push(w[1]);
      }
    } catch (e) {
      hostFds.forEach(closeQuietly);
      childFds.forEach(closeQuietly);
      preFds.forEach(closeQuietly);
      throw fromNodeError(`${what}: creating stdio`, e);
    }
    const ops = [
      ...preOps,
      'spawn', String(p.uid), String(p.gid), p.cwd, String(p.argv.length), ...p.argv, String(p.env.length), ...p.env,
      String(childFds.length),
    ];
    // oomKilled compares the cgroup's OOM-kill count with this. Before start nothing but the init has run in the
    // fresh cgroup, and an init the OOM killer took makes the spawn fail: 0 without reading memory.oom_control.
    let baselineOom = 0;
    if (what !== 'start') {
      try { baselineOom = this.cg.oomKills(); } catch { /* no memory controller */ }
    }
    let resolveExit!: (s: ExitStatus) => void;
    const exited = new Promise<ExitStatus>((r) => { resolveExit = r; });
    const entry: ProcEntry = { baselineOom, resolve: resolveExit, streams: [], done: false };
    const { id, reply } = this.ch.request(ops, [...preFds, ...childFds]);
    // The kernel holds its own references to fds in flight; ours are no longer needed.
    childFds.forEach(closeQuietly);
    preFds.forEach(closeQuietly);
    this.procs.set(id, entry);
    // The host ends are wrapped while the init works on the frame (mounts, enter, exec): ≈30 µs of JS per
    // stream that would otherwise come after its reply, on the cold-start path.
    const sIn = new Socket({ fd: hostFds[0]!, readable: false, writable: true });
    // A process that exits without reading its stdin must not crash the host with EPIPE.
    sIn.on('error', () => {});
    // The body goes into the pipe now, in the tick that sent the spawn request: libuv writes what fits
    // (uv_try_write, the pipe's capacity: 64 KiB unless fs.pipe-user-pages-soft is exhausted) at once, long
    // before the init has cloned and exec'd the process (≥ 0.1 ms), so the process reads its body without a
    // host round trip; the rest is written as it reads, then the write end closes (EOF). Writing before the
    // request instead would delay the init's work by the ≈30 µs of wrapping the fd.
    if (p.stdin) sIn.end(p.stdin);
    // Output is not read until the caller reads it (net.Socket's manualStart: no read(0) at construction).
    // With its stdin already written, a short process can exit before "ok" is processed: a stream read from
    // here would see EOF and emit 'end' before the caller had a listener, and the caller would wait forever.
    const quiet = { readable: true, writable: false, manualStart: true } as SocketConstructorOpts;
    const sOut = new Socket({ fd: hostFds[1]!, ...quiet });
    const sErr = new Socket({ fd: hostFds[2]!, ...quiet });
    const sWire = p.wire ? new Socket({ fd: hostFds[3]!, readable: true, writable: true }) : null;
    const r = await reply;
    if (!r.ok) {
      this.procs.delete(id);
      for (const s of [sIn, sOut, sErr, sWire]) s?.destroy();
      throw initError(`${what} ${p.argv[0]}`, r);
    }
    entry.streams.push(sIn, sOut, sErr, ...(sWire ? [sWire] : []));
    for (const st of entry.streams) {
      this.streams.add(st);
      st.once('close', () => this.streams.delete(st));
    }
    // "exited" can arrive in the same read as "ok", before this continuation ran
    if (entry.done) sIn.destroy();
    return new Process(this.initPid, r.pid, sIn, sOut, sErr, sWire, exited);
  }

  async kill(): Promise<void> {
    if (!this.reaped) {
      try { process.kill(this.initPid, 'SIGKILL'); } catch { /* already exiting */ }
    }
    await this.reapInitOnce();
    // Every process of the sandbox lived in its pid namespace, which the kernel empties before the init can
    // be reaped (kernel/pid_namespace.c zap_pid_ns_processes); remove() still checks the cgroups.
  }

  destroy(): Promise<void> {
    this.destroying ??= this.doDestroy();
    return this.destroying;
  }

  private async doDestroy(): Promise<void> {
    const killed = this.kill(); // SIGKILL first: the init dies while our ends are closed
    this.ch.close();
    for (const s of this.streams) s.destroy();
    this.streams.clear();
    await killed;
    try {
      try {
        await this.cg.remove(50);
      } catch {
        // EBUSY past a short wait: something is in the cgroup that the pid namespace did not hold
        await this.cg.killAll();
        await this.cg.remove();
      }
    } finally {
      this.stateValue = 'destroyed';
      this.onGone(this);
    }
  }
}

function bad(field: string, message: string): never {
  throw new InvalidRequest(message, { field });
}

function initError(context: string, r: { errno: number; syscall: string; path: string; message: string }): SandboxError {
  return new SandboxError(`${context}: ${r.message} (${errnoName(r.errno)}, ${r.syscall}${r.path ? ` '${r.path}'` : ''})`, {
    code: errnoName(r.errno), errno: -r.errno, syscall: r.syscall, path: r.path || undefined,
  });
}
