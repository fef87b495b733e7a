/**
 * ProcessSpec.stdin through the process stand-in (runtime/host/process-sandbox.ts): the same cases as
 * sandbox-stdin.test.ts (the real sandbox), with the host's coreutils in place of the rootfs's busybox. The body
 * is written at spawn and stdin closed once it is all written, for start() and exec(); bodies larger than the
 * pipe's 64 KiB arrive exactly (sha-256 computed by the process), an empty one is an immediate EOF; output waits
 * for a caller that reads only after the process ended; stdin that is not bytes is refused before anything runs.
 * No root needed: the stand-in runs plain host processes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidRequest } from '../../services/common/errors.ts';
import type { SandboxProcess } from '../../services/sandbox/types.ts';
import { createProcessSandbox, type ProcessSandbox } from '../../runtime/host/process-sandbox.ts';
import { collect } from '../helpers/sandbox.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** coreutils' sha256sum prints "<hex>  -" for stdin, as busybox's does */
const SHA_ARGV = ['sha256sum'];
const tools = ['/usr/bin/sha256sum', '/usr/bin/cat', '/usr/bin/wc', '/usr/bin/true'].filter((t) => !existsSync(t) && !existsSync(t.replace('/usr', '')));

const made: ProcessSandbox[] = [];
const pids: number[] = [];
const procTmps = () => readdirSync(tmpdir()).filter((n) => n.startsWith('fnhost-procsb-'));
let tmpsBefore = new Set<string>();

function sandbox(): ProcessSandbox {
  if (made.length === 0) tmpsBefore = new Set(procTmps());
  const sb = createProcessSandbox();
  made.push(sb);
  return sb;
}
const track = (p: SandboxProcess) => (pids.push(p.pid), p);
const alive = (pid: number) => {
  try { process.kill(pid, 0); return true; } catch { return false; }
};

afterEach(async () => {
  await Promise.all(made.splice(0).map((s) => s.destroy()));
  // nothing of the stand-in is left: no process, no temp dir ("/tmp" of its processes)
  expect(pids.splice(0).filter(alive)).toEqual([]);
  expect(procTmps().filter((n) => !tmpsBefore.has(n))).toEqual([]);
});

describe.skipIf(tools.length > 0)(`process stand-in ProcessSpec.stdin${tools.length ? ` (skipped: coreutils missing: ${tools.join(' ')})` : ''}`, () => {
  it('start: a body larger than the pipe arrives exactly, then EOF', async () => {
    const body = randomBytes(3 * 65536 + 123);
    const p = track(await sandbox().start({ layers: [], argv: SHA_ARGV, stdin: body }));
    expect(p.stdin.writableEnded).toBe(true);
    const r = await collect(p);
    expect(r.status.code).toBe(0);
    expect(r.stdout).toBe(`${sha(body)}  -\n`);
  });

  it('exec: bodies larger than the pipe, of exactly its size, and empty, arrive exactly', async () => {
    const sb = sandbox();
    const first = track(await sb.start({ layers: [], argv: ['cat'], stdin: Buffer.from('first') }));
    expect((await collect(first)).stdout).toBe('first');
    for (const size of [65536, 65537, 1 << 20]) {
      const body = randomBytes(size);
      const p = track(await sb.exec({ argv: SHA_ARGV, stdin: body }));
      expect(p.stdin.writableEnded).toBe(true);
      expect((await collect(p)).stdout, `size ${size}`).toBe(`${sha(body)}  -\n`);
    }
    // empty: the process sees EOF at once (a missing EOF would hang here until the test's timeout)
    const empty = await collect(track(await sb.exec({ argv: ['wc', '-c'], stdin: Buffer.alloc(0) })));
    expect(empty.stdout.trim()).toBe('0');
    expect(empty.status.code).toBe(0);
  });

  it('without stdin the caller writes it, as before', async () => {
    const sb = sandbox();
    const p = track(await sb.start({ layers: [], argv: ['cat'] }));
    expect(p.stdin.writableEnded).toBe(false);
    p.stdin.end('by hand');
    expect((await collect(p)).stdout).toBe('by hand');
  });

  it('output is not read before the caller listens: a process that ended meanwhile still shows its output and EOF', async () => {
    const p = track(await sandbox().start({ layers: [], argv: ['cat'], stdin: Buffer.from('kept') }));
    await p.exited;
    // several I/O turns after the process is gone: Node's child_process resumes unread output at exit
    // (flushStdio), which would drop it and emit 'end' with nobody listening
    await new Promise((r) => setTimeout(r, 20));
    let out = '';
    p.stdout.on('data', (d) => (out += String(d)));
    const ends = (s: NodeJS.ReadableStream) => new Promise<void>((r) => { s.once('end', () => r()); s.resume(); });
    await Promise.all([ends(p.stdout), ends(p.stderr)]);
    expect(out).toBe('kept');
  }, 10_000);

  it('a process that never reads its stdin ends normally; the unread body is dropped', async () => {
    const sb = sandbox();
    const r = await collect(track(await sb.start({ layers: [], argv: ['true'], stdin: randomBytes(1 << 20) })));
    expect(r.status).toMatchObject({ code: 0, signal: null });
    // the sandbox is still usable
    const q = await collect(track(await sb.exec({ argv: ['cat'], stdin: new Uint8Array([104, 105]) })));
    expect(q.stdout).toBe('hi');
  });

  it('stdin that is not bytes is refused before anything runs', async () => {
    const sb = sandbox();
    await expect(sb.start({ layers: [], argv: ['cat'], stdin: 'text' as unknown as Buffer }))
      .rejects.toMatchObject({ constructor: InvalidRequest, details: { field: 'stdin' } });
    expect(sb.state).toBe('created');
    track(await sb.start({ layers: [], argv: ['true'], stdin: Buffer.alloc(0) }));
    await expect(sb.exec({ argv: ['cat'], stdin: 42 as unknown as Buffer }))
      .rejects.toMatchObject({ constructor: InvalidRequest, details: { field: 'stdin' } });
    await expect(sb.exec({ argv: [] })).rejects.toMatchObject({ constructor: InvalidRequest, details: { field: 'argv' } });
  });
});
