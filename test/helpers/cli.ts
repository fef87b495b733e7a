/**
 * The CLI in tests: main() run in-process with its output captured, and a loopback HTTP server standing in for
 * the host's API (each test file decides what it answers).
 *
 * @example
 * const api = useApiStub((req, res) => (res.writeHead(204), res.end()));
 * const r = await runCli(api.url(), 'k-test', ['callbacks', 'rm', 'a.1']);
 * expect(r.code).toBe(0);
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, vi } from 'vitest';
import { main } from '../../services/cli/main.ts';

/** main(args + `--url url --key key`), stdout and stderr captured; the exit code main returns. */
export async function runCli(url: string, key: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  try {
    return { code: await main([...args, '--url', url, '--key', key]), out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

/**
 * A loopback server for this test file (started in beforeAll, closed in afterAll): `answer` gets each request
 * once its body has been read (and discarded).
 */
export function useApiStub(answer: (req: IncomingMessage, res: ServerResponse) => void): { url(): string } {
  let server: Server | undefined;
  let base = '';
  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on('end', () => answer(req, res));
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    if (server) await new Promise<void>((r) => server!.close(() => r()));
  });
  return { url: () => base };
}
