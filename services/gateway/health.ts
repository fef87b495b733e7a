/**
 * @module gateway/health
 * - `GET /healthz` → 200 `{status: "ok"}` while the process serves HTTP (liveness).
 * - `GET /readyz` → 200 `{status: "ready", redis: true, scheduler: true}` only when Redis answers and a
 *   scheduler node has a fresh heartbeat (the client's `ready()`); else 503 Unavailable with both flags.
 * - `GET /metrics` → Prometheus text from the observability part (404 when none is plugged in).
 */
import type { Hono } from 'hono';
import { NotFound, Unavailable } from '../common/errors.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';

/** 1 s: a probe that waits longer than that is itself the answer. */
const READY_PROBE_MS = 1000;

function within<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p.catch(() => fallback), new Promise<T>((res) => (t = setTimeout(() => res(fallback), ms)))]).finally(() => clearTimeout(t));
}

export function registerHealth(app: Hono<GatewayEnv>, deps: GatewayDeps) {
  app.get('/healthz', (c) => c.json({ status: 'ok' }));

  app.get('/readyz', async (c) => {
    const [redis, scheduler] = await Promise.all([within(deps.store.ping(), READY_PROBE_MS, false), within(deps.client.ready(), READY_PROBE_MS, false)]);
    if (!redis || !scheduler) {
      const what = !redis ? 'Redis does not answer' : 'no scheduler node is alive';
      throw new Unavailable(`not ready: ${what}`, { redis, scheduler });
    }
    return c.json({ status: 'ready', redis, scheduler });
  });

  app.get('/metrics', async (c) => {
    if (!deps.observability?.metrics) throw new NotFound('metrics are not enabled');
    const m = await deps.observability.metrics();
    return c.body(m.body, 200, { 'content-type': m.contentType });
  });
}
