/**
 * `DELETE /v1/functions/:name/versions/:n` (services/gateway/functions.ts → FunctionStore.deleteVersion): one older
 * version goes (204), the latest is refused (409, reason 'latest'), an unknown version or function is 404, a bad
 * number 400 — refused requests change nothing, another tenant's function is NotFound. `name:N` is NotFound from
 * then on (GET and invoke, sync and async), the number is not handed out again, nothing of the version is left in
 * Redis, and its code digest leaves codeDigests() (the image store's gc keep set). Deletes racing deploys and PATCHes
 * leave the index's latest record present among the versions, always.
 * REAL metadata store (the run's Redis) through app.request(); the scheduler's side is scripted (gateway-harness.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { keysHolding } from '../helpers/redis.ts';
import { createHarness, deployForm, type Harness } from './gateway-harness.ts';

let h: Harness;
let key: string;
let otherKey: string;
let seq = 0;

const code = (n = ++seq) => tarGz({ 'index.js': `exports.handler = async (e) => e; // ${n}` });
const deploy = (name: string, config: Record<string, unknown> = { runtime: 'node' }, k = key) =>
  h.req('PUT', `/v1/functions/${name}`, { key: k, body: deployForm(config, code()) });
const patch = (name: string, json: unknown, k = key) => h.req('PATCH', `/v1/functions/${name}`, { key: k, json });
const delVersion = (name: string, n: string | number, k = key) => h.req('DELETE', `/v1/functions/${name}/versions/${n}`, { key: k });
const errorOf = async (r: Response) => ((await r.json()) as { error: Record<string, unknown> }).error;

/** Everything the tenant's metadata holds about `name`, raw: a refused request must leave it byte for byte. */
async function raw(name: string, tenant = 'acme') {
  const [latest, versions, seqNo] = await Promise.all([
    h.redis.hget(`${h.prefix}fn:${tenant}`, name),
    h.redis.hgetall(`${h.prefix}fnv:${tenant}:${name}`),
    h.redis.hget(`${h.prefix}fnseq:${tenant}`, name),
  ]);
  return { latest, versions, seq: seqNo };
}

/** Deploys `n` versions of `name` (each with its own code bundle) and returns their numbers. */
async function versionsOf(name: string, n: number, k = key): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = await deploy(name, { runtime: 'node', env: { I: String(i) } }, k);
    expect(r.status).toBe(201);
    out.push(((await r.json()) as { version: number }).version);
  }
  return out;
}

beforeAll(async () => {
  h = await createHarness();
  key = await h.tenant('acme', { maxFunctions: 50 });
  otherKey = await h.tenant('other');
});
afterAll(async () => h?.close());

describe('DELETE /v1/functions/:name/versions/:n', () => {
  it('deletes an older version: name:N is NotFound everywhere, the others and the latest are untouched, N is never reused', async () => {
    await versionsOf('hv', 3);
    const v1 = await h.store.functions.get('acme', 'hv', 1);
    const before = await raw('hv');
    expect((await h.req('GET', '/v1/functions/hv:1', { key })).status).toBe(200);

    expect((await delVersion('hv', 1)).status).toBe(204);

    const after = await raw('hv');
    expect(after.latest).toBe(before.latest);
    expect(after.seq).toBe('3');
    expect(Object.keys(after.versions).sort()).toEqual(['2', '3']);
    expect(after.versions['2']).toBe(before.versions['2']);
    const g = await h.req('GET', '/v1/functions/hv:1', { key });
    expect(g.status).toBe(404);
    expect(await errorOf(g)).toMatchObject({ type: 'NotFound' });
    const latest = (await (await h.req('GET', '/v1/functions/hv', { key })).json()) as { version: number; versions: { version: number }[] };
    expect(latest.version).toBe(3);
    expect(latest.versions.map((v) => v.version)).toEqual([2, 3]);
    const list = (await (await h.req('GET', '/v1/functions', { key })).json()) as { functions: { name: string; versions: number }[] };
    expect(list.functions.find((f) => f.name === 'hv')?.versions).toBe(2);
    // its code digest no longer keeps its layer (ImageStore.gc's keep set); the others' still do
    const keep = await h.store.functions.codeDigests(['acme']);
    expect(keep.has(v1!.codeDigest!)).toBe(false);
    expect(keep.has((await h.store.functions.get('acme', 'hv', 2))!.codeDigest!)).toBe(true);

    // invoking it, sync or async, is NotFound before anything reaches the scheduler; hv:2 still runs
    const calls = h.client.calls.length;
    for (const mode of ['', '?mode=async']) {
      const r = await h.req('POST', `/v1/functions/hv:1/invoke${mode}`, { key, body: '{}' });
      expect(r.status).toBe(404);
      expect(await errorOf(r)).toMatchObject({ type: 'NotFound' });
    }
    expect(h.client.calls.length).toBe(calls);
    expect((await h.req('POST', '/v1/functions/hv:2/invoke', { key, body: '{}' })).status).toBe(200);
    expect(h.client.calls.at(-1)?.fn).toMatchObject({ name: 'hv', version: 2 });

    // deleted again: 404; the next deploy is 4, not 1
    expect((await delVersion('hv', 1)).status).toBe(404);
    expect(((await (await deploy('hv')).json()) as { version: number }).version).toBe(4);
    expect((await h.req('GET', '/v1/functions/hv:1', { key })).status).toBe(404);
  });

  it('the latest version is refused with 409 (deploy a newer one or delete the function), changing nothing; once older it goes', async () => {
    await versionsOf('lv', 2);
    const before = await raw('lv');
    const r = await delVersion('lv', 2);
    expect(r.status).toBe(409);
    const err = await errorOf(r);
    expect(err).toMatchObject({ type: 'Conflict', field: 'version', reason: 'latest', latest: 2 });
    expect(String(err.message)).toMatch(/latest.*deploy a newer version.*delete the function/);
    expect(await raw('lv')).toEqual(before);
    expect((await h.req('GET', '/v1/functions/lv:2', { key })).status).toBe(200);

    // a function with a single version: its one version is its latest
    await versionsOf('single', 1);
    expect((await delVersion('single', 1)).status).toBe(409);
    expect((await h.req('GET', '/v1/functions/single', { key })).status).toBe(200);

    // a PATCH makes 3 the latest: 2 may go now, 3 not
    expect((await patch('lv', { memoryMb: 256 })).status).toBe(200);
    expect((await delVersion('lv', 2)).status).toBe(204);
    expect((await delVersion('lv', 3)).status).toBe(409);
    expect(Object.keys((await raw('lv')).versions).sort()).toEqual(['1', '3']);
  });

  it('the latest is recognised whatever its record looks like (not only as PUT_VERSION writes it)', async () => {
    await versionsOf('odd', 2);
    const rec = JSON.parse((await raw('odd')).latest!) as Record<string, unknown>;
    const { version, ...rest } = rec;
    await h.redis.hset(`${h.prefix}fn:acme`, 'odd', JSON.stringify({ ...rest, version })); // "version" last
    h.store.cache.clear();
    expect((await delVersion('odd', 2)).status).toBe(409);
    expect((await delVersion('odd', 1)).status).toBe(204);
  });

  it('an unknown version or function is 404, changing nothing', async () => {
    await versionsOf('uv', 2);
    const before = await raw('uv');
    for (const [name, n, field] of [['uv', 7, 'version'], ['uv', 999999999, 'version'], ['nosuch', 1, 'name']] as const) {
      const r = await delVersion(name, n);
      expect(r.status).toBe(404);
      expect(await errorOf(r)).toMatchObject({ type: 'NotFound', field });
    }
    expect(await raw('uv')).toEqual(before);
    expect(await raw('nosuch')).toEqual({ latest: null, versions: {}, seq: null });
  });

  it.each(['0', '01', '-1', '1.5', 'abc', '1e3', '1000000000', '%20', '1:2'])('a bad version number %j is a typed 400 and changes nothing', async (n) => {
    const name = `bad${++seq}`;
    await versionsOf(name, 2);
    const before = await raw(name);
    const r = await delVersion(name, n);
    expect(r.status).toBe(400);
    expect(await errorOf(r)).toMatchObject({ type: 'InvalidRequest', field: 'version' });
    expect(await raw(name)).toEqual(before);
  });

  it('a bad function name is a typed 400', async () => {
    const r = await delVersion('Bad_Name', 1);
    expect(r.status).toBe(400);
    expect(await errorOf(r)).toMatchObject({ type: 'InvalidRequest', field: 'name' });
  });

  it('is scoped to the tenant: another tenant cannot delete it (404) and deletes only its own function of that name', async () => {
    await versionsOf('shared', 2);
    const before = await raw('shared');
    const r = await delVersion('shared', 1, otherKey);
    expect(r.status).toBe(404);
    expect(await errorOf(r)).toMatchObject({ type: 'NotFound' });
    expect(await raw('shared')).toEqual(before);

    await versionsOf('shared', 2, otherKey);
    expect((await delVersion('shared', 1, otherKey)).status).toBe(204);
    expect(Object.keys((await raw('shared', 'other')).versions)).toEqual(['2']);
    expect(await raw('shared')).toEqual(before);
    // without a key: 401, nothing changed
    expect((await h.req('DELETE', '/v1/functions/shared/versions/1')).status).toBe(401);
    expect(await raw('shared')).toEqual(before);
  });

  it('leaves nothing of the version in Redis: no new key, and its record appears in no value', async () => {
    const marker = `gone-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    const r1 = await deploy('lk', { runtime: 'node', env: { MARK: marker } });
    expect(r1.status).toBe(201);
    await versionsOf('lk', 1);
    const keysBefore = await allKeys();
    expect(await keysHolding(h.redis, '*', marker)).toEqual([`${h.prefix}fnv:acme:lk`]);
    expect((await delVersion('lk', 1)).status).toBe(204);
    expect(await keysHolding(h.redis, '*', marker)).toEqual([]);
    // the version's own keys stay (other versions are in them); nothing was added (no tombstone)
    expect((await allKeys()).filter((k) => !keysBefore.includes(k)).filter((k) => k.startsWith(h.prefix))).toEqual([]);
  });

  it('races: deletes against deploys and PATCHes (and each other) always leave the latest present and every answer consistent', async () => {
    // each round: the function has versions [.., L-1, L]; at once, a PATCH and a deploy make new versions while
    // deletes of L (the latest when they were sent) and of L-1 run, twice each. A delete of L is 204 only if a
    // new version had landed before it; one delete of each number at most is 204, the other 404 (or 409).
    await versionsOf('race', 2);
    for (let round = 0; round < 12; round++) {
      const { latest } = await raw('race');
      const L = Number(/^\{"version":(\d+),/.exec(latest!)![1]);
      const res = await Promise.all([
        delVersion('race', L), patch('race', { memoryMb: 128 + 64 * (round % 3) }), delVersion('race', L - 1),
        deploy('race'), delVersion('race', L), delVersion('race', L - 1),
      ]);
      const [dL1, p, dP1, d, dL2, dP2] = res.map((r) => r.status);
      expect([200, 409]).toContain(p); // a PATCH may lose its base to the deploy three times in a row
      expect(d).toBe(201);
      for (const [a, b] of [[dL1, dL2], [dP1, dP2]]) {
        expect([a, b].filter((s) => s === 204).length).toBeLessThanOrEqual(1);
        for (const s of [a, b]) expect([204, 404, 409]).toContain(s);
      }
      expect([dP1, dP2].sort()).toEqual([204, 404]);
      // L-1 was never the latest during the round: exactly one of its deletes went through (if it still existed)
      const st = await raw('race');
      const newest = Number(/^\{"version":(\d+),/.exec(st.latest!)![1]);
      expect(st.versions[String(newest)]).toBe(st.latest);
      expect(Number(st.seq)).toBe(newest);
      expect(st.versions[String(L - 1)]).toBeUndefined();
      if ([dL1, dL2].includes(204)) expect(st.versions[String(L)]).toBeUndefined();
      else expect(st.versions[String(L)]).toBeDefined();
      // keep a few versions around for the next round: its L-1 must exist
      if (!st.versions[String(newest - 1)]) expect((await deploy('race')).status).toBe(201);
    }
  });
});

async function allKeys(): Promise<string[]> {
  return h.redis.keys('*');
}

