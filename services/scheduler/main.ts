/**
 * @module scheduler/main
 * A scheduler-only node process: `node --import tsx services/scheduler/main.ts`.
 * (`fnhost start` runs the gateway and a scheduler in one process; this entry is for extra nodes and for
 * tests that kill a worker process.)
 *
 * Environment: REDIS_URL (required), FNHOST_NODE_ID (default: host name), FNHOST_PREFIX (default fnhost),
 * FNHOST_CAPACITY_MB, FNHOST_KEEPALIVE_MS, FNHOST_LOCK_MS, FNHOST_STALLED_MS, FNHOST_STATE_DIR /
 * FNHOST_BASE_DIR (image store), FNHOST_POOL (JSON of PoolConfig.kinds, e.g. {"node":{"min":1,"max":4}}).
 * Prints one line `{"ready": "<nodeId>"}` on stdout once it takes jobs; SIGTERM/SIGINT shut it down
 * gracefully (exit 0 when nothing is left).
 */
import { openImageStore } from '../store/index.ts';
import { Attr } from '../common/telemetry.ts';
import { initTracing } from '../common/tracing-setup.ts';
import { createScheduler, defaultNodeId } from './scheduler.ts';
import { createRuntimeExecutor } from './runtime-executor.ts';

const num = (v: string | undefined) => (v ? Number(v) : undefined);

async function main() {
  const redisUrl = process.env.REDIS_URL;
  if (!redisUrl) throw new Error('REDIS_URL is required');
  const nodeId = process.env.FNHOST_NODE_ID ?? defaultNodeId();
  const tracing = await initTracing({ serviceName: 'fnhost-scheduler', resource: { [Attr.node]: nodeId } });
  const images = await openImageStore({ stateDir: process.env.FNHOST_STATE_DIR, baseDir: process.env.FNHOST_BASE_DIR });
  const sched = createScheduler({
    redisUrl,
    nodeId,
    prefix: process.env.FNHOST_PREFIX,
    executor: createRuntimeExecutor({ images, nodeId }),
    capacityMb: num(process.env.FNHOST_CAPACITY_MB),
    keepAliveMs: num(process.env.FNHOST_KEEPALIVE_MS),
    lockDurationMs: num(process.env.FNHOST_LOCK_MS),
    stalledIntervalMs: num(process.env.FNHOST_STALLED_MS),
    pool: process.env.FNHOST_POOL ? { kinds: JSON.parse(process.env.FNHOST_POOL) } : undefined,
  });
  await sched.start();
  process.stdout.write(`${JSON.stringify({ ready: sched.nodeId })}\n`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await sched.close();
    await tracing.shutdown();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
}

main().catch((e) => {
  process.stderr.write(`scheduler: ${(e as Error)?.stack ?? e}\n`);
  process.exit(1);
});
