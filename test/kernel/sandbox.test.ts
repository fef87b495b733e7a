/**
 * Kernel tests of the sandbox lifecycle (services/sandbox): create → start → exited → destroy on real
 * namespaces, cgroups and overlay mounts; exec, attach, wire, stdin, limits, kill; bad specs.
 * Leak assertions run after every test (test/helpers/sandbox.ts).
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidRequest, Conflict } from '../../services/common/errors.ts';
import { createSandbox, type Sandbox } from '../../services/sandbox/index.ts';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('lifecycle');
const root = process.getuid?.() === 0;

describe.skipIf(!root)('sandbox lifecycle (needs root: skipped otherwise)', () => {
  it('runs a command in a read-only overlay of the layers, top layer winning', async () => {
    const sb = await env.create();
    expect(sb.state).toBe('created');
    expect(existsSync(`/proc/${sb.initPid}`)).toBe(true);
    const p = await sb.start({ layers: [env.fx().base, env.fx().top], argv: ['/bin/sh', '-c', 'cat /etc/layer /etc/hello; echo err >&2; exit 3'] });
    expect(sb.state).toBe('started');
    const r = await collect(p);
    expect(r.stdout).toBe('top\nhello from top\n');
    expect(r.stderr).toBe('err\n');
    expect(r.status).toMatchObject({ code: 3, signal: null, oomKilled: false });
    expect(r.status.peakMemoryBytes).toBeGreaterThan(0);
    await sb.destroy();
    expect(sb.state).toBe('destroyed');
    expect(existsSync(`/proc/${sb.initPid}`)).toBe(false);
    await sb.destroy(); // idempotent
  });

  it('the init is born in its own cgroup with the default caps applied', async () => {
    const sb = await env.create({ limits: { memoryMb: 48, pidsMax: 20, cpuMillis: 500 } });
    const cg = readFileSync(`/proc/${sb.initPid}/cgroup`, 'utf8');
    expect(cg).toContain(`memory:/fnhost/${env.nodeId}/${sb.id}`);
    expect(cg).toContain(`pids:/fnhost/${env.nodeId}/${sb.id}`);
    const base = `/sys/fs/cgroup/memory/fnhost/${env.nodeId}/${sb.id}`;
    expect(readFileSync(`${base}/memory.limit_in_bytes`, 'utf8').trim()).toBe(String(48 * 1024 * 1024));
    expect(readFileSync(`${base}/memory.memsw.limit_in_bytes`, 'utf8').trim()).toBe(String(48 * 1024 * 1024));
    expect(readFileSync(`/sys/fs/cgroup/pids/fnhost/${env.nodeId}/${sb.id}/pids.max`, 'utf8').trim()).toBe('20');
    expect(readFileSync(`/sys/fs/cgroup/cpu/fnhost/${env.nodeId}/${sb.id}/cpu.cfs_quota_us`, 'utf8').trim()).toBe('50000');
    // its own namespaces, and its cgroup namespace is rooted at its own cgroup
    for (const ns of ['pid', 'mnt', 'uts', 'ipc', 'net', 'cgroup']) {
      expect(readlinkSync(`/proc/${sb.initPid}/ns/${ns}`), ns).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    }
    await sb.setLimits({ memoryMb: 96 });
    expect(readFileSync(`${base}/memory.limit_in_bytes`, 'utf8').trim()).toBe(String(96 * 1024 * 1024));
    const m = await sb.memory();
    expect(m.oomKills).toBe(0);
    expect(m.currentBytes).toBeGreaterThan(0);
  });

  it('start applies the spec limits, env, cwd, uid and hostname', async () => {
    const sb = await env.create();
    const p = await sb.start({
      layers: [env.fx().base], argv: ['sh', '-c', 'echo $FOO; pwd; id -u; id -g; hostname'],
      env: { FOO: 'bar', PATH: '/bin' }, cwd: '/etc', uid: 1234, gid: 4321, hostname: 'fn-test', limits: { pidsMax: 10 },
    });
    const r = await collect(p);
    expect(r.stdout).toBe('bar\n/etc\n1234\n4321\nfn-test\n');
    expect(readFileSync(`/sys/fs/cgroup/pids/fnhost/${env.nodeId}/${sb.id}/pids.max`, 'utf8').trim()).toBe('10');
  });

  it('exec runs further processes in the started sandbox; stdin is piped', async () => {
    const sb = await env.create();
    const first = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'cat'] });
    first.stdin.end('one');
    expect((await collect(first)).stdout).toBe('one');
    const second = await sb.exec({ argv: ['/bin/probe', 'cat'] });
    second.stdin.end('two');
    const r = await collect(second);
    expect(r.stdout).toBe('two');
    expect(r.status.code).toBe(0);
    // both ran in the same pid namespace: PID 1 is still the same init
    const third = await sb.exec({ argv: ['/bin/probe', 'pids'] });
    expect((await collect(third)).stdout).toMatch(/^pid=\d+ ppid=1\n$/);
    // pid: the host's pid of a process still running (looked up on first use)
    const sleeper = await sb.exec({ argv: ['/bin/probe', 'sleep', '10000'] });
    expect(readFileSync(`/proc/${sleeper.pid}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+\d+$/m);
    expect(readFileSync(`/proc/${sleeper.pid}/cmdline`, 'utf8')).toBe(['/bin/probe', 'sleep', '10000', ''].join('\0'));
  });

  it('wire: the process gets fd 3, a stream socket to SandboxProcess.wire', async () => {
    const sb = await env.create();
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'wire'], wire: true });
    expect(p.wire).not.toBeNull();
    const got = new Promise<string>((res) => p.wire!.once('data', (d) => res(String(d))));
    p.wire!.write('ping');
    expect(await got).toBe('echo:ping');
    p.wire!.end();
    expect((await collect(p)).status.code).toBe(0);
  });

  it('attach mounts a read-only overlay inside a started sandbox', async () => {
    const sb = await env.create();
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'sleep', '10000'] });
    await sb.attach('/var/task', [env.fx().code]);
    const r = await collect(await sb.exec({ argv: ['/bin/sh', '-c', 'cat /var/task/data.txt; probe write /var/task/x'] }));
    expect(r.stdout).toBe('code layer\nwrite errno=EROFS\n');
    await sb.kill();
    expect((await p.exited).signal).toBe('SIGKILL');
  });

  it('an exec issued right behind attach (not awaited) runs a command from the attached layer', async () => {
    const layer = mkdtempSync(join(tmpdir(), 'fnhost-pipelined-'));
    try {
      chmodSync(layer, 0o755); // mkdtemp's 0700 would keep the sandbox's uid out
      writeFileSync(join(layer, 'run'), '#!/bin/sh\necho pipelined\n', { mode: 0o755 });
      const sb = await env.create();
      const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'sleep', '10000'] });
      const attached = sb.attach('/var/task', [layer]);
      const r = collect(await sb.exec({ argv: ['/var/task/run'] }));
      await attached;
      expect((await r).stdout).toBe('pipelined\n');
      await sb.kill();
      expect((await p.exited).signal).toBe('SIGKILL');
    } finally {
      rmSync(layer, { recursive: true, force: true });
    }
  });

  it('exec with mounts attaches them and starts the process in one request; they stay for later processes', async () => {
    const layer = mkdtempSync(join(tmpdir(), 'fnhost-execmounts-'));
    try {
      chmodSync(layer, 0o755);
      writeFileSync(join(layer, 'run'), '#!/bin/sh\necho one frame\n', { mode: 0o755 });
      const sb = await env.create();
      const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'sleep', '10000'] });
      // refused before anything is sent: a target that is no directory of the rootfs, a command in no layer
      await expect(sb.exec({ argv: ['/var/task/run'], mounts: [{ target: '/nowhere', layers: [layer] }] })).rejects.toMatchObject({ type: 'InvalidRequest', details: { field: 'mounts' } });
      await expect(sb.exec({ argv: ['/var/task/missing'], mounts: [{ target: '/var/task', layers: [layer] }] })).rejects.toMatchObject({ type: 'InvalidRequest', details: { field: 'argv' } });
      expect(sb.state).toBe('started');
      expect((await collect(await sb.exec({ argv: ['/var/task/run'], mounts: [{ target: '/var/task', layers: [layer] }] }))).stdout).toBe('one frame\n');
      expect((await collect(await sb.exec({ argv: ['/var/task/run'] }))).stdout).toBe('one frame\n');
      await sb.kill();
      expect((await p.exited).signal).toBe('SIGKILL');
    } finally {
      rmSync(layer, { recursive: true, force: true });
    }
  });

  it('an exec with mounts that the init cannot start leaves the sandbox destroyed', async () => {
    const layer = mkdtempSync(join(tmpdir(), 'fnhost-execmounts-'));
    try {
      chmodSync(layer, 0o755);
      writeFileSync(join(layer, 'run'), '#!/bin/sh\necho never\n', { mode: 0o644 }); // not executable: execve fails
      const sb = await env.create();
      await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'sleep', '10000'] });
      await expect(sb.exec({ argv: ['/var/task/run'], mounts: [{ target: '/var/task', layers: [layer] }] })).rejects.toMatchObject({ code: 'EACCES' });
      expect(sb.state).toBe('destroyed');
    } finally {
      rmSync(layer, { recursive: true, force: true });
    }
  });

  it('mounts in the start spec appear before the process starts', async () => {
    const r = await env.run(['/bin/cat', '/var/task/data.txt'], { mounts: [{ target: '/var/task', layers: [env.fx().code] }] });
    expect(r.stdout).toBe('code layer\n');
  });

  it('many layers with long (content-addressed) paths: more than fsconfig\'s 256-byte string limit in total', async () => {
    const { mkdirSync, writeFileSync } = await import('node:fs');
    const layers = [env.fx().base];
    for (let i = 0; i < 4; i++) {
      const dir = `${env.fx().dir}/layers/${String(i).repeat(64)}/${'d'.repeat(40)}`;
      mkdirSync(`${dir}/etc`, { recursive: true });
      writeFileSync(`${dir}/etc/layer`, `layer ${i}\n`);
      layers.push(dir);
    }
    expect(layers.join(':').length).toBeGreaterThan(256);
    const r = await env.run(['/bin/cat', '/etc/layer'], { layers });
    expect(r.stdout).toBe('layer 3\n');
  });

  it('an image without /proc, /dev, /tmp or /var/task still gets its mount points (skeleton layer)', async () => {
    const { copyFileSync, mkdirSync } = await import('node:fs');
    const bare = `${env.fx().dir}/bare`;
    mkdirSync(`${bare}/bin`, { recursive: true });
    copyFileSync(`${env.fx().base}/bin/probe`, `${bare}/bin/probe`);
    const sb = await env.create();
    const p = await sb.start({ layers: [bare], argv: ['/bin/probe', 'sleep', '10000'], mounts: [{ target: '/var/task', layers: [env.fx().code] }] });
    const r = await collect(await sb.exec({ argv: ['/bin/probe', 'write', '/tmp/x'] }));
    expect(r.stdout).toBe('write ok\n');
    await sb.kill();
    await p.exited;
  });

  it('reports the signal that ended a process', async () => {
    const r = await env.run(['/bin/sh', '-c', 'kill -TERM $$']);
    expect(r.status).toMatchObject({ code: null, signal: 'SIGTERM' });
  });

  it('kill() ends a sandbox with many processes, and exited settles', async () => {
    const sb = await env.create({ limits: { pidsMax: 64 } });
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'spawn', '30'] });
    const line = await new Promise<string>((res) => p.stdout.once('data', (d) => res(String(d))));
    expect(line).toBe('spawned 30\n');
    const pidsFile = `/sys/fs/cgroup/pids/fnhost/${env.nodeId}/${sb.id}/cgroup.procs`;
    expect(readFileSync(pidsFile, 'utf8').trim().split('\n').length).toBe(32); // init + probe + 30
    await sb.kill();
    expect(readFileSync(pidsFile, 'utf8').trim()).toBe('');
    expect((await p.exited).signal).toBe('SIGKILL');
    await sb.kill(); // idempotent
  });

  it('rejects bad specs with InvalidRequest and leaves the sandbox usable', async () => {
    const sb = await env.create();
    const base = env.fx().base;
    const cases: Array<[string, object]> = [
      ['layers[0]', { layers: ['/nonexistent/layer'], argv: ['/bin/true'] }],
      ['layers[0]', { layers: ['relative/dir'], argv: ['/bin/true'] }],
      ['layers', { layers: [], argv: ['/bin/true'] }],
      ['argv', { layers: [base], argv: [] }],
      ['argv', { layers: [base], argv: ['/bin/nope'] }],
      ['argv', { layers: [base], argv: ['nope'] }],
      ['limits.memoryMb', { layers: [base], argv: ['/bin/true'], limits: { memoryMb: 1 } }],
      ['limits.pidsMax', { layers: [base], argv: ['/bin/true'], limits: { pidsMax: 0 } }],
      ['uid', { layers: [base], argv: ['/bin/true'], uid: 0 }],
      ['cwd', { layers: [base], argv: ['/bin/true'], cwd: 'etc' }],
      ['hostname', { layers: [base], argv: ['/bin/true'], hostname: 'bad name!' }],
      ['mounts[0].target', { layers: [base], argv: ['/bin/true'], mounts: [{ target: '/tmp', layers: [base] }] }],
    ];
    for (const [field, spec] of cases) {
      const e = await sb.start(spec as never).catch((x: unknown) => x);
      expect(e, field).toBeInstanceOf(InvalidRequest);
      expect((e as InvalidRequest).details.field).toBe(field);
    }
    expect(sb.state).toBe('created');
    const r = await collect(await sb.start({ layers: [base], argv: ['/usr/bin/probe-link', 'exit', '0'] }));
    expect(r.status.code).toBe(0);
    await expect(sb.start({ layers: [base], argv: ['/bin/true'] })).rejects.toBeInstanceOf(Conflict);
  });

  it('rejects bad create options before creating anything', async () => {
    await expect(createSandbox({ nodeId: env.nodeId, limits: { memoryMb: 4 } })).rejects.toBeInstanceOf(InvalidRequest);
    await expect(createSandbox({ nodeId: '../escape' })).rejects.toBeInstanceOf(InvalidRequest);
  });

  it('a start that fails in the kernel rejects with errno shape and destroys the sandbox', async () => {
    const sb: Sandbox = await env.create();
    // cwd that does not exist in the rootfs: chdir fails inside the init's child
    const e = await sb.start({ layers: [env.fx().base], argv: ['/bin/true'], cwd: '/nonexistent' }).catch((x: unknown) => x);
    expect(e).toMatchObject({ type: 'Internal', code: 'ENOENT', syscall: 'chdir', path: '/nonexistent' });
    expect(sb.state).toBe('destroyed');
  });
});

