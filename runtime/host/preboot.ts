/**
 * @module runtime/host/preboot
 * Pool side of the runtimes: turn a created sandbox into one that is ready to become an instance fast.
 *
 * node / python: the runtime process is started inside the base image's read-only rootfs with its wire on
 * fd 3 and waits for LOAD (runtime start-up, ~60 ms for node here, is paid before anyone asks).
 * exec / image:*: nothing runs yet — the rootfs of an exec function includes its code layer, which is known
 * only at specialisation, so the created sandbox is kept as it is and started by the first invocation.
 */
import { Internal, InvalidRequest } from '../../services/common/errors.ts';
import type { RuntimeName } from '../../services/common/model.ts';
import type { Sandbox } from '../../services/sandbox/types.ts';
import type { ResolvedImage } from '../../services/store/types.ts';
import { DEFAULT_RESPONSE_CAP_BYTES, META_HEADROOM_BYTES, MsgType, type HelloMsg } from '../protocol.ts';
import { ChannelClosed, RuntimeChannel } from './channel.ts';
import { newLogMarker } from './instance.ts';
import { DEFAULT_LOG_CAP_BYTES } from './logs.ts';
import { DEFAULT_PATH, shimArgv } from './shims.ts';

export type RuntimeKind = 'node' | 'python' | 'exec';

/** A sandbox prepared for one runtime kind, waiting in the pool. */
export interface Pooled {
  readonly sandbox: Sandbox;
  readonly runtime: RuntimeKind;
  readonly image: ResolvedImage;
  /** true when the runtime process is running and waiting for code (node, python). */
  readonly prebooted: boolean;
  /** false once the pre-booted process died (e.g. killed) or destroy() ran: drop it from the pool. */
  readonly alive: boolean;
  /** node/python: what the shim said in HELLO. */
  readonly hello: HelloMsg | null;
  destroy(): Promise<void>;
}

/** Internal view of a Pooled (specialise.ts uses the channel). */
export interface PooledInternal extends Pooled {
  channel: RuntimeChannel | null;
  marker: string;
  /** set once specialised: a pooled sandbox becomes exactly one instance. */
  taken: boolean;
  /** the memory cap the sandbox has now, when the caller said (PrepareOptions.memoryMb) */
  memoryMb?: number;
}

/**
 * The runtime kind that serves a function's runtime name (what a pool is keyed by).
 *
 * @example
 * runtimeKind('image:my-app'); // 'exec'
 */
export function runtimeKind(runtime: RuntimeName): RuntimeKind {
  if (runtime === 'node' || runtime === 'python' || runtime === 'exec') return runtime;
  if (typeof runtime === 'string' && runtime.startsWith('image:')) return 'exec';
  throw new InvalidRequest(`unknown runtime ${String(runtime)}`, { field: 'runtime' });
}

export interface PrepareOptions {
  /** how long the runtime may take to say HELLO (node ~60 ms here; generous for a busy 2-core host). */
  bootTimeoutMs?: number;
  /**
   * node: run the shim's warm-up (first import, first Request/Response, JIT of the invoke path) before
   * HELLO. Default true: it is paid while pooled and saves several ms on the cold start. False only
   * when the runtime is started on the cold path itself (the bench's not-pre-booted variant).
   */
  warmUp?: boolean;
  /**
   * the memory cap the sandbox was created with, if known: a function with the same cap then needs no
   * cgroup write at specialisation (a memory cap write pair is ≈0.13 ms of a ~3–4 ms cold start here).
   */
  memoryMb?: number;
}

/**
 * Prepares a created sandbox for `runtime` (see the module header).
 * On failure the sandbox is destroyed and the error says why (Internal, with the runtime's stderr tail).
 *
 * @example
 * const sb = await createSandbox();
 * const pooled = await prepare(sb, 'node', await store.resolve('node'));
 * // later, on the cold path:
 * const inst = await specialise(pooled, fn, await store.codeLayer(fn.codeDigest!), pooled.image);
 */
export async function prepare(sandbox: Sandbox, runtime: RuntimeName, image: ResolvedImage, opts: PrepareOptions = {}): Promise<Pooled> {
  const kind = runtimeKind(runtime);
  const marker = newLogMarker();
  if (kind === 'exec') {
    const pooled: PooledInternal = {
      sandbox, runtime: kind, image, prebooted: false, hello: null, channel: null, marker, taken: false, memoryMb: opts.memoryMb,
      get alive() { return sandbox.state !== 'destroyed'; },
      destroy: () => sandbox.destroy(),
    };
    return pooled;
  }
  const env: Record<string, string> = { PATH: DEFAULT_PATH, HOME: '/tmp', ...image.config.env };
  // Python writes its buffered output at our flush points (protocol.ts log marker); UTF-8 regardless of locale.
  if (kind === 'python') env.PYTHONIOENCODING = 'utf-8';
  if (opts.warmUp === false) env.FNHOST_SHIM_WARMUP = '0';
  let channel: RuntimeChannel | null = null;
  try {
    const proc = await sandbox.start({ layers: image.layers, argv: shimArgv(kind), env, cwd: '/', wire: true });
    channel = new RuntimeChannel(sandbox, proc, {
      marker,
      logCapBytes: DEFAULT_LOG_CAP_BYTES,
      maxFrameBytes: DEFAULT_RESPONSE_CAP_BYTES + META_HEADROOM_BYTES,
    });
    const bootTimeoutMs = opts.bootTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    // A timeout that fires late because the event loop was blocked past it (a long synchronous stretch
    // elsewhere in the host) must not beat a HELLO that arrived meanwhile: a loop turn runs its timers
    // before it polls sockets, so the timeout settles in the check phase (setImmediate), after that poll.
    const frame = await Promise.race([
      channel.next(),
      new Promise<null>((r) => (timer = setTimeout(() => setImmediate(() => r(null)), bootTimeoutMs))),
    ]).finally(() => clearTimeout(timer));
    if (!frame) throw new Internal(`${kind} runtime did not boot within ${bootTimeoutMs} ms`, { runtime: kind });
    if (frame.type !== MsgType.HELLO) throw new Internal(`${kind} runtime sent frame type ${frame.type} before HELLO`, { runtime: kind });
    const ch = channel;
    const pooled: PooledInternal = {
      sandbox, runtime: kind, image, prebooted: true, hello: frame.meta, channel: ch, marker, taken: false, memoryMb: opts.memoryMb,
      get alive() { return !ch.isClosed && sandbox.state !== 'destroyed'; },
      destroy: () => sandbox.destroy(),
    };
    return pooled;
  } catch (e) {
    const tail = channel?.logs.tail('stderr');
    await sandbox.destroy().catch(() => {}); // keep the boot failure as the error
    if (e instanceof ChannelClosed) {
      throw new Internal(`${kind} runtime exited during boot (code ${e.status.code}, signal ${e.status.signal})`, { runtime: kind, stderrTail: tail });
    }
    throw e;
  }
}
