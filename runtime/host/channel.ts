/**
 * @module runtime/host/channel
 * The host's end of one runtime process: frames in and out on the wire (protocol.ts), its stdout/stderr
 * into a LogCollector, and its end (wire closed or process exited) as one settled fact.
 * It lives from pre-boot through specialisation to the instance's death.
 */
import type { Sandbox, SandboxProcess, ExitStatus } from '../../services/sandbox/types.ts';
import { FrameDecoder, ProtocolError, type ShimFrame } from '../protocol.ts';
import { LogCollector, type LogSink } from './logs.ts';

/** Raised to waiters when the runtime process is gone (or broke the protocol and was killed). */
export class ChannelClosed extends Error {
  constructor(readonly status: ExitStatus, readonly protocolError: ProtocolError | null) {
    super(protocolError ? `runtime broke the protocol: ${protocolError.message}` : 'runtime process ended');
    this.name = 'ChannelClosed';
  }
}

/** How long a process whose wire closed gets to exit on its own before the sandbox is killed. */
const EXIT_GRACE_MS = 2000;
/** Bytes of stderr kept for crash reports (enough for a V8 fatal error or a Python traceback). */
const STDERR_TAIL_BYTES = 4096;

export class RuntimeChannel {
  readonly logs: LogCollector;
  /** settles once the process is gone; never rejects. */
  readonly closed: Promise<ChannelClosed>;
  private readonly decoder: FrameDecoder;
  private readonly frames: ShimFrame[] = [];
  private waiter: { resolve: (f: ShimFrame) => void; reject: (e: ChannelClosed) => void } | null = null;
  private closedErr: ChannelClosed | null = null;
  private protocolError: ProtocolError | null = null;
  private resolveClosed!: (e: ChannelClosed) => void;
  private closing = false;

  constructor(
    readonly sandbox: Sandbox,
    readonly proc: SandboxProcess,
    opts: { marker: string; logCapBytes: number; maxFrameBytes: number; sink?: LogSink },
  ) {
    if (!proc.wire) throw new Error('runtime process has no wire (start it with wire: true)');
    this.decoder = new FrameDecoder(opts.maxFrameBytes);
    this.logs = new LogCollector({ marker: opts.marker, capBytes: opts.logCapBytes, sink: opts.sink, tailBytes: STDERR_TAIL_BYTES });
    this.logs.attach(proc.stdout, 'stdout');
    this.logs.attach(proc.stderr, 'stderr');
    this.closed = new Promise((r) => (this.resolveClosed = r));
    const wire = proc.wire;
    wire.on('data', (chunk: Buffer) => {
      if (this.closing) return;
      let got: ShimFrame[];
      try {
        got = this.decoder.push(chunk) as ShimFrame[];
      } catch (e) {
        this.protocolError = e as ProtocolError;
        void this.close(true);
        return;
      }
      for (const f of got) this.deliver(f);
    });
    wire.on('close', () => void this.close(false));
    wire.on('error', () => void this.close(false));
    void proc.exited.then(() => this.close(false));
  }

  get isClosed(): boolean {
    return this.closing;
  }

  send(frame: Buffer): void {
    this.proc.wire!.write(frame);
  }

  /** The next frame from the shim; rejects with ChannelClosed once the process is gone. */
  next(): Promise<ShimFrame> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    if (this.closedErr) return Promise.reject(this.closedErr);
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /**
   * next() with callbacks: hands the next frame to `resolve` (at once when one is queued) or ChannelClosed to
   * `reject`. For a caller that settles its own promise from this and from something else (an invocation's
   * deadline: ./instance.ts) — one promise per invocation instead of three and a race.
   */
  nextTo(resolve: (f: ShimFrame) => void, reject: (e: ChannelClosed) => void): void {
    const f = this.frames.shift();
    if (f) resolve(f);
    else if (this.closedErr) reject(this.closedErr);
    else this.waiter = { resolve, reject };
  }

  /** Applied at specialisation (the pool boots before the function's caps are known). */
  configure(opts: { sink?: LogSink; logCapBytes: number; maxFrameBytes: number }): void {
    this.logs.setSink(opts.sink);
    this.logs.setCap(opts.logCapBytes);
    this.decoder.maxFrameBytes = opts.maxFrameBytes;
  }

  private deliver(f: ShimFrame): void {
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w.resolve(f);
    } else this.frames.push(f);
  }

  private async close(killFirst: boolean): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // kill() is idempotent, but a sandbox destroyed meanwhile may refuse it: that is the same outcome.
    const kill = () => this.sandbox.kill().catch(() => {});
    if (killFirst) await kill();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<null>((r) => (timer = setTimeout(() => r(null), EXIT_GRACE_MS)));
    let status = await Promise.race([this.proc.exited, grace]);
    clearTimeout(timer);
    if (!status) {
      await kill();
      status = await this.proc.exited;
    }
    // Let the pipes deliver what the process wrote before it died (its last words are in the crash report).
    await Promise.race([this.logs.drained(), new Promise((r) => setTimeout(r, 200))]);
    const err = new ChannelClosed(status, this.protocolError);
    this.closedErr = err;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
    this.resolveClosed(err);
  }
}
