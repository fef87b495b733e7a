/**
 * @module runtime/host/exec-instance
 * The exec runtime (the classic CGI / OpenFaaS-watchdog shape): one process per invocation inside the
 * instance's sandbox, the invocation body on stdin, the response on stdout, stderr as logs. A non-zero
 * exit is a FunctionError carrying stderr's tail.
 *
 * The first invocation starts the sandbox (rootfs = image layers + the code layer at /var/task, read-only)
 * with its process as the first process, unless specialisation got a pre-started one (ExecOptions.started);
 * later ones `exec` into the same started sandbox. No process of ours runs in between, so an imported image
 * needs nothing but its own entrypoint.
 *
 * Context reaches the process as environment variables (CGI names for HTTP requests):
 *   FNHOST_INVOCATION_ID, FNHOST_FUNCTION_NAME, FNHOST_FUNCTION_VERSION, FNHOST_MEMORY_MB, FNHOST_DEADLINE_MS,
 *   FNHOST_EVENT_CONTENT_TYPE (events), REQUEST_METHOD, PATH_INFO, QUERY_STRING, CONTENT_TYPE,
 *   CONTENT_LENGTH, HTTP_<HEADER> (http).
 */
import { isUtf8 } from 'node:buffer';
import type { Span } from '@opentelemetry/api';
import { FunctionError, InvalidRequest, ResponseTooLarge } from '../../services/common/errors.ts';
import type { FunctionVersion, InvocationPayload } from '../../services/common/model.ts';
import { Attr, SpanName, withSpan } from '../../services/common/telemetry.ts';
import type { ExitStatus, Sandbox, SandboxLimits, SandboxProcess, StartSpec } from '../../services/sandbox/types.ts';
import type { CodeLayer, ResolvedImage } from '../../services/store/types.ts';
import { InstanceBase, type InvokeRequest, type InvokeResult } from './instance.ts';
import { LogCollector, type LogSink } from './logs.ts';
import { deathError, timeoutError, withLogs } from './outcome.ts';
import { CODE_DIR, DEFAULT_PATH } from './shims.ts';

/** Bytes of stderr a FunctionError carries (enough for a usage message or a short trace). */
const STDERR_TAIL_BYTES = 4096;

export interface ExecOptions {
  sink?: LogSink;
  logCapBytes: number;
  responseCapBytes: number;
  /** host path of /var/task as the process sees it (differs only for the process stand-in). */
  codeDir: string;
  /** the sandbox is started already (pre-started rootfs, caps set): every call is an exec. */
  started?: boolean;
  /**
   * with `started`: the code layer's attach, requested but maybe not done yet. The first call's spawn is sent
   * right behind it and the call waits for both; a failed attach fails that call and destroys the instance.
   */
  mounted?: Promise<void>;
  /**
   * with `started`: overlays (the code layer at /var/task) that the first call's exec attaches in the same request
   * to the init (services/sandbox ExecSpec.mounts): one host→init round trip for the cold start instead of two.
   * Kept until a call's exec has been sent with them (an argv refused before anything was sent retries them).
   */
  mounts?: Array<{ target: string; layers: string[] }>;
}

/**
 * argv of an exec function: `handler` is a path relative to the code root; with no code layer it is a
 * path inside the image; with no handler, the image's own entrypoint + cmd.
 */
export function execArgv(fn: FunctionVersion, code: CodeLayer | null, image: ResolvedImage, codeDir: string): string[] {
  const h = fn.handler?.trim();
  if (h) {
    if (h.startsWith('/') || h.includes('..')) {
      if (code || h.includes('..')) throw new InvalidRequest(`exec handler must be a relative path inside the code: ${h}`, { field: 'handler' });
      return [h];
    }
    return code ? [`${codeDir}/${h.replace(/^\.\//, '')}`] : [h];
  }
  const argv = [...image.config.entrypoint, ...image.config.cmd];
  if (argv.length === 0) throw new InvalidRequest('exec function has no handler and its image has no entrypoint or cmd', { field: 'handler' });
  return argv;
}

export class ExecInstance extends InstanceBase {
  private started = false;
  /** ExecOptions.mounted until the first call has waited for it */
  private mounted: Promise<void> | null;
  /** ExecOptions.mounts until a call's exec has taken them */
  private mounts: Array<{ target: string; layers: string[] }> | null;
  private destroying: Promise<void> | null = null;
  private readonly argv: string[];
  private readonly baseEnv: Record<string, string>;

  constructor(
    fn: FunctionVersion,
    sandbox: Sandbox,
    private readonly code: CodeLayer | null,
    private readonly image: ResolvedImage,
    private readonly limits: Partial<SandboxLimits>,
    private readonly opts: ExecOptions,
  ) {
    super(fn, sandbox);
    this.started = opts.started === true;
    this.mounted = opts.mounted ?? null;
    this.mounts = opts.mounts?.length ? opts.mounts : null;
    this.argv = execArgv(fn, code, image, opts.codeDir);
    this.baseEnv = { PATH: DEFAULT_PATH, HOME: '/tmp', ...image.config.env, ...fn.env };
  }

  get alive(): boolean {
    return this._alive && this.sandbox.state !== 'destroyed';
  }

  /** `stdin` is the invocation body: the sandbox writes it into the pipe with the spawn request, so the
   * process reads it without waiting for a host round trip after the init's answer. `span`: the 'run' span,
   * parent of a 'mount' step (passed: InstanceBase.invoke does not make it the current span). */
  private async spawn(env: Record<string, string>, stdin: Buffer, span: Span): Promise<SandboxProcess> {
    const cwd = this.code ? this.opts.codeDir : this.image.config.workingDir || '/';
    if (this.started) {
      const mounts = this.mounts;
      if (mounts) {
        // A failure once the request is out destroys the sandbox (run() then marks the instance dead).
        const p = await withSpan(SpanName.mount, {}, () => this.sandbox.exec({ argv: this.argv, env, cwd, stdin, mounts }), { parent: span });
        this.mounts = null;
        return p;
      }
      const mounted = this.mounted;
      if (!mounted) return this.sandbox.exec({ argv: this.argv, env, cwd, stdin });
      this.mounted = null;
      // Sent now, behind the attach. A sandbox that checks argv against the mounts it has confirmed refuses
      // a path in the code (InvalidRequest, nothing started) until the attach's answer is in: then again.
      const first = this.sandbox.exec({ argv: this.argv, env, cwd, stdin });
      first.catch(() => {});
      try {
        await mounted;
      } catch (e) {
        this._alive = false;
        await this.destroy().catch(() => {});
        throw e;
      }
      try {
        return await first;
      } catch (e) {
        if (e instanceof InvalidRequest && e.details.field === 'argv') return this.sandbox.exec({ argv: this.argv, env, cwd, stdin });
        throw e;
      }
    }
    const spec: StartSpec = {
      argv: this.argv, env, cwd, stdin,
      layers: this.image.layers,
      mounts: this.code ? [{ target: CODE_DIR, layers: [this.code.dir] }] : [],
      limits: this.limits,
    };
    this.started = true;
    return withSpan(SpanName.mount, {}, () => this.sandbox.start(spec), { parent: span });
  }

  protected async run(req: InvokeRequest, span: Span): Promise<InvokeResult> {
    const t0 = performance.now();
    const deadline = req.deadline ?? Date.now() + this.fn.timeoutMs;
    const logs = new LogCollector({ capBytes: this.opts.logCapBytes, sink: this.opts.sink, tailBytes: STDERR_TAIL_BYTES });
    logs.begin(req.id);
    let proc: SandboxProcess;
    try {
      proc = await this.spawn({ ...this.baseEnv, ...contextEnv(this.fn, req, deadline) }, req.payload.body, span);
    } catch (e) {
      // The sandbox refuses argv it cannot find in the rootfs (InvalidRequest, field argv): that is the
      // function's own mistake (a wrong handler path), reported as its error. A failed start destroys the sandbox.
      if (this.sandbox.state === 'destroyed') this._alive = false;
      if (e instanceof InvalidRequest) throw new FunctionError(`cannot run ${this.argv[0]}: ${e.message}`, { phase: 'start', ...e.details }, { cause: e });
      throw e;
    }
    logs.attach(proc.stderr, 'stderr');
    if (!proc.stdin.writableEnded) {
      // A Sandbox that does not take ProcessSpec.stdin (the process stand-in): the body goes in now.
      // A process that never reads stdin makes the write fail with EPIPE: not the function's error.
      proc.stdin.on('error', () => {});
      proc.stdin.end(req.payload.body);
    }
    const out: Buffer[] = [];
    let outBytes = 0;
    let tooLarge = false;
    const cap = this.opts.responseCapBytes;
    proc.stdout.on('data', (c: Buffer) => {
      outBytes += c.length;
      if (outBytes > cap) tooLarge = true;
      // Past the cap the output is still drained (the process must not block on a full pipe) but dropped.
      else out.push(c);
    });
    const stdoutDone = new Promise<void>((r) => {
      proc.stdout.once('end', r);
      proc.stdout.once('close', r);
      proc.stdout.once('error', () => r());
    });

    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<null>((r) => (timer = setTimeout(() => r(null), Math.max(0, deadline - Date.now()))));
    const status: ExitStatus | null = await Promise.race([proc.exited, timedOut]);
    clearTimeout(timer);
    if (!status) {
      this._alive = false;
      const record = logs.end();
      const err = await timeoutError(this.sandbox, this.fn);
      await this.destroy().catch(() => {});
      throw withLogs(err, record.lines);
    }
    if (status.peakMemoryBytes > 0) span.setAttribute(Attr.peakMemoryBytes, status.peakMemoryBytes);
    // The pipes close when the process (and anything it forked that held them) is gone. A background child that
    // kept them open gets 500 ms; the timer goes with the call (one per call would otherwise linger for 500 ms).
    let drainTimer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all([stdoutDone, logs.drained()]), new Promise((r) => (drainTimer = setTimeout(r, 500)))]);
    clearTimeout(drainTimer);
    const record = logs.end();
    const stderrTail = logs.tail('stderr');
    if (status.oomKilled || status.signal) {
      this._alive = false;
      await this.destroy().catch(() => {});
      throw withLogs(deathError(status, { limitMb: this.fn.memoryMb, stderrTail }), record.lines);
    }
    if (status.code !== 0) {
      throw withLogs(new FunctionError(`process exited with code ${status.code}`, { exitCode: status.code, stderrTail }), record.lines);
    }
    if (tooLarge) {
      throw withLogs(new ResponseTooLarge(`response of ${outBytes} bytes exceeds ${cap}`, { limitBytes: cap, sizeBytes: outBytes }), record.lines);
    }
    const body = Buffer.concat(out, outBytes);
    span.setAttribute(Attr.outcome, 'success');
    const ms = performance.now() - t0;
    return {
      response: { status: 200, headers: { 'content-type': contentTypeOf(body) }, body },
      logs: record.lines,
      truncatedLogs: record.lines.some((l) => l.line.startsWith('[fnhost] log truncated')),
      durationMs: ms,
      handlerMs: ms,
    };
  }

  destroy(): Promise<void> {
    this._alive = false;
    this.destroying ??= this.sandbox.destroy();
    return this.destroying;
  }
}

function contentTypeOf(body: Buffer): string {
  // A response that is valid UTF-8 is served as text; anything else as bytes (the process wrote no headers).
  return isUtf8(body) ? 'text/plain; charset=utf-8' : 'application/octet-stream';
}

function contextEnv(fn: FunctionVersion, req: InvokeRequest, deadline: number): Record<string, string> {
  const env: Record<string, string> = {
    FNHOST_INVOCATION_ID: req.id,
    FNHOST_FUNCTION_NAME: fn.name,
    FNHOST_FUNCTION_VERSION: String(fn.version),
    FNHOST_MEMORY_MB: String(fn.memoryMb),
    FNHOST_DEADLINE_MS: String(deadline),
  };
  const p: InvocationPayload = req.payload;
  if (p.kind === 'event') {
    if (p.contentType) env.FNHOST_EVENT_CONTENT_TYPE = p.contentType;
    return env;
  }
  env.REQUEST_METHOD = p.method;
  env.PATH_INFO = p.path;
  env.QUERY_STRING = p.query;
  env.CONTENT_LENGTH = String(p.body.length);
  for (const [k, v] of Object.entries(p.headers)) {
    const name = k.toLowerCase();
    if (name === 'content-type') env.CONTENT_TYPE = v;
    else if (/^[a-z0-9-]+$/.test(name)) env[`HTTP_${name.toUpperCase().replace(/-/g, '_')}`] = v;
  }
  return env;
}
