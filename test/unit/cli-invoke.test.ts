/**
 * `fnhost invoke` as HTTP requests (services/cli/commands/functions.ts), run in-process through main() against
 * a loopback HTTP server standing in for the gateway (the gateway's own handling of these headers is tested in
 * test/unit/gateway-callbacks.test.ts): --async --callback-url sends X-Callback-Url next to ?mode=async, and
 * --callback-url without --async is a usage error that sends nothing.
 */
import { describe, expect, it } from 'vitest';
import type { IncomingHttpHeaders } from 'node:http';
import { runCli, useApiStub } from '../helpers/cli.ts';

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}
const seen: Seen[] = [];
const api = useApiStub((req, res) => {
  seen.push({ method: req.method!, url: req.url!, headers: req.headers });
  res.writeHead(202, { 'content-type': 'application/json', 'x-fnhost-invocation-id': 'inv-1' });
  res.end(JSON.stringify({ invocationId: 'inv-1' }));
});
const run = (args: string[]) => runCli(api.url(), 'k-test', args);

describe('fnhost invoke --callback-url', () => {
  it('--async --callback-url sends X-Callback-Url with the async invocation and prints its id', async () => {
    seen.length = 0;
    const hook = 'https://hooks.example.com/fnhost?token=a&b=c';
    const r = await run(['invoke', 'resize', '--async', '--callback-url', hook, '--data', '{"x":1}', '--idempotency-key', 'k1']);
    expect(r).toMatchObject({ code: 0, out: 'inv-1\n' });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ method: 'POST', url: '/v1/functions/resize/invoke?mode=async' });
    expect(seen[0]!.headers).toMatchObject({ 'x-callback-url': hook, 'idempotency-key': 'k1', authorization: 'Bearer k-test', 'content-type': 'application/json' });
  });

  it('without --callback-url no X-Callback-Url is sent', async () => {
    seen.length = 0;
    expect((await run(['invoke', 'resize', '--async'])).code).toBe(0);
    expect(seen[0]!.headers['x-callback-url']).toBeUndefined();
  });

  it('--callback-url without --async is a usage error (exit 2) and sends nothing', async () => {
    seen.length = 0;
    const r = await run(['invoke', 'resize', '--callback-url', 'https://hooks.example.com/x']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--callback-url needs --async/);
    expect(seen).toHaveLength(0);
  });

  it('the help lists the flag', async () => {
    const r = await run(['help']);
    expect(r.out).toMatch(/--callback-url URL/);
  });
});
