/**
 * Host-level behaviour of the sandbox module: the one-sentence refusal without root, and start-up clean-up
 * of an earlier run's leftovers (cgroups with live processes under our node prefix only).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cleanupLeftovers, createSandbox } from '../../services/sandbox/index.ts';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('host');
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const root = process.getuid?.() === 0;

describe.skipIf(!root)('sandbox host behaviour (needs root: skipped otherwise)', () => {
  it('without root, the module says so in one sentence and creates nothing', () => {
    const script = `import('${ROOT}/services/sandbox/index.ts').then(async (m) => {
      console.log(JSON.stringify({ reason: m.sandboxUnavailableReason() }));
      try { await m.createSandbox({ nodeId: '${env.nodeId}' }); console.log('created'); }
      catch (e) { console.log(JSON.stringify({ type: e.type, message: e.message })); }
    })`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', script], {
      uid: 65534, gid: 65534, cwd: ROOT, env: { ...process.env, HOME: '/tmp' }, encoding: 'utf8',
    });
    const [first, second] = out.trim().split('\n').map((l) => JSON.parse(l));
    expect(first.reason).toMatch(/^fnhost must run as root to create namespaces, cgroups and mounts \(running as uid 65534\)\.$/);
    expect(second).toEqual({ type: 'Internal', message: first.reason });
  });

  it('cleanupLeftovers kills and removes an earlier run\'s sandboxes, only under its own node id', async () => {
    const other = `${env.nodeId}-other`;
    const stale = 'sb-stale0000001';
    const hierarchies = ['memory', 'pids', 'cpu'].map((c) => `/sys/fs/cgroup/${c}`);
    const victim = spawn('/bin/sleep', ['1000'], { stdio: 'ignore' });
    const victimExit = new Promise((r) => victim.once('exit', r));
    for (const h of hierarchies) {
      mkdirSync(join(h, 'fnhost', env.nodeId, stale), { recursive: true });
      writeFileSync(join(h, 'fnhost', env.nodeId, stale, 'cgroup.procs'), String(victim.pid));
    }
    const bystander = await createSandbox({ nodeId: other });
    const live = await env.create(); // a live sandbox of this process under the same node id is kept
    try {
      const res = await cleanupLeftovers(env.nodeId);
      expect(res.sandboxes).toBe(1);
      await victimExit;
      for (const h of hierarchies) expect(existsSync(join(h, 'fnhost', env.nodeId, stale))).toBe(false);
      expect(live.state).toBe('created');
      expect(existsSync(`/proc/${live.initPid}`)).toBe(true);
      expect(existsSync(`/proc/${bystander.initPid}`)).toBe(true);
    } finally {
      await bystander.destroy();
      await cleanupLeftovers(other);
    }
  });
});
