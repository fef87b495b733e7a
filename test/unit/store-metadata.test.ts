/**
 * The metadata store's cache around a deploy, on the run's real Redis: the process that wrote a new version
 * serves it from its cache at once (no Redis read on a just-deployed function's first call), its own
 * invalidation echo does not drop that entry, and another process's write still does. Entries in use are
 * read ahead in the background before they run out.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FunctionVersion } from '../../services/common/model.ts';
import { createMetadataStore, type MetadataStore } from '../../services/store/metadata.ts';
import { MetadataCache } from '../../services/store/metadata-cache.ts';
import type { NewVersion } from '../../services/store/functions.ts';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';

const prefix = `meta-${randomUUID().slice(0, 8)}:`;
let a: MetadataStore;
let b: MetadataStore;
/** HGETs A's connection sent (the function lookups that missed A's cache) */
let aReads = 0;

beforeAll(async () => {
  const ra = new Redis(redisUrl());
  const hget = ra.hget.bind(ra) as (...args: unknown[]) => Promise<string | null>;
  (ra as unknown as { hget: (...args: unknown[]) => Promise<string | null> }).hget = (...args: unknown[]) => {
    aReads++;
    return hget(...args);
  };
  // caches far longer than the test: only writes and invalidations change what they serve
  a = createMetadataStore(ra, prefix, { cacheTtlMs: 3_600_000 });
  b = createMetadataStore(new Redis(redisUrl()), prefix, { cacheTtlMs: 3_600_000 });
  await a.tenants.create('acme');
});

afterAll(async () => {
  for (const s of [a, b]) {
    await s?.close();
    s?.redis.disconnect();
  }
  const r = new Redis(redisUrl());
  const keys = await r.keys(`${prefix}*`);
  if (keys.length) await r.del(...keys);
  r.disconnect();
});

const version = (name: string, memoryMb: number): NewVersion => ({
  tenant: 'acme', name, runtime: 'exec', handler: 'run', codeDigest: null, memoryMb, timeoutMs: 1000, env: { A: '1' },
  concurrency: 1, public: false, createdAt: new Date(0).toISOString(),
});

/**
 * Resolves once A's subscription has handled everything published on the channel so far: Redis delivers one
 * connection's publishes to a subscriber in order, so when a marker sent after them has taken effect in A's
 * cache (it drops a primed entry of another tenant), the earlier messages (A's own echo) were handled too.
 */
async function echoesHandled(): Promise<void> {
  const marker = `marker-${randomUUID().slice(0, 6)}`;
  const probe = { ...version('probe', 16), tenant: marker, version: 1 } as FunctionVersion;
  a.cache.primeFn(probe);
  await a.redis.publish(`${prefix}invalidate`, JSON.stringify({ t: marker, o: 'test' }));
  let loads = 0;
  await until(() => a.cache.fn(marker, 'probe', undefined, async () => (loads++, null)).then(() => loads), (n) => n > 0);
}

describe('metadata cache around a deploy', () => {
  it('serves a just-deployed version from the writer\'s cache, also after its own invalidation came back', async () => {
    const v1 = await a.functions.putVersion(version('f', 128), { maxFunctions: 10 });
    expect(v1.version).toBe(1);
    const before = aReads;
    expect(await a.getFunction('acme', 'f')).toEqual(v1);
    expect(await a.getFunction('acme', 'f', 1)).toEqual(v1);
    await echoesHandled();
    expect(await a.getFunction('acme', 'f')).toEqual(v1);
    expect(aReads).toBe(before);
    // what a read from Redis returns is the same record, field for field
    expect(await b.getFunction('acme', 'f')).toEqual(v1);
  });

  it('a later version written by another process replaces it', async () => {
    const v1 = await a.functions.putVersion(version('g', 128), { maxFunctions: 10 });
    expect(await a.getFunction('acme', 'g')).toEqual(v1);
    const v2 = await b.functions.putVersion(version('g', 64), { maxFunctions: 10 });
    await until(() => a.getFunction('acme', 'g'), (f) => f?.version === v2.version);
    expect((await a.getFunction('acme', 'g'))!.memoryMb).toBe(64);
    // and a delete by the other process makes it gone here
    await b.functions.delete('acme', 'g');
    await until(() => a.getFunction('acme', 'g'), (f) => f === null);
  });
});

describe('metadata cache read-ahead', () => {
  const rec = (id: string) => ({ tenant: 't', id, createdAt: '' });

  it('re-reads an entry in use past half its life in the background, serving the cached one meanwhile', async () => {
    const c = new MetadataCache({ ttlMs: 300 });
    let loads = 0;
    let finish!: (v: ReturnType<typeof rec>) => void;
    const load = () => (++loads === 1 ? Promise.resolve(rec('first')) : new Promise<ReturnType<typeof rec>>((r) => (finish = r)));
    expect((await c.key('a', load))!.id).toBe('first');
    // every call answers at once from the entry, also the one that starts the read-ahead (whose load is pending)
    await until(async () => ((await c.key('a', load))!.id === 'first' ? loads : -1), (n) => n === 2, 2000, 10);
    expect((await c.key('a', load))!.id).toBe('first');
    expect(loads).toBe(2); // one read-ahead at a time
    finish(rec('second'));
    await until(() => c.key('a', load), (r) => r!.id === 'second');
    expect(loads).toBe(2);
  });

  it('sends the read-ahead after the request that found the entry half-used, not in its tick', async () => {
    const c = new MetadataCache({ ttlMs: 400 });
    let loads = 0;
    const load = async () => (++loads, rec(`v${loads}`));
    await c.key('a', load);
    await new Promise((r) => setTimeout(r, 220)); // past half its life
    expect((await c.key('a', load))!.id).toBe('v1');
    await new Promise((r) => setImmediate(r));
    expect(loads).toBe(1); // that request is answered before the read goes out
    await until(() => loads, (n) => n === 2, 2000, 5);
    await until(() => c.key('a', load), (r) => r!.id === 'v2');
    expect(loads).toBe(2);
  });

  it('keeps nothing a read-ahead brings back after the entry was invalidated', async () => {
    const c = new MetadataCache({ ttlMs: 300 });
    let loads = 0;
    let finish!: (v: ReturnType<typeof rec>) => void;
    const load = () => (++loads === 1 ? Promise.resolve(rec('old')) : loads === 2 ? new Promise<ReturnType<typeof rec>>((r) => (finish = r)) : Promise.resolve(rec('fresh')));
    await c.key('a', load);
    await until(async () => (await c.key('a', load), loads), (n) => n === 2, 2000, 10);
    c.invalidate({ k: 'a' });
    finish(rec('stale'));
    await Promise.resolve();
    expect((await c.key('a', load))!.id).toBe('fresh');
    expect(loads).toBe(3);
  });
});
