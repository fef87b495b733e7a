/**
 * @module runtime/protocol
 * The host ↔ runtime-shim wire protocol. This header is the contract; runtime/node/shim.mjs and
 * runtime/python/shim.py carry mirrors of the codec (they run inside sandboxes and may import nothing).
 *
 * Channel: the runtime process's fd 3, a unix stream socket (sandbox `ProcessSpec.wire: true`; in tests
 * child_process stdio slot 3 = 'pipe', which is the same shape). stdout/stderr are NOT part of the protocol:
 * they are the function's logs.
 *
 * Frame (all integers big-endian):
 *
 *     u32 len        bytes after this field (= 5 + metaLen + bodyLen)
 *     u8  type       MsgType below
 *     u32 metaLen    length of meta
 *     meta           UTF-8 JSON object (small: ids, headers, error text) — never the body
 *     body           raw bytes (request / response body, byte-exact; empty for control messages)
 *
 * Messages (→ host-to-shim, ← shim-to-host), one invocation in flight at a time:
 *
 *   ← HELLO   {runtime: 'node'|'python', version, pid}                          shim booted, waiting for LOAD
 *   → LOAD    {handler, codeDir, env, fn: FnInfo, responseCapBytes, logMarker}  import code, resolve handler
 *   ← READY   {style: 'fetch'|'event', loadMs?, marked?}                         handler resolved
 *   ← ERROR   {id: null, type: 'FunctionError', message, stack, errorType}        LOAD failed (the shim stays alive)
 *   → INVOKE  {id, kind: 'event', deadline, contentType?}                        body = event bytes
 *   → INVOKE  {id, kind: 'http', deadline, method, path, query, headers}         body = request body
 *   ← RESULT  {id, status, headers, marked?, ms?, slept?}                        body = response body
 *   ← ERROR   {id, type: 'FunctionError'|'ResponseTooLarge', message, stack?, errorType?, sizeBytes?, marked?, ms?, slept?}
 *   → WAKE    {}                                                              optional, no reply: LOAD follows soon
 *
 * WAKE is sent when specialisation begins, before the cgroup caps and the code mount, so that a pooled
 * runtime that slept in the pool is scheduled and faulted back in (measured ≈0.6 ms from write to the
 * shim's read here, and ≈0.5 ms more of cold first steps) while the host applies the caps and the init
 * mounts the code, instead of after. A shim ignores any host frame type it does not know.
 *
 * `deadline` is epoch ms (the sandbox shares the host's clock: no time namespace). `ms` is the shim's own
 * time for the invocation (handler + encoding), without the wire and the host's event loop: the scheduler
 * tells short functions by it (a host-side measure grows with the host's load). `slept`, on a sample of the
 * invocations (every 8th: reading it costs a getrusage, ~2.5 µs, twice), says whether the runtime blocked
 * during it (a voluntary context switch: waiting for I/O or a timer), as opposed to only computing or being
 * preempted — a call that is short because it computes little vs one that waits a little.
 *
 * Log boundaries: `logMarker` (LOAD) is a per-instance random prefix; BEGIN = logMarker + "B\x1e",
 * END = logMarker + "E\x1e". While the shim handles LOAD or an INVOKE, the first bytes it lets through on
 * stdout / stderr are preceded by BEGIN on that stream; when it is done, every stream it wrote to gets END
 * and READY / RESULT / ERROR says which in `marked` (bit 1 stdout, bit 2 stderr; absent = both). The
 * host attributes what a stream shows between BEGIN and END to the invocation (or the load), and
 * anything outside to no invocation (written while none ran: `invocationId` '', sink only). END is in
 * the pipe before the frame is on the wire, so the host finishes an invocation with all of its logs and
 * no timer. The node shim writes BEGIN lazily, before the first write through process.std* or fs to fd
 * 1/2, so a quiet invocation costs no extra write; a child process given fd 1/2 gets BEGIN before it is
 * spawned, and once one was, every invocation writes BEGIN on those streams at its start (what the child
 * left running may write at any time). The python shim writes BEGIN eagerly on both fds, which covers
 * subprocesses too.
 *
 * Errors: a frame the host cannot parse (bad type, bad JSON, longer than the host's cap) is a protocol
 * violation: the host kills the instance and reports `Crashed` (or `ResponseTooLarge` for an oversized RESULT).
 */

export const MsgType = {
  HELLO: 1,
  LOAD: 2,
  READY: 3,
  INVOKE: 4,
  RESULT: 5,
  ERROR: 6,
  WAKE: 7,
} as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];

/** Bytes before meta: u32 len + u8 type + u32 metaLen. */
export const HEADER_BYTES = 9;

/** Lambda's synchronous response cap (6 MB), the default. */
export const DEFAULT_RESPONSE_CAP_BYTES = 6 * 1024 * 1024;

/** Headroom for a RESULT's meta (headers) on top of the body cap before the host calls a frame oversized. */
export const META_HEADROOM_BYTES = 1024 * 1024;

export interface FnInfo {
  tenant: string;
  name: string;
  version: number;
  memoryMb: number;
  timeoutMs: number;
}

export interface HelloMsg { runtime: 'node' | 'python'; version: string; pid: number }
export interface LoadMsg {
  handler: string;
  codeDir: string;
  env: Record<string, string>;
  fn: FnInfo;
  responseCapBytes: number;
  logMarker: string;
}
/** `loadMs`: the shim's own time from LOAD to READY (import + resolve), for the 'runtime load' span. */
export interface ReadyMsg { style: 'fetch' | 'event'; loadMs?: number; marked?: number }
export type InvokeMsg =
  | { id: string; kind: 'event'; deadline: number; contentType?: string }
  | { id: string; kind: 'http'; deadline: number; method: string; path: string; query: string; headers: Record<string, string> };
/** Bits of `marked`: which streams carry an END marker for this invocation (or load). */
export const MARKED_STDOUT = 1;
export const MARKED_STDERR = 2;

export interface ResultMsg { id: string; status: number; headers: Record<string, string>; marked?: number; ms?: number; slept?: boolean }
export interface ErrorMsg {
  id: string | null;
  type: 'FunctionError' | 'ResponseTooLarge';
  message: string;
  stack?: string;
  errorType?: string;
  sizeBytes?: number;
  marked?: number;
  ms?: number;
  slept?: boolean;
}

/** The typed union of every frame, by direction. */
export type ShimFrame =
  | { type: typeof MsgType.HELLO; meta: HelloMsg; body: Buffer }
  | { type: typeof MsgType.READY; meta: ReadyMsg; body: Buffer }
  | { type: typeof MsgType.RESULT; meta: ResultMsg; body: Buffer }
  | { type: typeof MsgType.ERROR; meta: ErrorMsg; body: Buffer };
export type HostFrame =
  | { type: typeof MsgType.LOAD; meta: LoadMsg; body: Buffer }
  | { type: typeof MsgType.INVOKE; meta: InvokeMsg; body: Buffer }
  | { type: typeof MsgType.WAKE; meta: Record<string, never>; body: Buffer };
export type Frame = ShimFrame | HostFrame;

const EMPTY = Buffer.alloc(0);

/**
 * Encodes one frame into a single buffer (one write per frame).
 *
 * @example
 * wire.write(encodeFrame(MsgType.INVOKE, { id, kind: 'event', deadline }, body));
 */
export function encodeFrame(type: MsgType, meta: object, body: Uint8Array = EMPTY): Buffer {
  const metaStr = JSON.stringify(meta);
  const metaLen = Buffer.byteLength(metaStr);
  const buf = Buffer.allocUnsafe(HEADER_BYTES + metaLen + body.length);
  buf.writeUInt32BE(5 + metaLen + body.length, 0);
  buf[4] = type;
  buf.writeUInt32BE(metaLen, 5);
  buf.write(metaStr, HEADER_BYTES, metaLen, 'utf8');
  if (body.length) buf.set(body, HEADER_BYTES + metaLen);
  return buf;
}

export class ProtocolError extends Error {
  constructor(message: string, readonly frameBytes?: number) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * Incremental frame decoder for a byte stream. `push` every chunk; complete frames come out in order.
 * A frame whose declared length exceeds `maxFrameBytes` throws ProtocolError (with frameBytes) before
 * buffering it, so a runaway shim cannot make the host allocate unbounded memory.
 *
 * @example
 * const dec = new FrameDecoder(8 << 20);
 * wire.on('data', (c) => { for (const f of dec.push(c)) handle(f); });
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(public maxFrameBytes: number) {}

  push(chunk: Buffer): Frame[] {
    const out: Frame[] = [];
    // Fast path: nothing buffered and the chunk holds whole frames (the usual case for small messages).
    let buf: Buffer;
    if (this.buffered === 0) buf = chunk;
    else {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered < 4) return out;
      if (this.buffered < 4 + this.peekLen()) return out;
      buf = Buffer.concat(this.chunks, this.buffered);
      this.chunks = [];
      this.buffered = 0;
    }
    let off = 0;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (len > this.maxFrameBytes) throw new ProtocolError(`frame of ${len} bytes exceeds ${this.maxFrameBytes}`, len);
      if (len < 5) throw new ProtocolError(`frame of ${len} bytes is shorter than its header`);
      if (buf.length - off < 4 + len) break;
      out.push(decodeBody(buf, off, len));
      off += 4 + len;
    }
    if (off < buf.length) {
      const rest = buf.subarray(off);
      this.chunks = [rest];
      this.buffered = rest.length;
      if (rest.length >= 4) {
        const len = rest.readUInt32BE(0);
        if (len > this.maxFrameBytes) throw new ProtocolError(`frame of ${len} bytes exceeds ${this.maxFrameBytes}`, len);
      }
    }
    return out;
  }

  private peekLen(): number {
    const head = this.chunks[0]!.length >= 4 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const len = head.readUInt32BE(0);
    if (len > this.maxFrameBytes) throw new ProtocolError(`frame of ${len} bytes exceeds ${this.maxFrameBytes}`, len);
    return len;
  }
}

function decodeBody(buf: Buffer, off: number, len: number): Frame {
  const type = buf[off + 4]!;
  if (type < MsgType.HELLO || type > MsgType.WAKE) throw new ProtocolError(`unknown frame type ${type}`);
  const metaLen = buf.readUInt32BE(off + 5);
  if (metaLen > len - 5) throw new ProtocolError(`meta length ${metaLen} exceeds frame length ${len}`);
  const metaStart = off + HEADER_BYTES;
  let meta: unknown;
  try {
    meta = JSON.parse(buf.toString('utf8', metaStart, metaStart + metaLen));
  } catch (e) {
    throw new ProtocolError(`frame meta is not JSON: ${(e as Error).message}`);
  }
  if (meta === null || typeof meta !== 'object') throw new ProtocolError('frame meta is not an object');
  // subarray, not a copy: the body aliases the chunk, which nothing else holds on to.
  const body = buf.subarray(metaStart + metaLen, off + 4 + len);
  return { type, meta, body } as Frame;
}
