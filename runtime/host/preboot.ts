/**
 * @module runtime/host/preboot
 * Pool side of the runtimes: turn a created sandbox into one that is ready to become an instance fast.
 *
 * node / python: the runtime process is started inside the base image's read-only rootfs with its wire on
 * fd 3 and waits for LOAD (runtime start-up, ~60 ms for node here, is paid before anyone asks).
 * exec with `prestart` (the scheduler's busybox pool): the image's read-only rootfs is mounted now — the sandbox
 * is started with a no-op first process (PRESTART_ARGV, exits at once; nothing of the function's runs before) — so
 * the cold start only attaches the code layer at /var/task and spawns the function's process (as node does).
 * exec without it / image:*: nothing runs yet; the first invocation starts the sandbox with the image's layers
 * and the code layer at /var/task (one pool then serves every image; a tenant's image is known only at
 * specialisation).
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
  /** exec: the rootfs of `image` is mounted already (PrepareOptions.prestart); only `image` functions can use it. */
  readonly prestarted: boolean;
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
  /**
   * exec only: mount `image`'s rootfs now (see the module header). The image must have PRESTART_ARGV
   * (busybox: /bin/true). Measured here (a `#!/bin/sh\ncat` function, sandbox calls alternated in one process,
   * n=30–40, load 12–13): its output came 3.8–3.9 ms after the first call began from a pre-started sandbox
   * (attach + exec sent back to back) against 4.8–5.6 ms through start(); the rootfs work moves to the pool.
   */
  prestart?: boolean;
}

/**
 * The first process of a pre-started exec sandbox: it exits at once (no output, nothing written — /tmp is
 * a fresh tmpfs, the rootfs read-only) so that nothing of ours runs beside the function later.
 */
export const PRESTART_ARGV = ['/bin/true'];
/** how long the pre-start's no-op process may take to exit (≈0.3 ms here; generous for a busy 2-core host). */
const PRESTART_TIMEOUT_MS = 10_000;

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
    if (opts.prestart) await prestart(sandbox, image);
    const pooled: PooledInternal = {
      sandbox, runtime: kind, image, prebooted: false, hello: null, channel: null, marker, taken: false, memoryMb: opts.memoryMb,
      prestarted: opts.prestart === true,
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
      sandbox, runtime: kind, image, prebooted: true, hello: frame.meta, channel: ch, marker, taken: false, memoryMb: opts.memoryMb, prestarted: false,
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

/**
 * Mounts `image`'s rootfs by starting the sandbox with PRESTART_ARGV; destroys the sandbox on failure. The
 * sandbox is ready once the process has been exec'd (the rootfs is in place then); its exit is not waited
 * for here — that would add the init's exit report to every pooled sandbox's making (the pool refills two at
 * a time, so that wait is refill rate) — but watched: one that does not exit cleanly within
 * PRESTART_TIMEOUT_MS destroys the sandbox (the pool then drops it as not alive).
 */
async function prestart(sandbox: Sandbox, image: ResolvedImage): Promise<void> {
  let proc;
  try {
    // stdin: empty (immediate EOF); the process's output is not read (it writes none; the pipes close with it).
    proc = await sandbox.start({ layers: image.layers, argv: PRESTART_ARGV, env: { PATH: DEFAULT_PATH }, cwd: '/', stdin: Buffer.alloc(0) });
  } catch (e) {
    await sandbox.destroy().catch(() => {}); // keep the pre-start failure as the error
    throw e;
  }
  proc.stdout.resume();
  proc.stderr.resume();
  let timer: NodeJS.Timeout | undefined;
  void Promise.race([
    proc.exited,
    new Promise<null>((r) => {
      timer = setTimeout(() => setImmediate(() => r(null)), PRESTART_TIMEOUT_MS);
      timer.unref();
    }),
  ]).then((st) => {
    clearTimeout(timer);
    if (!st || st.code !== 0) void sandbox.destroy().catch(() => {});
  });
}
