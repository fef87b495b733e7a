/**
 * Deleting one version releases its image: `DELETE /v1/images/:name`, refused (409 naming `name:N`) only because an
 * older version runs on the image, goes through once that version is deleted — the function itself stays. And the
 * two deletes racing (each one Redis script) never leave an image deleted while a version that runs on it remains.
 * REAL image store (temp state dir, imported OCI layouts) and REAL metadata store (the run's Redis), via app.request().
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import type { FsImageStore } from '../../services/store/image-store.ts';
import { createFsImageHarness, type FsImageHarness, type Harness } from './gateway-harness.ts';

let h: Harness;
let images: FsImageStore;
let key: string;
let close: (() => Promise<void>) | undefined;
let seq = 0;
let importImage: FsImageHarness['importImage'];
let deploy: FsImageHarness['deploy'];
let call: FsImageHarness['call'];

beforeAll(async () => {
  ({ h, images, key, close, importImage, deploy, call } = await createFsImageHarness('version-delete-image'));
});
afterAll(async () => {
  await close?.();
});

const errorOf = async (r: Response) => ((await r.json()) as { error: Record<string, unknown> }).error;
const nodeCode = () => tarGz({ 'index.js': `exports.handler = async () => ${++seq}` });

describe('deleting a version and the image it ran on', () => {
  it('an image refused only because of an older version is deleted once that version is; the function stays', async () => {
    await importImage('vdimg');
    expect((await deploy('vd', { runtime: 'image:vdimg' })).status).toBe(201);
    expect((await deploy('vd', { runtime: 'node' }, nodeCode())).status).toBe(201);
    expect((await deploy('vd', { runtime: 'image:vdimg' })).status).toBe(201);
    expect((await deploy('vd', { runtime: 'node' }, nodeCode())).status).toBe(201);

    const refused = await call('DELETE', '/v1/images/vdimg');
    expect(refused.status).toBe(409);
    expect(await errorOf(refused)).toMatchObject({ type: 'Conflict', versions: ['vd:1', 'vd:3'] });

    expect((await call('DELETE', '/v1/functions/vd/versions/1')).status).toBe(204);
    const still = await call('DELETE', '/v1/images/vdimg');
    expect(still.status).toBe(409);
    expect(await errorOf(still)).toMatchObject({ type: 'Conflict', versions: ['vd:3'] });
    await expect(images.resolve('vdimg', 'acme')).resolves.toMatchObject({ ref: 'vdimg' });

    expect((await call('DELETE', '/v1/functions/vd/versions/3')).status).toBe(204);
    expect((await call('DELETE', '/v1/images/vdimg')).status).toBe(204);
    await expect(images.resolve('vdimg', 'acme')).rejects.toMatchObject({ type: 'NotFound' });
    expect(await h.redis.keys(`${h.prefix}imgdel:*`)).toEqual([]);
    const fn = await call('GET', '/v1/functions/vd');
    expect(fn.status).toBe(200);
    expect((await fn.json()) as { version: number; versions: { version: number }[] }).toMatchObject({ version: 4, versions: [{ version: 2 }, { version: 4 }] });
  });

  it('a version delete racing the image delete: the image goes only if the version went first, never while the version remains', async () => {
    for (let round = 0; round < 8; round++) {
      const img = `rimg${round}`;
      const fn = `rv${round}`;
      await importImage(img);
      expect((await deploy(fn, { runtime: `image:${img}` })).status).toBe(201);
      expect((await deploy(fn, { runtime: 'node' }, nodeCode())).status).toBe(201);
      const [dv, di] = await Promise.all([call('DELETE', `/v1/functions/${fn}/versions/1`), call('DELETE', `/v1/images/${img}`)]);
      expect(dv.status).toBe(204);
      expect([204, 409]).toContain(di.status);
      const imageThere = await images.resolve(img, 'acme').then(() => true, () => false);
      expect(imageThere).toBe(di.status === 409);
      expect(await h.store.functions.get('acme', fn, 1)).toBeNull();
      if (di.status === 409) expect((await call('DELETE', `/v1/images/${img}`)).status).toBe(204);
      await expect(images.resolve(img, 'acme')).rejects.toMatchObject({ type: 'NotFound' });
    }
  });

  it('a refused version delete (the latest) keeps the image held', async () => {
    await importImage('keepimg');
    expect((await deploy('kv', { runtime: 'image:keepimg' })).status).toBe(201);
    expect((await call('DELETE', '/v1/functions/kv/versions/1')).status).toBe(409);
    const r = await call('DELETE', '/v1/images/keepimg');
    expect(r.status).toBe(409);
    expect(await errorOf(r)).toMatchObject({ versions: ['kv:1'] });
    await expect(images.resolve('keepimg', 'acme')).resolves.toMatchObject({ ref: 'keepimg' });
  });
});
