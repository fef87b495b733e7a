/**
 * The `fnhost` CLI end to end: `fnhost start` as a child process with REDIS_URL unset (so it runs its
 * embedded redis-server with AOF in the state dir), then the client commands as separate processes driving
 * a real deploy, invoke (sync and async), logs, config, ls and rm, with their exit codes; then a restart on
 * the same state dir keeps tenants and functions (AOF) and does not print the admin key again.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { getPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertNoLeaks } from '../helpers/leaks.ts';
import { e2eSkipReason, until } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`cli e2e skipped: ${skip}`);

const BIN = join(process.cwd(), 'bin', 'fnhost.mjs');
const uid = randomBytes(3).toString('hex');
const NODE_ID = `e2e-cli-${uid}`;

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, FNHOST_LOG_LEVEL: 'warn', FNHOST_LOG_JSON: '1' };
  delete env.REDIS_URL; // the host must start its own embedded Redis
  delete env.FNHOST_KEY;
  delete env.FNHOST_URL;
  delete env.FNHOST_ADMIN_KEY;
  delete env.FNHOST_NICE;
  return { ...env, ...extra };
}

function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: childEnv(env), maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 99) : 0, stdout, stderr });
    });
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

interface Started {
  child: ChildProcess;
  stdout: () => string;
  exited: Promise<number | null>;
}

async function startHostProcess(stateDir: string, port: number): Promise<Started> {
  const child = spawn(process.execPath, [BIN, 'start', '--port', String(port), '--host', '127.0.0.1', '--state-dir', stateDir, '--node-id', NODE_ID], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (b) => (out += b));
  child.stderr!.on('data', (b) => (err += b));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  await until(async () => out.includes('listening on') || child.exitCode !== null, 30_000, 'fnhost start to listen');
  if (child.exitCode !== null) throw new Error(`fnhost start exited ${child.exitCode}: ${err}`);
  return { child, stdout: () => out, exited };
}

async function stop(s: Started): Promise<number | null> {
  s.child.kill('SIGTERM');
  return s.exited;
}

// Each CLI command is a fresh Node process (~1 s of start-up, several seconds on a loaded 2-core machine).
describe.skipIf(!!skip)('fnhost CLI end to end', { timeout: 120_000 }, () => {
  let stateDir: string;
  let fnDir: string;
  let port: number;
  let url: string;
  let host: Started | undefined;
  let adminKey: string;
  let key: string;

  beforeAll(async () => {
    stateDir = mkdtempSync(join(tmpdir(), 'fnhost-e2e-cli-'));
    fnDir = mkdtempSync(join(tmpdir(), 'fnhost-e2e-cli-fn-'));
    writeFileSync(join(fnDir, 'index.js'), 'exports.handler = async (e) => { console.log("event " + JSON.stringify(e)); if (e && e.fail) throw new Error("asked to fail"); return { greeting: process.env.GREETING, got: e }; };\n');
    port = await freePort();
    url = `http://127.0.0.1:${port}`;
    host = await startHostProcess(stateDir, port);
  }, 60_000);

  afterAll(async () => {
    if (host && host.child.exitCode === null) await stop(host);
    await assertNoLeaks(NODE_ID, { paths: [stateDir], deadlineMs: 5000 });
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(fnDir, { recursive: true, force: true });
  }, 60_000);

  it('prints the URL and, on first start, the admin key, kept in the state dir with mode 0600', () => {
    const out = host!.stdout();
    expect(out).toContain(`listening on ${url}`);
    const m = /admin key[^\n]*\n\s+(fnh_\S+)/.exec(out);
    expect(m).not.toBeNull();
    adminKey = m![1]!;
    expect(statSync(join(stateDir, 'admin-key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(stateDir, 'redis', 'appendonlydir')).isDirectory()).toBe(true);
  });

  it('runs its event loop at nice −10 (services/cli/priority.ts) and leaves its embedded redis-server as it was', () => {
    // field 19 of /proc/<pid>/task/<tid>/stat is the thread's nice value; the main thread's tid is the pid
    const nice = (path: string) => Number(readFileSync(path, 'utf8').split(') ')[1]!.split(' ')[16]);
    const pid = host!.child.pid!;
    expect(nice(`/proc/${pid}/task/${pid}/stat`)).toBe(-10);
    const redisPid = Number(readFileSync(join(stateDir, 'redis', 'redis.pid'), 'utf8').trim());
    expect(nice(`/proc/${redisPid}/stat`)).toBe(getPriority());
  });

  it('tenants create prints the key once; a tenant key cannot list tenants (exit 3)', async () => {
    const r = await cli(['tenants', 'create', 'acme', '--max-memory', '1024', '--json'], { FNHOST_URL: url, FNHOST_KEY: adminKey });
    expect(r.code).toBe(0);
    key = JSON.parse(r.stdout).apiKey;
    expect(key).toMatch(/^fnh_/);
    const denied = await cli(['tenants', 'ls'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(denied.code).toBe(3);
    expect(denied.stderr).toContain('Forbidden');
  });

  it('deploys a directory and invokes it', async () => {
    const d = await cli(['deploy', fnDir, '--name', 'hello', '--runtime', 'node', '--memory', '256', '--timeout', '10s', '--env', 'GREETING=hi there'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(d.stderr).toMatch(/packed 1 files/);
    expect(d.code).toBe(0);
    expect(d.stdout).toContain('deployed hello version 1 (node, 256 MB, timeout 10s)');
    const i = await cli(['invoke', 'hello', '--data', '{"x":1}'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(i.code).toBe(0);
    expect(JSON.parse(i.stdout)).toEqual({ greeting: 'hi there', got: { x: 1 } });
    const ls = await cli(['ls', '--json', '--url', url, '--key', key], {});
    expect(ls.code).toBe(0);
    expect(JSON.parse(ls.stdout)).toEqual([expect.objectContaining({ name: 'hello', version: 1, memoryMb: 256, timeoutMs: 10_000 })]);
    const human = await cli(['ls'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(human.stdout.split('\n')[0]).toMatch(/^NAME\s+VERSION\s+RUNTIME\s+MEMORY/);
    // login keeps url + key in a 0600 config file that later commands read without flags or env
    const cfg = join(fnDir, 'cli-config.json');
    expect((await cli(['login', '--url', url, '--key', 'fnh_wrong'], { FNHOST_CONFIG: cfg })).code).toBe(3);
    const login = await cli(['login', '--url', url, '--key', key], { FNHOST_CONFIG: cfg });
    expect(login.code).toBe(0);
    expect(statSync(cfg).mode & 0o777).toBe(0o600);
    const viaFile = await cli(['ls', '--json'], { FNHOST_CONFIG: cfg });
    expect(JSON.parse(viaFile.stdout)).toEqual([expect.objectContaining({ name: 'hello' })]);
  });

  it('config makes a new version; async invoke + invocation; logs show the line', async () => {
    const c = await cli(['config', 'hello', '--memory', '512', '--json'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(c.code).toBe(0);
    expect(JSON.parse(c.stdout)).toMatchObject({ version: 2, memoryMb: 512, env: { GREETING: 'hi there' } });
    const a = await cli(['invoke', 'hello', '--async', '--data', '{"tag":"async-1"}'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(a.code).toBe(0);
    const id = a.stdout.trim();
    const rec = await until(async () => {
      const r = await cli(['invocation', id, '--json'], { FNHOST_URL: url, FNHOST_KEY: key });
      const v = JSON.parse(r.stdout);
      return v.status === 'succeeded' ? v : null;
    }, 20_000, 'the async invocation');
    expect(rec.result).toEqual({ greeting: 'hi there', got: { tag: 'async-1' } });
    const logs = await until(async () => {
      const r = await cli(['logs', 'hello', '--invocation', id], { FNHOST_URL: url, FNHOST_KEY: key });
      return r.stdout.includes('event {"tag":"async-1"}') ? r : null;
    }, 10_000, 'the log line');
    expect(logs.code).toBe(0);
  });

  it('exit codes: function failure 1, usage 2, not found 4, refused 5, unreachable 6', async () => {
    const env = { FNHOST_URL: url, FNHOST_KEY: key };
    const failed = await cli(['invoke', 'hello', '--data', '{"fail":true}'], env);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('FunctionError');
    expect((await cli(['invoke', 'hello', '--bogus'], env)).code).toBe(2);
    expect((await cli(['invoke', 'hello'], { FNHOST_URL: url })).code).toBe(2);
    expect((await cli(['invoke', 'nope'], env)).code).toBe(4);
    const refused = await cli(['config', 'hello', '--memory', '4096'], env);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain('LimitExceeded');
    expect((await cli(['ls'], { FNHOST_URL: 'http://127.0.0.1:1', FNHOST_KEY: key })).code).toBe(6);
  });

  it('restart on the same state dir keeps tenants and functions (AOF) and does not print the admin key again', async () => {
    expect(await stop(host!)).toBe(0);
    host = await startHostProcess(stateDir, port);
    expect(host.stdout()).not.toContain('admin key');
    const i = await cli(['invoke', 'hello:2', '--data', '"again"'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(i.code).toBe(0);
    expect(JSON.parse(i.stdout)).toEqual({ greeting: 'hi there', got: 'again' });
    const rm = await cli(['rm', 'hello'], { FNHOST_URL: url, FNHOST_KEY: key });
    expect(rm.code).toBe(0);
    expect(JSON.parse((await cli(['ls', '--json'], { FNHOST_URL: url, FNHOST_KEY: key })).stdout)).toEqual([]);
    expect(await stop(host)).toBe(0);
  }, 90_000);
});
