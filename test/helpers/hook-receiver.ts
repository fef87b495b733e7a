/**
 * A loopback HTTP receiver of completion callbacks for tests: records each POST and answers it with the next
 * status of `statuses` (the last one repeats); closed by the test's clean-up list (./hooks.ts useCleanups).
 *
 * @example
 * const r = await hookReceiver(cleanups, { statuses: [500, 200] });
 * // invoke with callbackUrl: r.url …
 * await until(() => r.hits.length, (n) => n >= 2, 5000);
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Hit {
  headers: IncomingHttpHeaders;
  body: string;
  /** epoch ms it arrived */
  at: number;
}

export async function hookReceiver(
  cleanups: Array<() => Promise<void>>,
  opts: { statuses?: number[]; path?: string } = {},
): Promise<{ url: string; hits: Hit[] }> {
  const statuses = opts.statuses ?? [200];
  const hits: Hit[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hits.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), at: Date.now() });
      res.statusCode = statuses[Math.min(hits.length - 1, statuses.length - 1)]!;
      res.end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}${opts.path ?? '/hook'}`, hits };
}
