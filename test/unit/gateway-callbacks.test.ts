/**
 * The gateway's side of completion callbacks through `app.request()`: `X-Callback-Url` reaches the scheduler
 * client on async invokes only, a bad one is 400 InvalidRequest with nothing handed to the client, and
 * `GET /v1/callbacks/secret` gives each tenant its own verification key. The client is scripted
 * (gateway-harness.ts); delivery itself is tested in scheduler-callbacks.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { parseCallbackAllow, validateCallbackUrl, allowedAddress, allowedName } from '../../services/scheduler/callback-url.ts';
import { callbackBody, CALLBACK_BODY_MAX, callbackOptions } from '../../services/scheduler/callbacks.ts';
import { createHarness, deployForm, type Harness } from './gateway-harness.ts';

const CODE = tarGz({ 'index.js': 'exports.handler = async (e) => e;' });
let h: Harness;
let key: string;
let otherKey: string;
let signer: CallbackSigner;

beforeAll(async () => {
  h = await createHarness({ callbackSecret: (t) => signer.secretFor(t) });
  // a configured host secret: nothing is written to Redis
  signer = new CallbackSigner(h.redis, 'unused', 'test-host-secret-0123456789');
  key = await h.tenant('acme');
  otherKey = await h.tenant('other');
  const r = await h.req('PUT', '/v1/functions/echo', { key, body: deployForm({ runtime: 'node' }, CODE) });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await h?.close();
});

describe('X-Callback-Url on invoke', () => {
  it('an async invoke hands the URL to the client', async () => {
    h.client.calls = [];
    const url = 'https://hooks.example.com/fnhost?token=t1';
    const r = await h.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{}', headers: { 'x-callback-url': url } });
    expect(r.status).toBe(202);
    expect(h.client.calls).toHaveLength(1);
    expect(h.client.calls[0]).toMatchObject({ mode: 'async', callbackUrl: url });
  });

  it('a bad URL, or one on a sync call, is 400 InvalidRequest and nothing reaches the client', async () => {
    h.client.calls = [];
    const bad = ['', 'ftp://h/x', 'hooks.example.com/x', 'http://user:secret@h/x', 'http://h/a b', `https://h/${'a'.repeat(2100)}`, 'http:///x', 'http://h/é'];
    for (const u of bad) {
      const r = await h.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{}', headers: { 'x-callback-url': u } });
      expect(r.status, u).toBe(400);
      const e = (await r.json()) as { error: { type: string; field: string } };
      expect(e.error).toMatchObject({ type: 'InvalidRequest', field: 'X-Callback-Url' });
    }
    const sync = await h.req('POST', '/v1/functions/echo/invoke', { key, body: '{}', headers: { 'x-callback-url': 'https://hooks.example.com/x' } });
    expect(sync.status).toBe(400);
    expect(h.client.calls).toHaveLength(0);
  });
});

describe('GET /v1/callbacks/secret', () => {
  it("gives each tenant its own key, the signer's", async () => {
    const a = (await (await h.req('GET', '/v1/callbacks/secret', { key })).json()) as { secret: string; header: string };
    const b = (await (await h.req('GET', '/v1/callbacks/secret', { key: otherKey })).json()) as { secret: string };
    expect(a.secret).toMatch(/^[0-9a-f]{64}$/);
    expect(a.secret).toBe(await signer.secretFor('acme'));
    expect(b.secret).not.toBe(a.secret);
    expect(a.header).toBe('X-Fnhost-Signature');
    expect((await h.req('GET', '/v1/callbacks/secret')).status).toBe(401);
    expect((await h.req('GET', '/v1/callbacks/secret', { key: h.adminKey })).status).toBe(403);
  });

  it('the failed-callback routes are 503 Unavailable on a gateway without them (and tenant-only)', async () => {
    const r = await h.req('GET', '/v1/callbacks/failed', { key });
    expect(r.status).toBe(503);
    expect(((await r.json()) as { error: { type: string } }).error.type).toBe('Unavailable');
    expect((await h.req('POST', '/v1/callbacks/failed/redrive', { key })).status).toBe(503);
    expect((await h.req('GET', '/v1/callbacks/failed', { key: h.adminKey })).status).toBe(403);
  });
});

describe('callback pure parts', () => {
  it('the allow-list admits names, *.suffixes and CIDRs (IPv4-mapped judged as IPv4), and refuses what it can at enqueue', () => {
    const a = parseCallbackAllow(' hooks.example.com, *.corp.example ,10.0.0.0/8, ::1 ')!;
    expect(allowedName(a, 'hooks.example.com')).toBe(true);
    expect(allowedName(a, 'x.y.corp.example')).toBe(true);
    expect(allowedName(a, 'corp.example.evil')).toBe(false);
    expect(allowedAddress(a, '10.9.8.7')).toBe(true);
    expect(allowedAddress(a, '::ffff:10.1.1.1')).toBe(true);
    expect(allowedAddress(a, '127.0.0.1')).toBe(false);
    expect(allowedAddress(a, '::1')).toBe(true);
    expect(validateCallbackUrl('http://10.1.2.3:9/x', a)).toBe('http://10.1.2.3:9/x');
    expect(() => validateCallbackUrl('http://169.254.169.254/latest/meta-data', a)).toThrow(/allow-list/);
    expect(() => validateCallbackUrl('http://[fe80::1]/x', a)).toThrow(/allow-list/);
    // a name no rule lists may still resolve into a block: judged at delivery
    expect(validateCallbackUrl('http://other.example/x', a)).toBe('http://other.example/x');
    expect(() => validateCallbackUrl('http://other.example/x', parseCallbackAllow('hooks.example.com'))).toThrow(/allow-list/);
    expect(parseCallbackAllow('')).toBeUndefined();
    expect(() => parseCallbackAllow('10.0.0.0/33')).toThrow(/CIDR/);
    expect(() => parseCallbackAllow('http://x')).toThrow(/FNHOST_CALLBACK_ALLOW/);
  });

  it('options come from the environment, bad values refused; an oversized result is left out of the body', () => {
    expect(callbackOptions({})).toMatchObject({ timeoutMs: 10_000, attempts: 10, backoffMs: 1000, concurrency: 16, sweepMs: 5000 });
    expect(callbackOptions({ FNHOST_CALLBACK_SWEEP_MS: '250' }).sweepMs).toBe(250);
    expect(() => callbackOptions({ FNHOST_CALLBACK_SWEEP_MS: '0' })).toThrow(/FNHOST_CALLBACK_SWEEP_MS/);
    expect(callbackOptions({ FNHOST_CALLBACK_TIMEOUT_MS: '2500', FNHOST_CALLBACK_ATTEMPTS: '3', FNHOST_CALLBACK_SECRET: 's' })).toMatchObject({ timeoutMs: 2500, attempts: 3, secret: 's' });
    expect(() => callbackOptions({ FNHOST_CALLBACK_ATTEMPTS: '0' })).toThrow(/FNHOST_CALLBACK_ATTEMPTS/);
    expect(() => callbackOptions({ FNHOST_CALLBACK_TIMEOUT_MS: '1e4' })).toThrow(/FNHOST_CALLBACK_TIMEOUT_MS/);
    const rec = {
      id: 'i1', tenant: 't', function: 'f', version: 1, mode: 'async' as const, status: 'succeeded' as const, attempts: 1, createdAt: 1, finishedAt: 2,
      response: { status: 200, headers: { 'content-type': 'text/plain' }, body: Buffer.alloc(CALLBACK_BODY_MAX + 1, 'a') },
    };
    const body = JSON.parse(callbackBody(rec));
    expect(body).toMatchObject({ id: 'i1', status: 'succeeded', resultTruncated: true });
    expect(body.result).toBeUndefined();
    expect(body.tenant).toBeUndefined();
    expect(JSON.parse(callbackBody({ ...rec, response: { ...rec.response, body: Buffer.from('hi') } })).result).toBe('hi');
  });
});
