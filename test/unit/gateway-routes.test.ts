/**
 * The gateway's routes through `app.request()` (no socket): auth, tenants, deploy and its validation,
 * PATCH, list/get/delete, error rendering, and that bad input changes nothing. Real Redis for the
 * metadata store; the scheduler's side is scripted (see gateway-harness.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { createHarness, deployForm, type Harness } from './gateway-harness.ts';

const NODE_CODE = tarGz({ 'index.js': 'exports.handler = async (e) => e;' });

let h: Harness;
let key: string;
let otherKey: string;

async function json(r: Response): Promise<any> {
  return r.json();
}

/** `code: null` sends no code part. */
async function deploy(name: string, config: unknown = { runtime: 'node' }, code: Buffer | string | null = NODE_CODE, k = key) {
  return h.req('PUT', `/v1/functions/${name}`, { key: k, body: deployForm(config, code ?? undefined) });
}

/** A snapshot of everything a tenant's metadata holds, to prove a refused request changed nothing. */
async function snapshot(tenant = 'acme') {
  const list = await h.store.functions.list(tenant);
  const versions = await Promise.all(list.map((f) => h.store.functions.versions(tenant, f.latest.name)));
  return { list, versions, bundles: h.images.bundles };
}

beforeAll(async () => {
  h = await createHarness();
  key = await h.tenant('acme', { maxMemoryMb: 512, maxFunctions: 5 });
  otherKey = await h.tenant('other');
});
afterAll(async () => h?.close());

describe('auth', () => {
  it.each([
    ['no header', {}, 401],
    ['not Bearer', { authorization: 'Basic Zm9vOmJhcg==' }, 401],
    ['unknown key', { authorization: 'Bearer fnh_nope' }, 401],
  ])('%s → %i Unauthorized with WWW-Authenticate', async (_n, headers, status) => {
    // the invoke route authenticates itself (registered ahead of the /v1/* middleware): same answers
    for (const [method, path] of [['GET', '/v1/functions'], ['POST', '/v1/functions/echo/invoke'], ['POST', '/v1/functions/echo/invoke?mode=async']]) {
      const r = await h.req(method!, path!, { headers, body: method === 'POST' ? '{}' : undefined });
      expect(r.status, path).toBe(status);
      expect(r.headers.get('www-authenticate')).toBe('Bearer');
      expect((await json(r)).error.type).toBe('Unauthorized');
    }
  });

  it('a tenant key cannot use admin routes, the admin key cannot act as a tenant', async () => {
    const a = await h.req('GET', '/v1/tenants', { key });
    expect(a.status).toBe(403);
    expect((await json(a)).error.type).toBe('Forbidden');
    const b = await h.req('GET', '/v1/functions', { key: h.adminKey });
    expect(b.status).toBe(403);
    for (const path of ['/v1/functions/echo/invoke', '/v1/functions/echo/invoke?mode=async']) {
      const c = await h.req('POST', path, { key: h.adminKey, body: '{}' });
      expect(c.status, path).toBe(403);
      expect((await json(c)).error.message).toMatch(/needs a tenant key/);
    }
    // other methods on the invoke path still meet the /v1/* middleware first
    expect((await h.req('GET', '/v1/functions/echo/invoke', { headers: {} })).status).toBe(401);
    expect((await h.req('GET', '/v1/functions/echo/invoke', { key })).status).toBe(404);
  });

  it('keys are stored hashed: the plain key appears nowhere in Redis', async () => {
    const keys = await h.redis.keys(`${h.prefix}*`);
    for (const k of keys) {
      const type = await h.redis.type(k);
      const dump = type === 'hash' ? JSON.stringify(await h.redis.hgetall(k)) : String(await h.redis.get(k));
      expect(dump).not.toContain(key);
      expect(k).not.toContain(key);
    }
  });
});

describe('tenants', () => {
  it('creates with limits, shows the key once, lists, refuses a duplicate', async () => {
    const r = await h.req('POST', '/v1/tenants', { key: h.adminKey, json: { name: 't-one', limits: { maxMemoryMb: 256 } } });
    expect(r.status).toBe(201);
    const body = await json(r);
    expect(body).toMatchObject({ name: 't-one', limits: { maxMemoryMb: 256, maxConcurrency: 100, maxFunctions: 100 } });
    expect(body.apiKey).toMatch(/^fnh_[A-Za-z0-9_-]{43}$/);
    const list = await json(await h.req('GET', '/v1/tenants', { key: h.adminKey }));
    expect(list.tenants.map((t: { name: string }) => t.name)).toContain('t-one');
    expect(JSON.stringify(list)).not.toContain(body.apiKey);
    const dup = await h.req('POST', '/v1/tenants', { key: h.adminKey, json: { name: 't-one' } });
    expect(dup.status).toBe(409);
    expect((await json(dup)).error.type).toBe('Conflict');
  });

  it.each([
    [{ name: 'Upper' }, 'name'],
    [{ name: 'a/b' }, 'name'],
    [{ name: '..' }, 'name'],
    [{ name: 'x'.repeat(300) }, 'name'],
    [{ name: 'ok', extra: 1 }, 'extra'],
    [{ name: 'ok', limits: { maxMemoryMb: -1 } }, 'limits.maxMemoryMb'],
    [{ name: 'ok', limits: { bogus: 1 } }, 'limits.bogus'],
    [{}, 'name'],
  ])('rejects %j naming field %s, creating nothing', async (input, field) => {
    const before = (await h.store.tenants.list()).length;
    const r = await h.req('POST', '/v1/tenants', { key: h.adminKey, json: input });
    expect(r.status).toBe(400);
    const e = (await json(r)).error;
    expect(e).toMatchObject({ type: 'InvalidRequest', field });
    expect((await h.store.tenants.list()).length).toBe(before);
  });

  it('PATCH changes limits (used by the next deploy), refuses bad input, 404 for an unknown tenant', async () => {
    const k = await h.tenant('grow', { maxMemoryMb: 128 });
    expect((await deploy('f', { runtime: 'node', memoryMb: 256 }, NODE_CODE, k)).status).toBe(422);
    const r = await h.req('PATCH', '/v1/tenants/grow', { key: h.adminKey, json: { limits: { maxMemoryMb: 512 } } });
    expect(r.status).toBe(200);
    expect((await json(r)).limits).toEqual({ maxMemoryMb: 512, maxConcurrency: 100, maxFunctions: 100 });
    expect((await deploy('f', { runtime: 'node', memoryMb: 256 }, NODE_CODE, k)).status).toBe(201);
    expect((await h.req('PATCH', '/v1/tenants/grow', { key: h.adminKey, json: { limits: { maxMemoryMb: -5 } } })).status).toBe(400);
    expect((await h.req('PATCH', '/v1/tenants/grow', { key: h.adminKey, json: { name: 'x' } })).status).toBe(400);
    expect((await h.req('PATCH', '/v1/tenants/nobody', { key: h.adminKey, json: { limits: { maxFunctions: 3 } } })).status).toBe(404);
    expect((await h.req('PATCH', '/v1/tenants/grow', { key: k, json: { limits: { maxFunctions: 3 } } })).status).toBe(403);
    expect((await h.store.tenants.get('grow'))!.limits.maxMemoryMb).toBe(512);
  });

  it('bad JSON is 400, not 500', async () => {
    const r = await h.req('POST', '/v1/tenants', { key: h.adminKey, body: '{"name":', headers: { 'content-type': 'application/json' } });
    expect(r.status).toBe(400);
    expect((await json(r)).error).toMatchObject({ type: 'InvalidRequest', field: 'body' });
  });

  it('rotates keys: a new key works, the deleted one stops working', async () => {
    const k1 = await h.tenant('rot');
    const r = await h.req('POST', '/v1/tenants/rot/keys', { key: h.adminKey });
    expect(r.status).toBe(201);
    const { apiKey: k2, keyId } = await json(r);
    expect((await h.req('GET', '/v1/functions', { key: k2 })).status).toBe(200);
    const ids = (await json(await h.req('GET', '/v1/tenants/rot/keys', { key: h.adminKey }))).keys as string[];
    expect(ids).toHaveLength(2);
    const oldId = ids.find((i) => i !== keyId)!;
    expect((await h.req('DELETE', `/v1/tenants/rot/keys/${oldId}`, { key: h.adminKey })).status).toBe(204);
    expect((await h.req('GET', '/v1/functions', { key: k1 })).status).toBe(401);
    expect((await h.req('GET', '/v1/functions', { key: k2 })).status).toBe(200);
    expect((await h.req('DELETE', `/v1/tenants/rot/keys/${oldId}`, { key: h.adminKey })).status).toBe(404);
    expect((await h.req('DELETE', `/v1/tenants/other/keys/${keyId}`, { key: h.adminKey })).status).toBe(404);
  });

  it('deleting a tenant removes its keys and functions', async () => {
    const k = await h.tenant('gone');
    expect((await deploy('f1', { runtime: 'node' }, NODE_CODE, k)).status).toBe(201);
    expect((await h.req('DELETE', '/v1/tenants/gone', { key: h.adminKey })).status).toBe(204);
    expect((await h.req('GET', '/v1/functions', { key: k })).status).toBe(401);
    expect(await h.store.functions.list('gone')).toEqual([]);
    expect(await h.redis.keys(`${h.prefix}*gone*`)).toEqual([]);
    expect((await h.req('DELETE', '/v1/tenants/gone', { key: h.adminKey })).status).toBe(404);
  });
});

describe('deploy', () => {
  it('PUT makes immutable versions; GET shows them; name:1 selects one', async () => {
    const r1 = await deploy('hello', { runtime: 'node', memoryMb: 256, env: { A: '1' } });
    expect(r1.status).toBe(201);
    const v1 = await json(r1);
    expect(v1).toMatchObject({ tenant: 'acme', name: 'hello', version: 1, runtime: 'node', handler: 'index.handler', memoryMb: 256, timeoutMs: 30000, env: { A: '1' }, concurrency: 1, public: false });
    expect(v1.codeDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const r2 = await deploy('hello', { runtime: 'node' }, tarGz({ 'index.mjs': 'export const handler = () => 2;' }));
    expect((await json(r2)).version).toBe(2);
    const got = await json(await h.req('GET', '/v1/functions/hello', { key }));
    expect(got.version).toBe(2);
    expect(got.memoryMb).toBe(128);
    expect(got.versions.map((v: { version: number }) => v.version)).toEqual([1, 2]);
    const old = await json(await h.req('GET', '/v1/functions/hello:1', { key }));
    expect(old).toMatchObject({ version: 1, memoryMb: 256, codeDigest: v1.codeDigest });
    expect((await h.req('GET', '/v1/functions/hello:9', { key })).status).toBe(404);
    const list = await json(await h.req('GET', '/v1/functions', { key }));
    expect(list.functions.find((f: { name: string }) => f.name === 'hello')).toMatchObject({ version: 2, versions: 2 });
  });

  it('a zip bundle and a python / exec handler are found in the code', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, writeFileSync, readFileSync, rmSync, chmodSync } = await import('node:fs');
    const d = mkdtempSync('/tmp/fnhost-gw-zip-');
    writeFileSync(`${d}/main.py`, 'def handler(e, c): return e\n');
    writeFileSync(`${d}/run`, '#!/bin/sh\ncat\n');
    chmodSync(`${d}/run`, 0o755);
    execFileSync('zip', ['-q', '-r', `${d}/b.zip`, 'main.py', 'run'], { cwd: d });
    const zip = readFileSync(`${d}/b.zip`);
    rmSync(d, { recursive: true });
    expect((await deploy('py', { runtime: 'python' }, zip)).status).toBe(201);
    expect((await deploy('sh', { runtime: 'exec', handler: 'run' }, zip)).status).toBe(201);
    const bad = await deploy('py2', { runtime: 'python', handler: 'nope.handler' }, zip);
    expect(bad.status).toBe(400);
    expect((await json(bad)).error.field).toBe('handler');
    await h.req('DELETE', '/v1/functions/py', { key });
    await h.req('DELETE', '/v1/functions/sh', { key });
  });

  const cases: [string, string, unknown, Buffer | string | null, number, string][] = [
    ['bad JSON config', 'ok', '{"runtime":', NODE_CODE, 400, 'config'],
    ['unknown field', 'ok', { runtime: 'node', colour: 'red' }, NODE_CODE, 400, 'colour'],
    ['uppercase name', 'Hello', { runtime: 'node' }, NODE_CODE, 400, 'name'],
    ['.. inside the name', 'a..b', { runtime: 'node' }, NODE_CODE, 400, 'name'],
    ['encoded / in the name', 'a%2Fb', { runtime: 'node' }, NODE_CODE, 400, 'name'],
    ['300-character name', 'a'.repeat(300), { runtime: 'node' }, NODE_CODE, 400, 'name'],
    ['negative memory', 'ok', { runtime: 'node', memoryMb: -64 }, NODE_CODE, 400, 'memoryMb'],
    ['memory under 16', 'ok', { runtime: 'node', memoryMb: 8 }, NODE_CODE, 400, 'memoryMb'],
    ['huge memory', 'ok', { runtime: 'node', memoryMb: 1_000_000 }, NODE_CODE, 422, 'memoryMb'],
    ['fractional memory', 'ok', { runtime: 'node', memoryMb: 128.5 }, NODE_CODE, 400, 'memoryMb'],
    ['memory as a string', 'ok', { runtime: 'node', memoryMb: '128' }, NODE_CODE, 400, 'memoryMb'],
    ['timeout 0', 'ok', { runtime: 'node', timeoutMs: 0 }, NODE_CODE, 400, 'timeoutMs'],
    ['env not strings', 'ok', { runtime: 'node', env: { A: 1 } }, NODE_CODE, 400, 'env.A'],
    ['reserved env', 'ok', { runtime: 'node', env: { FNHOST_X: '1' } }, NODE_CODE, 400, 'env.FNHOST_X'],
    ['unknown runtime', 'ok', { runtime: 'ruby' }, NODE_CODE, 400, 'runtime'],
    ['missing runtime', 'ok', {}, NODE_CODE, 400, 'runtime'],
    ['handler escaping the code', 'ok', { runtime: 'exec', handler: '../../bin/sh' }, NODE_CODE, 400, 'handler'],
    ['absolute handler', 'ok', { runtime: 'exec', handler: '/bin/sh' }, NODE_CODE, 400, 'handler'],
    ['handler not in the code', 'ok', { runtime: 'node', handler: 'main.handler' }, NODE_CODE, 400, 'handler'],
    ['a non-archive as code', 'ok', { runtime: 'node' }, 'just some text, not an archive', 400, 'code'],
    ['a truncated gzip as code', 'ok', { runtime: 'node' }, NODE_CODE.subarray(0, 20), 400, 'code'],
    ['no code', 'ok', { runtime: 'node' }, null, 400, 'code'],
    ['config name differs', 'ok', { runtime: 'node', name: 'other' }, NODE_CODE, 400, 'name'],
    ['unknown image', 'ok', { runtime: 'image:nope' }, null, 400, 'runtime'],
    ['public not a boolean', 'ok', { runtime: 'node', public: 'yes' }, NODE_CODE, 400, 'public'],
  ];
  it.each(cases)('%s: 4xx naming the field, and nothing changes', async (_n, name, config, code, status, field) => {
    const before = await snapshot();
    const r = await deploy(name, config, code);
    expect(r.status).toBe(status);
    const e = (await json(r)).error;
    expect(e.field).toBe(field);
    expect(e.type).toBe(status === 422 ? 'LimitExceeded' : 'InvalidRequest');
    const after = await snapshot();
    expect(after.list).toEqual(before.list);
    expect(after.versions).toEqual(before.versions);
  });

  it('a body that is not multipart is 400', async () => {
    const r = await h.req('PUT', '/v1/functions/ok', { key, json: { runtime: 'node' } });
    expect(r.status).toBe(400);
    expect((await json(r)).error.field).toBe('body');
  });

  it('a 60 MB upload is 413 PayloadTooLarge and changes nothing', async () => {
    const before = await snapshot();
    const big = Buffer.alloc(60 * 1024 * 1024, 1);
    big[0] = 0x1f;
    big[1] = 0x8b;
    const r = await deploy('big', { runtime: 'node' }, big);
    expect(r.status).toBe(413);
    expect((await json(r)).error).toMatchObject({ type: 'PayloadTooLarge', field: 'code' });
    expect(await snapshot()).toEqual(before);
  });

  it('the tenant function limit is 422 and the version is not written', async () => {
    const k = await h.tenant('small', { maxFunctions: 2 });
    expect((await deploy('a', undefined, undefined, k)).status).toBe(201);
    expect((await deploy('b', undefined, undefined, k)).status).toBe(201);
    const r = await deploy('c', undefined, undefined, k);
    // a '..' segment (raw or %2E%2E) is resolved by URL parsing before routing: still a 4xx, still nothing written
    for (const p of ['/v1/functions/..', '/v1/functions/%2E%2E']) {
      expect((await h.req('PUT', p, { key: k, body: deployForm({ runtime: 'node' }, NODE_CODE) })).status).toBe(404);
    }
    expect(r.status).toBe(422);
    expect((await json(r)).error.type).toBe('LimitExceeded');
    expect((await deploy('a', undefined, undefined, k)).status).toBe(201); // a new version of an existing one is fine
    expect((await h.store.functions.list('small')).map((f) => f.latest.name)).toEqual(['a', 'b']);
  });

  it('concurrent deploys of new functions never exceed the limit', async () => {
    const k = await h.tenant('race', { maxFunctions: 3 });
    const rs = await Promise.all(Array.from({ length: 8 }, (_, i) => deploy(`f${i}`, undefined, undefined, k)));
    expect(rs.filter((r) => r.status === 201)).toHaveLength(3);
    expect(rs.filter((r) => r.status === 422)).toHaveLength(5);
    expect(await h.store.functions.count('race')).toBe(3);
  });

  it('a tenant capped under 128 MB gets its cap as the default', async () => {
    const k = await h.tenant('tiny', { maxMemoryMb: 64 });
    const r = await deploy('f', undefined, undefined, k);
    expect((await json(r)).memoryMb).toBe(64);
  });
});

describe('PATCH', () => {
  it('makes a new version with the same code and the new config', async () => {
    const v1 = await json(await deploy('cfg', { runtime: 'node', memoryMb: 256, env: { K: 'v' } }));
    const r = await h.req('PATCH', '/v1/functions/cfg', { key, json: { memoryMb: 64, public: true } });
    expect(r.status).toBe(200);
    const v2 = await json(r);
    expect(v2).toMatchObject({ version: v1.version + 1, memoryMb: 64, public: true, env: { K: 'v' }, codeDigest: v1.codeDigest, runtime: 'node' });
    expect((await json(await h.req('GET', `/v1/functions/cfg:${v1.version}`, { key }))).memoryMb).toBe(256);
  });

  it.each([
    [{ handler: 'x.y' }, 400, 'handler'],
    [{ runtime: 'python' }, 400, 'runtime'],
    [{ colour: 1 }, 400, 'colour'],
    [{}, 400, 'body'],
    [{ memoryMb: 4096 }, 422, 'memoryMb'],
    [{ timeoutMs: -1 }, 400, 'timeoutMs'],
  ])('%j → %i naming %s and no new version', async (body, status, field) => {
    const before = await h.store.functions.versions('acme', 'cfg');
    const r = await h.req('PATCH', '/v1/functions/cfg', { key, json: body });
    expect(r.status).toBe(status);
    expect((await json(r)).error.field).toBe(field);
    expect(await h.store.functions.versions('acme', 'cfg')).toEqual(before);
  });

  it('PATCH of a missing function is 404', async () => {
    expect((await h.req('PATCH', '/v1/functions/missing', { key, json: { memoryMb: 64 } })).status).toBe(404);
  });
});

describe('delete and unknown routes', () => {
  it('DELETE removes every version; a second DELETE is 404', async () => {
    await deploy('tmp');
    expect((await h.req('DELETE', '/v1/functions/tmp', { key })).status).toBe(204);
    expect((await h.req('GET', '/v1/functions/tmp', { key })).status).toBe(404);
    expect(await h.store.functions.versions('acme', 'tmp')).toEqual([]);
    expect((await h.req('DELETE', '/v1/functions/tmp', { key })).status).toBe(404);
  });

  it('an unknown route is a typed 404', async () => {
    const r = await h.req('GET', '/v2/nothing');
    expect(r.status).toBe(404);
    expect((await json(r)).error.type).toBe('NotFound');
  });
});

describe('tenant isolation (metadata routes)', () => {
  it("another tenant's key sees none of acme's functions and cannot change them", async () => {
    await deploy('mine');
    const list = await json(await h.req('GET', '/v1/functions', { key: otherKey }));
    expect(list.functions.map((f: { name: string }) => f.name)).not.toContain('mine');
    for (const [m, p, body] of [
      ['GET', '/v1/functions/mine', undefined],
      ['GET', '/v1/functions/mine:1', undefined],
      ['PATCH', '/v1/functions/mine', { memoryMb: 64 }],
      ['DELETE', '/v1/functions/mine', undefined],
    ] as const) {
      const r = await h.req(m, p, { key: otherKey, ...(body ? { json: body } : {}) });
      expect(r.status, `${m} ${p}`).toBe(404);
    }
    const mine = await h.store.functions.get('acme', 'mine');
    expect(mine?.version).toBe(1);
    // the other tenant deploying the same name makes its own function, not a version of acme's
    expect((await deploy('mine', { runtime: 'node' }, NODE_CODE, otherKey)).status).toBe(201);
    expect((await h.store.functions.get('acme', 'mine'))?.version).toBe(1);
  });
});

describe('body caps', () => {
  const chunked = (bytes: number, chunk = 1024) =>
    new Request('http://x/', {
      method: 'POST',
      // a stream body has no Content-Length: the cap is enforced while reading
      body: new ReadableStream({
        start(c) {
          for (let n = 0; n < bytes; n += chunk) c.enqueue(new Uint8Array(Math.min(chunk, bytes - n)));
          c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);

  it('readBody counts a chunked body and stops at the cap', async () => {
    const { readBody } = await import('../../services/gateway/body.ts');
    expect((await readBody(chunked(4096), 4096)).length).toBe(4096);
    await expect(readBody(chunked(4097), 4096)).rejects.toMatchObject({ type: 'PayloadTooLarge', details: { limitBytes: 4096 } });
    await expect(readBody(new Request('http://x/', { method: 'POST', body: 'abc', headers: { 'content-length': '99999' } }), 10)).rejects.toMatchObject({ type: 'PayloadTooLarge' });
  });

  it('spoolBody writes under the cap and removes the file past it', async () => {
    const { spoolBody } = await import('../../services/gateway/body.ts');
    const { mkdtempSync, existsSync, statSync, rmSync } = await import('node:fs');
    const d = mkdtempSync('/tmp/fnhost-spool-');
    try {
      expect(await spoolBody(chunked(3000), `${d}/ok`, 4096)).toBe(3000);
      expect(statSync(`${d}/ok`).mode & 0o777).toBe(0o600);
      await expect(spoolBody(chunked(5000), `${d}/big`, 4096)).rejects.toMatchObject({ type: 'PayloadTooLarge' });
      expect(existsSync(`${d}/big`)).toBe(false);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('an image upload over the (configured) cap is 413 and leaves no temp file', async () => {
    const small = await createHarness({ limits: { imageBytes: 1000 } });
    try {
      const k = await small.tenant('imgcap');
      const r = await small.req('PUT', '/v1/images/big', { key: k, body: Buffer.alloc(2000) });
      expect(r.status).toBe(413);
      expect(small.images.images.size).toBe(0);
      const { readdirSync } = await import('node:fs');
      // the spool dir was used, and holds nothing after the refusal
      expect(readdirSync(small.tmpDir)).toEqual([]);
    } finally {
      await small.close();
    }
  });
});
