/**
 * Issue 6 end to end: the HTTP contract over a real socket against a real host (real Redis, the BullMQ
 * scheduler, native sandboxes). Deploy → invoke (cold, warm, versions) → PATCH memory cap enforced on the
 * next call → typed failures → async with retries, dead letters and redrive → logs per invocation → a Hono
 * app as an HTTP endpoint → tenant isolation on every route → malformed input changing nothing.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packDirectory, tar, tarGz } from '../../services/cli/pack.ts';
import { writeOciLayout } from '../fixtures/oci/tars.ts';
import { deployForm, e2eSkipReason, startTestHost, until, vendoredHono, type TestHost } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`gateway e2e skipped: ${skip}`);

/** One CommonJS module, one export per behaviour; a function picks one with its handler. */
const FNS = `
let calls = 0;
exports.echo = async (e) => e;
exports.ctx = async (e, ctx) => ({ id: ctx.invocationId, name: ctx.functionName, version: ctx.functionVersion, memoryMb: ctx.memoryMb });
exports.alloc = async () => { const a = []; for (let i = 0; i < 100; i++) a.push(Buffer.alloc(1 << 20, 1)); return a.length; };
exports.boom = async () => { throw new TypeError('boom from handler'); };
exports.exit = async () => { process.exit(3); };
exports.slow = async () => new Promise((r) => setTimeout(() => r('late'), 60_000));
exports.flaky = async (e) => { calls++; if (calls <= e.failTimes) throw new Error('attempt ' + calls + ' fails'); return { attempt: calls }; };
exports.log = async (e) => { console.log('hello ' + e.tag); console.error('warn ' + e.tag); return 'ok'; };
exports.env = async () => process.env.GREETING;
`;
const CODE = tarGz({ 'fns.js': FNS });

const HONO_APP = `
import { Hono } from './hono/index.js';
const app = new Hono();
app.get('/items/:id', (c) => c.json({ id: c.req.param('id'), q: c.req.queries('q'), h: c.req.header('x-custom') ?? null }));
app.post('/echo', async (c) => {
  const body = await c.req.arrayBuffer();
  return c.body(body, 201, { 'content-type': 'application/octet-stream', 'x-len': String(body.byteLength) });
});
app.notFound((c) => c.text('no route ' + c.req.path, 404));
export default app;
`;

/** Response JSON, untyped: these tests assert its shape. */
async function j(r: Response | Promise<Response>): Promise<any> {
  return (await r).json();
}

describe.skipIf(!!skip)('gateway end to end (issue 6)', () => {
  let t: TestHost;
  let key: string;
  let otherKey: string;

  async function deploy(name: string, config: Record<string, unknown>, code: Buffer | undefined = CODE, k = key) {
    const r = await t.req('PUT', `/v1/functions/${name}`, { key: k, body: deployForm({ runtime: 'node', ...config }, code) });
    const body = await j(r);
    if (r.status !== 201) throw new Error(`deploy ${name}: ${r.status} ${JSON.stringify(body)}`);
    return body as { version: number; codeDigest: string };
  }
  const invoke = (ref: string, body: unknown, k = key, query = '') =>
    t.req('POST', `/v1/functions/${ref}/invoke${query}`, { key: k, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

  beforeAll(async () => {
    t = await startTestHost('gw', { scheduler: { keepAliveMs: 60_000 } });
    key = await t.tenant('acme', { maxMemoryMb: 512 });
    otherKey = await t.tenant('intruder');
  }, 60_000);
  afterAll(async () => t?.close(), 60_000);

  it('is ready, and /metrics is Prometheus text', async () => {
    const r = await until(async () => ((await t.req('GET', '/readyz')).status === 200 ? true : null), 10_000, 'readyz');
    expect(r).toBe(true);
    expect((await t.req('GET', '/healthz')).status).toBe(200);
    const m = await t.req('GET', '/metrics');
    expect(m.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await m.text()).toMatch(/^# HELP /m);
  });

  it('deploys, invokes cold then warm with the X-Fnhost headers, and name:N selects a version', async () => {
    await deploy('echo', { handler: 'fns.echo' });
    const r1 = await invoke('echo', { hello: 'world' });
    expect(r1.status).toBe(200);
    expect(await j(r1)).toEqual({ hello: 'world' });
    expect(r1.headers.get('x-fnhost-start')).toBe('cold');
    expect(r1.headers.get('x-fnhost-invocation-id')).toMatch(/\S{8,}/);
    expect(Number(r1.headers.get('x-fnhost-duration-ms'))).toBeGreaterThanOrEqual(0);
    const r2 = await invoke('echo', [1, 2, 3]);
    expect(await j(r2)).toEqual([1, 2, 3]);
    expect(r2.headers.get('x-fnhost-start')).toBe('warm');
    // the host ran both in-process (local dispatch): the record is readable the moment the answer is out
    const got = await t.req('GET', `/v1/invocations/${r2.headers.get('x-fnhost-invocation-id')}`, { key });
    expect(got.status).toBe(200);
    expect(await j(got)).toMatchObject({ status: 'succeeded', start: 'warm', result: [1, 2, 3], attempts: 1, mode: 'sync' });

    await deploy('ctx', { handler: 'fns.ctx', memoryMb: 128 });
    const v2 = await deploy('ctx', { handler: 'fns.ctx', memoryMb: 192 });
    expect(v2.version).toBe(2);
    expect(await j(await invoke('ctx', {}))).toMatchObject({ name: 'ctx', version: '2', memoryMb: 192 });
    expect(await j(await invoke('ctx:1', {}))).toMatchObject({ name: 'ctx', version: '1', memoryMb: 128 });
    expect((await invoke('ctx:7', {})).status).toBe(404);
  });

  it('a memory cap changed by PATCH is enforced on the next call (100 MB passes at 256, OutOfMemory at 64)', async () => {
    await deploy('alloc', { handler: 'fns.alloc', memoryMb: 256 });
    const ok = await invoke('alloc', {});
    expect(ok.status).toBe(200);
    expect(await j(ok)).toBe(100);
    const p = await t.req('PATCH', '/v1/functions/alloc', { key, json: { memoryMb: 64 } });
    expect(p.status).toBe(200);
    expect(await j(p)).toMatchObject({ version: 2, memoryMb: 64 });
    const oom = await invoke('alloc', {});
    expect(oom.status).toBe(502);
    const e = (await j(oom)).error;
    expect(e.type).toBe('OutOfMemory');
    expect(e.limitMb).toBe(64);
    expect(oom.headers.get('x-fnhost-invocation-id')).toBeTruthy();
    // and back: the next version at 256 passes again
    await t.req('PATCH', '/v1/functions/alloc', { key, json: { memoryMb: 256 } });
    expect((await invoke('alloc', {})).status).toBe(200);
  });

  it('typed failures: FunctionError 502, Crashed 502, Timeout 504, and the function keeps working after each', async () => {
    await deploy('boom', { handler: 'fns.boom' });
    const b = await invoke('boom', {});
    expect(b.status).toBe(502);
    expect((await j(b)).error).toMatchObject({ type: 'FunctionError', message: expect.stringContaining('boom from handler') });

    await deploy('exit', { handler: 'fns.exit' });
    const x = await invoke('exit', {});
    expect(x.status).toBe(502);
    expect((await j(x)).error.type).toBe('Crashed');

    await deploy('slow', { handler: 'fns.slow', timeoutMs: 300 });
    const s = await invoke('slow', {});
    expect(s.status).toBe(504);
    expect((await j(s)).error).toMatchObject({ type: 'Timeout' });

    expect((await invoke('echo', 'still fine')).status).toBe(200);
  });

  it('env reaches the function', async () => {
    await deploy('env', { handler: 'fns.env', env: { GREETING: 'hi from env' } });
    expect(await (await invoke('env', {})).text()).toContain('hi from env');
  });

  it('async: 202, the record moves to succeeded with its result; an Idempotency-Key repeat returns the same id', async () => {
    const r = await t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: JSON.stringify({ n: 1 }), headers: { 'content-type': 'application/json', 'idempotency-key': 'k-1' } });
    expect(r.status).toBe(202);
    const { invocationId, duplicate } = await j(r);
    expect(duplicate).toBe(false);
    const again = await j(await t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{"n":2}', headers: { 'content-type': 'application/json', 'idempotency-key': 'k-1' } }));
    expect(again).toEqual({ invocationId, duplicate: true });
    const rec = await until(async () => {
      const v = await j(await t.req('GET', `/v1/invocations/${invocationId}`, { key }));
      return v.status === 'succeeded' ? v : null;
    }, 15_000, 'the async invocation to succeed');
    expect(rec).toMatchObject({ id: invocationId, function: 'echo', result: { n: 1 }, attempts: 1 });
    expect((await t.req('GET', `/v1/invocations/${invocationId}`, { key: otherKey })).status).toBe(404);
  });

  it('async retries until success; exhausted attempts land in dead letters; redrive runs it again', async () => {
    await deploy('flaky', { handler: 'fns.flaky', retries: 3 });
    const ok = await j(await invoke('flaky', { failTimes: 2 }, key, '?mode=async'));
    const done = await until(async () => {
      const v = await j(await t.req('GET', `/v1/invocations/${ok.invocationId}`, { key }));
      return v.status === 'succeeded' || v.status === 'failed' ? v : null;
    }, 30_000, 'the retried invocation to finish');
    expect(done).toMatchObject({ status: 'succeeded', attempts: 3, result: { attempt: 3 } });

    // a fresh function (fresh counter): two attempts allowed, both fail → dead letter
    await deploy('doomed', { handler: 'fns.flaky', retries: 2 });
    const d = await j(await invoke('doomed', { failTimes: 2 }, key, '?mode=async'));
    const dead = await until(async () => {
      const list = (await j(await t.req('GET', '/v1/dead-letters', { key }))).deadLetters as { id: string }[];
      return list.find((x) => x.id === d.invocationId) ?? null;
    }, 30_000, 'the dead letter');
    expect(dead).toMatchObject({ status: 'failed', attempts: 2, error: { type: 'FunctionError' } });
    expect((await j(await t.req('GET', '/v1/dead-letters', { key: otherKey }))).deadLetters).toEqual([]);
    expect((await t.req('POST', `/v1/dead-letters/${d.invocationId}/redrive`, { key: otherKey })).status).toBe(404);
    const rd = await t.req('POST', `/v1/dead-letters/${d.invocationId}/redrive`, { key });
    expect(rd.status).toBe(202);
    const { invocationId: again } = await j(rd);
    // the warm instance's counter is at 2, so the third call succeeds
    const after = await until(async () => {
      const v = await j(await t.req('GET', `/v1/invocations/${again}`, { key }));
      return v.status === 'succeeded' || v.status === 'failed' ? v : null;
    }, 30_000, 'the redriven invocation');
    expect(after).toMatchObject({ status: 'succeeded', result: { attempt: 3 } });
  });

  it('logs per invocation, as NDJSON, and follow streams new lines', async () => {
    await deploy('log', { handler: 'fns.log' });
    const ids: string[] = [];
    for (const tag of ['a', 'b']) {
      const r = await invoke('log', { tag });
      expect(r.status).toBe(200);
      ids.push(r.headers.get('x-fnhost-invocation-id')!);
    }
    const lines = await until(async () => {
      const text = await (await t.req('GET', `/v1/functions/log/logs?invocation=${ids[1]}`, { key })).text();
      const ls = text.trim() ? text.trim().split('\n').map((l) => JSON.parse(l)) : [];
      return ls.length >= 2 ? ls : null;
    }, 10_000, 'log lines of the second invocation');
    expect(lines.map((l: { line: string; stream: string }) => `${l.stream}:${l.line}`).sort()).toEqual(['stderr:warn b', 'stdout:hello b']);
    expect(lines.every((l: { invocationId: string }) => l.invocationId === ids[1])).toBe(true);
    expect((await t.req('GET', '/v1/functions/log/logs', { key: otherKey })).status).toBe(404);

    // follow: open the stream, then invoke; the new line arrives on the open response
    const ac = new AbortController();
    const f = await t.req('GET', '/v1/functions/log/logs?follow=1&since=1s', { key, signal: ac.signal });
    expect(f.status).toBe(200);
    const reader = f.body!.getReader();
    await invoke('log', { tag: 'followed' });
    let seen = '';
    const deadline = Date.now() + 10_000;
    while (!seen.includes('hello followed') && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += Buffer.from(value!).toString();
    }
    ac.abort();
    expect(seen).toContain('hello followed');
  });

  it('a Hono app is reached through /fn/:tenant/:name/* with path, query, headers and a binary body', async () => {
    await deploy('web', { handler: 'index', public: true }, tarGz({ 'index.mjs': HONO_APP, ...vendoredHono() }));
    const g = await t.req('GET', '/fn/acme/web/items/42?q=a&q=b', { headers: { 'x-custom': 'yes' } });
    expect(g.status).toBe(200);
    expect(await j(g)).toEqual({ id: '42', q: ['a', 'b'], h: 'yes' });
    expect(g.headers.get('x-fnhost-invocation-id')).toBeTruthy();
    const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256));
    const p = await t.req('POST', '/fn/acme/web/echo', { body: bytes, headers: { 'content-type': 'application/octet-stream' } });
    expect(p.status).toBe(201);
    expect(p.headers.get('x-len')).toBe('4096');
    expect(Buffer.from(await p.arrayBuffer())).toEqual(bytes);
    const nf = await t.req('DELETE', '/fn/acme/web/nothing');
    expect(nf.status).toBe(404);
    expect(await nf.text()).toBe('no route /nothing');
  });

  it('an imported OCI image runs as image:<name>, private to its tenant', async () => {
    // One layer: static busybox as /bin/sh and an entrypoint script; the store adds /proc /dev /tmp /var/task.
    const layer = tar([
      { path: 'bin', type: 'dir', mode: 0o755 },
      { path: 'bin/busybox', type: 'file', mode: 0o755, data: readFileSync('/bin/busybox') },
      { path: 'bin/sh', type: 'symlink', mode: 0o777, linkTarget: 'busybox' },
      { path: 'bin/cat', type: 'symlink', mode: 0o777, linkTarget: 'busybox' },
      { path: 'app', type: 'dir', mode: 0o755 },
      { path: 'app/run', type: 'file', mode: 0o755, data: Buffer.from('#!/bin/sh\necho "image says: $(cat)"\n') },
    ]);
    const dir = mkdtempSync(join(tmpdir(), 'fnhost-e2e-oci-'));
    try {
      writeOciLayout(dir, [layer], { cmd: ['/app/run'] });
      const layoutTar = gunzipSync(await packDirectory(dir));
      const up = await t.req('PUT', '/v1/images/tiny', { key, body: layoutTar, headers: { 'content-type': 'application/x-tar' } });
      expect(up.status).toBe(201);
      expect(await j(up)).toMatchObject({ name: 'tiny', digest: expect.stringMatching(/^sha256:/) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const mine = (await j(t.req('GET', '/v1/images', { key }))).images as { name: string; base: boolean }[];
    expect(mine.map((i) => i.name)).toEqual(expect.arrayContaining(['tiny', 'node', 'busybox', 'python']));
    expect(((await j(t.req('GET', '/v1/images', { key: otherKey }))).images as { name: string }[]).map((i) => i.name)).not.toContain('tiny');
    const d = await t.req('PUT', '/v1/functions/img', { key, body: deployForm({ runtime: 'image:tiny' }) });
    expect(d.status).toBe(201);
    const r = await t.req('POST', '/v1/functions/img/invoke', { key, body: 'hello' });
    expect(r.status).toBe(200);
    expect((await r.text()).trim()).toBe('image says: hello');
    expect((await t.req('PUT', '/v1/functions/img', { key: otherKey, body: deployForm({ runtime: 'image:tiny' }) })).status).toBe(400);
    expect((await t.req('DELETE', '/v1/images/tiny', { key })).status).toBe(409);
    expect((await t.req('DELETE', '/v1/functions/img', { key })).status).toBe(204);
    expect((await t.req('DELETE', '/v1/images/tiny', { key })).status).toBe(204);
    const bad = await t.req('PUT', '/v1/images/junk', { key, body: Buffer.from('not a tar at all') });
    expect(bad.status).toBe(400);
    expect(((await j(t.req('GET', '/v1/images', { key }))).images as { name: string }[]).map((i) => i.name)).not.toContain('junk');
  });

  it('a private endpoint needs the tenant key (401 without, 403 with another tenant\'s)', async () => {
    expect((await t.req('GET', '/fn/acme/echo/x')).status).toBe(401);
    expect((await t.req('GET', '/fn/acme/echo/x', { key: otherKey })).status).toBe(403);
    expect((await t.req('GET', '/fn/acme/echo/x', { key })).status).toBe(200);
  });

  it('tenant isolation: every tenant route with another tenant\'s key finds nothing and changes nothing', async () => {
    const before = await j(await t.req('GET', '/v1/functions/echo', { key }));
    const routes: [string, string, unknown?][] = [
      ['GET', '/v1/functions/echo'],
      ['GET', '/v1/functions/echo:1'],
      ['PATCH', '/v1/functions/echo', { memoryMb: 64 }],
      ['DELETE', '/v1/functions/echo'],
      ['POST', '/v1/functions/echo/invoke'],
      ['POST', '/v1/functions/echo/invoke?mode=async'],
      ['GET', '/v1/functions/echo/logs'],
      ['DELETE', '/v1/images/whatever'],
    ];
    for (const [m, p, json] of routes) {
      const r = await t.req(m, p, { key: otherKey, ...(json ? { json } : {}) });
      expect(r.status, `${m} ${p}`).toBe(404);
    }
    expect((await j(await t.req('GET', '/v1/functions', { key: otherKey }))).functions).toEqual([]);
    for (const p of ['/v1/tenants', '/v1/tenants/acme', '/v1/tenants/acme/keys']) expect((await t.req('GET', p, { key: otherKey })).status, p).toBe(403);
    expect((await t.req('DELETE', '/v1/tenants/acme', { key: otherKey })).status).toBe(403);
    expect((await t.req('POST', '/v1/tenants/acme/keys', { key: otherKey })).status).toBe(403);
    expect(await j(await t.req('GET', '/v1/functions/echo', { key }))).toEqual(before);
  });

  it('malformed input over the socket: each 4xx, nothing changes (incl. a 60 MB upload)', async () => {
    const snapshot = async () => (await j(await t.req('GET', '/v1/functions', { key }))).functions;
    const before = await snapshot();
    const cases: [string, () => Promise<Response>, number][] = [
      ['bad JSON', () => t.req('PATCH', '/v1/functions/echo', { key, body: '{"memoryMb":', headers: { 'content-type': 'application/json' } }), 400],
      ['unknown field', () => t.req('PUT', '/v1/functions/x1', { key, body: deployForm({ runtime: 'node', colour: 1 }, CODE) }), 400],
      ['name with /', () => t.req('PUT', '/v1/functions/a%2Fb', { key, body: deployForm({ runtime: 'node' }, CODE) }), 400],
      ['name with ..', () => t.req('PUT', '/v1/functions/a..b', { key, body: deployForm({ runtime: 'node' }, CODE) }), 400],
      ['uppercase name', () => t.req('PUT', '/v1/functions/Echo', { key, body: deployForm({ runtime: 'node' }, CODE) }), 400],
      ['300-character name', () => t.req('PUT', `/v1/functions/${'a'.repeat(300)}`, { key, body: deployForm({ runtime: 'node' }, CODE) }), 400],
      ['negative memory', () => t.req('PUT', '/v1/functions/x2', { key, body: deployForm({ runtime: 'node', memoryMb: -1 }, CODE) }), 400],
      ['huge memory', () => t.req('PUT', '/v1/functions/x3', { key, body: deployForm({ runtime: 'node', memoryMb: 1 << 30 }, CODE) }), 422],
      ['a non-archive as code', () => t.req('PUT', '/v1/functions/x4', { key, body: deployForm({ runtime: 'node' }, Buffer.from('not an archive at all')) }), 400],
      ['a 60 MB upload', () => t.req('PUT', '/v1/functions/x5', { key, body: deployForm({ runtime: 'node' }, Buffer.alloc(60 * 1024 * 1024, 7)) }), 413],
      ['a 7 MB sync body', () => t.req('POST', '/v1/functions/echo/invoke', { key, body: Buffer.alloc(7 * 1024 * 1024) }), 413],
      ['a 300 KB async body', () => t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: Buffer.alloc(300 * 1024) }), 413],
      ['no key', () => t.req('GET', '/v1/functions'), 401],
      ['tenant exists', () => t.req('POST', '/v1/tenants', { key: t.adminKey, json: { name: 'acme' } }), 409],
    ];
    for (const [what, run, status] of cases) {
      const r = await run();
      expect(r.status, what).toBe(status);
      const body = await j(r);
      expect(typeof body.error.type, what).toBe('string');
      expect(typeof body.error.message, what).toBe('string');
    }
    expect(await snapshot()).toEqual(before);
  });

  it('429 when the tenant is at maxConcurrency', async () => {
    const k = await t.tenant('narrow', { maxConcurrency: 1 });
    await deploy('slow', { handler: 'fns.slow', timeoutMs: 2000 }, CODE, k);
    const first = t.req('POST', '/v1/functions/slow/invoke', { key: k, body: '{}' });
    const second = await until(async () => {
      const r = await t.req('POST', '/v1/functions/slow/invoke', { key: k, body: '{}' });
      return r.status === 429 ? r : (await r.body?.cancel(), null);
    }, 5_000, 'a 429 while the first call runs');
    expect((await j(second)).error.type).toBe('TooManyRequests');
    expect((await first).status).toBe(504);
  });

  it('deleting a tenant deletes its functions; its key stops working', async () => {
    const k = await t.tenant('shortlived');
    await deploy('f', { handler: 'fns.echo' }, CODE, k);
    const r = await t.req('POST', '/v1/functions/f/invoke', { key: k, body: '1' });
    expect(r.status).toBe(200);
    const id = r.headers.get('x-fnhost-invocation-id')!;
    expect(await t.host.client.get('shortlived', id)).not.toBeNull();
    expect((await t.req('DELETE', '/v1/tenants/shortlived', { key: t.adminKey })).status).toBe(204);
    expect(await t.host.client.get('shortlived', id)).toBeNull();
    expect((await t.req('GET', '/v1/functions', { key: k })).status).toBe(401);
    expect((await t.req('GET', '/fn/shortlived/f')).status).toBe(404);
    expect((await j(await t.req('GET', '/v1/tenants', { key: t.adminKey }))).tenants.map((x: { name: string }) => x.name)).not.toContain('shortlived');
  });
});
