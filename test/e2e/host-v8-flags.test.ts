/**
 * `fnhost start` sets the host's V8 flags (bin/fnhost.mjs says why) before the CLI loads; other commands do not.
 * A preloaded probe (v8-flags-probe.cjs) reports each v8.setFlagsFromString() call on stderr; V8 has no API to read a
 * flag back, so this checks the call, made in a host that then starts and listens as usual.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '../helpers/leaks.ts';
import { e2eSkipReason, until } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`host V8 flags e2e skipped: ${skip}`);

const BIN = join(process.cwd(), 'bin', 'fnhost.mjs');
const PROBE = join(process.cwd(), 'test', 'e2e', 'v8-flags-probe.cjs');
const HOST_FLAGS = ['--no-allocation-site-pretenuring'];

function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, FNHOST_LOG_LEVEL: 'warn', FNHOST_LOG_JSON: '1' };
  delete env.REDIS_URL; // its own embedded redis-server, as `npm start` runs it
  delete env.FNHOST_ADMIN_KEY;
  delete env.FNHOST_NICE;
  return env;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

const flagsIn = (stderr: string) => [...stderr.matchAll(/^v8flag: (.*)$/gm)].map((m) => m[1]);

describe.skipIf(!!skip)('fnhost start V8 flags', { timeout: 90_000 }, () => {
  it('a started host set them before listening; a client command sets none', async () => {
    const nodeId = `e2e-v8flags-${randomBytes(3).toString('hex')}`;
    const stateDir = mkdtempSync(join(tmpdir(), 'fnhost-e2e-v8flags-'));
    const port = await freePort();
    const child = spawn(process.execPath, ['--require', PROBE, BIN, 'start', '--port', String(port), '--host', '127.0.0.1', '--state-dir', stateDir, '--node-id', nodeId], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (b) => (out += b));
    child.stderr!.on('data', (b) => (err += b));
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    try {
      await until(async () => out.includes('listening on') || child.exitCode !== null, 30_000, 'fnhost start to listen');
      expect(child.exitCode, err).toBeNull();
      expect(flagsIn(err)).toEqual(HOST_FLAGS);
      const r = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(r.status).toBe(200);
    } finally {
      if (child.exitCode === null) child.kill('SIGTERM');
      expect(await exited).toBe(0);
      await assertNoLeaks(nodeId, { paths: [stateDir], deadlineMs: 5000 });
      rmSync(stateDir, { recursive: true, force: true });
    }

    const help = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(process.execPath, ['--require', PROBE, BIN, '--help'], { env: childEnv() }, (e, _stdout, stderr) => resolve({ code: e ? ((e as { code?: number }).code ?? 99) : 0, stderr }));
    });
    expect(help.code).toBe(0);
    expect(flagsIn(help.stderr)).toEqual([]);
  });
});
