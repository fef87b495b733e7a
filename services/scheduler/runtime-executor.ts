/**
 * @module scheduler/runtime-executor
 * The real Executor: native sandboxes (services/sandbox) + runtimes (runtime/host) + the image store.
 *
 * Pool kinds: "node", "python" (runtime pre-booted in the base image), "exec" (runtime `exec`: busybox's
 * rootfs mounted already — pre-started, runtime/host/preboot.ts — so the cold start only attaches the code
 * and spawns the process) and "image": a created sandbox with no rootfs yet, started at the first invocation
 * with its image's layers and the code mounted — so one pool serves every tenant's imported images
 * (`image:<name>`) alike; the image is resolved at specialisation. Images are resolved at most once per
 * `imageCacheMs` (a pool refilling at 300/s must not read image records 300 times a second).
 *
 * Layer leases (gc must not remove what a sandbox uses): a kind's image layers are leased once while the
 * executor uses the kind, a code layer once per digest while any instance of it lives (a lease is a file
 * write in the store; one per cold start would cost more than the rest of the specialisation).
 *
 * Code layers are looked up once per digest and kept while leased (a leased layer cannot go) or for
 * `imageCacheMs` after the lookup: the store's lookup (a stat and a metadata read through the libuv pool)
 * took 0.5–0.7 ms of a ~4 ms exec cold start here, and a digest names immutable content.
 */
import type { FunctionVersion } from '../common/model.ts';
import { InvalidRequest } from '../common/errors.ts';
import { activeSpan } from '../common/telemetry.ts';
import type { CodeLayer, ImageStore, ResolvedImage } from '../store/types.ts';
import type { Sandbox, SandboxLimits } from '../sandbox/types.ts';
import { createSandbox, cleanupLeftovers, warmUp, DEFAULT_LIMITS } from '../sandbox/index.ts';
import { prepare, specialise, type Pooled, type SpecialiseOptions } from '../../runtime/host/index.ts';
import type { Executor, InstanceHandle, PooledSandbox } from './executor.ts';

export interface RuntimeExecutorOptions {
  images: ImageStore;
  /** the node id: cgroups live under fnhost/<nodeId>/ (and start-up cleans exactly that). */
  nodeId: string;
  /** caps of a pooled sandbox before specialisation (default: the sandbox defaults). */
  pooledLimits?: Partial<SandboxLimits>;
  specialise?: Pick<SpecialiseOptions, 'logCapBytes' | 'responseCapBytes'>;
  /** default 5 s */
  imageCacheMs?: number;
  /** test seam: create a sandbox some other way (e.g. runtime/host's process stand-in). */
  createSandbox?: () => Promise<Sandbox>;
  /**
   * pre-start "exec" pooled sandboxes with busybox's rootfs (default true): the cold start of a busybox exec
   * function then skips the rootfs mount (figures: runtime/host/preboot.ts PrepareOptions.prestart); false =
   * started by the first call, as "image" sandboxes are.
   */
  prestartExec?: boolean;
}

/** code layers remembered at most (a few hundred bytes each); leased ones stay beyond it. */
const CODE_CACHE_MAX = 4096;

interface RealPooled extends PooledSandbox {
  inner: Pooled;
}

/**
 * @example
 * const images = await openImageStore({});
 * const executor = createRuntimeExecutor({ images, nodeId: 'n1' });
 * const sched = createScheduler({ redisUrl, nodeId: 'n1', executor });
 */
export function createRuntimeExecutor(opts: RuntimeExecutorOptions): Executor {
  const { images, nodeId } = opts;
  const cacheMs = opts.imageCacheMs ?? 5000;
  const imageCache = new Map<string, { at: number; img: Promise<ResolvedImage> }>();
  const imageLeases = new Map<string, () => void>();
  const codeLeases = new Map<string, { n: number; release: () => void }>();
  /** fn.codeDigest → its layer, see the module header */
  const codeCache = new Map<string, { at: number; layer: CodeLayer }>();
  /** sandboxes whose runtime is still booting: shutdown destroys them rather than waiting out a boot. */
  const preparing = new Set<Sandbox>();
  const make = opts.createSandbox ?? (() => createSandbox({ nodeId, limits: opts.pooledLimits }));
  /** the memory cap pooled sandboxes are born with (unknown for a test seam's sandboxes: always set then) */
  const pooledMemoryMb = opts.createSandbox ? undefined : (opts.pooledLimits?.memoryMb ?? DEFAULT_LIMITS.memoryMb);
  /** every sandbox this executor made and has not seen destroyed: close() waits for all of them */
  const mine = new Set<Sandbox>();
  let made = 0;
  const mk = async () => {
    const sb = await make();
    mine.add(sb);
    if (++made % 256 === 0) for (const s of mine) if (s.state === 'destroyed') mine.delete(s);
    return sb;
  };

  const prestartExec = opts.prestartExec ?? true;

  /** kind "node" | "python" | "exec" | "image" (busybox: the pool's) | "image:<tenant>/<name>" (a tenant's image). */
  function imageOf(kind: string): Promise<ResolvedImage> {
    const c = imageCache.get(kind);
    if (c && Date.now() - c.at < cacheMs) return c.img;
    // lookup and lease in the store's order (ImageStore.resolveLeased): an image deleted and gc'd between them is a
    // clean NotFound, never a mount of layers that are gone
    const leased = (ref: string, tenant?: string): Promise<ResolvedImage> =>
      images.resolveLeased
        ? images.resolveLeased(ref, tenant).then(({ image, release }) => {
            if (imageLeases.has(image.digest)) release();
            else imageLeases.set(image.digest, release);
            return image;
          })
        : images.resolve(ref, tenant).then((img) => {
            if (!imageLeases.has(img.digest)) imageLeases.set(img.digest, images.lease(img.layers));
            return img;
          });
    let p: Promise<ResolvedImage>;
    if (kind === 'node' || kind === 'python') p = leased(kind);
    else if (kind === 'exec' || kind === 'image') p = leased('busybox');
    else if (kind.startsWith('image:')) {
      const rest = kind.slice('image:'.length);
      const slash = rest.indexOf('/');
      p = leased(rest.slice(slash + 1), rest.slice(0, slash));
    } else p = Promise.reject(new InvalidRequest(`unknown pool kind ${kind}`, { field: 'runtime' }));
    p.catch(() => imageCache.delete(kind));
    imageCache.set(kind, { at: Date.now(), img: p });
    return p;
  }

  async function codeLayerOf(digest: string): Promise<CodeLayer> {
    const c = codeCache.get(digest);
    if (c && (codeLeases.has(c.layer.digest) || Date.now() - c.at < cacheMs)) return c.layer;
    const layer = await images.codeLayer(digest);
    codeCache.delete(digest); // re-inserted last: the map's order is the order of lookups
    codeCache.set(digest, { at: Date.now(), layer });
    if (codeCache.size > CODE_CACHE_MAX) {
      for (const [d, e] of codeCache) {
        if (codeCache.size <= CODE_CACHE_MAX) break;
        if (!codeLeases.has(e.layer.digest)) codeCache.delete(d);
      }
    }
    return layer;
  }

  function leaseCode(dir: string, digest: string): () => void {
    let l = codeLeases.get(digest);
    if (!l) codeLeases.set(digest, (l = { n: 0, release: images.lease([dir]) }));
    l.n++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--l!.n === 0) {
        codeLeases.delete(digest);
        l!.release();
      }
    };
  }

  const exec: Executor = {
    kindOf(fn: FunctionVersion): string {
      const r = String(fn.runtime);
      return r === 'node' || r === 'python' || r === 'exec' ? r : 'image';
    },

    async createPooled(kind: string): Promise<PooledSandbox> {
      const img = await imageOf(kind);
      const sb = await mk();
      const runtime = kind === 'node' || kind === 'python' ? kind : 'exec';
      preparing.add(sb);
      let inner: Pooled;
      try {
        // destroys the sandbox itself on failure
        inner = await prepare(sb, runtime, img, { memoryMb: pooledMemoryMb, prestart: kind === 'exec' && prestartExec });
      } finally {
        preparing.delete(sb);
      }
      const p: RealPooled = {
        kind,
        inner,
        get alive() {
          return inner.alive;
        },
        destroy: () => inner.destroy(),
      };
      return p;
    },

    async specialise(pooled, fn, onLog): Promise<InstanceHandle> {
      // the caller's span, before the first await: runtime/host's 'specialise' hangs under it
      const parent = activeSpan();
      const inner = (pooled as RealPooled).inner;
      let release = () => {};
      try {
        const code = fn.codeDigest ? await codeLayerOf(fn.codeDigest) : null;
        if (code) release = leaseCode(code.dir, code.digest);
        const r = String(fn.runtime);
        // A tenant's image is private to it: resolve(name, tenant) finds only fn.tenant's own images.
        const image = r.startsWith('image:') ? await imageOf(`image:${fn.tenant}/${r.slice('image:'.length)}`) : inner.image;
        const inst = await specialise(inner, fn, code, image, { ...opts.specialise, onLog, parent });
        const id = inner.sandbox.id;
        let lastRunMs: number | undefined;
        let lastRunSlept: boolean | undefined;
        return {
          id,
          get alive() {
            return inst.alive;
          },
          get lastRunMs() {
            return lastRunMs;
          },
          get lastRunSlept() {
            return lastRunSlept;
          },
          async invoke(req) {
            lastRunMs = undefined;
            lastRunSlept = undefined;
            const r = await inst.invoke(req);
            lastRunMs = r.handlerMs;
            lastRunSlept = r.handlerSlept;
            return { response: r.response, durationMs: r.durationMs };
          },
          async destroy() {
            try {
              await inst.destroy();
            } finally {
              release();
            }
          },
        };
      } catch (e) {
        release();
        await inner.destroy().catch(() => {});
        throw e;
      }
    },

    async cleanupLeftovers(node: string) {
      await cleanupLeftovers(node);
      // builds the sandbox layer's per-process template mount namespace now, not on the first cold start
      if (!opts.createSandbox) await warmUp();
    },

    async pooledMemoryBytes(p) {
      return (await (p as RealPooled).inner.sandbox.memory()).currentBytes;
    },

    /** runtime/host instances take one invocation at a time. */
    maxConcurrency: () => 1,

    async cancelPending() {
      await Promise.all([...preparing].map((sb) => sb.destroy().catch(() => {})));
    },

    async close() {
      // Runtimes destroy a dead instance's sandbox in the background; wait for those (and anything else).
      await Promise.all([...mine].map((sb) => sb.destroy().catch(() => {})));
      mine.clear();
      for (const r of imageLeases.values()) r();
      imageLeases.clear();
      imageCache.clear();
      codeCache.clear();
    },
  };
  return exec;
}
