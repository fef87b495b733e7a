/**
 * @module runtime/host/process-sandbox
 * A stand-in for services/sandbox: the same `Sandbox` interface, backed by plain host child processes.
 * NO isolation, no rootfs (layers are ignored; `node` / `python3` are the host's), no cgroup (limits are
 * recorded, never enforced, so OutOfMemory is never reported). It exists so the runtime protocol, the
 * shims and the scheduler can be developed and tested before / without the native sandbox, and as the
 * "bare process" baseline in benchmarks. Never use it to run untrusted code.
 *
 * Paths: `mounts` / `attach` targets are remembered and mapped back to the host dir (the top layer) in argv
 * and cwd; `mapPath()` exposes the mapping to specialise.ts, which passes it to the shim.
 *
 * Process I/O follows services/sandbox/types.ts as the real sandbox does (test/kernel/process-sandbox-stdin.test.ts
 * runs sandbox-stdin.test.ts's cases through this stand-in): `ProcessSpec.stdin` is written into the pipe at
 * spawn and stdin is then closed; a bad spec (empty argv, stdin that is not bytes) is refused before anything
 * runs or changes; output waits for the caller even when the process ended before the caller listened.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Duplex, type Readable } from 'node:stream';
import { InvalidRequest } from '../../services/common/errors.ts';
import type {
  ExitStatus, MemoryStats, ProcessSpec, Sandbox, SandboxLimits, SandboxProcess, SandboxState, StartSpec,
} from '../../services/sandbox/types.ts';

export interface ProcessSandbox extends Sandbox {
  /** the host directory mounted at `target`, or null. */
  mapPath(target: string): string | null;
}

/**
 * @example
 * const sb = createProcessSandbox();
 * const pooled = await prepare(sb, 'node', { ref: 'node', digest: 'host', layers: [], config: { entrypoint: [], cmd: [], env: {}, workingDir: '/' } });
 */
export function createProcessSandbox(opts: { limits?: Partial<SandboxLimits> } = {}): ProcessSandbox {
  return new ProcSandbox(opts.limits ?? {});
}

class ProcSandbox implements ProcessSandbox {
  readonly id = `proc-${randomBytes(6).toString('hex')}`;
  readonly initPid = process.pid;
  private _state: SandboxState = 'created';
  private readonly mounts = new Map<string, string>();
  private readonly children = new Set<{ child: ChildProcess; exited: Promise<ExitStatus> }>();
  private limits: Partial<SandboxLimits>;
  /** the sandbox's "/tmp" (TMPDIR of its processes), removed by destroy(): nothing is left on the host. */
  private tmp: string | null = null;

  constructor(limits: Partial<SandboxLimits>) {
    this.limits = { ...limits };
  }

  get state(): SandboxState {
    return this._state;
  }

  mapPath(target: string): string | null {
    for (const [t, dir] of this.mounts) {
      if (target === t) return dir;
      if (target.startsWith(`${t}/`)) return dir + target.slice(t.length);
    }
    return null;
  }

  async start(spec: StartSpec): Promise<SandboxProcess> {
    if (this._state !== 'created') throw new InvalidRequest(`sandbox is ${this._state}, not created`, { field: 'state' });
    if (!Array.isArray(spec.layers)) throw new InvalidRequest('layers must be an array', { field: 'layers' });
    checkProcess(spec);
    for (const m of spec.mounts ?? []) this.mounts.set(m.target, m.layers[m.layers.length - 1]!);
    if (spec.limits) this.limits = { ...this.limits, ...spec.limits };
    this._state = 'started';
    return this.spawnProc(spec);
  }

  async exec(spec: ProcessSpec): Promise<SandboxProcess> {
    if (this._state !== 'started') throw new InvalidRequest(`sandbox is ${this._state}, not started`, { field: 'state' });
    checkProcess(spec);
    return this.spawnProc(spec);
  }

  async attach(target: string, layers: string[]): Promise<void> {
    if (this._state !== 'started') throw new InvalidRequest(`sandbox is ${this._state}, not started`, { field: 'state' });
    if (!target.startsWith('/') || layers.length === 0) throw new InvalidRequest('attach needs an absolute target and a layer', { field: 'target' });
    this.mounts.set(target, layers[layers.length - 1]!);
  }

  async setLimits(limits: Partial<SandboxLimits>): Promise<void> {
    if (this._state === 'destroyed') throw new InvalidRequest('sandbox is destroyed', { field: 'state' });
    this.limits = { ...this.limits, ...limits };
  }

  async memory(): Promise<MemoryStats> {
    return { currentBytes: 0, peakBytes: 0, oomKills: 0 };
  }

  async kill(): Promise<void> {
    for (const { child } of this.children) {
      // Each child leads its own process group (detached), so this also reaches anything it forked.
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }

  async destroy(): Promise<void> {
    if (this._state === 'destroyed') return;
    this._state = 'destroyed';
    await this.kill();
    await Promise.all([...this.children].map((c) => c.exited));
    if (this.tmp) rmSync(this.tmp, { recursive: true, force: true });
  }

  private mapArg(a: string): string {
    return this.mapPath(a) ?? a;
  }

  private spawnProc(spec: ProcessSpec): SandboxProcess {
    const argv = spec.argv.map((a) => this.mapArg(a));
    const file = argv[0] === 'node' ? process.execPath : argv[0]!;
    const cwd = spec.cwd ? this.mapArg(spec.cwd) : '/';
    this.tmp ??= mkdtempSync(join(tmpdir(), 'fnhost-procsb-'));
    const child = spawn(file, argv.slice(1), {
      env: { ...spec.env, TMPDIR: this.tmp },
      cwd,
      detached: true,
      stdio: ['pipe', 'pipe', 'pipe', spec.wire ? 'pipe' : 'ignore'],
    });
    const exited = new Promise<ExitStatus>((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) =>
        resolve({ code, signal, oomKilled: false, peakMemoryBytes: 0 });
      child.once('exit', done);
      child.once('error', () => done(127, null));
    });
    const entry = { child, exited };
    this.children.add(entry);
    void exited.then(() => this.children.delete(entry));
    // A process that exits without reading its stdin must not crash the host with EPIPE (as services/sandbox).
    child.stdin!.on('error', () => {});
    // The whole body at once: what fits in the pipe is written now, the rest as the process reads, then EOF.
    if (spec.stdin !== undefined) child.stdin!.end(spec.stdin);
    return {
      pid: child.pid ?? -1,
      stdin: child.stdin!,
      stdout: held(child.stdout!),
      stderr: held(child.stderr!),
      wire: spec.wire ? (child.stdio[3] as Duplex) : null,
      exited,
    };
  }
}

/** The checks of services/sandbox/validate.ts that matter here; run before anything changes or runs. */
function checkProcess(spec: ProcessSpec): void {
  if (!Array.isArray(spec.argv) || spec.argv.length === 0 || !spec.argv[0]) {
    throw new InvalidRequest('argv must be a non-empty list', { field: 'argv' });
  }
  if (spec.stdin !== undefined && !(spec.stdin instanceof Uint8Array)) {
    throw new InvalidRequest('stdin must be a Buffer or Uint8Array', { field: 'stdin' });
  }
}

/**
 * Node resumes a child's unread stdout/stderr when the child exits (child_process's flushStdio), dropping the
 * data and emitting 'end' to nobody: a caller that awaits `exited` before reading (a short process whose stdin
 * was written at spawn is often gone by then) would wait forever. Piping into a PassThrough keeps the output,
 * and its EOF, until the caller reads, as services/sandbox's streams do (manualStart).
 */
function held(out: Readable): Readable {
  const pass = new PassThrough();
  out.pipe(pass);
  // pipe() does not forward errors: end the copy with what arrived, so a reader waiting for EOF gets it
  out.once('error', () => pass.end());
  return pass;
}
