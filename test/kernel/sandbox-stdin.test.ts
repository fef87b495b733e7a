/**
 * Kernel tests of ProcessSpec.stdin (services/sandbox): the body is written into the process's stdin pipe
 * with the spawn request and stdin is closed once it is all written, for start() and exec(): bodies larger
 * than the pipe's 64 KiB arrive exactly (sha-256 inside the sandbox), an empty one is an immediate EOF.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { InvalidRequest } from '../../services/common/errors.ts';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('stdin');
const root = process.getuid?.() === 0;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** busybox's sha256sum prints "<hex>  -" for stdin */
const SHA_ARGV = ['/bin/busybox', 'sha256sum'];

describe.skipIf(!root)('sandbox ProcessSpec.stdin (needs root: skipped otherwise)', () => {
  it('start: a body larger than the pipe arrives exactly, then EOF', async () => {
    const sb = await env.create();
    const body = randomBytes(3 * 65536 + 123);
    const p = await sb.start({ layers: [env.fx().base], argv: SHA_ARGV, stdin: body });
    expect(p.stdin.writableEnded).toBe(true);
    const r = await collect(p);
    expect(r.status.code).toBe(0);
    expect(r.stdout).toBe(`${sha(body)}  -\n`);
  });

  it('exec: bodies larger than the pipe, of exactly its size, and empty, arrive exactly', async () => {
    const sb = await env.create();
    const first = await sb.start({ layers: [env.fx().base], argv: ['/bin/cat'], stdin: Buffer.from('first') });
    expect((await collect(first)).stdout).toBe('first');
    for (const size of [65536, 65537, 1 << 20]) {
      const body = randomBytes(size);
      const r = await collect(await sb.exec({ argv: SHA_ARGV, stdin: body }));
      expect(r.stdout, `size ${size}`).toBe(`${sha(body)}  -\n`);
    }
    // empty: the process sees EOF at once (a missing EOF would hang here until the test's timeout)
    const empty = await collect(await sb.exec({ argv: ['/bin/wc', '-c'], stdin: Buffer.alloc(0) }));
    expect(empty.stdout.trim()).toBe('0');
    expect(empty.status.code).toBe(0);
  });

  it('output is not read before the caller listens: a process that ended meanwhile still shows its EOF', async () => {
    const sb = await env.create();
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/true'], stdin: Buffer.alloc(0) });
    await p.exited;
    // several I/O turns after the process is gone: an output stream read from the start would have emitted
    // 'end' already, with nobody listening
    await new Promise((r) => setTimeout(r, 20));
    const ends = (s: NodeJS.ReadableStream) => new Promise<void>((r) => { s.once('end', () => r()); s.resume(); });
    await Promise.all([ends(p.stdout), ends(p.stderr)]);
  }, 10_000);

  it('a process that never reads its stdin ends normally; the unread body is dropped', async () => {
    const sb = await env.create();
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/true'], stdin: randomBytes(1 << 20) });
    const r = await collect(p);
    expect(r.status).toMatchObject({ code: 0, signal: null });
    // the sandbox is still usable
    const q = await collect(await sb.exec({ argv: ['/bin/cat'], stdin: new Uint8Array([104, 105]) }));
    expect(q.stdout).toBe('hi');
  });

  it('stdin that is not bytes is refused before anything runs', async () => {
    const sb = await env.create();
    await expect(sb.start({ layers: [env.fx().base], argv: ['/bin/cat'], stdin: 'text' as unknown as Buffer }))
      .rejects.toMatchObject({ constructor: InvalidRequest, details: { field: 'stdin' } });
    expect(sb.state).toBe('created');
  });
});
