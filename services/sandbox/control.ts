/**
 * @module sandbox/control
 * The host's side of the init's control socket (native/init/main.c has the init's side).
 *
 * Framing, both directions: u32 little-endian payload length, then the payload: NUL-terminated strings.
 * Host → init: `run <reqid> <op> <args>... [<op> <args>...]` with fds (SCM_RIGHTS) for `spawn`/`attach`.
 * Init → host (typed union InitMessage below):
 *   ready                                        set-up done, waiting for frames
 *   ok <reqid> <pid>                             every op of the frame succeeded (<pid> of a spawn, else 0)
 *   error <reqid> <errno> <syscall> <path> <msg> the first failing step (reqid 0: before "ready")
 *   exited <reqid> <pid> <code> <signal>         a process spawned by frame <reqid> was reaped
 * Writes go through the addon's sendFrame (sendmsg with fds); reads through a net.Socket on the same fd.
 */
import { Socket } from 'node:net';
import { native } from './native.ts';

export type InitMessage =
  | { type: 'ready' }
  | { type: 'ok'; reqid: number; pid: number }
  | { type: 'error'; reqid: number; errno: number; syscall: string; path: string; message: string }
  | { type: 'exited'; reqid: number; pid: number; code: number | null; signal: number | null };

export function encodeFrame(parts: readonly string[]): Buffer {
  let len = 0;
  for (const p of parts) len += Buffer.byteLength(p) + 1;
  const buf = Buffer.allocUnsafe(4 + len);
  buf.writeUInt32LE(len, 0);
  let off = 4;
  for (const p of parts) {
    off += buf.write(p, off);
    buf[off++] = 0;
  }
  return buf;
}

export function decodeMessage(payload: Buffer): InitMessage | undefined {
  const f = payload.toString('utf8').split('\0');
  switch (f[0]) {
    case 'ready':
      return { type: 'ready' };
    case 'ok':
      return { type: 'ok', reqid: Number(f[1]), pid: Number(f[2]) };
    case 'error':
      return { type: 'error', reqid: Number(f[1]), errno: Number(f[2]), syscall: f[3] ?? '', path: f[4] ?? '', message: f[5] ?? '' };
    case 'exited': {
      const code = Number(f[3]);
      const signal = Number(f[4]);
      return { type: 'exited', reqid: Number(f[1]), pid: Number(f[2]), code: code >= 0 ? code : null, signal: signal > 0 ? signal : null };
    }
    default:
      return undefined;
  }
}

/** Frame reassembly over a byte stream. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  push(chunk: Buffer, emit: (payload: Buffer) => void): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (this.buf.length < 4 + len) break;
      emit(this.buf.subarray(4, 4 + len));
      this.buf = this.buf.subarray(4 + len);
    }
  }
}

export type Reply = { ok: true; pid: number } | { ok: false; errno: number; syscall: string; path: string; message: string };

export class ControlChannel {
  private readonly sock: Socket;
  private readonly pending = new Map<number, (r: Reply) => void>();
  private nextId = 1;
  private closedFlag = false;
  /**
   * Set the moment our socket is destroyed. libuv closes the fd synchronously in uv_close, but 'close' (and
   * so closedFlag) comes a loop turn later; in between the fd NUMBER may already belong to something else
   * (another sandbox's control socket, a pipe): request() must never sendmsg() on it then.
   */
  private fdGone = false;
  /** resolves on "ready"; rejects with the init's set-up error or when it dies first */
  readonly ready: Promise<void>;
  /** resolves when the init's end of the socket is gone (the init exited) */
  readonly closed: Promise<void>;
  onExited: (m: Extract<InitMessage, { type: 'exited' }>) => void = () => {};

  constructor(private readonly fd: number) {
    this.sock = new Socket({ fd, readable: true, writable: false });
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.ready = new Promise((res, rej) => { readyResolve = res; readyReject = rej; });
    this.ready.catch(() => {}); // observed by createSandbox; never an unhandled rejection
    const reader = new FrameReader();
    this.sock.on('data', (chunk: Buffer) =>
      reader.push(chunk, (payload) => {
        const m = decodeMessage(payload);
        if (!m) return;
        if (m.type === 'ready') readyResolve();
        else if (m.type === 'exited') this.onExited(m);
        else if (m.type === 'error' && m.reqid === 0) {
          readyReject(Object.assign(new Error(m.message), { errno: -m.errno, syscall: m.syscall, path: m.path, initError: m }));
        } else {
          const cb = this.pending.get(m.reqid);
          this.pending.delete(m.reqid);
          if (cb) cb(m.type === 'ok' ? { ok: true, pid: m.pid } : { ok: false, errno: m.errno, syscall: m.syscall, path: m.path, message: m.message });
        }
      }),
    );
    this.closed = new Promise((res) => {
      const done = () => {
        if (this.closedFlag) return;
        this.closedFlag = true;
        readyReject(Object.assign(new Error('the sandbox init exited during set-up'), { errno: -32, syscall: 'read', path: '' }));
        for (const cb of this.pending.values()) cb({ ok: false, errno: 32, syscall: 'read', path: '', message: 'the sandbox init exited' });
        this.pending.clear();
        res();
      };
      this.sock.on('close', done);
      // EOF = the init has exited (or is exiting): no need to wait for libuv's close callback
      this.sock.on('end', () => { done(); this.shut(); });
      this.sock.on('error', () => { this.shut(); });
    });
  }

  /** Lets the process exit while this channel is open (the zygote's; sandboxes keep theirs referenced). */
  unref(): void {
    this.sock.unref();
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  /** Sends one `run` frame; resolves with the init's reply. `fds` are attached (the caller closes its copies). */
  request(ops: readonly string[], fds: number[] = []): { id: number; reply: Promise<Reply> } {
    const id = this.nextId++;
    if (this.closedFlag || this.fdGone) {
      return { id, reply: Promise.resolve({ ok: false, errno: 32, syscall: 'sendmsg', path: '', message: 'the sandbox init has exited' }) };
    }
    const reply = new Promise<Reply>((res) => this.pending.set(id, res));
    try {
      native().sendFrame(this.fd, encodeFrame(['run', String(id), ...ops]), fds);
    } catch (e) {
      this.pending.delete(id);
      const n = e as { errno?: number; syscall?: string; message?: string };
      return { id, reply: Promise.resolve({ ok: false, errno: -(n.errno ?? -5), syscall: n.syscall ?? 'sendmsg', path: '', message: String(n.message) }) };
    }
    return { id, reply };
  }

  /** Closes our end: the init sees EOF and exits, which ends its pid namespace. */
  close(): void {
    this.shut();
  }

  private shut(): void {
    this.fdGone = true;
    this.sock.destroy();
  }
}
