/**
 * A deploy that fails after its code layer was written removes that layer at once (services/gateway/deploy.ts),
 * never one something else may use: the REAL image store (services/store, a temp state dir) and the REAL metadata
 * store (the run's Redis), through `app.request()`.
 *
 *  - late failures (no handler file in the code; the tenant's function limit, refused by the version script)
 *    leave no code layer and nothing in the store's tmp/;
 *  - a layer already on disk and used by another function survives a failed deploy of the same bytes;
 *  - a layer that was absent here but is referenced by a version (made on another node) is kept;
 *  - concurrent deploys of the same bytes, one failing and one succeeding, in one gateway and across two
 *    gateways sharing the state dir: the committed version's layer is always there; a layer removed under a
 *    deploy (before its handler check, after its commit) is unpacked again.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { createGateway } from '../../services/gateway/app.ts';
import { bundleDigest, openImageStore, type FsImageStore } from '../../services/store/image-store.ts';
import { createFsImageHarness, deployForm, type Harness } from './gateway-harness.ts';

let h: Harness;
let images: FsImageStore;
let root: string;
let key: string;
let close: (() => Promise<void>) | undefined;
let seq = 0;

/** a bundle nobody deployed before (unique content → unique digest) */
const fresh = (files: Record<string, string> = {}) =>
  tarGz({ 'index.js': `exports.handler = async (e) => e; // ${process.pid}-${++seq}-${Math.random()}`, ...files });
const codeDirs = () => readdirSync(join(root, 'state', 'code')).filter((n) => /^[0-9a-f]{64}$/.test(n));
const tmpEntries = () => readdirSync(join(root, 'state', 'tmp'));
const hasLayer = (code: Buffer) => existsSync(join(root, 'state', 'code', bundleDigest(code).slice(7)));

async function deploy(name: string, code: Buffer, config: Record<string, unknown> = { runtime: 'node' }, k = key, app = h.app) {
  return app.request(`/v1/functions/${name}`, {
    method: 'PUT', headers: { authorization: `Bearer ${k}` }, body: deployForm(config, code),
  });
}

beforeAll(async () => {
  ({ h, images, root, key, close } = await createFsImageHarness('deploy-discard'));
});

afterAll(async () => {
  await close?.();
});

describe('a deploy that fails after writing its code layer', () => {
  it('no handler file in the code: 400 and no code layer left', async () => {
    const before = codeDirs();
    const code = fresh();
    const r = await deploy('nohandler', code, { runtime: 'node', handler: 'missing.handler' });
    expect(r.status).toBe(400);
    expect(((await r.json()) as any).error).toMatchObject({ type: 'InvalidRequest' });
    expect(hasLayer(code)).toBe(false);
    expect(codeDirs()).toEqual(before);
    expect(tmpEntries()).toEqual([]);
    expect(await h.store.functions.list('acme').then((l) => l.map((f) => f.latest.name))).not.toContain('nohandler');
  });

  it('refused by the version script (function limit): 422 and no code layer left; the existing one stays', async () => {
    const k = await h.tenant('limited', { maxFunctions: 1 });
    const first = fresh();
    expect((await deploy('one', first, undefined, k)).status).toBe(201);
    const second = fresh();
    const r = await deploy('two', second, undefined, k);
    expect(r.status).toBe(422);
    expect(hasLayer(second)).toBe(false);
    expect(hasLayer(first)).toBe(true);
    expect(tmpEntries()).toEqual([]);
  });

  it('a layer already used by another function survives a failed deploy of the same bytes', async () => {
    const shared = fresh();
    expect((await deploy('sharer', shared)).status).toBe(201);
    expect((await deploy('sharer-bad', shared, { runtime: 'node', handler: 'missing.handler' })).status).toBe(400);
    expect(hasLayer(shared)).toBe(true);
    // and it still serves the committed version
    const v = await h.store.functions.get('acme', 'sharer');
    expect((await images.codeLayer(v!.codeDigest!)).dir).toBe(join(root, 'state', 'code', bundleDigest(shared).slice(7)));
  });

  it('a layer this request wrote but a version references (made where the layer was) is kept', async () => {
    const code = fresh();
    expect((await deploy('elsewhere', code)).status).toBe(201);
    // this node never had it (another node deployed it and the state dir is synced by digest later)
    await images.state.remove(bundleDigest(code), 'code');
    expect(hasLayer(code)).toBe(false);
    expect((await deploy('elsewhere-bad', code, { runtime: 'node', handler: 'missing.handler' })).status).toBe(400);
    expect(hasLayer(code)).toBe(true);
    expect(tmpEntries()).toEqual([]);
  });

  it('concurrent deploys of the same new bytes, one failing: the committed version keeps its layer, never removed', async () => {
    // in one gateway the failing deploy sees the other in flight and leaves the layer alone: no removal
    // followed by a re-unpack (a third addBundle), during which the new version's layer would be missing
    const add = images.addBundle.bind(images);
    let adds = 0;
    images.addBundle = (b) => (adds++, add(b));
    try {
      for (let i = 0; i < 8; i++) {
        const code = fresh();
        adds = 0;
        const bad = deploy(`race-bad-${i}`, code, { runtime: 'node', handler: 'missing.handler' });
        const good = deploy(`race-good-${i}`, code);
        const [b, g] = await Promise.all([bad, good]);
        expect(b.status).toBe(400);
        expect(g.status, await g.clone().text()).toBe(201);
        expect(hasLayer(code), `round ${i}`).toBe(true);
        expect(adds, `round ${i}`).toBe(2);
      }
    } finally {
      images.addBundle = add;
    }
    expect(tmpEntries()).toEqual([]);
  });

  it('a layer removed under a deploy (by another gateway) before its handler check or after its commit is unpacked again', async () => {
    const add = images.addBundle.bind(images);
    const putVersion = h.store.functions.putVersion.bind(h.store.functions);
    let adds = 0;
    try {
      // removed right after this deploy wrote it: the handler check finds nothing, unpacks again, succeeds
      const before = fresh();
      images.addBundle = async (b) => {
        const layer = await add(b);
        if (++adds === 1) await images.state.remove(layer.digest, 'code');
        return layer;
      };
      expect((await deploy('vanish-before', before)).status).toBe(201);
      expect(adds).toBe(2);
      expect(hasLayer(before)).toBe(true);
      // removed between the version's commit and the end of the request: put back before the 201
      images.addBundle = add;
      const after = fresh();
      h.store.functions.putVersion = async (rec, opts) => {
        const v = await putVersion(rec, opts);
        await images.state.remove(rec.codeDigest!, 'code');
        return v;
      };
      expect((await deploy('vanish-after', after)).status).toBe(201);
      expect(hasLayer(after)).toBe(true);
    } finally {
      images.addBundle = add;
      h.store.functions.putVersion = putVersion;
    }
    expect(tmpEntries()).toEqual([]);
  });

  it('across two gateways sharing the state dir (no shared in-flight set): the committed version keeps its layer', async () => {
    // a second gateway process: its own image store object on the same state dir, the same Redis
    const images2 = await openImageStore({ stateDir: join(root, 'state'), baseDir: join(root, 'base') });
    const app2 = createGateway({ store: h.store, client: h.client, images: images2, adminKeyHash: (await import('../../services/store/keys.ts')).hashKey(h.adminKey), tmpDir: h.tmpDir });
    for (let i = 0; i < 8; i++) {
      const code = fresh();
      const [b, g] = await Promise.all([
        deploy(`x-bad-${i}`, code, { runtime: 'node', handler: 'missing.handler' }, key, h.app),
        deploy(`x-good-${i}`, code, { runtime: 'node' }, key, app2),
      ]);
      expect(b.status).toBe(400);
      expect(g.status, await g.clone().text()).toBe(201);
      expect(hasLayer(code), `round ${i}`).toBe(true);
    }
    expect(tmpEntries()).toEqual([]);
  });
});
