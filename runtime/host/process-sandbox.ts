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
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
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
    for (const m of spec.mounts ?? []) this.mounts.set(m.target, m.layers[m.layers.length - 1]!);
    if (spec.limits) this.limits = { ...this.limits, ...spec.limits };
    this._state = 'started';
    return this.spawnProc(spec);
  }

  async exec(spec: ProcessSpec): Promise<SandboxProcess> {
    if (this._state !== 'started') throw new InvalidRequest(`sandbox is ${this._state}, not started`, { field: 'state' });
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
    if (!Array.isArray(spec.argv) || spec.argv.length === 0) throw new InvalidRequest('argv must not be empty', { field: 'argv' });
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
    return {
      pid: child.pid ?? -1,
      stdin: child.stdin!,
      stdout: child.stdout!,
      stderr: child.stderr!,
      wire: spec.wire ? (child.stdio[3] as Duplex) : null,
      exited,
    };
  }
}
