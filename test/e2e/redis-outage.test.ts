/**
 * Redis unreachable → 503 Unavailable, and recovery without a restart. The host runs its embedded
 * redis-server (as `npm start` does); the test freezes it with SIGSTOP (a Redis that accepts but never
 * answers: the worst case, no connection error to react to), checks that requests fail fast with 503 and
 * Retry-After rather than hang, that /readyz says not ready, then SIGCONT and everything answers again.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { deployForm, e2eSkipReason, startTestHost, until, type TestHost } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`redis-outage e2e skipped: ${skip}`);

describe.skipIf(!!skip)('Redis unreachable', () => {
  let t: TestHost;
  let key: string;
  let redisPid = 0;

  beforeAll(async () => {
    t = await startTestHost('outage', {}, { embeddedRedis: true });
    redisPid = Number(readFileSync(join(t.stateDir, 'redis', 'redis.pid'), 'utf8').trim());
    key = await t.tenant('acme');
    const r = await t.req('PUT', '/v1/functions/echo', { key, body: deployForm({ runtime: 'node' }, tarGz({ 'index.js': 'exports.handler = async (e) => e;' })) });
    expect(r.status).toBe(201);
  }, 60_000);
  afterAll(async () => {
    if (redisPid) process.kill(redisPid, 'SIGCONT');
    await t?.close();
  }, 60_000);

  it('answers 503 Unavailable (fast, with Retry-After) while Redis is frozen, and recovers after', async () => {
    const invoke = () => t.req('POST', '/v1/functions/echo/invoke', { key, body: '"x"', headers: { 'content-type': 'application/json' } });
    expect((await invoke()).status).toBe(200);

    process.kill(redisPid, 'SIGSTOP');
    try {
      const t0 = performance.now();
      const list = await t.req('GET', '/v1/functions', { key });
      const ms = performance.now() - t0;
      expect(list.status).toBe(503);
      expect(list.headers.get('retry-after')).toBe('1');
      expect(((await list.json()) as { error: { type: string } }).error.type).toBe('Unavailable');
      // bounded by the gateway's Redis command timeout (2 s), not by a TCP or client default
      expect(ms).toBeLessThan(5000);
      expect((await t.req('GET', '/readyz')).status).toBe(503);
      expect((await t.req('GET', '/healthz')).status).toBe(200);
      const inv = await invoke();
      expect(inv.status).toBe(503);
      expect(((await inv.json()) as { error: { type: string } }).error.type).toBe('Unavailable');
    } finally {
      process.kill(redisPid, 'SIGCONT');
    }

    await until(async () => (await t.req('GET', '/readyz')).status === 200, 15_000, 'readyz after Redis came back');
    expect((await t.req('GET', '/v1/functions', { key })).status).toBe(200);
    const again = await until(async () => {
      const r = await invoke();
      return r.status === 200 ? r : (await r.arrayBuffer(), null);
    }, 15_000, 'an invocation after Redis came back');
    expect(await again.text()).toBe('x');
  }, 60_000);
});
