/**
 * `fnhost callbacks …` as HTTP requests (services/cli/commands/callbacks.ts), run in-process through main()
 * against a loopback HTTP server standing in for the gateway (the routes themselves are tested in
 * test/unit/gateway-callbacks-failed.test.ts): the request each subcommand sends, what it prints (never the
 * receiver's path or query, which may carry a token), usage errors sending nothing, a 404 exiting 4.
 */
import { describe, expect, it } from 'vitest';
import { runCli, useApiStub } from '../helpers/cli.ts';

const seen: Array<{ method: string; url: string; auth?: string }> = [];
const FAILED = {
  deliveryId: 'a1b2.1700000000000', invocationId: 'a1b2', function: 'resize', url: 'https://hooks.example.com/x?token=SECRET',
  status: 'succeeded', attempts: 10, lastError: 'receiver answered 500', lastHttpStatus: 500, failedAt: 1_700_000_000_000,
};

const api = useApiStub((req, res) => {
  seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization });
  const path = req.url!.split('?')[0]!;
  const json = (status: number, body: unknown) => (res.writeHead(status, { 'content-type': 'application/json' }), res.end(JSON.stringify(body)));
  if (path.includes('/missing')) return json(404, { error: { type: 'NotFound', message: 'no such failed callback' } });
  if (req.method === 'GET' && path === '/v1/callbacks/failed') return json(200, { failed: [FAILED], cursor: '1' });
  if (req.method === 'POST' && path === '/v1/callbacks/failed/redrive') return json(202, { redriven: 3 });
  if (req.method === 'POST') return json(202, { deliveryId: decodeURIComponent(path.split('/')[4]!) });
  if (req.method === 'DELETE') return (res.writeHead(204), res.end());
  if (path === '/v1/callbacks/secret') return json(200, { secret: 'abc123' });
  json(500, { error: { type: 'Internal', message: 'unexpected' } });
});
const run = (args: string[]) => runCli(api.url(), 'k-test', args);

describe('fnhost callbacks', () => {
  it('failed lists (with --limit/--cursor), showing the destination origin only and the next-page hint', async () => {
    seen.length = 0;
    const r = await run(['callbacks', 'failed', '--limit', '5', '--cursor', '10']);
    expect(r.code).toBe(0);
    expect(seen).toEqual([{ method: 'GET', url: '/v1/callbacks/failed?limit=5&cursor=10', auth: 'Bearer k-test' }]);
    expect(r.out).toContain('a1b2.1700000000000');
    expect(r.out).toContain('https://hooks.example.com');
    expect(r.out).toContain('receiver answered 500');
    expect(r.out).not.toContain('SECRET');
    expect(r.out).toContain('--cursor 1');
    const j = await run(['callbacks', '--json']);
    expect(JSON.parse(j.out)).toEqual({ failed: [FAILED], cursor: '1' });
  });

  it('redrive <id>, redrive --all, rm <id>, secret: one request each', async () => {
    seen.length = 0;
    expect(await run(['callbacks', 'redrive', 'a1b2.1700000000000'])).toMatchObject({ code: 0, out: 'a1b2.1700000000000\n' });
    expect(await run(['callbacks', 'redrive', '--all'])).toMatchObject({ code: 0, out: '3 redriven\n' });
    expect(await run(['callbacks', 'rm', 'a1b2.1700000000000'])).toMatchObject({ code: 0, out: '' });
    expect(await run(['callbacks', 'secret'])).toMatchObject({ code: 0, out: 'abc123\n' });
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      'POST /v1/callbacks/failed/a1b2.1700000000000/redrive', 'POST /v1/callbacks/failed/redrive', 'DELETE /v1/callbacks/failed/a1b2.1700000000000', 'GET /v1/callbacks/secret',
    ]);
  });

  it('usage errors exit 2 and send nothing; an unknown id exits 4', async () => {
    seen.length = 0;
    for (const args of [['callbacks', 'redrive'], ['callbacks', 'redrive', 'x.1', '--all'], ['callbacks', 'rm'], ['callbacks', 'nope'], ['callbacks', 'failed', '--limit', 'x']]) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(2);
    }
    expect(seen).toEqual([]);
    const r = await run(['callbacks', 'redrive', 'missing.1']);
    expect(r.code).toBe(4);
    expect(r.err).toContain('no such failed callback');
  });
});
