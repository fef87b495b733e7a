/**
 * Completion callbacks end to end: a real host (real Redis, BullMQ scheduler, native sandboxes) and a real
 * HTTP receiver on loopback. `X-Callback-Url` on an async invoke → one signed POST of the record
 * `GET /v1/invocations/:id` shows, verified with the key from `GET /v1/callbacks/secret`; a function failing
 * every attempt calls back once, with the dead-letter outcome; a bad URL is 400 and queues nothing.
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { tarGz } from '../../services/cli/pack.ts';
import { bullConnection } from '../../services/scheduler/client.ts';
import { CALLBACK_QUEUE } from '../../services/scheduler/callbacks.ts';
import { verifyCallbackSignature } from '../../services/scheduler/callback-signer.ts';
import { deployForm, e2eSkipReason, startTestHost, until, type TestHost } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`callbacks e2e skipped: ${skip}`);

const CODE = tarGz({ 'fns.js': 'exports.echo = async (e) => e;\nexports.boom = async () => { throw new TypeError("boom from handler"); };\n' });

async function j(r: Response | Promise<Response>): Promise<any> {
  return (await r).json();
}

describe.skipIf(!!skip)('completion callbacks end to end', () => {
  let t: TestHost;
  let key: string;
  const hits: { headers: IncomingHttpHeaders; body: string }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hits.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.end();
    });
  });
  let hook = '';
  let queue: Queue;

  beforeAll(async () => {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    hook = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    t = await startTestHost('cb', { scheduler: { keepAliveMs: 60_000, callbacks: { backoffMs: 100 } } });
    key = await t.tenant('acme');
    for (const [name, handler] of [['echo', 'fns.echo'], ['boom', 'fns.boom']]) {
      const r = await t.req('PUT', `/v1/functions/${name}`, { key, body: deployForm({ runtime: 'node', handler, retries: 2 }, CODE) });
      expect(r.status).toBe(201);
    }
    queue = new Queue(CALLBACK_QUEUE, { connection: bullConnection(t.redis), prefix: `${t.prefix}:bull` });
  }, 60_000);
  afterAll(async () => {
    await queue?.close();
    await t?.close();
    await new Promise<void>((r) => server.close(() => r()));
  }, 60_000);

  const pending = async () => Object.values(await queue.getJobCounts('waiting', 'delayed', 'active')).reduce((a, b) => a + b, 0);

  it('a success is POSTed once, signed with the tenant key from GET /v1/callbacks/secret', async () => {
    const r = await t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{"n":7}', headers: { 'content-type': 'application/json', 'x-callback-url': hook } });
    expect(r.status).toBe(202);
    const { invocationId } = await j(r);
    const hit = await until(async () => hits.find((h) => h.headers['x-fnhost-invocation-id'] === invocationId), 30_000, 'the callback');
    const rec = await j(await t.req('GET', `/v1/invocations/${invocationId}`, { key }));
    expect(JSON.parse(hit.body)).toEqual(rec);
    expect(rec).toMatchObject({ status: 'succeeded', result: { n: 7 }, attempts: 1 });
    expect(hit.headers).toMatchObject({ 'x-fnhost-status': 'succeeded', 'x-fnhost-function': 'echo', 'content-type': 'application/json' });
    const { secret } = await j(await t.req('GET', '/v1/callbacks/secret', { key }));
    expect(verifyCallbackSignature(secret, hit.body, hit.headers['x-fnhost-signature'] as string)).toBe(true);
  }, 40_000);

  it('a function failing every attempt calls back once, after the last, with the dead-letter outcome', async () => {
    const { invocationId } = await j(t.req('POST', '/v1/functions/boom/invoke?mode=async', { key, body: '{}', headers: { 'x-callback-url': hook } }));
    const hit = await until(async () => hits.find((h) => h.headers['x-fnhost-invocation-id'] === invocationId), 30_000, 'the callback');
    expect(JSON.parse(hit.body)).toMatchObject({ id: invocationId, status: 'failed', attempts: 2, error: { type: 'FunctionError' } });
    const dl = (await j(t.req('GET', '/v1/dead-letters', { key }))).deadLetters as { id: string }[];
    expect(dl.map((d) => d.id)).toContain(invocationId);
    await until(async () => (await pending()) === 0, 10_000, 'the callback queue to drain');
    expect(hits.filter((h) => h.headers['x-fnhost-invocation-id'] === invocationId)).toHaveLength(1);
  }, 40_000);

  it('a bad X-Callback-Url is 400 InvalidRequest and queues nothing', async () => {
    const before = await t.redis.keys(`${t.prefix}:inv:*`);
    for (const u of ['ftp://x/y', 'http://u:p@127.0.0.1/x', 'not a url']) {
      const r = await t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{}', headers: { 'x-callback-url': u } });
      expect(r.status).toBe(400);
      expect((await j(r)).error).toMatchObject({ type: 'InvalidRequest', field: 'X-Callback-Url' });
    }
    expect((await t.redis.keys(`${t.prefix}:inv:*`)).sort()).toEqual(before.sort());
  });
});
