/**
 * Host-level behaviour of the sandbox module: the one-sentence refusal without root, and start-up clean-up
 * of an earlier run's leftovers (cgroups with live processes under our node prefix only).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cleanupLeftovers, createSandbox } from '../../services/sandbox/index.ts';
import { useSandboxEnv } from '../helpers/sandbox.ts';
import { until } from '../helpers/until.ts';

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

  it('when the host process dies, its sandboxes die with it; the next start-up removes their cgroups', async () => {
    const node = `${env.nodeId}-crash`;
    // this process holds the node (node-lock.ts) so that no other test file's clean-up sweeps it meanwhile
    await (await createSandbox({ nodeId: node })).destroy();
    const script = `import('${ROOT}/services/sandbox/index.ts').then(async (m) => {
      const { makeRootfs } = await import('${ROOT}/test/helpers/sandbox-rootfs.ts');
      const fx = makeRootfs();
      m.setNetnsPoolForTests(4); // with a netns maker (none by default on cgroup v1)
      const sb = await m.createSandbox({ nodeId: '${node}' });
      const p = await sb.start({ layers: [fx.base], argv: ['/bin/probe', 'sleep', '100000'] });
      console.log(JSON.stringify({ init: sb.initPid, fn: p.pid, dir: fx.dir, zygote: m.zygotePid() }));
      setInterval(() => {}, 1000);
    })`;
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => child.once('exit', r));
    let init = 0, fn = 0, dir = '', zygote = 0, maker = 0;
    try {
      const line = await new Promise<string>((res) => child.stdout!.once('data', (d) => res(String(d))));
      ({ init, fn, dir, zygote } = JSON.parse(line) as { init: number; fn: number; dir: string; zygote: number });
      expect(existsSync(`/proc/${fn}`)).toBe(true);
      // the host's spawner and its netns maker (native/init/zygote.c) must not outlive the host either
      maker = Number(readFileSync(`/proc/${zygote}/task/${zygote}/children`, 'utf8').trim());
      expect(maker).toBeGreaterThan(0);
    } finally {
      child.kill('SIGKILL'); // also when an assertion above failed: the "host" must not be left running
      await exited;
    }
    // PR_SET_PDEATHSIG on the init, and the pid namespace dies with its init
    const deadline = Date.now() + 5000;
    const gone = [init, fn, zygote, maker];
    while (gone.some((p) => existsSync(`/proc/${p}`)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const p of gone) expect(existsSync(`/proc/${p}`), `pid ${p}`).toBe(false);
    expect(existsSync(`/sys/fs/cgroup/memory/fnhost/${node}`)).toBe(true); // the crashed host could not remove it
    expect((await cleanupLeftovers(node)).sandboxes).toBe(1);
    expect(existsSync(`/sys/fs/cgroup/memory/fnhost/${node}`)).toBe(false);
    rmSync(dir, { recursive: true, force: true });
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
      // the node of a live sandbox keeps its lock (it proves this host alive to other hosts' sweeps)
      expect(existsSync(`/run/fnhost/nodes/${env.nodeId}.lock`)).toBe(true);
    } finally {
      await bystander.destroy();
      await cleanupLeftovers(other);
    }
    // nothing of ours left under `other`: its lock file goes with its cgroups
    expect(existsSync(`/run/fnhost/nodes/${other}.lock`)).toBe(false);
  });

  it('a later host removes what a killed host left under another node id, never a live host\'s nor an unknown one\'s', async () => {
    const [dead, live, unknown] = ['dead', 'live', 'unknown'].map((k) => `${env.nodeId}-${k}`) as [string, string, string];
    const hierarchies = ['memory', 'pids', 'cpu'].map((c) => `/sys/fs/cgroup/${c}`);
    const nodeDirs = (node: string) => hierarchies.map((h) => join(h, 'fnhost', node));
    const hostScript = (node: string) => `import('${ROOT}/services/sandbox/index.ts').then(async (m) => {
      const sb = await m.createSandbox({ nodeId: '${node}' });
      if ('${node}' === '${live}') await sb.destroy(); // alive, but nothing running under its node
      console.log('ready');
      setInterval(() => {}, 1000);
    })`;
    const start = async (node: string) => {
      const child = spawn(process.execPath, ['--import', 'tsx', '-e', hostScript(node)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((res) => child.stdout!.once('data', () => res()));
      return child;
    };
    const deadHost = await start(dead);
    const deadExit = new Promise((r) => deadHost.once('exit', r));
    let liveHost: ReturnType<typeof spawn> | undefined;
    let liveExit: Promise<unknown> | undefined;
    try {
      liveHost = await start(live);
      liveExit = new Promise((r) => liveHost!.once('exit', r));
      deadHost.kill('SIGKILL');
      await deadExit;
      for (const d of nodeDirs(dead)) expect(existsSync(d), d).toBe(true);
      expect(existsSync(`/run/fnhost/nodes/${dead}.lock`)).toBe(true);
      // a cgroup of the live host that nothing has joined yet (between its mkdir and its init's join)
      mkdirSync(join(nodeDirs(live)[0]!, 'sb-justmade0000'));
      // a node nobody ever registered (an older build, or /run was emptied): its owner cannot be proven dead
      for (const d of nodeDirs(unknown)) mkdirSync(join(d, 'sb-unknown00000'), { recursive: true });
      // the killed host's init dies with it (PDEATHSIG), so its cgroups empty out
      const { deadNodes } = await until(() => cleanupLeftovers(env.nodeId), () => nodeDirs(dead).every((d) => !existsSync(d)));
      expect(deadNodes).toBeGreaterThanOrEqual(0); // 0 when another test file's clean-up swept it first
      expect(existsSync(`/run/fnhost/nodes/${dead}.lock`)).toBe(false);
      expect(existsSync(join(nodeDirs(live)[0]!, 'sb-justmade0000'))).toBe(true);
      expect(existsSync(`/run/fnhost/nodes/${live}.lock`)).toBe(true);
      for (const d of nodeDirs(unknown)) expect(existsSync(join(d, 'sb-unknown00000')), d).toBe(true);
    } finally {
      deadHost.kill('SIGKILL');
      await deadExit;
      liveHost?.kill('SIGKILL');
      await liveExit;
      for (const d of [...nodeDirs(unknown).map((u) => join(u, 'sb-unknown00000')), ...nodeDirs(unknown), join(nodeDirs(live)[0]!, 'sb-justmade0000')]) {
        try { rmdirSync(d); } catch { /* gone */ }
      }
      await cleanupLeftovers(live);
      await cleanupLeftovers(dead);
    }
    for (const d of [...nodeDirs(live), ...nodeDirs(unknown)]) expect(existsSync(d), d).toBe(false);
  });
});
