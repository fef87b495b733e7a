/**
 * FunctionStore.codeDigests on the run's real Redis: the code digests every version of every listed tenant's
 * functions names (gc's keep set, a failed deploy's reference check), read in two pipelined round trips
 * however many functions there are.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FunctionStore, type NewVersion } from '../../services/store/functions.ts';
import { createMetadataStore, type MetadataStore } from '../../services/store/metadata.ts';
import { redisUrl } from '../helpers/redis.ts';

const prefix = `coderefs-${randomUUID().slice(0, 8)}:`;
let redis: Redis;
let store: MetadataStore;

beforeAll(async () => {
  redis = new Redis(redisUrl());
  store = createMetadataStore(redis, prefix, { cacheTtlMs: 0 });
  for (const t of ['t1', 't2', 't3']) await store.tenants.create(t);
});

afterAll(async () => {
  await store?.close();
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
});

const digest = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;
const version = (tenant: string, name: string, codeDigest: string | null): NewVersion => ({
  tenant, name, runtime: 'exec', handler: 'run', codeDigest, memoryMb: 64, timeoutMs: 1000, env: {},
  concurrency: 1, public: false, createdAt: new Date(0).toISOString(),
});

describe('codeDigests', () => {
  it('names every version\'s code (old versions too), of the listed tenants only, and skips image-only versions', async () => {
    const fns = store.functions;
    await fns.putVersion(version('t1', 'a', digest(1)), { maxFunctions: 100 });
    await fns.putVersion(version('t1', 'a', digest(2)), { maxFunctions: 100 }); // v1's code is still named
    await fns.putVersion(version('t1', 'img', null), { maxFunctions: 100 });
    await fns.putVersion(version('t2', 'b', digest(2)), { maxFunctions: 100 });
    await fns.putVersion(version('t2', 'gone', digest(3)), { maxFunctions: 100 });
    await fns.delete('t2', 'gone');
    await fns.putVersion(version('t3', 'c', digest(4)), { maxFunctions: 100 });

    expect(await fns.codeDigests(['t1', 't2'])).toEqual(new Set([digest(1), digest(2)]));
    expect(await fns.codeDigests(['t3', 'nobody'])).toEqual(new Set([digest(4)]));
    expect(await fns.codeDigests([])).toEqual(new Set());
  });

  it('reads in two round trips however many functions there are', async () => {
    const fns = store.functions;
    const want = new Set<string>();
    for (let i = 0; i < 60; i++) {
      await fns.putVersion(version('t3', `many-${i}`, digest(100 + i)), { maxFunctions: 1000 });
      want.add(digest(100 + i));
    }
    want.add(digest(4));
    // a separate connection whose every command (pipelined or not) is counted per round trip
    const counted = new Redis(redisUrl());
    try {
      let roundTrips = 0;
      const pipeline = counted.pipeline.bind(counted);
      counted.pipeline = ((...args: Parameters<typeof pipeline>) => {
        const p = pipeline(...args);
        const exec = p.exec.bind(p);
        p.exec = ((...a: Parameters<typeof exec>) => (roundTrips++, exec(...a))) as typeof exec;
        return p;
      }) as typeof pipeline;
      const sendCommand = counted.sendCommand.bind(counted);
      let direct = 0; // commands sent, pipelined or not
      counted.sendCommand = ((...a: Parameters<typeof sendCommand>) => (direct++, sendCommand(...a))) as typeof sendCommand;
      const mine = new FunctionStore(counted, prefix);
      await counted.ping(); // connected: the connection's own start-up commands are behind us
      direct = 0;
      expect(await mine.codeDigests(['t3'])).toEqual(want);
      expect(roundTrips).toBe(2);
      expect(direct).toBe(62); // 1 HKEYS + 61 HVALS, all inside those two pipelines
    } finally {
      counted.disconnect();
    }
  });
});
