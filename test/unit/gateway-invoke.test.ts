/**
 * The gateway's invocation routes through `app.request()`: what it hands the scheduler client (resolved
 * version, payload bytes, mode, idempotency key, endpoint request parts), what it makes of the answers
 * (headers, typed errors → status), body caps, invocation records, logs, dead letters, the endpoint's
 * access rules, health, images, and 503 when Redis is gone. The client is scripted (gateway-harness.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { FunctionError, OutOfMemory, Timeout, TooManyRequests, Crashed } from '../../services/common/errors.ts';
import { tarGz } from '../../services/cli/pack.ts';
import { createGateway } from '../../services/gateway/app.ts';
import { splitEndpointUrl } from '../../services/gateway/endpoint.ts';
import { parseSince } from '../../services/gateway/logs.ts';
import { renderResult } from '../../services/scheduler/invocation-view.ts';
import { responseHeaders } from '../../services/gateway/invoke.ts';
import { generateKey, hashKey } from '../../services/store/keys.ts';
import { createMetadataStore } from '../../services/store/metadata.ts';
import { createHarness, deployForm, ScriptedClient, DirImageStore, type Harness } from './gateway-harness.ts';

const CODE = tarGz({ 'index.js': 'exports.handler = async (e) => e;' });
let h: Harness;
let key: string;
let otherKey: string;

async function json(r: Response): Promise<any> {
  return r.json();
}

beforeAll(async () => {
  h = await createHarness({ observability: { metrics: async () => ({ contentType: 'text/plain; version=0.0.4', body: 'fnhost_up 1\n' }) } });
  key = await h.tenant('acme');
  otherKey = await h.tenant('other');
  for (const [name, cfg] of [
    ['echo', { runtime: 'node' }],
    ['web', { runtime: 'node', public: true }],
    ['private', { runtime: 'node' }],
  ] as const) {
    const r = await h.req('PUT', `/v1/functions/${name}`, { key, body: deployForm(cfg, CODE) });
    expect(r.status).toBe(201);
  }
  await h.req('PATCH', '/v1/functions/echo', { key, json: { memoryMb: 256 } }); // echo is now at version 2
});
afterAll(async () => h?.close());

describe('sync invoke', () => {
  it('passes the latest version and the exact bytes; answers with the X-Fnhost headers', async () => {
    h.client.calls = [];
    const bytes = Buffer.from([0, 1, 2, 255, 254, 10]);
    const r = await h.req('POST', '/v1/functions/echo/invoke', { key, body: bytes, headers: { 'content-type': 'application/octet-stream' } });
    expect(r.status).toBe(200);
    expect(Buffer.from(await r.arrayBuffer())).toEqual(bytes);
    expect(r.headers.get('x-fnhost-invocation-id')).toMatch(/^inv-/);
    expect(r.headers.get('x-fnhost-start')).toBe('warm');
    expect(r.headers.get('x-fnhost-duration-ms')).toBe('3');
    const call = h.client.calls[0]!;
    expect(call.mode).toBe('sync');
    expect(call.fn).toMatchObject({ tenant: 'acme', name: 'echo', version: 2, memoryMb: 256 });
    expect(call.payload).toMatchObject({ kind: 'event', contentType: 'application/octet-stream' });
    expect(Buffer.from((call.payload as { body: Buffer }).body)).toEqual(bytes);
  });

  it('name:1 runs version 1', async () => {
    h.client.calls = [];
    expect((await h.req('POST', '/v1/functions/echo:1/invoke', { key, body: 'x' })).status).toBe(200);
    expect(h.client.calls[0]!.fn).toMatchObject({ version: 1, memoryMb: 128 });
  });

  it.each([
    [new FunctionError('boom', { invocationId: 'inv-x', stack: 'at f' }), 502, 'FunctionError'],
    [new OutOfMemory('out of memory', { invocationId: 'inv-x', limitMb: 64, peakMb: 64 }), 502, 'OutOfMemory'],
    [new Crashed('exited', { invocationId: 'inv-x', exitCode: 3 }), 502, 'Crashed'],
    [new Timeout('deadline', { invocationId: 'inv-x', timeoutMs: 100 }), 504, 'Timeout'],
    [new TooManyRequests('busy', {}), 429, 'TooManyRequests'],
  ])('a typed failure (%s) becomes status %i with its word and details', async (err, status, type) => {
    h.client.next = async () => {
      throw err;
    };
    try {
      const r = await h.req('POST', '/v1/functions/echo/invoke', { key, body: '{}' });
      expect(r.status).toBe(status);
      const e = (await json(r)).error;
      expect(e.type).toBe(type);
      expect(e.message).toBe(err.message);
      if (err.details.invocationId) expect(r.headers.get('x-fnhost-invocation-id')).toBe('inv-x');
      if (type === 'OutOfMemory') expect(e).toMatchObject({ limitMb: 64, peakMb: 64 });
      if (type === 'TooManyRequests') expect(r.headers.get('retry-after')).toBe('1');
    } finally {
      h.client.next = null;
    }
  });

  it('an unexpected throw is a 500 Internal that does not leak its message', async () => {
    h.client.next = async () => {
      throw new Error('secret internals');
    };
    try {
      const r = await h.req('POST', '/v1/functions/echo/invoke', { key, body: '{}' });
      expect(r.status).toBe(500);
      const body = await r.text();
      expect(JSON.parse(body).error.type).toBe('Internal');
      expect(body).not.toContain('secret');
    } finally {
      h.client.next = null;
    }
  });

  it('a body over 6 MB is 413 and nothing is queued', async () => {
    h.client.calls = [];
    const r = await h.req('POST', '/v1/functions/echo/invoke', { key, body: Buffer.alloc(6 * 1024 * 1024 + 1) });
    expect(r.status).toBe(413);
    expect((await json(r)).error.type).toBe('PayloadTooLarge');
    expect(h.client.calls).toHaveLength(0);
    expect((await h.req('POST', '/v1/functions/echo/invoke', { key, body: Buffer.alloc(6 * 1024 * 1024) })).status).toBe(200);
  });

  it('bad mode, bad name, unknown function', async () => {
    expect((await json(await h.req('POST', '/v1/functions/echo/invoke?mode=later', { key }))).error.field).toBe('mode');
    expect((await h.req('POST', '/v1/functions/Echo/invoke', { key })).status).toBe(400);
    expect((await h.req('POST', '/v1/functions/echo:0/invoke', { key })).status).toBe(400);
    expect((await h.req('POST', '/v1/functions/nope/invoke', { key })).status).toBe(404);
  });
});

describe('tenant concurrency (maxConcurrency)', () => {
  it('a sync call over the limit is 429 at once, on /v1 and /fn alike; the slot frees when the first answers', async () => {
    const k = await h.tenant('one-at-a-time', { maxConcurrency: 1 });
    expect((await h.req('PUT', '/v1/functions/slow', { key: k, body: deployForm({ runtime: 'node' }, CODE) })).status).toBe(201);
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    h.client.next = async (req) => {
      await gate;
      return { record: { id: 'inv-s', tenant: req.fn.tenant, function: req.fn.name, version: 1, mode: 'sync', status: 'succeeded', attempts: 1, createdAt: 0 }, response: { status: 200, headers: {}, body: Buffer.from('ok') } };
    };
    try {
      const first = h.req('POST', '/v1/functions/slow/invoke', { key: k });
      // poll until the first call holds the slot (no fixed sleep)
      for (const t0 = Date.now(); h.admission.inFlight('one-at-a-time') === 0; await new Promise((r) => setTimeout(r, 1))) {
        if (Date.now() - t0 > 5000) throw new Error('first call never admitted');
      }
      for (const p of ['/v1/functions/slow/invoke', '/fn/one-at-a-time/slow']) {
        const second = await h.req('POST', p, { key: k });
        expect(second.status, p).toBe(429);
        expect((await json(second)).error).toMatchObject({ type: 'TooManyRequests', limit: 1 });
      }
      open();
      expect((await first).status).toBe(200);
      expect(h.admission.inFlight('one-at-a-time')).toBe(0);
      expect((await h.req('POST', '/v1/functions/slow/invoke', { key: k })).status).toBe(200);
    } finally {
      h.client.next = null;
    }
  });

  it('a failed invocation releases its slot too', async () => {
    const k = await h.tenant('fails-once', { maxConcurrency: 1 });
    expect((await h.req('PUT', '/v1/functions/f', { key: k, body: deployForm({ runtime: 'node' }, CODE) })).status).toBe(201);
    h.client.next = async () => {
      throw new FunctionError('boom');
    };
    try {
      expect((await h.req('POST', '/v1/functions/f/invoke', { key: k })).status).toBe(502);
    } finally {
      h.client.next = null;
    }
    expect(h.admission.inFlight('fails-once')).toBe(0);
    expect((await h.req('POST', '/v1/functions/f/invoke', { key: k })).status).toBe(200);
  });

  it('live gateways split a limit between them (heartbeats in Redis), and a closed one gives its share back', async () => {
    const { Admission } = await import('../../services/gateway/admission.ts');
    const a = new Admission(h.store);
    const b = new Admission(h.store);
    await a.start();
    await b.start();
    try {
      // a's view of G is refreshed on its next beat; poll rather than sleep
      for (const t0 = Date.now(); a.share(10) !== 5; await new Promise((r) => setTimeout(r, 50))) if (Date.now() - t0 > 3000) throw new Error(`share stayed ${a.share(10)}`);
      expect(a.share(1)).toBe(1); // never below one
    } finally {
      await b.close();
    }
    for (const t0 = Date.now(); a.share(10) !== 10; await new Promise((r) => setTimeout(r, 50))) if (Date.now() - t0 > 3000) throw new Error(`share stayed ${a.share(10)} after b left`);
    await a.close();
  });
});

describe('async invoke and records', () => {
  it('202 with an id; the idempotency key reaches the client; the record reads back', async () => {
    h.client.calls = [];
    const r = await h.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{"a":1}', headers: { 'idempotency-key': 'order-42' } });
    expect(r.status).toBe(202);
    const { invocationId, duplicate } = await json(r);
    expect(duplicate).toBe(false);
    expect(h.client.calls[0]).toMatchObject({ mode: 'async', idempotencyKey: 'order-42' });
    const rec = await json(await h.req('GET', `/v1/invocations/${invocationId}`, { key }));
    expect(rec).toMatchObject({ id: invocationId, status: 'queued', function: 'echo', version: 2, attempts: 0 });
    expect(rec.tenant).toBeUndefined();
    expect((await h.req('GET', `/v1/invocations/${invocationId}`, { key: otherKey })).status).toBe(404);
  });

  it('a body over 256 KB is 413; a bad Idempotency-Key is 400', async () => {
    h.client.calls = [];
    expect((await h.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: Buffer.alloc(256 * 1024 + 1) })).status).toBe(413);
    const r = await h.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: 'x', headers: { 'idempotency-key': 'has space' } });
    expect((await json(r)).error.field).toBe('Idempotency-Key');
    expect(h.client.calls).toHaveLength(0);
  });

  it('a succeeded record shows the result: JSON parsed, text as text, binary as base64', () => {
    expect(renderResult({ status: 200, headers: { 'Content-Type': 'application/json' }, body: Buffer.from('{"x":[1]}') })).toEqual({ result: { x: [1] } });
    expect(renderResult({ status: 200, headers: {}, body: Buffer.from('héllo') })).toEqual({ result: 'héllo' });
    expect(renderResult({ status: 200, headers: {}, body: Buffer.from([0xff, 0xfe]) })).toEqual({ result: '//4=', resultEncoding: 'base64' });
  });

  it('dead letters: listed per tenant, redriven, another tenant gets 404', async () => {
    h.client.deadLetters.set('dl-1', { id: 'dl-1', tenant: 'acme', function: 'echo', version: 2, mode: 'async', status: 'failed', attempts: 3, createdAt: 1, error: { type: 'FunctionError', message: 'boom' } });
    const list = await json(await h.req('GET', '/v1/dead-letters', { key }));
    expect(list.deadLetters).toEqual([expect.objectContaining({ id: 'dl-1', status: 'failed', attempts: 3, error: { type: 'FunctionError', message: 'boom' } })]);
    expect((await json(await h.req('GET', '/v1/dead-letters', { key: otherKey }))).deadLetters).toEqual([]);
    expect((await h.req('POST', '/v1/dead-letters/dl-1/redrive', { key: otherKey })).status).toBe(404);
    const r = await h.req('POST', '/v1/dead-letters/dl-1/redrive', { key });
    expect(r.status).toBe(202);
    expect((await json(r)).invocationId).toBe('dl-1');
  });
});

describe('logs', () => {
  it('NDJSON per function and invocation; since filters; another tenant gets 404', async () => {
    const now = Date.now();
    h.client.logLines.push(
      { tenant: 'acme', function: 'echo', invocationId: 'i1', stream: 'stdout', ts: now - 60_000, line: 'old' },
      { tenant: 'acme', function: 'echo', invocationId: 'i2', stream: 'stderr', ts: now, line: 'new' },
      { tenant: 'other', function: 'echo', invocationId: 'i3', stream: 'stdout', ts: now, line: 'theirs' },
    );
    const r = await h.req('GET', '/v1/functions/echo/logs', { key });
    expect(r.headers.get('content-type')).toContain('application/x-ndjson');
    const lines = (await r.text()).trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.line)).toEqual(['old', 'new']);
    const one = (await (await h.req('GET', '/v1/functions/echo/logs?invocation=i2', { key })).text()).trim().split('\n');
    expect(one.map((l) => JSON.parse(l).line)).toEqual(['new']);
    const recent = (await (await h.req('GET', '/v1/functions/echo/logs?since=30s', { key })).text()).trim().split('\n');
    expect(recent.map((l) => JSON.parse(l).line)).toEqual(['new']);
    expect((await h.req('GET', '/v1/functions/echo/logs?since=soon', { key })).status).toBe(400);
    expect((await h.req('GET', '/v1/functions/private/logs', { key: otherKey })).status).toBe(404);
  });

  it('follow=1 streams and stops when the caller goes away', async () => {
    const ac = new AbortController();
    const r = await h.app.request('/v1/functions/echo/logs?follow=1&invocation=i2', { headers: { authorization: `Bearer ${key}` }, signal: ac.signal });
    expect(r.status).toBe(200);
    const reader = r.body!.getReader();
    const { value } = await reader.read();
    expect(JSON.parse(Buffer.from(value!).toString()).line).toBe('new');
    await reader.cancel();
    ac.abort();
  });

  it('parseSince understands epoch ms, durations and ISO dates', () => {
    expect(parseSince('1700000000000')).toBe(1700000000000);
    expect(parseSince('5m', 1_000_000)).toBe(700_000);
    expect(parseSince('2026-01-01T00:00:00Z')).toBe(Date.UTC(2026, 0, 1));
  });
});

describe('HTTP endpoint /fn/:tenant/:name/*', () => {
  it('passes method, path, query, headers and a binary body; returns status, headers and body', async () => {
    h.client.calls = [];
    h.client.next = async () => ({
      record: { id: 'inv-e', tenant: 'acme', function: 'web', version: 1, mode: 'http', status: 'succeeded', start: 'cold', attempts: 1, createdAt: 0, durationMs: 7 },
      response: { status: 418, headers: { 'content-type': 'image/png', 'x-app': 'yes', connection: 'close' }, body: Buffer.from([137, 80, 78, 71, 0]) },
    });
    try {
      const body = Buffer.from([0, 255, 1, 254]);
      const r = await h.req('PUT', '/fn/acme/web/items/a%20b/?q=1&q=2&x=%2F', { body, headers: { 'x-custom': 'v', 'content-type': 'application/octet-stream', authorization: 'Bearer for-the-function' } });
      expect(r.status).toBe(418);
      expect(r.headers.get('x-app')).toBe('yes');
      expect(r.headers.get('connection')).toBeNull();
      expect(r.headers.get('x-fnhost-start')).toBe('cold');
      expect(r.headers.get('x-fnhost-invocation-id')).toBe('inv-e');
      expect(Buffer.from(await r.arrayBuffer())).toEqual(Buffer.from([137, 80, 78, 71, 0]));
      const p = h.client.calls[0]!.payload;
      expect(h.client.calls[0]!.mode).toBe('http');
      if (p.kind !== 'http') throw new Error('expected an http payload');
      expect(p).toMatchObject({ method: 'PUT', path: '/items/a%20b/', query: 'q=1&q=2&x=%2F' });
      expect(p.headers).toMatchObject({ 'x-custom': 'v', 'content-type': 'application/octet-stream', authorization: 'Bearer for-the-function' });
      expect(Buffer.from(p.body)).toEqual(body);
    } finally {
      h.client.next = null;
    }
  });

  it('the bare function path is "/"', async () => {
    h.client.calls = [];
    expect((await h.req('GET', '/fn/acme/web')).status).toBe(200);
    expect((await h.req('GET', '/fn/acme/web/')).status).toBe(200);
    expect(h.client.calls.map((c) => (c.payload as { path: string }).path)).toEqual(['/', '/']);
  });

  it('a private function needs a key of its tenant, which is not passed on', async () => {
    h.client.calls = [];
    expect((await h.req('GET', '/fn/acme/private/x')).status).toBe(401);
    expect((await h.req('GET', '/fn/acme/private/x', { key: otherKey })).status).toBe(403);
    expect((await h.req('GET', '/fn/acme/private/x', { key: h.adminKey })).status).toBe(403);
    expect(h.client.calls).toHaveLength(0);
    expect((await h.req('GET', '/fn/acme/private/x', { key })).status).toBe(200);
    expect((h.client.calls[0]!.payload as { headers: Record<string, string> }).headers.authorization).toBeUndefined();
  });

  it('unknown tenant or function is 404; a bad name is 400', async () => {
    expect((await h.req('GET', '/fn/nobody/web')).status).toBe(404);
    expect((await h.req('GET', '/fn/acme/nothing')).status).toBe(404);
    expect((await h.req('GET', '/fn/acme/Web')).status).toBe(400);
  });

  it('splitEndpointUrl keeps encoding and the raw query', () => {
    expect(splitEndpointUrl('http://h/fn/t/n/a/b%2Fc?x=1&y')).toEqual({ path: '/a/b%2Fc', query: 'x=1&y' });
    expect(splitEndpointUrl('http://h/fn/t/n')).toEqual({ path: '/', query: '' });
    expect(splitEndpointUrl('http://h/fn/t/n?z')).toEqual({ path: '/', query: 'z' });
  });
});

describe('images', () => {
  it('import, list, refuse deleting while used, delete; private per tenant', async () => {
    const r = await h.req('PUT', '/v1/images/alpine-ish', { key, body: Buffer.from('tar bytes') });
    expect(r.status).toBe(201);
    expect((await json(await h.req('GET', '/v1/images', { key }))).images.map((i: { name: string }) => i.name)).toContain('alpine-ish');
    expect((await json(await h.req('GET', '/v1/images', { key: otherKey }))).images.map((i: { name: string }) => i.name)).not.toContain('alpine-ish');
    const fn = await h.req('PUT', '/v1/functions/img', { key, body: deployForm({ runtime: 'image:alpine-ish' }) });
    expect(fn.status).toBe(201);
    expect((await json(fn)).codeDigest).toBeNull();
    expect((await h.req('PUT', '/v1/functions/img2', { key: otherKey, body: deployForm({ runtime: 'image:alpine-ish' }) })).status).toBe(400);
    expect((await h.req('DELETE', '/v1/images/alpine-ish', { key })).status).toBe(409);
    expect((await h.req('DELETE', '/v1/images/alpine-ish', { key: otherKey })).status).toBe(404);
    await h.req('DELETE', '/v1/functions/img', { key });
    expect((await h.req('DELETE', '/v1/images/alpine-ish', { key })).status).toBe(204);
    expect((await h.req('PUT', '/v1/images/node', { key, body: Buffer.from('x') })).status).toBe(409);
    expect((await h.req('PUT', '/v1/images/empty', { key })).status).toBe(400);
  });
});

describe('health', () => {
  it('healthz, readyz follows the client and Redis, metrics from the plugged source', async () => {
    expect((await h.req('GET', '/healthz')).status).toBe(200);
    expect(await json(await h.req('GET', '/readyz'))).toEqual({ status: 'ready', redis: true, scheduler: true });
    h.client.readyValue = false;
    const r = await h.req('GET', '/readyz');
    expect(r.status).toBe(503);
    expect((await json(r)).error).toMatchObject({ type: 'Unavailable', redis: true, scheduler: false });
    h.client.readyValue = true;
    const m = await h.req('GET', '/metrics');
    expect(m.headers.get('content-type')).toContain('text/plain');
    expect(await m.text()).toContain('fnhost_up 1');
  });
});

describe('Redis unreachable', () => {
  it('is 503 Unavailable on tenant and admin routes, and readyz says so', async () => {
    // A port nothing listens on (the discard port); no offline queue, so commands fail at once.
    const dead = new Redis('redis://127.0.0.1:9', { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    const adminKey = generateKey();
    const app = createGateway({ store: createMetadataStore(dead, 'test:dead:', { subscribe: false }), client: new ScriptedClient(), images: new DirImageStore('/nonexistent'), adminKeyHash: hashKey(adminKey), tmpDir: '/tmp' });
    try {
      const a = await app.request('/v1/functions', { headers: { authorization: `Bearer ${generateKey()}` } });
      expect(a.status).toBe(503);
      expect((await json(a)).error.type).toBe('Unavailable');
      const b = await app.request('/v1/tenants', { headers: { authorization: `Bearer ${adminKey}` } });
      expect(b.status).toBe(503);
      expect((await app.request('/readyz')).status).toBe(503);
      expect((await app.request('/healthz')).status).toBe(200);
    } finally {
      dead.disconnect();
    }
  });
});

describe('tenant isolation (invocation routes)', () => {
  it("another tenant can neither invoke, async-invoke, read logs of, nor redrive acme's things", async () => {
    h.client.calls = [];
    for (const [m, p] of [
      ['POST', '/v1/functions/private/invoke'],
      ['POST', '/v1/functions/private/invoke?mode=async'],
      ['POST', '/v1/functions/echo:1/invoke'],
      ['GET', '/v1/functions/echo/logs'],
      ['GET', '/v1/functions/echo/logs?follow=1'],
    ] as const) {
      expect((await h.req(m, p, { key: otherKey })).status, `${m} ${p}`).toBe(404);
    }
    expect(h.client.calls).toHaveLength(0);
  });
});

describe('sync answer headers', () => {
  const result = (headers: Record<string, string>) => ({
    record: { id: 'i1', tenant: 't', function: 'f', version: 1, mode: 'sync' as const, status: 'succeeded' as const, start: 'warm' as const, attempts: 1, createdAt: 0, durationMs: 1.23456 },
    response: { status: 200, headers, body: Buffer.from('x') },
  });
  it('a plain object: lower-cased names, repeats joined, X-Fnhost-* set, length/encoding left to the server', () => {
    const h = responseHeaders(result({ 'Content-Type': 'application/json', 'X-A': '1', 'x-a': '2', 'Content-Length': '99', 'transfer-encoding': 'chunked', 'x-fnhost-start': 'cold' }));
    expect(h).toEqual({ 'content-type': 'application/json', 'x-a': '1, 2', 'x-fnhost-invocation-id': 'i1', 'x-fnhost-start': 'warm', 'x-fnhost-duration-ms': '1.235' });
  });
  it('falls back to Headers (which refuses the same values as before) when a name or value is not writable as is', () => {
    const h = responseHeaders(result({ x: 'a\u0001b', ok: 'y' }));
    expect(h).toBeInstanceOf(Headers);
    expect((h as Headers).get('x-fnhost-start')).toBe('warm');
    expect(() => responseHeaders(result({ 'bad name': 'v' }))).toThrow();
    expect(() => responseHeaders(result({ x: 'a\r\nb' }))).toThrow();
  });
});
