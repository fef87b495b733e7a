/**
 * The host's own pieces: configuration from env and flags, the admin key file (generated once, 0600,
 * reused), the embedded redis-server (AOF in the state dir, data survives a restart, a killed host's
 * leftover server is stopped), the CLI's tar writer and its argument parsers.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { exitCodeFor } from '../../services/cli/api.ts';
import { parseDuration, parseEnvPairs, parseMemory, table } from '../../services/cli/output.ts';
import { packDirectory, tar } from '../../services/cli/pack.ts';
import { multipart } from '../../services/cli/commands/functions.ts';
import { loadAdminKey } from '../../services/host/admin-key.ts';
import { hostConfig } from '../../services/host/config.ts';
import { startEmbeddedRedis } from '../../services/host/redis-server.ts';
import { hashKey } from '../../services/store/keys.ts';

const dirs: string[] = [];
const tmp = (p: string) => {
  const d = mkdtempSync(join(tmpdir(), p));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('host config', () => {
  it('env, then flags over env, with defaults', () => {
    expect(hostConfig({})).toEqual({ port: 8080, host: '0.0.0.0', stateDir: '/var/lib/fnhost/state', scheduler: true, localDispatch: true });
    const c = hostConfig({ PORT: '9000', HOST: '127.0.0.1', REDIS_URL: 'redis://r:6379', FNHOST_STATE_DIR: '/s', FNHOST_SCHEDULER: 'on', FNHOST_LOCAL_DISPATCH: 'on' }, { port: '9001', scheduler: 'off', 'local-dispatch': 'off' });
    expect(c).toEqual({ port: 9001, host: '127.0.0.1', stateDir: '/s', redisUrl: 'redis://r:6379', scheduler: false, localDispatch: false });
  });
  it.each([['PORT', 'http'], ['PORT', '70000'], ['FNHOST_ADMIN_KEY', 'short'], ['FNHOST_ADMIN_KEY', 'has a space in it!!'], ['FNHOST_SCHEDULER', 'maybe'], ['FNHOST_LOCAL_DISPATCH', 'sometimes']])('refuses %s=%s', (k, v) => {
    expect(() => hostConfig({ [k]: v })).toThrow();
  });
});

describe('admin key', () => {
  it('is generated once, 0600, then read back; FNHOST_ADMIN_KEY wins and writes nothing', async () => {
    const d = tmp('fnhost-ak-');
    const a = await loadAdminKey(d);
    expect(a.generated).toBe(true);
    expect(a.key).toMatch(/^fnh_/);
    expect(statSync(join(d, 'admin-key')).mode & 0o777).toBe(0o600);
    const b = await loadAdminKey(d);
    expect(b).toMatchObject({ key: a.key, hash: hashKey(a.key), generated: false });
    chmodSync(join(d, 'admin-key'), 0o644);
    await loadAdminKey(d);
    expect(statSync(join(d, 'admin-key')).mode & 0o777).toBe(0o600);
    const e = tmp('fnhost-ak-env-');
    const c = await loadAdminKey(e, 'operator-chosen-key-1234');
    expect(c).toMatchObject({ key: 'operator-chosen-key-1234', generated: false });
    expect(existsSync(join(e, 'admin-key'))).toBe(false);
  });

  it('concurrent first starts agree on one key', async () => {
    const d = tmp('fnhost-ak-race-');
    const ks = await Promise.all(Array.from({ length: 8 }, () => loadAdminKey(d)));
    expect(new Set(ks.map((k) => k.key)).size).toBe(1);
    expect(ks.filter((k) => k.generated)).toHaveLength(1);
  });
});

describe('embedded redis-server', () => {
  it('keeps data in an AOF across a restart and stops a leftover server of a killed host', async () => {
    const d = tmp('fnhost-er-');
    const r1 = await startEmbeddedRedis(d);
    expect(statSync(r1.url).isSocket()).toBe(true);
    const c1 = new Redis(r1.url);
    await c1.set('k', 'v');
    c1.disconnect();
    await r1.stop();
    expect(existsSync(join(d, 'redis', 'appendonlydir'))).toBe(true);

    const r2 = await startEmbeddedRedis(d);
    const c2 = new Redis(r2.url);
    expect(await c2.get('k')).toBe('v');
    c2.disconnect();
    // a host killed with -9 leaves its redis-server running: the next start stops it first
    const leftover = r2.pid;
    const r3 = await startEmbeddedRedis(d);
    expect(r3.pid).not.toBe(leftover);
    expect(() => process.kill(leftover, 0)).toThrow();
    await r3.stop();
    expect(() => process.kill(r3.pid, 0)).toThrow();
  });

  it('dies with its host even when the host is SIGKILLed (parent-death signal)', async () => {
    const d = tmp('fnhost-er-kill-');
    const { spawn } = await import('node:child_process');
    // a throwaway "host" process that starts the embedded Redis, prints its pid, then waits
    const host = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
      const { startEmbeddedRedis } = await import(${JSON.stringify(join(process.cwd(), 'services/host/redis-server.ts'))});
      const r = await startEmbeddedRedis(${JSON.stringify(d)});
      console.log(r.pid);
      setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = await new Promise<number>((res) => host.stdout!.once('data', (b) => res(Number(String(b).trim()))));
    expect(() => process.kill(pid, 0)).not.toThrow();
    host.kill('SIGKILL');
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        process.kill(pid, 0);
      } catch {
        break; // gone
      }
      if (Date.now() > deadline) throw new Error('redis-server outlived its SIGKILLed host');
      await new Promise((r) => setTimeout(r, 20));
    }
  });
});

describe('CLI pieces', () => {
  it('packDirectory makes a tar.gz that tar reads, modes and long names kept, deterministic', async () => {
    const d = tmp('fnhost-pack-');
    writeFileSync(join(d, 'index.js'), 'x');
    writeFileSync(join(d, 'run'), '#!/bin/sh\n');
    chmodSync(join(d, 'run'), 0o755);
    const long = 'n'.repeat(150);
    writeFileSync(join(d, long), 'long');
    const a = await packDirectory(d);
    expect(a.equals(await packDirectory(d))).toBe(true);
    const out = tmp('fnhost-unpack-');
    writeFileSync(join(out, 'a.tgz'), a);
    execFileSync('tar', ['-xzf', join(out, 'a.tgz'), '-C', out]);
    expect(readFileSync(join(out, long), 'utf8')).toBe('long');
    expect(statSync(join(out, 'run')).mode & 0o777).toBe(0o755);
    expect(gunzipSync(a).length % 512).toBe(0);
    expect(tar([]).length).toBe(1024);
  });

  it('multipart bodies parse as form data', async () => {
    const { body, contentType } = multipart({ runtime: 'node' }, Buffer.from([0, 1, 2]), 'c.tgz');
    const form = await new Response(body, { headers: { 'content-type': contentType } }).formData();
    expect(JSON.parse(String(form.get('config')))).toEqual({ runtime: 'node' });
    expect(Buffer.from(await (form.get('code') as Blob).arrayBuffer())).toEqual(Buffer.from([0, 1, 2]));
  });

  it('parses units and pairs, renders tables, maps statuses to exit codes', () => {
    expect(parseDuration('10s', 't')).toBe(10_000);
    expect(parseDuration('500ms', 't')).toBe(500);
    expect(parseDuration('1.5m', 't')).toBe(90_000);
    expect(() => parseDuration('10', 't')).toThrow(/unit/);
    expect(parseMemory('256', 'm')).toBe(256);
    expect(parseMemory('1G', 'm')).toBe(1024);
    expect(() => parseMemory('lots', 'm')).toThrow();
    expect(parseEnvPairs(['A=1', 'B=x=y'])).toEqual({ A: '1', B: 'x=y' });
    expect(() => parseEnvPairs(['=1'])).toThrow();
    expect(table(['a', 'bb'], [['xxx', 1]])).toBe('A    BB\nxxx  1\n');
    expect([exitCodeFor(502, 'OutOfMemory'), exitCodeFor(401), exitCodeFor(404), exitCodeFor(422), exitCodeFor(429), exitCodeFor(500)]).toEqual([1, 3, 4, 5, 6, 7]);
  });
});
