/**
 * @module runtime/host/logs
 * Turns a function's stdout/stderr bytes into LogLines tagged with the invocation they belong to.
 *
 * One invocation runs at a time per instance, and the shim delimits it on each stream it writes to with
 * the instance's markers (protocol.ts): BEGIN before the invocation's first byte on that stream, END after
 * its last. So attribution is exact, whatever the timing of the pipes: text between BEGIN and END is the
 * invocation's; text outside was written while no invocation ran (a timer or a child process the handler
 * left behind, output between the load and the first call): it belongs to no invocation, and goes to the
 * sink only, with an empty `invocationId` — the rule Lambda has, a line is the invocation's that runs when
 * it is written, and none's when none runs. (Its bytes still count against the cap of the invocation that
 * last ended on that stream, so a chatty leftover cannot flood the sink.) Without markers (exec: one
 * process per invocation) everything on the streams is the current invocation's.
 *
 * Each invocation's lines are capped at `capBytes`; past the cap lines are dropped and one truncation line
 * says how many bytes were lost. The pipes are always drained, so a flooding function never blocks on a
 * full pipe and never grows the host's memory past the cap.
 */
import type { Readable } from 'node:stream';
import type { LogLine } from '../../services/common/model.ts';

/** Lambda caps a synchronous invocation's log tail at 4 KB and CloudWatch events at 256 KB; we keep 256 KiB. */
export const DEFAULT_LOG_CAP_BYTES = 256 * 1024;
/** A line longer than this is split (keeps one runaway line from holding the whole cap in one string). */
export const MAX_LINE_BYTES = 16 * 1024;

export type LogSink = (line: LogLine) => void;

type StreamName = 'stdout' | 'stderr';
/** The last two bytes of the two markers (protocol.ts): ASCII RS closes both. */
const BEGIN = 'B\x1e';
const END = 'E\x1e';
const STREAM_BIT: Record<StreamName, number> = { stdout: 1, stderr: 2 };

/** Per-invocation state kept by the collector. */
export interface InvocationLogs {
  invocationId: string;
  lines: LogLine[];
  bytes: number;
  droppedBytes: number;
}

/**
 * Collects both streams of one runtime process (or of one exec process).
 *
 * @example
 * const logs = new LogCollector({ marker, capBytes: 1 << 18, sink: (l) => store.push(l) });
 * logs.attach(proc.stdout, 'stdout'); logs.attach(proc.stderr, 'stderr');
 * logs.begin('inv-1'); ... await logs.settled(result.marked); const { lines } = logs.end();
 */
export class LogCollector {
  private current: InvocationLogs | null = null;
  /** without markers: the owner of output that arrives between invocations (the last one). */
  private last: InvocationLogs;
  private readonly begin_: Buffer | null;
  private readonly end_: Buffer | null;
  private capBytes: number;
  private sink: LogSink | undefined;
  private onEnded: (() => void) | null = null;
  private onMarker: (() => void) | null = null;
  private expect = 3;
  private readonly streams = new Map<StreamName, StreamState>();
  private tails = new Map<StreamName, Buffer>();
  private readonly tailBytes: number;

  constructor(opts: { marker?: string | null; capBytes?: number; sink?: LogSink; initOwner?: string; tailBytes?: number }) {
    this.begin_ = opts.marker ? Buffer.from(`${opts.marker}${BEGIN}`) : null;
    this.end_ = opts.marker ? Buffer.from(`${opts.marker}${END}`) : null;
    this.capBytes = opts.capBytes ?? DEFAULT_LOG_CAP_BYTES;
    this.sink = opts.sink;
    this.tailBytes = opts.tailBytes ?? 0;
    this.last = newLogs(opts.initOwner ?? 'init');
  }

  /** Starts reading a stream. It is read for the collector's whole life, also between invocations. */
  attach(stream: Readable, name: StreamName): void {
    this.streams.set(name, { partial: [], partialLen: 0, carry: null, ended: false, marked: false, inside: false, owner: this.last, bg: this.last });
    stream.on('data', (chunk: Buffer) => this.push(name, chunk));
    stream.on('end', () => this.close(name));
    stream.on('error', () => this.close(name));
  }

  /** Invocation `id` is running: with markers it owns what each stream shows between BEGIN and END. */
  begin(invocationId: string): void {
    this.current = newLogs(invocationId);
    this.last = this.current;
    for (const s of this.streams.values()) s.marked = false;
  }

  /**
   * Resolves once each stream named by `marked` (bit 1 stdout, bit 2 stderr; default both) has shown the
   * END marker or ended: the invocation's logs are complete.
   */
  settled(marked = 3): Promise<void> {
    this.expect = marked;
    if (this.isSettled()) return Promise.resolve();
    return new Promise((resolve) => {
      this.onMarker = () => {
        if (this.isSettled()) {
          this.onMarker = null;
          resolve();
        }
      };
    });
  }

  /** Closes the current invocation's record (adding the truncation line) and returns it. */
  end(): InvocationLogs {
    const cur = this.current ?? this.last;
    for (const [name, s] of this.streams) if (!this.begin_ || s.inside) this.flushPartial(name);
    this.addTruncationLine(cur);
    this.current = null;
    return cur;
  }

  /** Per-invocation cap from now on. */
  setCap(capBytes: number): void {
    this.capBytes = capBytes;
  }

  /** Where lines go as they are attributed (besides the per-invocation record). */
  setSink(sink: LogSink | undefined): void {
    this.sink = sink;
  }

  /** Resolves once every attached stream has ended (all of a dead process's output is in). */
  drained(): Promise<void> {
    const allEnded = () => [...this.streams.values()].every((s) => s.ended);
    if (allEnded()) return Promise.resolve();
    return new Promise((resolve) => {
      const prev = this.onEnded;
      this.onEnded = () => {
        prev?.();
        if (allEnded()) resolve();
      };
    });
  }

  /** The last `tailBytes` of a stream (for exec's FunctionError and crash reports). */
  tail(name: StreamName): string {
    return (this.tails.get(name) ?? Buffer.alloc(0)).toString('utf8');
  }

  private isSettled(): boolean {
    if (!this.current) return true;
    for (const [name, s] of this.streams) {
      if (this.expect & STREAM_BIT[name] && !s.marked && !s.ended) return false;
    }
    return true;
  }

  private close(name: StreamName): void {
    const s = this.streams.get(name);
    if (!s || s.ended) return;
    if (s.carry) {
      this.text(name, s.carry);
      s.carry = null;
    }
    this.flushPartial(name);
    s.ended = true;
    this.onMarker?.();
    this.onEnded?.();
  }

  private push(name: StreamName, chunk: Buffer): void {
    const s = this.streams.get(name)!;
    const B = this.begin_;
    const E = this.end_;
    if (B === null || E === null) {
      this.text(name, chunk);
      return;
    }
    let buf = s.carry ? Buffer.concat([s.carry, chunk]) : chunk;
    s.carry = null;
    // Both markers share everything but their last two bytes: find the common prefix, then read the kind.
    const prefixLen = B.length - 2;
    for (;;) {
      const i = buf.indexOf(B.subarray(0, prefixLen));
      if (i < 0 || buf.length - i < B.length) break;
      const isBegin = buf.compare(B, 0, B.length, i, i + B.length) === 0;
      const isEnd = !isBegin && buf.compare(E, 0, E.length, i, i + E.length) === 0;
      if (!isBegin && !isEnd) {
        // the prefix without a valid kind: plain text (the function printed something odd); skip past it
        this.text(name, buf.subarray(0, i + prefixLen));
        buf = buf.subarray(i + prefixLen);
        continue;
      }
      if (i > 0) this.text(name, buf.subarray(0, i));
      this.markerSeen(name, isBegin);
      buf = buf.subarray(i + B.length);
    }
    // Keep back a tail that could be the start of a marker split across two reads.
    const keep = markerPrefixAtEnd(buf, B);
    if (keep > 0) {
      s.carry = Buffer.from(buf.subarray(buf.length - keep));
      buf = buf.subarray(0, buf.length - keep);
    }
    if (buf.length) this.text(name, buf);
  }

  private markerSeen(name: StreamName, isBegin: boolean): void {
    this.flushPartial(name);
    const s = this.streams.get(name)!;
    if (isBegin) {
      s.inside = true;
      s.owner = this.current ?? s.bg;
      return;
    }
    s.inside = false;
    s.bg = s.owner;
    s.marked = true;
    this.onMarker?.();
  }

  private text(name: StreamName, buf: Buffer): void {
    if (this.tailBytes) {
      const prev = this.tails.get(name);
      const joined = prev ? Buffer.concat([prev, buf]) : buf;
      this.tails.set(name, Buffer.from(joined.subarray(Math.max(0, joined.length - this.tailBytes))));
    }
    const s = this.streams.get(name)!;
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(10, start);
      if (nl < 0) break;
      const piece = buf.subarray(start, nl);
      if (s.partialLen) {
        s.partial.push(piece);
        this.emit(name, Buffer.concat(s.partial, s.partialLen + piece.length));
        s.partial = [];
        s.partialLen = 0;
      } else this.emit(name, piece);
      start = nl + 1;
    }
    if (start < buf.length) {
      const rest = buf.subarray(start);
      s.partial.push(Buffer.from(rest));
      s.partialLen += rest.length;
      if (s.partialLen >= MAX_LINE_BYTES) this.flushPartial(name);
    }
  }

  private flushPartial(name: StreamName): void {
    const s = this.streams.get(name);
    if (!s || s.partialLen === 0) return;
    const line = Buffer.concat(s.partial, s.partialLen);
    s.partial = [];
    s.partialLen = 0;
    for (let o = 0; o < line.length; o += MAX_LINE_BYTES) this.emit(name, line.subarray(o, o + MAX_LINE_BYTES));
  }

  private emit(name: StreamName, bytes: Buffer): void {
    if (bytes.length > MAX_LINE_BYTES) {
      for (let o = 0; o < bytes.length; o += MAX_LINE_BYTES) this.emit(name, bytes.subarray(o, o + MAX_LINE_BYTES));
      return;
    }
    const s = this.streams.get(name)!;
    // With markers: inside BEGIN..END the stream's owner, else nobody's (charged to the last invocation
    // that ended on it). Without: whatever invocation runs (or ran last).
    const outside = this.begin_ !== null && !s.inside;
    const owner = this.begin_ ? (s.inside ? s.owner : s.bg) : this.last;
    const inRecord = owner === this.current && (!this.begin_ || s.inside);
    const cost = bytes.length + 1;
    if (owner.bytes + cost > this.capBytes) {
      owner.droppedBytes += cost;
      return;
    }
    owner.bytes += cost;
    const line: LogLine = { invocationId: outside ? '' : owner.invocationId, stream: name, ts: Date.now(), line: bytes.toString('utf8') };
    if (inRecord) owner.lines.push(line);
    this.sink?.(line);
  }

  private addTruncationLine(cur: InvocationLogs): void {
    if (cur.droppedBytes === 0) return;
    const line: LogLine = {
      invocationId: cur.invocationId,
      stream: 'stderr',
      ts: Date.now(),
      line: `[fnhost] log truncated: ${cur.droppedBytes} bytes dropped (cap ${this.capBytes} bytes per invocation)`,
    };
    cur.lines.push(line);
    this.sink?.(line);
    // Later background output of this invocation is counted again from the cap, announced once more if needed.
    cur.droppedBytes = 0;
  }
}

interface StreamState {
  partial: Buffer[];
  partialLen: number;
  carry: Buffer | null;
  ended: boolean;
  /** this stream showed the current invocation's END marker. */
  marked: boolean;
  /** between BEGIN and END. */
  inside: boolean;
  /** the invocation that owns the stream between BEGIN and END. */
  owner: InvocationLogs;
  /** whose cap background text (outside BEGIN..END, tagged with no invocation) counts against: the last invocation that ended on this stream. */
  bg: InvocationLogs;
}

function newLogs(invocationId: string): InvocationLogs {
  return { invocationId, lines: [], bytes: 0, droppedBytes: 0 };
}

/** Length of the longest proper prefix of `marker` that `buf` ends with. */
function markerPrefixAtEnd(buf: Buffer, marker: Buffer): number {
  const max = Math.min(marker.length - 1, buf.length);
  for (let k = max; k > 0; k--) {
    if (buf[buf.length - k] !== marker[0]) continue;
    if (buf.subarray(buf.length - k).equals(marker.subarray(0, k))) return k;
  }
  return 0;
}
