/**
 * `DELETE /v1/images/:name` refuses while ANY retained version of a function runs on the image, not only the
 * latest (services/store/functions.ts beginImageDelete): `name:1` stays invocable while its function exists, and
 * on a deleted image it would fail NotFound at its next cold start. The 409 names the versions; a refused delete
 * changes nothing. The users check reads the tenant's function names first and the script refuses if they changed
 * in between (then reads them again), so a function created in that window is still seen.
 * REAL image store (temp state dir, imported OCI layouts) and REAL metadata store (the run's Redis), via app.request().
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import type { FsImageStore } from '../../services/store/image-store.ts';
import { FunctionStore, type NewVersion } from '../../services/store/functions.ts';
import type { RuntimeName } from '../../services/common/model.ts';
import { redisUrl } from '../helpers/redis.ts';
import { createFsImageHarness, type FsImageHarness, type Harness } from './gateway-harness.ts';

let h: Harness;
let images: FsImageStore;
let key: string;
let close: (() => Promise<void>) | undefined;
let importImage: FsImageHarness['importImage'];
let deploy: FsImageHarness['deploy'];
let call: FsImageHarness['call'];

beforeAll(async () => {
  ({ h, images, key, close, importImage, deploy, call } = await createFsImageHarness('image-delete-versions'));
});

afterAll(async () => {
  await close?.();
});

const errorOf = async (r: Response) => ((await r.json()) as { error: Record<string, unknown> }).error;
const nodeCode = () => tarGz({ 'index.js': 'exports.handler = async () => 1' });

const rec = (name: string, runtime: RuntimeName): NewVersion => ({
  tenant: 'acme', name, runtime, handler: '', memoryMb: 128, timeoutMs: 1000, env: {}, concurrency: 1, public: false,
  codeDigest: null, createdAt: new Date().toISOString(),
});

describe('DELETE /v1/images/:name and older versions', () => {
  it('refuses while only an older version runs on the image (409 naming name:N), changing nothing; goes through once the function is deleted', async () => {
    await importImage('v1img');
    expect((await deploy('fv1', { runtime: 'image:v1img' })).status).toBe(201);
    expect((await deploy('fv1', { runtime: 'node' }, nodeCode())).status).toBe(201);
    expect((await deploy('fv1', { runtime: 'image:v1img' })).status).toBe(201);
    expect((await deploy('fv1', { runtime: 'node' }, nodeCode())).status).toBe(201);
    // another function whose every version is elsewhere is no user
    expect((await deploy('fv1other', { runtime: 'node' }, nodeCode())).status).toBe(201);
    const gen = await h.redis.get(`${h.prefix}imggen:acme`);

    const del = await call('DELETE', '/v1/images/v1img');
    expect(del.status).toBe(409);
    const err = await errorOf(del);
    expect(err).toMatchObject({ type: 'Conflict', field: 'name', image: 'v1img', functions: ['fv1'], versions: ['fv1:1', 'fv1:3'] });
    expect(String(err.message)).toMatch(/fv1:1, fv1:3/);
    // nothing changed: the image, the generation, no mark; fv1:1 still resolves to the image
    await expect(images.resolve('v1img', 'acme')).resolves.toMatchObject({ ref: 'v1img' });
    expect(await h.redis.get(`${h.prefix}imggen:acme`)).toBe(gen);
    expect(await h.redis.keys(`${h.prefix}imgdel:*`)).toEqual([]);
    const v1 = await call('GET', '/v1/functions/fv1:1');
    expect(v1.status).toBe(200);
    expect(((await v1.json()) as { runtime: string }).runtime).toBe('image:v1img');

    expect((await call('DELETE', '/v1/functions/fv1')).status).toBe(204);
    expect((await call('DELETE', '/v1/images/v1img')).status).toBe(204);
    await expect(images.resolve('v1img', 'acme')).rejects.toMatchObject({ type: 'NotFound' });
    expect(await h.redis.keys(`${h.prefix}imgdel:*`)).toEqual([]);
  });

  it('a function whose old version runs on the image, created between the names read and the check, is still seen', async () => {
    const redis = new Redis(redisUrl());
    try {
      const fns = new FunctionStore(redis, h.prefix);
      const hkeys = redis.hkeys.bind(redis);
      let reads = 0;
      // the first read of the names returns, then another gateway commits late:1 (on the image) and late:2 (elsewhere)
      redis.hkeys = (async (k: string) => {
        const names = await hkeys(k);
        if (++reads === 1) {
          await h.store.functions.putVersion(rec('late', 'image:w1'), { maxFunctions: 100 });
          await h.store.functions.putVersion(rec('late', 'node'), { maxFunctions: 100 });
        }
        return names;
      }) as typeof redis.hkeys;
      const e = await fns.beginImageDelete('acme', 'w1').then(() => null, (x: unknown) => x);
      expect(e).toMatchObject({ type: 'Conflict', details: { versions: ['late:1'] } });
      expect(reads).toBe(2);
      expect(await redis.exists(`${h.prefix}imgdel:acme:w1`)).toBe(0);
    } finally {
      redis.disconnect();
      await h.store.functions.delete('acme', 'late').catch(() => {});
    }
  });

  it('names that keep changing: a typed Conflict after a few reads, nothing written', async () => {
    const redis = new Redis(redisUrl());
    try {
      const fns = new FunctionStore(redis, h.prefix);
      const hkeys = redis.hkeys.bind(redis);
      let n = 0;
      redis.hkeys = (async (k: string) => {
        const names = await hkeys(k);
        await h.store.functions.putVersion(rec(`churn${++n}`, 'node'), { maxFunctions: 100 });
        return names;
      }) as typeof redis.hkeys;
      const gen = await redis.get(`${h.prefix}imggen:acme`);
      const e = await fns.beginImageDelete('acme', 'w2').then(() => null, (x: unknown) => x);
      expect(e).toMatchObject({ type: 'Conflict', details: { field: 'name', image: 'w2' } });
      expect(n).toBeGreaterThan(1);
      expect(await redis.get(`${h.prefix}imggen:acme`)).toBe(gen);
      expect(await redis.exists(`${h.prefix}imgdel:acme:w2`)).toBe(0);
      for (let i = 1; i <= n; i++) await h.store.functions.delete('acme', `churn${i}`);
    } finally {
      redis.disconnect();
    }
  });
});
