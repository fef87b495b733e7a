/**
 * The zygote (native/init/zygote.c, services/sandbox/zygote.ts): a clone made before its cgroups exist
 * (cgroup v1: the host makes them while the zygote clones) and its join frame; and the zygote's end: when the
 * host stops it (destroyAll) or simply exits, the zygote ends its netns maker, reaps it and exits, and the host
 * reaps the zygote — neither is left behind, not even as a zombie waiting for PID 1 to collect it.
 */
import { spawn } from 'node:child_process';
import { closeSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ControlChannel, encodeFrame } from '../../services/sandbox/control.ts';
import { destroyAll, setNetnsPoolForTests, zygotePid } from '../../services/sandbox/index.ts';
import { INIT_PATH, native } from '../../services/sandbox/native.ts';
import { reap } from '../../services/sandbox/reaper.ts';
import { NEWROOT, ensureRunDir } from '../../services/sandbox/sandbox.ts';
import { Zygote } from '../../services/sandbox/zygote.ts';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('zygote');
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const root = process.getuid?.() === 0;

/** start time (clock ticks since boot, /proc/<pid>/stat field 22): tells a pid from a later reuse of it */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** the process `pid` that started at `start` still exists, running or as a zombie */
function stillThere(pid: number, start: string): boolean {
  return startTime(pid) === start;
}

function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number);
}

describe.skipIf(!root)('an init spawned before its cgroups exist (cgroup v1 late join)', () => {
  it('waits for its join frame: EOF before it ends the init at once, a malformed one is a set-up error', async () => {
    ensureRunDir();
    const z = await Zygote.start(INIT_PATH, NEWROOT, 0);
    try {
      // the host gave up (its cgroups could not be made): the init exits without having run anything
      const a = z.spawnUnjoined();
      const aPid = await a.pid;
      closeSync(a.fd);
      expect(await reap(aPid)).toEqual({ code: 0, signal: null });
      // something else than "join" + fds: the init says why on its own socket and exits
      const b = z.spawnUnjoined();
      const ch = new ControlChannel(b.fd);
      native().sendFrame(b.fd, encodeFrame(['bogus']), []);
      await expect(ch.ready).rejects.toMatchObject({ message: 'malformed join frame', errno: -22 });
      ch.close();
      expect((await reap(await b.pid))?.code).not.toBe(0);
    } finally {
      await z.close();
    }
  });
});

describe.skipIf(!root)('zygote shutdown (needs root: skipped otherwise)', () => {
  it('destroyAll() ends the zygote and its netns maker, both reaped by the time it resolves', async () => {
    setNetnsPoolForTests(4); // with a maker (on cgroup v1 there is none by default)
    const sb = await env.create();
    const z = zygotePid()!;
    expect(z).toBeGreaterThan(0);
    const [maker] = childrenOf(z);
    expect(maker).toBeGreaterThan(0);
    const zStart = startTime(z)!;
    const makerStart = startTime(maker!)!;
    await sb.destroy();
    await destroyAll();
    expect(stillThere(z, zStart), 'zygote').toBe(false);
    expect(stillThere(maker!, makerStart), 'netns maker').toBe(false);
    expect(zygotePid()).toBeNull();
    // the next sandbox gets a new zygote
    const again = await env.create();
    expect(zygotePid()).not.toBe(z);
    await again.destroy();
    setNetnsPoolForTests(undefined);
    await destroyAll();
  });

  it('a host process that exits without destroyAll() leaves no zygote or maker behind, not even a zombie', async () => {
    const script = `import('${ROOT}/services/sandbox/index.ts').then(async (m) => {
      m.setNetnsPoolForTests(4);
      const sb = await m.createSandbox({ nodeId: '${env.nodeId}-exit' });
      const z = m.zygotePid();
      const maker = Number(require('node:fs').readFileSync('/proc/' + z + '/task/' + z + '/children', 'utf8').trim());
      await sb.destroy();
      await m.cleanupLeftovers('${env.nodeId}-exit');
      console.log(JSON.stringify({ zygote: z, maker }));
    })`;
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += String(d)));
    // the zygote's socket is unref'd: the child ends on its own once its sandbox is gone
    const code = await new Promise((r) => child.once('exit', r));
    expect(code).toBe(0);
    const { zygote, maker } = JSON.parse(out) as { zygote: number; maker: number };
    expect(zygote).toBeGreaterThan(0);
    expect(maker).toBeGreaterThan(0);
    // No polling: the child reaped its zygote (which had reaped the maker) in its exit handler, before it
    // exited. Left to PDEATHSIG, both would be zombies of PID 1 here for as long as PID 1 takes to reap them.
    for (const pid of [zygote, maker]) {
      let state = '';
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        state = `${stat.slice(0, stat.lastIndexOf(')') + 1)} state ${stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)}`;
      } catch {
        /* gone: what we want */
      }
      expect(state, `pid ${pid}`).toBe('');
    }
  });
});
