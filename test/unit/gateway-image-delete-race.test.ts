/**
 * `DELETE /v1/images/:name` against deploys of `runtime: "image:<name>"` (services/gateway/images.ts, deploy.ts,
 * store/functions.ts): never both succeed, i.e. no function's version is left naming a deleted image.
 * REAL image store (a temp state dir, imported OCI layouts) and REAL metadata store (the run's Redis), through
 * `app.request()`; a second gateway is a second set of store objects on the same state dir, Redis and prefix.
 *
 * Interleavings are forced, not timed: the image store's resolve() is wrapped so that a deploy stops right after
 * it found its image (before its commit), and deleteImage() so that a delete stops between its users check and
 * the record's removal, until the test lets them go.
 *
 *  - a delete during a deploy's window goes through, and the deploy then finds no image: 400, nothing committed,
 *    the code layer it wrote removed;
 *  - a deploy during a delete's window is refused: 409 (the image is being deleted);
 *  - the same with the delete in another gateway;
 *  - concurrent deploys of one image still succeed, also when another image of the tenant is deleted meanwhile;
 *  - a delete whose gateway dies mid-way blocks deploys of that image only until its mark expires;
 *  - PATCH (same runtime, committed only while its base is the latest) cannot bring a deleted image back;
 *  - no Redis key of the guard outlives its delete or its tenant.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { createGateway } from '../../services/gateway/app.ts';
import { bundleDigest, openImageStore, type FsImageStore } from '../../services/store/image-store.ts';
import type { RuntimeName } from '../../services/common/model.ts';
import { IMAGES_CHANGED, type NewVersion } from '../../services/store/functions.ts';
import { hashKey } from '../../services/store/keys.ts';
import { createMetadataStore, type MetadataStore } from '../../services/store/metadata.ts';
import { makeTar, writeOciLayout } from '../fixtures/oci/tars.ts';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { createFsImageHarness, deployForm, type Harness } from './gateway-harness.ts';

let h: Harness;
let images: FsImageStore;
let root: string;
let key: string;
let close: (() => Promise<void>) | undefined;
/** the second gateway: its own image store object, Redis connection and metadata store (cache on, subscribed) */
let app2: ReturnType<typeof createGateway>;
let images2: FsImageStore;
let store2: MetadataStore;
let redis2: Redis;
let seq = 0;

type App = ReturnType<typeof createGateway>;

beforeAll(async () => {
  ({ h, images, root, key, close } = await createFsImageHarness('image-delete-race'));
  images2 = await openImageStore({ stateDir: join(root, 'state'), baseDir: join(root, 'base') });
  redis2 = new Redis(redisUrl(), { maxRetriesPerRequest: 1 });
  store2 = createMetadataStore(redis2, h.prefix);
  app2 = createGateway({ store: store2, client: h.client, images: images2, adminKeyHash: hashKey(h.adminKey), tmpDir: h.tmpDir });
});

afterAll(async () => {
  await store2?.close();
  redis2?.disconnect();
  await close?.();
});

async function importImage(name: string, tenant = 'acme'): Promise<void> {
  const dir = join(root, `layout-${name}-${++seq}`);
  writeOciLayout(dir, [makeTar([{ path: 'hello', data: `${name} ${seq}` }])]);
  await images.importImage(tenant, name, dir);
  rmSync(dir, { recursive: true, force: true });
}

function deploy(name: string, config: Record<string, unknown>, opts: { app?: App; code?: Buffer; k?: string } = {}) {
  return (opts.app ?? h.app).request(`/v1/functions/${name}`, {
    method: 'PUT', headers: { authorization: `Bearer ${opts.k ?? key}` }, body: deployForm(config, opts.code),
  });
}

function call(method: string, path: string, opts: { app?: App; json?: unknown; k?: string } = {}) {
  const headers: Record<string, string> = { authorization: `Bearer ${opts.k ?? key}` };
  if (opts.json !== undefined) headers['content-type'] = 'application/json';
  return (opts.app ?? h.app).request(path, { method, headers, body: opts.json === undefined ? null : JSON.stringify(opts.json) });
}

async function errorOf(r: Response): Promise<Record<string, unknown>> {
  return ((await r.json()) as { error: Record<string, unknown> }).error;
}

interface Hold {
  reached: Promise<void>;
  go(): void;
}

function latch(): { reached: Promise<void>; arrive(): void; open: Promise<void>; go(): void } {
  let arrive!: () => void;
  let go!: () => void;
  const reached = new Promise<void>((r) => (arrive = r));
  const open = new Promise<void>((r) => (go = r));
  return { reached, arrive, open, go };
}

/** Holds the first `n` lookups of `image` in `store` after they found it (a deploy's window before its commit). */
function holdLookups(store: FsImageStore, image: string, n = 1): Hold {
  const resolve = store.resolve.bind(store);
  const l = latch();
  let arrived = 0;
  store.resolve = async (ref, tenant) => {
    const r = await resolve(ref, tenant);
    if (ref === image && arrived < n) {
      if (++arrived === n) l.arrive();
      await l.open;
    }
    return r;
  };
  return { reached: l.reached, go: () => (Reflect.deleteProperty(store, 'resolve'), l.go()) };
}

/** Holds the next image delete in `store` after the gateway's users check, before the record goes. */
function holdDelete(store: FsImageStore): Hold {
  const del = store.deleteImage.bind(store);
  const l = latch();
  store.deleteImage = async (tenant, name) => {
    l.arrive();
    await l.open;
    return del(tenant, name);
  };
  return { reached: l.reached, go: () => (Reflect.deleteProperty(store, 'deleteImage'), l.go()) };
}

/**
 * Holds the first PATCH's commit (the putVersion that expects a latest version) until `l.go()`; `restore()` puts
 * the store's putVersion back.
 */
function holdPatchCommit(): { l: ReturnType<typeof latch>; restore(): void } {
  const putVersion = h.store.functions.putVersion.bind(h.store.functions);
  const l = latch();
  let held = false;
  h.store.functions.putVersion = async (rec, opts) => {
    if (opts.expectLatest !== undefined && !held) {
      held = true;
      l.arrive();
      await l.open;
    }
    return putVersion(rec, opts);
  };
  return { l, restore: () => { h.store.functions.putVersion = putVersion; } };
}

/** Waits for `hold`; fails at once (instead of hanging) if `req` answers before it got there. */
async function reachedBefore(hold: Pick<Hold, 'reached'>, req: Response | Promise<Response> | Array<Response | Promise<Response>>): Promise<void> {
  const early = Promise.race([req].flat()).then(async (r) => {
    throw new Error(`answered before the hold: ${r.status} ${await r.clone().text()}`);
  });
  early.catch(() => {});
  await Promise.race([hold.reached, early]);
}

/** Each of `fns` (of acme) that exists and runs on a tenant image names one that exists; no delete mark is left in Redis. */
async function expectConsistent(fns: string[]): Promise<void> {
  for (const fn of fns) {
    const v = await h.store.functions.get('acme', fn);
    if (!v?.runtime.startsWith('image:')) continue;
    const name = v.runtime.slice('image:'.length);
    await expect(images.resolve(name, 'acme'), `${fn} runs on ${name}`).resolves.toMatchObject({ ref: name });
  }
  expect(await h.redis.keys(`${h.prefix}imgdel:*`)).toEqual([]);
}

const codeDirs = () => readdirSync(join(root, 'state', 'code')).filter((n) => /^[0-9a-f]{64}$/.test(n));
const tmpEntries = () => readdirSync(join(root, 'state', 'tmp'));

describe('DELETE /v1/images/:name racing a deploy of image:<name>', () => {
  it('a delete during a deploy\'s window (image found, version not committed): the delete goes through, the deploy gets 400', async () => {
    await importImage('a1');
    const hold = holdLookups(images, 'a1');
    const dep = deploy('fa1', { runtime: 'image:a1' });
    await reachedBefore(hold, dep);
    const del = await call('DELETE', '/v1/images/a1');
    hold.go();
    const d = await dep;
    expect(del.status, await del.clone().text()).toBe(204);
    expect(d.status, await d.clone().text()).toBe(400);
    expect(await errorOf(d)).toMatchObject({ type: 'InvalidRequest', field: 'runtime' });
    expect(await h.store.functions.get('acme', 'fa1')).toBeNull();
    await expectConsistent(['fa1']);
  });

  it('with a code part: the refused deploy also removes the code layer it wrote', async () => {
    await importImage('a2');
    const code = tarGz({ 'data.txt': `a2 ${process.pid} ${Math.random()}` });
    const before = codeDirs();
    const hold = holdLookups(images, 'a2');
    const dep = deploy('fa2', { runtime: 'image:a2' }, { code });
    await reachedBefore(hold, dep);
    expect((await call('DELETE', '/v1/images/a2')).status).toBe(204);
    hold.go();
    expect((await dep).status).toBe(400);
    expect(existsSync(join(root, 'state', 'code', bundleDigest(code).slice(7)))).toBe(false);
    expect(codeDirs()).toEqual(before);
    expect(tmpEntries()).toEqual([]);
    await expectConsistent(['fa2']);
  });

  it('a deploy during a delete\'s window (users checked, record not yet removed): the deploy gets 409, the delete goes through', async () => {
    await importImage('b1');
    const hold = holdDelete(images);
    const del = call('DELETE', '/v1/images/b1');
    await reachedBefore(hold, del);
    const d = await deploy('fb1', { runtime: 'image:b1' });
    hold.go();
    expect((await del).status).toBe(204);
    expect(d.status, await d.clone().text()).toBe(409);
    expect(await errorOf(d)).toMatchObject({ type: 'Conflict', field: 'runtime', image: 'b1' });
    expect(await h.store.functions.get('acme', 'fb1')).toBeNull();
    await expectConsistent(['fb1']);
  });

  it('a deploy committed before the delete\'s check makes the delete refuse (409 with the users), atomically', async () => {
    await importImage('b2');
    expect((await deploy('fb2', { runtime: 'image:b2' })).status).toBe(201);
    const gen = await h.redis.get(`${h.prefix}imggen:acme`);
    const del = await call('DELETE', '/v1/images/b2');
    expect(del.status).toBe(409);
    expect(await errorOf(del)).toMatchObject({ type: 'Conflict', functions: ['fb2'] });
    // refused changes nothing: the image-delete generation did not move, no mark was set
    expect(await h.redis.get(`${h.prefix}imggen:acme`)).toBe(gen);
    await expect(images.resolve('b2', 'acme')).resolves.toMatchObject({ ref: 'b2' });
    await expectConsistent(['fb2']);
  });

  it('across two gateways (own stores, same state dir, Redis and prefix): both interleavings', async () => {
    await importImage('c1');
    const hold = holdLookups(images, 'c1');
    const dep = deploy('fc1', { runtime: 'image:c1' });
    await reachedBefore(hold, dep);
    expect((await call('DELETE', '/v1/images/c1', { app: app2 })).status).toBe(204);
    hold.go();
    expect((await dep).status).toBe(400);

    await importImage('c2');
    const holdDel = holdDelete(images2);
    const del = call('DELETE', '/v1/images/c2', { app: app2 });
    await reachedBefore(holdDel, del);
    const d = await deploy('fc2', { runtime: 'image:c2' });
    holdDel.go();
    expect((await del).status).toBe(204);
    expect(d.status).toBe(409);
    expect(await h.store.functions.get('acme', 'fc1')).toBeNull();
    expect(await h.store.functions.get('acme', 'fc2')).toBeNull();
    await expectConsistent(['fc1', 'fc2']);
  });

  it('concurrent deploys of one image both succeed, also when another image of the tenant is deleted in their window', async () => {
    await importImage('d1');
    await importImage('d2');
    const hold = holdLookups(images, 'd1', 2);
    const deps = [deploy('fd1a', { runtime: 'image:d1' }), deploy('fd1b', { runtime: 'image:d1' })];
    await reachedBefore(hold, deps);
    expect((await call('DELETE', '/v1/images/d2')).status).toBe(204);
    hold.go();
    const rs = await Promise.all(deps);
    for (const r of rs) expect(r.status, await r.clone().text()).toBe(201);
    expect((await h.store.functions.get('acme', 'fd1a'))?.runtime).toBe('image:d1');
    expect((await h.store.functions.get('acme', 'fd1b'))?.runtime).toBe('image:d1');
    const del = await call('DELETE', '/v1/images/d1');
    expect(del.status).toBe(409);
    expect(await errorOf(del)).toMatchObject({ functions: ['fd1a', 'fd1b'] });
    await expectConsistent(['fd1a', 'fd1b']);
  });

  it('a delete whose gateway died mid-way: deploys of that image are refused until its mark expires, others go on', async () => {
    await importImage('e1');
    await importImage('e2');
    await h.store.functions.beginImageDelete('acme', 'e1', 300); // and never ends
    const r = await deploy('fe1', { runtime: 'image:e1' });
    expect(r.status).toBe(409);
    expect(await errorOf(r)).toMatchObject({ type: 'Conflict', field: 'runtime' });
    expect((await deploy('fe2', { runtime: 'image:e2' })).status).toBe(201);
    // the record was never removed: once the mark is gone the image deploys again
    const ok = await until(async () => (await deploy('fe1', { runtime: 'image:e1' })).status, (s) => s === 201);
    expect(ok).toBe(201);
    await expectConsistent(['fe1', 'fe2']);
  });

  it('PATCH keeps the runtime and commits only while its base is the latest; the image stays while version 1 runs on it', async () => {
    await importImage('p1');
    expect((await deploy('fp1', { runtime: 'image:p1' })).status).toBe(201);
    // the PATCH stops at its commit, based on version 1 (image:p1)
    const { l, restore } = holdPatchCommit();
    try {
      const patch = call('PATCH', '/v1/functions/fp1', { json: { memoryMb: 256 } });
      await reachedBefore(l, patch);
      expect((await call('DELETE', '/v1/images/p1')).status).toBe(409);
      // another deploy moves the function off the image; fp1:1 still runs on it, so the delete is still refused
      expect((await deploy('fp1', { runtime: 'node' }, { code: tarGz({ 'index.js': 'exports.handler = async () => 1' }) })).status).toBe(201);
      const del = await call('DELETE', '/v1/images/p1');
      expect(del.status).toBe(409);
      expect(await errorOf(del)).toMatchObject({ type: 'Conflict', functions: ['fp1'], versions: ['fp1:1'] });
      l.go();
      const p = await patch;
      expect(p.status, await p.clone().text()).toBe(200);
      expect((await p.json()) as Record<string, unknown>).toMatchObject({ version: 3, runtime: 'node', memoryMb: 256 });
    } finally {
      restore();
    }
    await expect(images.resolve('p1', 'acme')).resolves.toMatchObject({ ref: 'p1' });
    await expectConsistent(['fp1']);
  });

  it('PATCH based on a function that was deleted and re-created meanwhile does not bring back the old runtime (no version number is reused)', async () => {
    await importImage('p2');
    expect((await deploy('fp2', { runtime: 'image:p2' })).status).toBe(201);
    const { l, restore } = holdPatchCommit();
    try {
      const patch = call('PATCH', '/v1/functions/fp2', { json: { memoryMb: 256 } });
      await reachedBefore(l, patch);
      expect((await call('DELETE', '/v1/functions/fp2')).status).toBe(204);
      expect((await call('DELETE', '/v1/images/p2')).status).toBe(204);
      const again = await deploy('fp2', { runtime: 'node' }, { code: tarGz({ 'index.js': 'exports.handler = async () => 2' }) });
      expect(again.status).toBe(201);
      // the new function's first version is not "version 1" again: a reference to fp2:1 (a queued invocation,
      // a cached entry, this PATCH's base) keeps meaning the deleted function's version
      expect(((await again.json()) as { version: number }).version).toBe(2);
      l.go();
      const p = await patch;
      expect(p.status, await p.clone().text()).toBe(200);
      expect((await p.json()) as Record<string, unknown>).toMatchObject({ version: 3, runtime: 'node', memoryMb: 256 });
      expect(await h.store.functions.get('acme', 'fp2', 1)).toBeNull();
    } finally {
      restore();
    }
    await expectConsistent(['fp2']);
  });

  it('deleting a function that used the image lets the delete through; the guard\'s keys go with the delete and the tenant', async () => {
    const k = await h.tenant('gone');
    await importImage('g1', 'gone');
    expect((await deploy('fg1', { runtime: 'image:g1' }, { k })).status).toBe(201);
    expect((await call('DELETE', '/v1/images/g1', { k })).status).toBe(409);
    expect((await call('DELETE', '/v1/functions/fg1', { k })).status).toBe(204);
    expect((await call('DELETE', '/v1/images/g1', { k })).status).toBe(204);
    expect((await call('DELETE', '/v1/images/g1', { k })).status).toBe(404);
    expect(await h.redis.keys(`${h.prefix}imgdel:*`)).toEqual([]);
    expect((await call('DELETE', '/v1/tenants/gone', { k: h.adminKey })).status).toBe(204);
    expect(await h.redis.keys(`${h.prefix}*gone*`)).toEqual([]);
  });
});

describe('the guard\'s scripts (FunctionStore, real Redis)', () => {
  const rec = (name: string, runtime: RuntimeName, env: Record<string, string> = {}): NewVersion => ({
    tenant: 'acme', name, runtime, handler: '', memoryMb: 128, timeoutMs: 1000, env, concurrency: 1, public: false,
    codeDigest: null, createdAt: new Date().toISOString(),
  });

  it('a commit with a generation read before a delete started is refused (typed, nothing written); a fresh one goes through', async () => {
    const fns = h.store.functions;
    const gen = await fns.imageGeneration('acme', 's1');
    const end = await fns.beginImageDelete('acme', 's1');
    await end();
    const e = await fns.putVersion(rec('fs1', 'image:s1'), { maxFunctions: 100, imageGen: gen }).then(() => null, (err: unknown) => err);
    expect(e).toMatchObject({ type: 'Conflict', details: { field: 'runtime', reason: IMAGES_CHANGED } });
    expect(await fns.get('acme', 'fs1')).toBeNull();
    expect(await h.redis.hget(`${h.prefix}fnseq:acme`, 'fs1')).toBeNull();
    const v = await fns.putVersion(rec('fs1', 'image:s1'), { maxFunctions: 100, imageGen: await fns.imageGeneration('acme', 's1') });
    expect(v.version).toBe(1);
  });

  it('users are the versions whose runtime is the image (parsed, not matched as text), sorted', async () => {
    const fns = h.store.functions;
    await fns.putVersion(rec('fs2b', 'image:s2'), { maxFunctions: 100 });
    await fns.putVersion(rec('fs2a', 'image:s2'), { maxFunctions: 100 });
    // mentions the runtime in its env only: not a user
    await fns.putVersion(rec('fs2c', 'node', { X: '"runtime":"image:s2"' }), { maxFunctions: 100 });
    // used it in version 1 only: a user all the same (fs2d:1 stays invocable)
    await fns.putVersion(rec('fs2d', 'image:s2'), { maxFunctions: 100 });
    await fns.putVersion(rec('fs2d', 'node'), { maxFunctions: 100 });
    const e = await fns.beginImageDelete('acme', 's2').then(() => null, (err: unknown) => err);
    expect(e).toMatchObject({ type: 'Conflict', details: { functions: ['fs2a', 'fs2b', 'fs2d'], versions: ['fs2a:1', 'fs2b:1', 'fs2d:1'] } });
    expect(await h.redis.exists(`${h.prefix}imgdel:acme:s2`)).toBe(0);
  });

  it('a delete for a tenant that is gone (an in-flight request during tenant deletion) writes nothing', async () => {
    await expect(h.store.functions.beginImageDelete('nobody-here', 'x')).rejects.toMatchObject({ type: 'NotFound' });
    expect(await h.redis.keys(`${h.prefix}*nobody-here*`)).toEqual([]);
  });

  it('end() clears only its own mark: a second delete of the same image keeps deploys out until it ends too', async () => {
    const fns = h.store.functions;
    const end1 = await fns.beginImageDelete('acme', 's3');
    const end2 = await fns.beginImageDelete('acme', 's3');
    await end1();
    await expect(fns.imageGeneration('acme', 's3')).rejects.toMatchObject({ type: 'Conflict' });
    await end2();
    await expect(fns.imageGeneration('acme', 's3')).resolves.toBeTypeOf('number');
    expect(await h.redis.keys(`${h.prefix}imgdel:*`)).toEqual([]);
  });
});
