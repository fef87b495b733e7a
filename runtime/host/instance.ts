/**
 * @module runtime/host/instance
 * An instance: a specialised sandbox serving invocations of one function version, one at a time.
 * `RuntimeInstance` drives a persistent node/python shim over the wire (protocol.ts); exec-instance.ts
 * runs one process per invocation. Both report the same typed errors:
 *
 *   handler threw / exec exit ≠ 0   → FunctionError        (instance stays alive)
 *   response above the cap          → ResponseTooLarge     (instance stays alive)
 *   process died mid-invocation     → Crashed              (instance destroyed)
 *   garbage / stray frame on wire   → Crashed              (instance destroyed)
 *   cgroup OOM kill                 → OutOfMemory          (instance destroyed)
 *   deadline passed                 → Timeout              (instance killed and destroyed, never reused)
 *
 * On those paths a failing sandbox.destroy() never replaces the typed error the caller needs: the
 * sandbox layer's start-up sweep (cleanupLeftovers) is what removes a sandbox that would not go.
 */
import { randomBytes } from 'node:crypto';
import { ROOT_CONTEXT, type Span } from '@opentelemetry/api';
import { Crashed, FunctionError, Internal, ResponseTooLarge, type FnhostError } from '../../services/common/errors.ts';
import type { FunctionVersion, InvocationPayload, InvocationResponse, LogLine } from '../../services/common/model.ts';
import { Attr, NOOP_SPAN, SpanKind, SpanName, SpanSchema, activeSpan, failSpan, recordSpanOf, spanTime, startSpanOf, tracingEnabled } from '../../services/common/telemetry.ts';
import type { Sandbox } from '../../services/sandbox/types.ts';
import { encodeFrame, MsgType, type InvokeMsg, type ShimFrame } from '../protocol.ts';
import { ChannelClosed, type RuntimeChannel } from './channel.ts';
import { deathError, timeoutError, withLogs } from './outcome.ts';

export interface InvokeRequest {
  /** the invocation id; tags the logs and is the function's context.invocationId. */
  id: string;
  payload: InvocationPayload;
  /** epoch ms; default now + fn.timeoutMs. */
  deadline?: number;
}

export interface InvokeResult {
  response: InvocationResponse;
  /** this invocation's log lines (also delivered to the sink as they were attributed). */
  logs: LogLine[];
  truncatedLogs: boolean;
  /** host-side: from sending the invocation to having its result and logs. */
  durationMs: number;
  /**
   * the runtime's own time for the invocation when it says (node / python: protocol.ts `ms`, without the
   * wire and the host's event loop); exec: the process's run as the host saw it.
   */
  handlerMs?: number;
  /** whether the runtime blocked during the invocation (I/O, timers), on the invocations it samples (protocol.ts `slept`). */
  handlerSlept?: boolean;
}

export interface Instance {
  readonly fn: FunctionVersion;
  readonly sandbox: Sandbox;
  /** false after Crashed / OutOfMemory / Timeout / destroy(): never hand it another invocation. */
  readonly alive: boolean;
  readonly busy: boolean;
  readonly invocations: number;
  /**
   * Runs one invocation. Rejects with a typed error (see the module header).
   *
   * @example
   * const { response, logs } = await instance.invoke({ id: 'inv-1', payload: { kind: 'event', body: Buffer.from('{}') } });
   */
  invoke(req: InvokeRequest): Promise<InvokeResult>;
  /** Kills and destroys the sandbox; idempotent. */
  destroy(): Promise<void>;
}

/**
 * A per-instance random marker prefix (protocol.ts "log boundaries"): the shim appends `B\x1e` / `E\x1e`.
 * ASCII RS delimits it so it never looks like text a function would print by accident.
 */
export function newLogMarker(): string {
  return `\x1efnhost:${randomBytes(8).toString('hex')}:`;
}

/** Frame of an INVOKE for `payload` (the body travels raw, never in JSON). */
export function invokeFrame(id: string, deadline: number, payload: InvocationPayload): Buffer {
  const meta: InvokeMsg =
    payload.kind === 'event'
      ? payload.contentType
        ? { id, kind: 'event', deadline, contentType: payload.contentType }
        : { id, kind: 'event', deadline }
      : { id, kind: 'http', deadline, method: payload.method, path: payload.path, query: payload.query, headers: payload.headers };
  return encodeFrame(MsgType.INVOKE, meta, payload.body);
}

const TIMED_OUT = Symbol('timeout');

/** the 'run' span: no attributes at its start (the peak memory is set on it when a sandbox dies) */
const RUN = new SpanSchema(SpanName.run, SpanKind.INTERNAL, []);

/**
 * What every instance kind shares: one invocation at a time, the invocation count, the 'run' span.
 * Subclasses say when they are alive and how one invocation runs.
 */
export abstract class InstanceBase implements Instance {
  protected _alive = true;
  private _busy = false;
  private _invocations = 0;
  /**
   * Whether run() uses its span (as a parent, or for attributes): then the 'run' span is an object held open while
   * it runs. A kind that does not (RuntimeInstance) gets NOOP_SPAN, and its 'run' span is recorded when the call
   * ends — from two clock reads under the span current at the start, no span object on success — with what it
   * reports in `peakAtDeath` on failure.
   */
  protected readonly runUsesSpan: boolean = true;
  /** the sandbox's peak memory, bytes, when the running call's process died (0: unknown): the failed 'run' span's attribute */
  protected peakAtDeath = 0;

  constructor(
    readonly fn: FunctionVersion,
    readonly sandbox: Sandbox,
  ) {}

  abstract get alive(): boolean;
  abstract destroy(): Promise<void>;
  protected abstract run(req: InvokeRequest, span: Span): Promise<InvokeResult>;

  get busy(): boolean {
    return this._busy;
  }
  get invocations(): number {
    return this._invocations;
  }

  async invoke(req: InvokeRequest): Promise<InvokeResult> {
    if (!this.alive) throw new Internal('instance is not alive', { sandboxId: this.sandbox.id });
    if (this._busy) throw new Internal('instance is busy: one invocation at a time', { sandboxId: this.sandbox.id });
    this._busy = true;
    this._invocations++;
    if (!tracingEnabled()) {
      // untraced: no span, closure or promise chain per call (this runs thousands of times a second)
      try {
        return await this.run(req, NOOP_SPAN);
      } finally {
        this._busy = false;
      }
    }
    // Under the span current at the call (the scheduler's 'local dispatch' / 'scheduler pickup', set by
    // runInSpan around this synchronous start). Started and ended here rather than through withSpan: no
    // callback closure and no extra promise + then pair per call.
    if (!this.runUsesSpan) {
      // A kind whose run() needs no span: 'run' is recorded when the call ends, from two clock reads, under the
      // parent captured now (after the await nothing is current, services/common/telemetry.ts; none = a new
      // trace) — no span object on success. Inline, not a helper: an async function returning another's promise
      // costs extra microtask turns per call.
      const parent = activeSpan() ?? ROOT_CONTEXT;
      const t0 = spanTime();
      this.peakAtDeath = 0;
      try {
        const r = await this.run(req, NOOP_SPAN);
        recordSpanOf(RUN, t0, spanTime(), parent);
        return r;
      } catch (e) {
        const span = startSpanOf(RUN, undefined, parent, t0);
        if (this.peakAtDeath > 0) span.setAttribute(Attr.peakMemoryBytes, this.peakAtDeath);
        failSpan(span, e);
        span.end();
        throw e;
      } finally {
        this._busy = false;
      }
    }
    const span = startSpanOf(RUN, undefined);
    try {
      return await this.run(req, span);
    } catch (e) {
      failSpan(span, e);
      throw e;
    } finally {
      span.end();
      this._busy = false;
    }
  }
}

/** A node or python instance: the pre-booted shim with the function's handler loaded. */
export class RuntimeInstance extends InstanceBase {
  protected override readonly runUsesSpan = false;
  private destroying: Promise<void> | null = null;
  /**
   * The running invocation's deadline (epoch ms; Infinity between invocations) and what settles it as timed
   * out. One timer per instance, re-armed only when it fires early (a later invocation's deadline) or an
   * invocation's deadline is earlier than it: not a setTimeout, a promise and two races per invocation.
   */
  private deadlineAt = Infinity;
  private expire: (() => void) | null = null;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private readonly onTimer = () => {
    this.timer = undefined;
    this.timerAt = Infinity;
    if (this.deadlineAt === Infinity) return;
    const now = Date.now();
    if (now >= this.deadlineAt) {
      const e = this.expire;
      this.expire = null;
      e?.();
    } else this.armAt(this.deadlineAt, now);
  };

  constructor(
    fn: FunctionVersion,
    sandbox: Sandbox,
    private readonly channel: RuntimeChannel,
    private readonly responseCapBytes: number,
  ) {
    super(fn, sandbox);
    // A process that dies between invocations makes the instance dead without anyone asking.
    void channel.closed.then(() => {
      this._alive = false;
      this.destroy().catch(() => {}); // a failed destroy is the sandbox layer's to report; nobody awaits here
    });
  }

  get alive(): boolean {
    return this._alive && !this.channel.isClosed;
  }

  private armAt(at: number, now: number) {
    this.timerAt = at;
    this.timer = setTimeout(this.onTimer, Math.max(0, at - now));
  }

  /** Arms the deadline of the invocation about to run; the timer holds the process only while one runs. */
  private armDeadline(deadline: number) {
    this.deadlineAt = deadline;
    if (this.timer && this.timerAt <= deadline) {
      this.timer.ref(); // fires first; re-arms then for what is left
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.armAt(deadline, Date.now());
  }

  private disarmDeadline() {
    this.deadlineAt = Infinity;
    this.expire = null;
    this.timer?.unref();
  }

  /** The next frame, or TIMED_OUT at the deadline; rejects with ChannelClosed. */
  private nextFrame(): Promise<ShimFrame | typeof TIMED_OUT> {
    return new Promise((resolve, reject) => {
      this.expire = () => resolve(TIMED_OUT);
      this.channel.nextTo(resolve, reject);
    });
  }

  /** `p`'s value, or TIMED_OUT at the deadline. */
  private beforeDeadline<T>(p: Promise<T>): Promise<T | typeof TIMED_OUT> {
    return new Promise((resolve, reject) => {
      this.expire = () => resolve(TIMED_OUT);
      p.then(resolve, reject);
    });
  }

  protected async run(req: InvokeRequest, _span: Span): Promise<InvokeResult> {
    const t0 = performance.now();
    const deadline = req.deadline ?? Date.now() + this.fn.timeoutMs;
    const logs = this.channel.logs;
    logs.begin(req.id);
    this.armDeadline(deadline);
    try {
      this.channel.send(invokeFrame(req.id, deadline, req.payload));
      let frame: ShimFrame | typeof TIMED_OUT;
      try {
        frame = await this.nextFrame();
        if (frame !== TIMED_OUT && frame.type !== MsgType.HELLO && frame.type !== MsgType.READY) {
          const marked = frame.meta.marked ?? 3;
          // A quiet call (nothing written: no markers to wait for) is settled already: no race, no extra turn.
          if (marked === 0) void logs.settled(0);
          else if ((await this.beforeDeadline(logs.settled(marked))) === TIMED_OUT) frame = TIMED_OUT;
        }
      } catch (e) {
        if (e instanceof ChannelClosed) {
          this.peakAtDeath = e.status.peakMemoryBytes;
          throw await this.died(e, logs.tail('stderr'));
        }
        throw e;
      }
      if (frame === TIMED_OUT) {
        this._alive = false;
        const record = logs.end();
        const err = await timeoutError(this.sandbox, this.fn);
        await this.destroy().catch(() => {});
        throw withLogs(err, record.lines);
      }
      const record = logs.end();
      const result = { logs: record.lines, truncatedLogs: record.lines.some(isTruncation), durationMs: performance.now() - t0, handlerMs: 'ms' in frame.meta ? frame.meta.ms : undefined, handlerSlept: 'slept' in frame.meta ? frame.meta.slept : undefined };
      if (frame.type === MsgType.RESULT && frame.meta.id === req.id) {
        return { ...result, response: { status: frame.meta.status, headers: frame.meta.headers, body: frame.body } };
      }
      if (frame.type === MsgType.ERROR && frame.meta.id === req.id) {
        const m = frame.meta;
        if (m.type === 'ResponseTooLarge') {
          throw withLogs(new ResponseTooLarge(m.message, { limitBytes: this.responseCapBytes, sizeBytes: m.sizeBytes }), result.logs);
        }
        throw withLogs(new FunctionError(m.message, { errorType: m.errorType, stack: m.stack }), result.logs);
      }
      // A frame for another id or of the wrong type: the function's process wrote on the wire itself (it
      // shares the shim's process) or the shim is confused; either way it must not serve again.
      this._alive = false;
      await this.destroy().catch(() => {});
      throw withLogs(new Crashed(`runtime answered with an unexpected frame (type ${frame.type})`, { exitCode: null, signal: null }), result.logs);
    } finally {
      this.disarmDeadline();
    }
  }

  private async died(closed: ChannelClosed, stderrTail: string): Promise<FnhostError> {
    this._alive = false;
    const record = this.channel.logs.end();
    await this.destroy().catch(() => {});
    if (closed.protocolError?.frameBytes !== undefined && closed.protocolError.frameBytes > this.responseCapBytes) {
      return new ResponseTooLarge(`response of ${closed.protocolError.frameBytes} bytes exceeds ${this.responseCapBytes}`, {
        limitBytes: this.responseCapBytes,
      });
    }
    if (closed.protocolError) {
      return withLogs(new Crashed(`runtime broke the wire protocol: ${closed.protocolError.message}`, { exitCode: null, signal: null }), record.lines);
    }
    return withLogs(deathError(closed.status, { limitMb: this.fn.memoryMb, stderrTail }), record.lines);
  }

  destroy(): Promise<void> {
    this._alive = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
    this.destroying ??= this.sandbox.destroy();
    return this.destroying;
  }
}

export function isTruncation(l: LogLine): boolean {
  return l.line.startsWith('[fnhost] log truncated');
}
