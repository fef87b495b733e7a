/**
 * `fnhost rm` (services/cli/commands/functions.ts) as HTTP requests against a loopback stub of the gateway:
 * `rm <name>:<n>` deletes one version (DELETE /v1/functions/<name>/versions/<n>), `rm <name>` the function; the
 * gateway's 409 for the latest version is printed and exits non-zero.
 */
import { describe, expect, it } from 'vitest';
import { runCli, useApiStub } from '../helpers/cli.ts';

const seen: { method: string; url: string }[] = [];
const api = useApiStub((req, res) => {
  seen.push({ method: req.method!, url: req.url! });
  if (req.url === '/v1/functions/hello/versions/3') {
    res.writeHead(409, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { type: 'Conflict', message: 'version 3 is the latest version of hello: deploy a newer version first, or delete the function', field: 'version', reason: 'latest' } }));
    return;
  }
  res.writeHead(204);
  res.end();
});
const run = (args: string[]) => runCli(api.url(), 'k-test', args);

describe('fnhost rm', () => {
  it('rm <name>:<n> deletes that version only', async () => {
    seen.length = 0;
    expect(await run(['rm', 'hello:2'])).toMatchObject({ code: 0, out: 'deleted hello:2\n' });
    expect(seen).toEqual([{ method: 'DELETE', url: '/v1/functions/hello/versions/2' }]);
  });

  it('rm <name> deletes the function', async () => {
    seen.length = 0;
    expect((await run(['rm', 'hello'])).code).toBe(0);
    expect(seen).toEqual([{ method: 'DELETE', url: '/v1/functions/hello' }]);
  });

  it("the latest version: the gateway's 409 is shown and the exit code is not 0", async () => {
    seen.length = 0;
    const r = await run(['rm', 'hello:3']);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/latest version of hello/);
  });

  it('a bad number is sent as is (encoded) and the gateway decides', async () => {
    seen.length = 0;
    await run(['rm', 'hello:a b']);
    expect(seen).toEqual([{ method: 'DELETE', url: '/v1/functions/hello/versions/a%20b' }]);
  });
});
