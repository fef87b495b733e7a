/**
 * @module host
 * The host's composition root, used by `fnhost start` and by the e2e tests: Redis (the given REDIS_URL or an
 * embedded redis-server with AOF in the state dir), the image store, the scheduler (its sandboxes are made
 * by the native addon, never by forking this Node process), the invocation client, the gateway, and the
 * HTTP server. One process, explicit wiring, and `close()` undoes all of it in reverse order.
 *
 * @example
 * const host = await startHost(hostConfig(process.env, { port: '0', 'state-dir': '/tmp/s' }));
 * console.log(host.url, host.adminKey.generated ? host.adminKey.key : '');
 * await host.close();
 */
import type { AddressInfo } from 'node:net';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import { Redis } from 'ioredis';
import { createLogger, type Logger } from '../common/log.ts';
import { metrics } from '../common/metrics.ts';
import { Attr } from '../common/telemetry.ts';
import { initTracing } from '../common/tracing-setup.ts';
import { Admission } from '../gateway/admission.ts';
import { createGateway } from '../gateway/app.ts';
import type { GatewayLimits } from '../gateway/context.ts';
import { gatewayObservability } from '../gateway/middleware/tracing.ts';
import { createInvocationClient, type InvocationClientOptions } from '../scheduler/client.ts';
import type { Executor } from '../scheduler/executor.ts';
import type { InvocationClient } from '../scheduler/types.ts';
import { createRuntimeExecutor } from '../scheduler/runtime-executor.ts';
import { createScheduler, defaultNodeId, type Scheduler, type SchedulerOptions } from '../scheduler/scheduler.ts';
import { openImageStore, type ImageStoreOptions } from '../store/image-store.ts';
import { DEFAULT_METADATA_PREFIX, createMetadataStore, type MetadataStore } from '../store/metadata.ts';
import type { ImageStore } from '../store/types.ts';
import { loadAdminKey, type AdminKey } from './admin-key.ts';
import type { HostConfig } from './config.ts';
import { startEmbeddedRedis, type EmbeddedRedis } from './redis-server.ts';
import { CallbackSigner } from '../scheduler/callback-signer.ts';
import { envCallbackAllow } from '../scheduler/callback-url.ts';
import { FailedCallbacks } from '../scheduler/callback-failures.ts';
import { DEFAULT_PREFIX } from '../scheduler/keys.ts';

export interface HostOptions {
  logger?: Logger;
  /** the scheduler's executor (default: the runtime executor over native sandboxes). */
  executor?: (images: ImageStore, nodeId: string) => Promise<Executor> | Executor;
  scheduler?: Partial<Omit<SchedulerOptions, 'redis' | 'redisUrl' | 'executor'>>;
  /** false: no scheduler in this process (a gateway-only node of a multi-node setup); default: cfg.scheduler. */
  runScheduler?: boolean;
  client?: Partial<Omit<InvocationClientOptions, 'redis' | 'redisUrl'>>;
  images?: Partial<ImageStoreOptions>;
  limits?: Partial<GatewayLimits>;
  /** Redis key prefix of the metadata store (default "fnhost:meta:"); tests use their own. */
  metadataPrefix?: string;
}

export interface Host {
  /** http://<host>:<port> as a client on this machine reaches it. */
  url: string;
  port: number;
  adminKey: AdminKey;
  redisUrl: string;
  store: MetadataStore;
  images: ImageStore;
  /** the gateway's invocation client (tests and benchmarks read queue depths through it). */
  client: InvocationClient;
  scheduler?: Scheduler;
  close(): Promise<void>;
}

/**
 * ioredis settings of the gateway's connection: a request may wait for one reconnect attempt, then fails
 * (→ 503 Unavailable) instead of hanging; 2 s bounds a command on a Redis that accepts but does not answer.
 */
const GATEWAY_REDIS = { maxRetriesPerRequest: 1, commandTimeout: 2000, enableAutoPipelining: true } as const;
/** The scheduler's own grace for in-flight invocations is 30 s (Scheduler.close); 5 s more for its pools. */
const SCHEDULER_STOP_MS = 35_000;
/** Every other shutdown step (HTTP server, Redis connections, the embedded redis-server's AOF flush). */
const STEP_STOP_MS = 15_000;
/** Layers no function version or image references are collected this often (and 1 min after start). */
const GC_INTERVAL_MS = 60 * 60_000;


export async function startHost(cfg: HostConfig, opts: HostOptions = {}): Promise<Host> {
  const log = opts.logger ?? createLogger('host');
  const steps: { name: string; fn: () => Promise<unknown> | unknown }[] = [];
  const undo = (name: string, fn: () => Promise<unknown> | unknown) => steps.push({ name, fn });
  const close = async () => {
    for (const step of steps.reverse()) {
      const t0 = performance.now();
      let timer: NodeJS.Timeout | undefined;
      // A step that hangs must not keep the rest (the embedded Redis above all) from stopping.
      const limit = step.name === 'scheduler' ? SCHEDULER_STOP_MS : STEP_STOP_MS;
      try {
        await Promise.race([
          Promise.resolve().then(step.fn),
          new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`did not finish within ${limit} ms`)), limit))),
        ]);
      } catch (e) {
        log.warn({ err: e, step: step.name }, 'host: shutdown step failed');
      } finally {
        clearTimeout(timer);
      }
      log.debug({ step: step.name, ms: Math.round(performance.now() - t0) }, 'host: stopped');
    }
    steps.length = 0;
  };
  try {
    await mkdir(cfg.stateDir, { recursive: true, mode: 0o700 });
    const nodeId = cfg.nodeId ?? opts.scheduler?.nodeId ?? defaultNodeId();
    // The node id is the same for every span of this process: once in the OTLP resource, not on each span.
    const tracingHandle = await initTracing({ serviceName: 'fnhost', resource: { [Attr.node]: nodeId } });
    undo('tracing', () => tracingHandle.shutdown());

    let redisUrl = cfg.redisUrl;
    if (!redisUrl) {
      const embedded: EmbeddedRedis = await startEmbeddedRedis(cfg.stateDir, { log: (l) => log.debug({ redis: l }) });
      undo('embedded redis', () => embedded.stop());
      redisUrl = embedded.url;
      log.info({ socket: embedded.url, pid: embedded.pid }, 'embedded redis-server started (AOF in the state dir)');
    }
    const redis = new Redis(redisUrl, GATEWAY_REDIS);
    redis.on('error', (e) => log.debug({ err: e.message }, 'gateway redis'));
    undo('gateway redis', () => redis.quit().catch(() => redis.disconnect()));
    undo('redis metrics', metrics.watchRedis(redis, 'gateway'));
    await redis.ping();

    const images = await openImageStore({ stateDir: cfg.stateDir, ...(cfg.baseDir ? { baseDir: cfg.baseDir } : {}), ...opts.images });
    // Without base images every node/python/exec invocation fails; say so now rather than at the first call.
    const missing = (await Promise.all(['busybox', 'node', 'python'].map((n) => images.resolve(n).then(() => null, () => n)))).filter(Boolean);
    if (missing.length) log.warn({ missing }, 'base images missing: run infra/setup.sh (or `fnhost images build`)');
    const store = createMetadataStore(redis, opts.metadataPrefix);
    undo('metadata store', () => store.close());

    let scheduler: Scheduler | undefined;
    if (opts.runScheduler ?? cfg.scheduler) {
      const executor = opts.executor ? await opts.executor(images, nodeId) : createRuntimeExecutor({ images, nodeId });
      // the scheduler reads this store's version records and invalidations (deleted versions: process-job.ts, retireDeleted)
      scheduler = createScheduler({ redisUrl, executor, logger: log.child({ part: 'scheduler' }), metadataPrefix: opts.metadataPrefix ?? DEFAULT_METADATA_PREFIX, ...opts.scheduler, nodeId });
      await scheduler.start();
      undo('scheduler', () => scheduler!.close());
    }
    // The scheduler of this process takes the sync calls it can place at once without the queue (./local-dispatch.ts).
    const client = createInvocationClient({ redis, localDispatch: cfg.localDispatch, ...opts.client });
    undo('client', () => client.close());

    const adminKey = await loadAdminKey(cfg.stateDir, cfg.adminKey);
    const admission = new Admission(store);
    await admission.start();
    undo('admission', () => admission.close());
    // a bad FNHOST_CALLBACK_ALLOW stops the start here, rather than turning every X-Callback-Url into a 400
    envCallbackAllow();
    // the same key derivation, prefix and secret as the scheduler's signer (services/scheduler/callbacks.ts)
    const callbackSigner = new CallbackSigner(redis, opts.client?.prefix ?? DEFAULT_PREFIX, opts.scheduler?.callbacks?.secret ?? process.env.FNHOST_CALLBACK_SECRET);
    // GET/POST/DELETE /v1/callbacks/failed: the callbacks queue under the same prefix as the scheduler's
    const failedCallbacks = new FailedCallbacks(redis, opts.client?.prefix ?? DEFAULT_PREFIX);
    undo('failed callbacks', () => failedCallbacks.close());
    const app = createGateway({
      store,
      client,
      images,
      adminKeyHash: adminKey.hash,
      admission,
      tmpDir: join(cfg.stateDir, 'tmp'),
      logger: log.child({ part: 'gateway' }),
      observability: gatewayObservability(metrics),
      callbackSecret: (t) => callbackSigner.secretFor(t),
      failedCallbacks,
      ...(opts.limits ? { limits: opts.limits } : {}),
    });

    const server: ServerType = await new Promise((resolve, reject) => {
      const s = serve({ fetch: app.fetch, port: cfg.port, hostname: cfg.host }, () => resolve(s));
      s.once('error', reject);
    });
    undo(
      'http server',
      () =>
        new Promise<void>((res) => {
          const srv = server as import('node:http').Server;
          srv.close(() => res());
          // keep-alive connections would hold close() open; idle ones go now, busy ones when answered
          srv.closeIdleConnections?.();
          setTimeout(() => srv.closeAllConnections?.(), 5000).unref();
        }),
    );
    const port = (server.address() as AddressInfo).port;
    const shownHost = cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host.includes(':') ? `[${cfg.host}]` : cfg.host;

    // Unreferenced code layers (old bundles, failed deploys) go in the background. `keep` as a function: gc reads
    // it again after taking its candidates out, so a version committed during the run keeps its layer.
    const gc = async () => {
      const keep = async () => store.functions.codeDigests((await store.tenants.list()).map((t) => t.name));
      const r = await images.gc(keep);
      if (r.removed.length) log.info({ removed: r.removed.length }, 'image store gc');
    };
    const first = setTimeout(() => void gc().catch((e) => log.warn({ err: e }, 'gc failed')), 60_000);
    const every = setInterval(() => void gc().catch((e) => log.warn({ err: e }, 'gc failed')), GC_INTERVAL_MS);
    first.unref();
    every.unref();
    undo('gc timers', () => (clearTimeout(first), clearInterval(every)));

    return { url: `http://${shownHost}:${port}`, port, adminKey, redisUrl, store, images, client, ...(scheduler ? { scheduler } : {}), close };
  } catch (e) {
    await close();
    throw e;
  }
}
