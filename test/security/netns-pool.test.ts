/**
 * Security: the zygote (native/init/zygote.c) and its pool of pre-made network namespaces. Every sandbox gets
 * a network namespace of its own that no other sandbox ever had; the zygote and its netns maker keep no
 * reference to a namespace once handed out; inits are born children of the host process with nothing of the
 * zygote's open; and the host falls back cleanly when the zygote is gone.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setNetnsPoolForTests, zygotePid, type Sandbox } from '../../services/sandbox/index.ts';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';
import { until } from '../helpers/until.ts';

const env = useSandboxEnv('sec-netns-pool');

const netnsOf = (pid: number | 'self') => readlinkSync(`/proc/${pid}/ns/net`);

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** every `net:[…]` link among a process's open fds */
function netnsFds(pid: number): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const l = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (l.startsWith('net:')) out.push(l);
    } catch { /* closed meanwhile */ }
  }
  return out;
}

/** the netns of the sandbox's function process, seen from the host */
async function functionNetns(sb: Sandbox): Promise<string> {
  const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/sleep', '5'] });
  return netnsOf(p.pid);
}

describe.skipIf(process.getuid?.() !== 0)('netns pool and zygote (needs root: skipped otherwise)', () => {
  // the pool is on by default only where the cgroups must exist before the clone (v2): test it explicitly
  beforeAll(() => setNetnsPoolForTests(4));
  afterAll(() => setNetnsPoolForTests(undefined));
  it('every live sandbox has its own network namespace, never the host\'s, the zygote\'s or the maker\'s', async () => {
    const host = netnsOf('self');
    // more sandboxes than the pool holds (4): some come from the pool, the rest from CLONE_NEWNET
    const sbs = await Promise.all(Array.from({ length: 10 }, () => env.create()));
    const z = zygotePid();
    expect(z).not.toBeNull();
    const helpers = [z!, ...childrenOf(z!)];
    expect(helpers.length).toBe(2); // the zygote and its maker; inits are the host's children, not the zygote's
    const seen = new Set<string>();
    const makerSamples: string[] = [];
    for (const sb of sbs) {
      expect(readFileSync(`/proc/${sb.initPid}/status`, 'utf8')).toMatch(new RegExp(`^PPid:\\s+${process.pid}$`, 'm'));
      // a clone of the zygote (it renames itself), not an exec'd init of the fallback path
      expect(readFileSync(`/proc/${sb.initPid}/cmdline`, 'utf8').split('\0')[1]).toBe('--init');
      const ns = await functionNetns(sb);
      expect(ns).toBe(netnsOf(sb.initPid));
      expect(ns).not.toBe(host);
      seen.add(ns);
      expect(netnsOf(z!)).toBe(host);
      // the maker is at home, or inside the namespace it is building right now (refilling the pool)
      makerSamples.push(netnsOf(helpers[1]!));
      for (const h of helpers) expect(netnsFds(h)).not.toContain(ns); // pooled fds sit in a socket queue; handed-out ones are closed
    }
    expect(seen.size).toBe(sbs.length);
    // ... never in one it handed out: it went back home before sending each one, and is back once the pool is full
    for (const m of makerSamples) expect(seen.has(m)).toBe(false);
    await until(() => netnsOf(helpers[1]!), (n) => n === host);
  });

  it('a namespace once used is never handed out again', async () => {
    // Hold the first sandbox's namespace open after it is destroyed, so its inode number cannot be recycled
    // by the kernel: if the zygote ever handed it out again, a later sandbox would show the same inode.
    const first = await env.create();
    const fd = openSync(`/proc/${first.initPid}/ns/net`, 'r');
    try {
      const used = netnsOf(first.initPid);
      await first.destroy();
      for (let i = 0; i < 12; i++) {
        const sb = await env.create();
        expect(netnsOf(sb.initPid)).not.toBe(used);
        await sb.destroy();
      }
    } finally {
      closeSync(fd);
    }
  });

  it('a pooled namespace has only lo, and lo is up', async () => {
    const sb = await env.create();
    // seen from the host, inside the sandbox's namespace (the sandbox itself has no CAP_NET_ADMIN nor /sys)
    const r = spawnSync('nsenter', [`--net=/proc/${sb.initPid}/ns/net`, 'ip', '-o', 'link', 'show'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const links = r.stdout.trim().split('\n');
    expect(links).toHaveLength(1);
    expect(links[0]).toMatch(/^1: lo: <LOOPBACK,UP,LOWER_UP>/);
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'ifaces'] });
    p.stdin.end();
    expect((await collect(p)).stdout).toBe('ifaces lo\n');
  });

  it('the init holds nothing of the zygote: stdio on /dev/null, its control socket, its signalfd', async () => {
    const sb = await env.create();
    const fds = readdirSync(`/proc/${sb.initPid}/fd`).map(Number).sort((a, b) => a - b);
    expect(fds).toEqual([0, 1, 2, 3, 4]);
    const links = fds.map((fd) => readlinkSync(`/proc/${sb.initPid}/fd/${fd}`));
    expect(links.slice(0, 3)).toEqual(['/dev/null', '/dev/null', '/dev/null']);
    expect(links[3]).toMatch(/^socket:/);
    expect(links[4]).toBe('anon_inode:[signalfd]');
    await sb.destroy();
  });

  it('without a pool (size 0) every init still gets a fresh namespace with only lo', async () => {
    setNetnsPoolForTests(0);
    try {
      const z = zygotePid();
      const a = await env.create();
      const b = await env.create();
      expect(zygotePid()).not.toBe(z); // restarted with the new size
      expect(childrenOf(zygotePid()!)).toEqual([]); // no maker
      expect(netnsOf(a.initPid)).not.toBe(netnsOf(b.initPid));
      const p = await a.start({ layers: [env.fx().base], argv: ['/bin/probe', 'ifaces'] });
      p.stdin.end();
      expect((await collect(p)).stdout).toBe('ifaces lo\n');
    } finally {
      setNetnsPoolForTests(4);
    }
  });

  it('a killed zygote is replaced, and sandboxes keep working', async () => {
    const before = await env.create();
    const z = zygotePid()!;
    process.kill(z, 'SIGKILL');
    // the maker dies with it (PDEATHSIG) and the pooled namespaces with the socket queue
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && readFileSync(`/proc/${z}/stat`, 'utf8').split(' ')[2] !== 'Z') await new Promise((r) => setTimeout(r, 5));
    const after = await env.create();
    expect(netnsOf(after.initPid)).not.toBe(netnsOf(before.initPid));
    // the init born before the zygote died is unaffected: it is the host's child
    const p = await before.start({ layers: [env.fx().base], argv: ['/bin/true'] });
    p.stdin.end();
    expect((await p.exited).code).toBe(0);
    const q = await after.start({ layers: [env.fx().base], argv: ['/bin/true'] });
    q.stdin.end();
    expect((await q.exited).code).toBe(0);
    // the dead zygote was reaped (it was this process's child), and a new one runs
    const reaped = Date.now() + 3000;
    while (Date.now() < reaped && existsSync(`/proc/${z}`)) await new Promise((r) => setTimeout(r, 5));
    expect(existsSync(`/proc/${z}`)).toBe(false);
    expect(zygotePid()).not.toBe(z);
  });
});
