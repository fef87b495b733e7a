/**
 * Failed completion callbacks end to end: a real host (real Redis, BullMQ scheduler, native sandboxes), a real
 * loopback receiver answering 500 until told otherwise, and the CLI against the host's HTTP API:
 * `fnhost callbacks failed` lists the callback whose attempts ran out, `fnhost callbacks redrive <id>` POSTs
 * it again once the receiver is back; another tenant cannot see or redrive it.
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { runCli } from '../helpers/cli.ts';
import { deployForm, e2eSkipReason, startTestHost, until, type TestHost } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`failed-callbacks e2e skipped: ${skip}`);

const CODE = tarGz({ 'fns.js': 'exports.echo = async (e) => e;\n' });

describe.skipIf(!!skip)('failed completion callbacks end to end', () => {
  let t: TestHost;
  let key: string;
  let otherKey: string;
  let up = false;
  const hits: { headers: IncomingHttpHeaders; status: number }[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.statusCode = up ? 200 : 500;
      hits.push({ headers: req.headers, status: res.statusCode });
      res.end();
    });
  });
  let hook = '';

  beforeAll(async () => {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    hook = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook?token=t0k`;
    t = await startTestHost('cbf', { scheduler: { keepAliveMs: 60_000, callbacks: { backoffMs: 50, attempts: 2 } } });
    key = await t.tenant('acme');
    otherKey = await t.tenant('other');
    const r = await t.req('PUT', '/v1/functions/echo', { key, body: deployForm({ runtime: 'node', handler: 'fns.echo' }, CODE) });
    expect(r.status).toBe(201);
  }, 60_000);
  afterAll(async () => {
    await t?.close();
    await new Promise<void>((r) => server.close(() => r()));
  }, 60_000);

  it('fnhost callbacks failed lists it; rm deletes one; redrive POSTs one again; another tenant gets 404', async () => {
    const r = await t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{}', headers: { 'x-callback-url': hook } });
    expect(r.status).toBe(202);
    const { invocationId } = (await r.json()) as { invocationId: string };
    const listed = await until(async () => {
      const l = await runCli(t.url, key, ['callbacks', 'failed', '--json']);
      const page = JSON.parse(l.out) as { failed: { deliveryId: string; invocationId: string; attempts: number; lastHttpStatus: number }[] };
      return page.failed.find((f) => f.invocationId === invocationId);
    }, 30_000, 'the failed callback');
    expect(listed).toMatchObject({ attempts: 2, lastHttpStatus: 500 });
    await until(async () => hits.length === 2, 5000, 'two POSTs');
    expect(JSON.parse((await runCli(t.url, otherKey, ['callbacks', 'failed', '--json'])).out)).toEqual({ failed: [] });
    expect((await runCli(t.url, otherKey, ['callbacks', 'redrive', listed.deliveryId])).code).toBe(4);

    // a second one, deleted
    const r2 = await t.req('POST', '/v1/functions/echo/invoke?mode=async', { key, body: '{}', headers: { 'x-callback-url': hook } });
    const second = ((await r2.json()) as { invocationId: string }).invocationId;
    const listed2 = await until(async () => {
      const page = JSON.parse((await runCli(t.url, key, ['callbacks', 'failed', '--json'])).out) as { failed: { deliveryId: string; invocationId: string }[] };
      return page.failed.find((f) => f.invocationId === second);
    }, 30_000, 'the second failed callback');
    expect(await runCli(t.url, key, ['callbacks', 'rm', listed2.deliveryId])).toMatchObject({ code: 0 });
    expect((await runCli(t.url, key, ['callbacks', 'rm', listed2.deliveryId])).code).toBe(4);
    const after = JSON.parse((await runCli(t.url, key, ['callbacks', 'failed', '--json'])).out) as { failed: { deliveryId: string }[] };
    expect(after.failed.map((f) => f.deliveryId)).toEqual([listed.deliveryId]);
    expect(hits).toHaveLength(4);

    up = true;
    expect(await runCli(t.url, key, ['callbacks', 'redrive', listed.deliveryId])).toMatchObject({ code: 0, out: `${listed.deliveryId}\n` });
    await until(async () => hits.find((h) => h.status === 200), 10_000, 'the redriven callback');
    expect(hits.find((h) => h.status === 200)!.headers['x-fnhost-delivery-id']).toBe(listed.deliveryId);
    expect(JSON.parse((await runCli(t.url, key, ['callbacks', 'failed', '--json'])).out)).toEqual({ failed: [] });
  }, 60_000);
});
