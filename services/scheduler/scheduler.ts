/**
 * @module scheduler/scheduler
 * The scheduler's composition root: one per node process. Wires BullMQ workers (one per tenant queue +
 * this node's own queue), the warm pool, the instance table with memory admission, result delivery, logs,
 * heartbeats and warm-routing advertisements. Two lanes feed one processor (./process-job.ts): the fast lane
 * (./fast-lane.ts, sync/http) and BullMQ workers (async; per tenant queue, created when a tenant first uses one).
 * A third way in needs no queue: a client in the same process hands over the sync calls this node can place
 * at once (./local-dispatch.ts; the scheduler registers itself there on start and waits for those calls on close).
 *
 * Several scheduler processes (one or many machines) may share one Redis; they share nothing in memory.
 * Each needs its own `nodeId` (it names its queue, heartbeat, advertisements and the sandbox/cgroup prefix
 * of its leftovers). Start-up removes this node's leftovers only; shutdown leaves nothing of this node.
 *
 * @example
 * const images = await openImageStore({});
 * const sched = createScheduler({ redisUrl, nodeId: 'n1', executor: createRuntimeExecutor({ images, nodeId: 'n1' }) });
 * await sched.start();
 * ...
 * await sched.close();
 */
import { hostname, totalmem } from 'node:os';
import { Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { InvalidRequest } from '../common/errors.ts';
import type { FunctionVersion } from '../common/model.ts';
import { createLogger, type Logger } from '../common/log.ts';
import { metrics as globalMetrics, type FnhostMetrics } from '../common/metrics.ts';
import { createKeys, type Keys } from './keys.ts';
import { bullConnection } from './client.ts';
import type { Executor } from './executor.ts';
import { DEFAULT_POOL_CONFIG, WarmPool, type PoolConfig } from './pool.ts';
import { Instances, fnKey, type InstancesConfig } from './instances.ts';
import { LogBuffer } from './log-buffer.ts';
import { appendLogs, DEFAULT_LOG_RETENTION, type LogRetention } from './logs.ts';
import { finishLostWorker, isStalledOut, processJob, processInvocation, runLocal, type JobContext } from './process-job.ts';
import { localKey, registerLocalDispatcher, type LocalDispatcher, type LocalOutcome } from './local-dispatch.ts';
import { FastLaneConsumer } from './fast-lane.ts';
import { RecordBatch } from './record-batch.ts';
import { defineScripts } from './scripts.ts';
import { advertiseWarm } from './routing.ts';
import { DEFAULT_RETENTION, HEARTBEAT_MS, NODE_ID_RE, NODE_STALE_MS, type Retention } from './config.ts';
import type { FastJob, JobData } from './job.ts';
import { FnCache, fnRefOf } from './fn-refs.ts';
import { Callbacks, callbackOptions, type CallbackOptions } from './callbacks.ts';
import { Sweeper, type SweeperOptions } from './sweeper.ts';
import { versionState } from '../store/functions.ts';

/**
 * How long an async job's check that its function version still exists (process-job.ts) is reused for later jobs of
 * the same version: the metadata cache's own TTL (services/store/metadata.ts), the longest any reader sees a deleted
 * version when the store's invalidation message is lost. VERSION_SEEN_MAX bounds the map (cleared when full).
 */
const VERSION_SEEN_MS = 2000;
const VERSION_SEEN_MAX = 10_000;

/**
 * Warm advertisements wait for a moment without invocations (see pendingAds in createScheduler): checked every
 * 5 ms (an exec cold start's first invocation takes ~5 ms here), written after 200 ms at the latest on a node
 * that is never idle — far below the keep-alive they advertise (minutes). Meanwhile another node's gateway sends
 * calls for that version to the tenant queue, which this node serves too.
 */
const ADVERTISE_CHECK_MS = 5;
const ADVERTISE_MAX_DELAY_MS = 200;

export interface SchedulerOptions {
  redis?: Redis;
  redisUrl?: string;
  prefix?: string;
  /** this node's id (default: the host name, sanitised). Must be unique among live schedulers. */
  nodeId?: string;
  executor: Executor;
  /** MiB of function memory this node admits (default: half the machine's RAM). */
  capacityMb?: number;
  /** default 5 min */
  keepAliveMs?: number;
  /** default 30 s */
  maxWaitMs?: number;
  /** default 1,000 */
  maxWaitersPerFunction?: number;
  /** instances a short function keeps busy at once (default 2 per core; 0 = no hot set): ./instances.ts "Hot set". */
  hotInstances?: number;
  /** a function a quarter of whose calls take the runtime less than this many ms is short (default 2). */
  shortRunMs?: number;
  pool?: Partial<PoolConfig>;
  /** jobs one tenant may have picked up on this node at once (default 64 — enough to keep 2 cores busy with ~1 ms invocations). */
  tenantConcurrency?: number;
  /** jobs from this node's routed queue at once (default 64). */
  nodeConcurrency?: number;
  /** BullMQ lock: a killed worker's job is retried elsewhere after about this long (default 30 s). */
  lockDurationMs?: number;
  /** how often stalled jobs are looked for (default 30 s, BullMQ's). */
  stalledIntervalMs?: number;
  /** times a job may stall (its worker died) before it fails (default 2). */
  maxStalledCount?: number;
  /** a tenant's BullMQ worker on this node closes after this long without jobs (default 10 min); it comes back with the next job. */
  idleWorkerMs?: number;
  retention?: Partial<Retention>;
  logRetention?: Partial<LogRetention>;
  metrics?: FnhostMetrics;
  logger?: Logger;
  /** completion callbacks of async invocations (./callbacks.ts); default: from the FNHOST_CALLBACK_* environment */
  callbacks?: Partial<CallbackOptions>;
  /** finishes async invocations whose outcome was lost with the nodes that should have written it (./sweeper.ts); false: off */
  sweeper?: Partial<SweeperOptions> | false;
  /**
   * Key prefix of the metadata store (services/store/metadata.ts) on the same Redis, read to fail async jobs whose
   * function version was deleted after they were queued (./process-job.ts). Default `<prefix>:meta:` — the host's
   * pairing ("fnhost" → "fnhost:meta:"); a tenant not found there is not checked. false: no check.
   */
  metadataPrefix?: string | false;
}

export interface Scheduler {
  readonly nodeId: string;
  readonly instances: Instances;
  readonly pool: WarmPool;
  start(): Promise<void>;
  /** stop taking jobs, let in-flight ones finish (up to graceMs, default 30 s), destroy pools and instances. */
  close(graceMs?: number): Promise<void>;
}

/** The host name, sanitised to a node id. */
export function defaultNodeId(): string {
  const h = hostname().replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64);
  return h || 'node';
}

export function createScheduler(opts: SchedulerOptions): Scheduler {
  if (!opts.redis && !opts.redisUrl) throw new InvalidRequest('createScheduler needs redis or redisUrl', { field: 'redisUrl' });
  const nodeId = opts.nodeId ?? defaultNodeId();
  if (!NODE_ID_RE.test(nodeId)) throw new InvalidRequest(`nodeId must match ${NODE_ID_RE}`, { field: 'nodeId' });
  const keys: Keys = createKeys(opts.prefix);
  const log = opts.logger ?? createLogger('scheduler');
  const metrics = opts.metrics ?? globalMetrics;
  const retention: Retention = { ...DEFAULT_RETENTION, ...opts.retention };
  const logRetention: LogRetention = { ...DEFAULT_LOG_RETENTION, ...opts.logRetention };
  // Workers need maxRetriesPerRequest: null (BullMQ); our own commands share that connection.
  // Two connections: BullMQ's (workers need maxRetriesPerRequest: null) and ours, auto-pipelined — the
  // result writes of invocations finishing in the same tick then go out in one write() instead of one each.
  const bullRedis = opts.redis ? opts.redis.duplicate({ maxRetriesPerRequest: null }) : new Redis(opts.redisUrl!, { maxRetriesPerRequest: null });
  const redis = defineScripts(bullRedis.duplicate({ enableAutoPipelining: true, maxRetriesPerRequest: null }));
  const unwatch = [metrics.watchRedis(redis, 'scheduler'), metrics.watchRedis(bullRedis, 'scheduler')];
  const exec = opts.executor;
  const poolCfg: PoolConfig = { ...DEFAULT_POOL_CONFIG, ...opts.pool, kinds: { ...DEFAULT_POOL_CONFIG.kinds, ...opts.pool?.kinds } };
  // `instances` is created below; the pool only asks once it runs
  let instances: Instances;
  const pool = new WarmPool(exec, poolCfg, {
    busy: () => instances.list().some((i) => i.inFlight > 0) || instances.waiting() > 0,
    onCreated: (kind) => metrics.poolRefill(kind),
    onError: (kind, e) => log.warn({ kind, err: String((e as Error)?.message ?? e) }, 'pool: creating a sandbox failed'),
  });
  const instCfg: InstancesConfig = {
    capacityMb: opts.capacityMb ?? Math.floor(totalmem() / 2 / 2 ** 20),
    keepAliveMs: opts.keepAliveMs ?? 5 * 60_000,
    maxWaitMs: opts.maxWaitMs ?? 30_000,
    maxWaitersPerFunction: opts.maxWaitersPerFunction ?? 1000,
    hotInstances: opts.hotInstances,
    shortRunMs: opts.shortRunMs,
  };

  // Warm advertisements, throttled: re-advertise only when the stored expiry is more than half a keep-alive old.
  const advertised = new Map<string, { fn: FunctionVersion; until: number }>();
  /**
   * Advertisements (and withdrawals) are queued, the latest per function version, and written once no invocation
   * runs on this node (checked every ADVERTISE_CHECK_MS, at most ADVERTISE_MAX_DELAY_MS after the first was queued).
   * Written at once, a cold start's advertisement was built and sent, and its reply read, while that cold start's
   * first invocation ran: a Redis write and a redis-server wake-up inside the call it does not help.
   */
  const pendingAds = new Map<string, { fn: FunctionVersion; until: number }>();
  let adTimer: NodeJS.Timeout | undefined;
  let adsSince = 0;
  function flushAds() {
    adTimer = undefined;
    if (closing) {
      pendingAds.clear(); // close() withdraws everything in `advertised`
      return;
    }
    if (Date.now() - adsSince < ADVERTISE_MAX_DELAY_MS && instances.list().some((i) => i.inFlight > 0)) {
      adTimer = setTimeout(flushAds, ADVERTISE_CHECK_MS).unref();
      return;
    }
    const batch = [...pendingAds.values()];
    pendingAds.clear();
    for (const a of batch) void advertiseWarm(redis, keys, nodeId, a.fn.tenant, a.fn.name, a.fn.version, a.until).catch(() => {});
  }
  const logs = new LogBuffer((fn, lines) => appendLogs(redis, keys, fn.tenant, fn.name, lines, logRetention));
  instances = new Instances(exec, pool, instCfg, {
    onWarm(fn, until) {
      const k = fnKey(fn);
      const a = advertised.get(k);
      if (until === 0) {
        if (!a) return;
        advertised.delete(k);
      } else {
        if (a && a.until - until > -instCfg.keepAliveMs / 2) return;
        advertised.set(k, { fn, until });
      }
      pendingAds.set(k, { fn, until });
      if (!adTimer) {
        adsSince = Date.now();
        adTimer = setTimeout(flushAds, ADVERTISE_CHECK_MS).unref();
      }
    },
    onSpecialised: (fn, ms) => metrics.specialise(String(fn.runtime), ms),
    onLog: (fn, line) => logs.add(fn, line),
  });

  const records = new RecordBatch(redis, keys, retention.recordS, logRetention);
  const callbacks = new Callbacks({ redis: bullRedis, prefix: keys.prefix, options: { ...callbackOptions(), ...opts.callbacks }, metrics, log });
  const metaPrefix = opts.metadataPrefix ?? `${keys.prefix}:meta:`;
  /**
   * Versions an async job found still there, `tenant\0name\0version` → until (ms): further jobs of the version skip
   * the store's round trip until then. The store's invalidation message for the function drops them at once
   * (retireDeleted); VERSION_SEEN_MS bounds how long a lost message (or a store that publishes none) can hide a delete.
   */
  const versionSeen = new Map<string, number>();
  const versionGone =
    metaPrefix === false
      ? undefined
      : async (fn: FunctionVersion) => {
          const k = `${fn.tenant}\0${fn.name}\0${fn.version}`;
          const now = Date.now();
          if ((versionSeen.get(k) ?? 0) > now) return false;
          const there = await versionState(redis, metaPrefix, fn.tenant, fn.name, fn.version);
          if (there === false) return true;
          if (versionSeen.size >= VERSION_SEEN_MAX) versionSeen.clear();
          versionSeen.set(k, now + VERSION_SEEN_MS);
          return false;
        };
  /**
   * The metadata store published a change of a tenant's function (`{t, f}`: deploy, PATCH, version or function
   * delete) or of the whole tenant (`{t}`, e.g. its deletion): each version of it with instances here that is gone
   * from the store is retired now (Instances.retire), so a deleted version's warm instances free their memory at once instead of at
   * their keep-alive's end. Nothing else reaches them anyway: the gateway resolves `name:N` from the store, and async
   * jobs check (versionGone). A lost message leaves them to the keep-alive, as before.
   */
  function retireDeleted(msg: string) {
    let m: { t?: string; f?: string; k?: string };
    try {
      m = JSON.parse(msg) as { t?: string; f?: string; k?: string };
    } catch {
      return;
    }
    // `k`: an API key changed, no function did
    if (typeof m.t !== 'string' || m.k !== undefined || metaPrefix === false) return;
    const stale = m.f === undefined ? `${m.t}\0` : `${m.t}\0${m.f}\0`;
    for (const k of versionSeen.keys()) if (k.startsWith(stale)) versionSeen.delete(k);
    const seen = new Map<string, FunctionVersion>();
    for (const i of instances.list()) {
      if (i.fn.tenant === m.t && (m.f === undefined || i.fn.name === m.f)) seen.set(`${i.fn.name}\0${i.fn.version}`, i.fn);
    }
    for (const fn of seen.values()) {
      void versionState(redis, metaPrefix, fn.tenant, fn.name, fn.version).then(
        (there) => {
          // null: the tenant is gone from the store that sent this (deleted): its versions went with it
          if (there === true) return;
          instances.retire((x) => x.tenant === fn.tenant && x.name === fn.name && x.version === fn.version);
          // its fast-lane stash (./fn-refs.ts) too, so nothing of the version outlives it in Redis for a day; only
          // a call the gateway resolved just before the delete could still name it (its caller then gets Timeout)
          void redis.del(keys.fnVersion(fnRefOf(fn))).catch(() => {});
        },
        () => {}, // Redis away: the keep-alive retires them
      );
    }
  }
  const ctx: JobContext = { redis, keys, nodeId, retention, logRetention, instances, logs, metrics, log, records, callbacks, ...(versionGone ? { versionGone } : {}) };
  const sweeper = opts.sweeper === false ? undefined : new Sweeper(ctx, bullRedis, opts.sweeper);

  /** true while this node is the only live node on this Redis (refreshed with the tenant scan, every 2 s) */
  let soleNode = false;
  /** calls handed over in-process (./local-dispatch.ts) and still running: close() waits for them */
  const localRuns = new Set<Promise<LocalOutcome>>();
  /**
   * Whether a cold start may run here without the queue (./local-dispatch.ts): only while this is the sole
   * live node on this Redis — then the queue would bring the call to this node anyway; with other nodes,
   * routing may know a warm instance elsewhere, or another node a ready pooled sandbox.
   */
  function coldAllowed(): boolean {
    return soleNode;
  }

  const dispatcher: LocalDispatcher = {
    tryDispatch(call) {
      if (closing || !started) return undefined;
      const hint = instances.canPlaceNow(call.fn);
      if (!hint || (hint === 'cold' && !coldAllowed())) return undefined;
      const run = runLocal(ctx, call, () => instances.acquireNow(call.fn, hint === 'cold', call.deadline));
      if (!run) return undefined;
      localRuns.add(run);
      const done = () => void localRuns.delete(run);
      run.then(done, done);
      return run;
    },
  };
  let unregisterLocal: (() => void) | undefined;
  let started = false;
  const workers = new Map<string, Worker>();
  const knownTenants = new Set<string>();
  const fnCache = new FnCache();
  /**
   * A fast-lane job's function version: inline (then cached), cached, or read from its stash (./fn-refs.ts).
   * A reference gone from Redis too (only if Redis lost data: stashes live 24 h and are refreshed every
   * 10 min while in use) cannot be run; the job is dropped with a warning and its caller gets Timeout.
   */
  function handleFast(d: FastJob, list: string): Promise<void> {
    const attempt = { queueName: list, timestamp: d.createdAt, attempt: 1, maxAttempts: 1, restarted: false };
    if (d.fn) {
      if (d.fnr) fnCache.put(d.fnr, d.fn);
      return processInvocation(ctx, d as JobData, attempt);
    }
    const cached = d.fnr ? fnCache.get(d.fnr) : undefined;
    if (cached) {
      d.fn = cached;
      return processInvocation(ctx, d as JobData, attempt);
    }
    return (d.fnr ? fnCache.load(redis, keys, d.fnr) : Promise.resolve(null)).then((fn) => {
      if (!fn) throw new Error(`function version ${d.fnr} of invocation ${d.id} is gone from Redis`);
      d.fn = fn;
      return processInvocation(ctx, d as JobData, attempt);
    });
  }
  const fast = new FastLaneConsumer(
    redis, keys, nodeId, opts.nodeConcurrency ?? 64,
    handleFast,
    (e) => log.warn({ err: String((e as Error)?.message ?? e) }, 'fast lane error'),
  );
  /** a tenant on the fast lane (its list joins the BLMPOP rotation) */
  function addTenant(t: string) {
    if (!knownTenants.has(t)) {
      knownTenants.add(t);
      fast.setTenants(knownTenants);
    }
  }
  /** a tenant with a BullMQ queue: one worker per node (sync-only tenants cost no BullMQ connections) */
  function addBullTenant(t: string) {
    workerFor(keys.tenantQueue(t), opts.tenantConcurrency ?? 64);
    bullTenants.add(t);
  }
  const idleWorkerMs = opts.idleWorkerMs ?? 10 * 60_000;
  /** per BullMQ queue: jobs running now and when the last one started or ended */
  const activity = new Map<string, { running: number; at: number }>();

  /**
   * Closes the BullMQ workers of tenants that had no job for `idleWorkerMs` and have none waiting, delayed
   * or active (an active job of a dead node needs some worker's stalled-job check); re-creates them when
   * jobs show up again (announcement, or seen in the 2 s re-scan). Keeps a host with many tenants from
   * holding a blocking connection per tenant forever.
   */
  async function reapIdleWorkers(bull: string[]) {
    const now = Date.now();
    const m = redis.pipeline();
    for (const t of bull) {
      const q = `${keys.bullPrefix}:${keys.tenantQueue(t)}`;
      m.llen(`${q}:wait`).zcard(`${q}:delayed`).zcard(`${q}:prioritized`).llen(`${q}:active`);
    }
    const res = (await m.exec()) ?? [];
    bull.forEach((t, i) => {
      const pending = [0, 1, 2, 3].reduce((sum, k) => sum + Number(res[4 * i + k]?.[1] ?? 0), 0);
      const name = keys.tenantQueue(t);
      const w = workers.get(name);
      const a = activity.get(name);
      if (!w && pending > 0) addBullTenant(t);
      else if (w && pending === 0 && (!a || (a.running === 0 && now - a.at > idleWorkerMs))) {
        workers.delete(name);
        activity.delete(name);
        void w.close().catch(() => {});
      }
    });
  }
  const bullTenants = new Set<string>();
  /** finishLostWorker() runs in flight: close() waits for them before closing the record batch and callbacks */
  const lostJobs = new Set<Promise<unknown>>();
  let sub: Redis | undefined;
  let timers: NodeJS.Timeout[] = [];
  let closing = false;
  let offCollector: (() => void) | undefined;

  function workerFor(queueName: string, concurrency: number) {
    if (workers.has(queueName) || closing) return;
    activity.set(queueName, { running: 0, at: Date.now() });
    const w = new Worker<JobData>(queueName, async (job: Job<JobData>) => {
      const a = activity.get(queueName) ?? { running: 0, at: 0 };
      activity.set(queueName, a);
      a.running++;
      a.at = Date.now();
      try {
        return await processJob(ctx, job);
      } finally {
        a.running--;
        a.at = Date.now();
      }
    }, {
      connection: bullConnection(bullRedis),
      prefix: keys.bullPrefix,
      concurrency,
      lockDuration: opts.lockDurationMs ?? 30_000,
      stalledInterval: opts.stalledIntervalMs ?? 30_000,
      maxStalledCount: opts.maxStalledCount ?? 2,
      autorun: true,
    });
    w.on('error', (e) => log.warn({ queue: queueName, err: String(e?.message ?? e) }, 'worker error'));
    // A job whose workers kept dying is failed by BullMQ without running the processor (./process-job.ts):
    // finished when the stalled-job check marks it (before any worker fetches it), and again when a worker fails
    // it — should the node that saw the first event die before writing, the second still does (one write wins).
    const lost = (id: string | undefined, p: Promise<unknown>) => {
      const q = p.catch((e) => log.error({ invocationId: id, err: String((e as Error)?.message ?? e) }, 'finishing a job whose worker was lost failed'));
      lostJobs.add(q);
      void q.finally(() => lostJobs.delete(q));
    };
    w.on('stalled', (jobId) => lost(jobId, Job.fromId<JobData>(w, jobId).then((job) => (job && isStalledOut(job, undefined) ? finishLostWorker(ctx, job) : undefined))));
    w.on('failed', (job, err) => {
      if (isStalledOut(job, err)) lost(job.id, finishLostWorker(ctx, job));
    });
    unwatch.push(metrics.watchRedis(w, 'scheduler'));
    workers.set(queueName, w);
  }

  async function discoverTenants() {
    const now = Date.now();
    const [fastTenants, bull, fastNodes, fresh] = await Promise.all([
      redis.smembers(keys.tenants()), redis.smembers(keys.tenantsBull()),
      redis.smembers(keys.fastNodes()), redis.zrangebyscore(keys.nodes(), now - NODE_STALE_MS, '+inf'),
    ]);
    for (const t of fastTenants) addTenant(t);
    for (const t of bull) bullTenants.add(t);
    await reapIdleWorkers(bull);
    const live = new Set(fresh);
    soleNode = fresh.every((n) => n === nodeId);
    fast.setOrphans(fastNodes.filter((n) => n !== nodeId && !live.has(n) && NODE_ID_RE.test(n)).map((n) => keys.fastNode(n)));
  }

  let beating: Promise<unknown> = Promise.resolve();
  function heartbeat(): Promise<unknown> {
    if (closing) return beating;
    beating = beat();
    return beating;
  }

  async function beat() {
    const now = Date.now();
    const p = pool.stats();
    await redis
      .multi()
      .zadd(keys.nodes(), now, nodeId)
      .zremrangebyscore(keys.nodes(), '-inf', now - 3600_000) // nodes gone for an hour are forgotten
      .hset(keys.node(nodeId), 'capacityMb', instCfg.capacityMb, 'admittedMb', instances.admittedMb, 'instances', instances.list().length, 'pool', JSON.stringify(p.kinds), 'at', now)
      .pexpire(keys.node(nodeId), NODE_STALE_MS)
      .exec();
  }

  /** This node's Redis leftovers of a previous run: advertisements, routed-pending counter, node facts. */
  async function cleanupRedis() {
    let cursor = '0';
    do {
      const [next, found] = await redis.scan(cursor, 'MATCH', `${keys.prefix}:warm:*`, 'COUNT', 500);
      cursor = next;
      if (found.length) {
        const m = redis.pipeline();
        for (const k of found) m.hdel(k, nodeId);
        await m.exec();
      }
    } while (cursor !== '0');
    await redis.del(keys.nodePending(nodeId), keys.node(nodeId));
  }

  return {
    nodeId,
    instances,
    pool,

    async start() {
      await exec.cleanupLeftovers?.(nodeId);
      await cleanupRedis();
      pool.start();
      instances.start();
      await heartbeat();
      await redis.sadd(keys.fastNodes(), nodeId);
      sub = redis.duplicate();
      const invalidations = metaPrefix === false ? undefined : `${metaPrefix}invalidate`;
      sub.on('message', (c: string, msg: string) => {
        if (c === invalidations) retireDeleted(msg);
        else if (msg.startsWith('bull:')) addBullTenant(msg.slice(5));
        else addTenant(msg);
      });
      await sub.subscribe(keys.tenants(), ...(invalidations ? [invalidations] : []));
      await discoverTenants();
      await fast.start();
      workerFor(keys.nodeQueue(nodeId), opts.nodeConcurrency ?? 64);
      callbacks.start();
      sweeper?.start();
      started = true;
      unregisterLocal = registerLocalDispatcher(localKey(redis, keys.prefix), dispatcher);
      timers = [
        setInterval(() => void heartbeat().catch(() => {}), HEARTBEAT_MS),
        setInterval(() => void discoverTenants().catch(() => {}), 2000), // covers a missed pub/sub announcement
      ];
      offCollector = metrics.addCollector(async () => {
        const poolSize: Record<string, number> = {};
        for (const [k, s] of Object.entries(pool.stats().kinds)) poolSize[k] = s.idle;
        const counts = new Map<string, { tenant: string; function: string; count: number }>();
        for (const i of instances.list()) {
          const k = `${i.fn.tenant}\u0000${i.fn.name}`;
          const c = counts.get(k) ?? { tenant: i.fn.tenant, function: i.fn.name, count: 0 };
          c.count++;
          counts.set(k, c);
        }
        // Queue depth per tenant (fast-lane list + BullMQ waiting list): every node reports the same shared
        // numbers, so a dashboard should take max(), not sum(), across nodes.
        const tenants = [...new Set([...knownTenants, ...bullTenants])];
        const queueDepth: Record<string, number> = {};
        try {
          const m = redis.pipeline();
          for (const t of tenants) m.llen(keys.fastTenant(t)).llen(`${keys.bullPrefix}:${keys.tenantQueue(t)}:wait`);
          const res = (await m.exec()) ?? [];
          tenants.forEach((t, i) => (queueDepth[t] = Number(res[2 * i]?.[1] ?? 0) + Number(res[2 * i + 1]?.[1] ?? 0)));
        } catch {
          /* Redis away: no depth this scrape */
        }
        return { poolSize, warmInstances: [...counts.values()], memoryAdmittedBytes: instances.admittedMb * 2 ** 20, memoryCapacityBytes: instCfg.capacityMb * 2 ** 20, queueDepth };
      });
      log.info({ nodeId, capacityMb: instCfg.capacityMb }, 'scheduler started');
    },

    async close(graceMs = 30_000) {
      if (closing) return;
      closing = true;
      unregisterLocal?.();
      const closeStart = Date.now();
      for (const t of timers) clearInterval(t);
      offCollector?.();
      // Stop attracting work first: no routed jobs, no heartbeat (one in flight lands before the ZREM).
      await beating.catch(() => {});
      await redis.zrem(keys.nodes(), nodeId).catch(() => {});
      if (adTimer) clearTimeout(adTimer);
      adTimer = undefined;
      pendingAds.clear();
      await Promise.all([...advertised.values()].map((a) => advertiseWarm(redis, keys, nodeId, a.fn.tenant, a.fn.name, a.fn.version, 0).catch(() => {})));
      advertised.clear();
      sub?.disconnect();
      // Routed jobs pushed just before the withdrawal still land in our list: drain it (bounded) before stopping.
      const drainUntil = Date.now() + Math.min(graceMs, 5000);
      while (Date.now() < drainUntil && (await redis.llen(keys.fastNode(nodeId)).catch(() => 0)) > 0) await new Promise((r) => setTimeout(r, 20));
      await redis.srem(keys.fastNodes(), nodeId).catch(() => {});
      // A worker closed while its connections still initialise leaves a rejected BullMQ promise behind
      // ("Connection is closed" from its INFO probe): let them finish initialising first.
      await Promise.all([...workers.values()].map((w) => w.waitUntilReady().catch(() => {})));
      // Workers stop fetching and wait for their active jobs (which may be waiting locally for capacity).
      const closingWorkers = Promise.all([fast.close(), ...[...workers.values()].map((w) => w.close()), Promise.all([...localRuns])]);
      const timedOut = await Promise.race([closingWorkers.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), graceMs).unref())]);
      if (timedOut) {
        // Jobs still running are left to BullMQ's stalled-job check: their locks lapse and another node retries them.
        await Promise.all([...workers.values()].map((w) => w.close(true).catch(() => {})));
      }
      workers.clear();
      await Promise.all([...lostJobs]);
      await sweeper?.close();
      log.debug({ nodeId, ms: Date.now() - closeStart }, 'close: workers stopped');
      await instances.close(0);
      log.debug({ nodeId, ms: Date.now() - closeStart }, 'close: instances destroyed');
      await pool.close();
      log.debug({ nodeId, ms: Date.now() - closeStart }, 'close: pool destroyed');
      await logs.flushStray();
      await records.close();
      // after the workers: a job that finished during the grace period has queued its callback by now
      await callbacks.close();
      await exec.close?.();
      // Nothing of ours is live now: this removes the node's (empty) cgroup directories as well.
      await exec.cleanupLeftovers?.(nodeId).catch((e) => log.warn({ err: String(e?.message ?? e) }, 'final clean-up failed'));
      await redis.del(keys.node(nodeId), keys.nodePending(nodeId)).catch(() => {});
      for (const u of unwatch) u();
      for (const c of [redis, bullRedis]) {
        if (c.status === 'ready') await c.quit().catch(() => c.disconnect());
        else c.disconnect();
      }
      log.info({ nodeId }, 'scheduler stopped');
    },
  };
}
