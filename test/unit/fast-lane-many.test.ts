/**
 * services/scheduler/fast-lane.ts fastPushMany against a real Redis: several jobs in one script call — each one's
 * queued record, its list (tenant list, or a node's list when routed), in order, with the lists' TTLs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { randomUUID } from 'node:crypto';
import { redisUrl } from '../helpers/redis.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { fastPush, fastPushMany } from '../../services/scheduler/fast-lane.ts';
import type { JobData } from '../../services/scheduler/job.ts';
import type { FunctionVersion } from '../../services/common/model.ts';

let redis: Redis;
beforeAll(() => {
  redis = new Redis(redisUrl());
});
afterAll(async () => {
  await redis.quit();
});

const fnOf = (tenant: string, name: string): FunctionVersion => ({
  tenant, name, version: 1, runtime: 'exec', handler: 'run', codeDigest: 'sha256:x', memoryMb: 128, timeoutMs: 1000,
  env: {}, concurrency: 1, public: false, createdAt: new Date(0).toISOString(),
});
const job = (fn: FunctionVersion, id: string): JobData => ({ id, mode: 'sync', fn, payload: { b: '' } as unknown as JobData['payload'], createdAt: Date.now(), deadline: Date.now() + 1000 });

describe('fast lane: many jobs in one push', () => {
  it('writes every record and pushes every job in order, routing each on its own', async () => {
    const prefix = `fl-${randomUUID().slice(0, 8)}`;
    const keys = createKeys(prefix);
    try {
      // node n1 is alive and advertises a warm instance of (a, f, 1)
      await redis.zadd(keys.nodes(), Date.now(), 'n1');
      await redis.hset(keys.warm('a', 'f', 1), 'n1', String(Date.now() + 60_000));
      const items = [
        { fn: fnOf('a', 'f'), id: 'j1' }, { fn: fnOf('a', 'g'), id: 'j2' }, { fn: fnOf('b', 'h'), id: 'j3' }, { fn: fnOf('a', 'g'), id: 'j4' },
      ].map(({ fn, id }) => ({ data: job(fn, id), recJson: JSON.stringify({ id }), listTtlMs: 30_000 }));
      const routed = await fastPushMany(redis, keys, items, { recordTtlS: 60, routing: true, maxPending: 64, staleMs: 3000 });
      expect(routed).toEqual(['n1', '', '', '']);
      const ids = async (list: string) => (await redis.lrange(list, 0, -1)).map((j) => (JSON.parse(j) as JobData).id);
      expect(await ids(keys.fastNode('n1'))).toEqual(['j1']);
      expect(await ids(keys.fastTenant('a'))).toEqual(['j4', 'j2']); // LPUSH: the consumer pops from the right, j2 first
      expect(await ids(keys.fastTenant('b'))).toEqual(['j3']);
      for (const [t, id] of [['a', 'j1'], ['a', 'j2'], ['b', 'j3'], ['a', 'j4']] as const) {
        expect(await redis.hgetall(keys.record(t, id))).toEqual({ s: 'queued', r: JSON.stringify({ id }) });
        expect(await redis.ttl(keys.record(t, id))).toBeGreaterThan(50);
      }
      for (const l of [keys.fastNode('n1'), keys.fastTenant('a'), keys.fastTenant('b')]) expect(await redis.pttl(l)).toBeGreaterThan(20_000);
      // one job: the same script, the same answer shape as before
      expect(await fastPush(redis, keys, job(fnOf('a', 'f'), 'j5'), '{}', { recordTtlS: 60, listTtlMs: 30_000, routing: false, maxPending: 64, staleMs: 3000 })).toBe('');
      expect(await fastPushMany(redis, keys, [], { recordTtlS: 60, routing: true, maxPending: 64, staleMs: 3000 })).toEqual([]);
    } finally {
      const ks = await redis.keys(`${prefix}:*`);
      if (ks.length) await redis.del(...ks);
    }
  });
});
