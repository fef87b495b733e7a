/**
 * Security: kill() of a sandbox with many processes ends all of them (none escapes into the host).
 */
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-killmany');

describe.skipIf(process.getuid?.() !== 0)('kill() of many processes (needs root: skipped otherwise)', () => {
  it('every process of the sandbox is gone after kill()', async () => {
    const sb = await env.create({ limits: { pidsMax: 128 } });
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/sh', '-c', 'probe spawn 40 & probe spawn 40 & wait'] });
    const procs = `/sys/fs/cgroup/pids/fnhost/${env.nodeId}/${sb.id}/cgroup.procs`;
    // poll until all 84 tasks exist: init + sh + 2 probes + 80 children
    const deadline = Date.now() + 10_000;
    let pids: string[] = [];
    while (Date.now() < deadline) {
      pids = readFileSync(procs, 'utf8').trim().split('\n').filter(Boolean);
      if (pids.length >= 84) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(pids.length).toBe(84);
    await sb.kill();
    expect(pids.filter((pid) => existsSync(`/proc/${pid}`))).toEqual([]);
    expect((await p.exited).signal).toBe('SIGKILL');
  });
});
