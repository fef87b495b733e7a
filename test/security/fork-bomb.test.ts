/**
 * Security: a fork bomb stops at the pids cap and the host stays responsive.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-forkbomb');

describe.skipIf(process.getuid?.() !== 0)('fork bomb (needs root: skipped otherwise)', () => {
  it('forking stops with EAGAIN at pidsMax; the host keeps answering; kill ends everything', async () => {
    const pidsMax = 40;
    const sb = await env.create({ limits: { pidsMax } });
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'forkbomb'] });
    // The event loop must keep turning while the bomb runs: measure timer lateness.
    let worstLateMs = 0;
    let last = performance.now();
    const tick = setInterval(() => {
      const now = performance.now();
      worstLateMs = Math.max(worstLateMs, now - last - 10);
      last = now;
    }, 10);
    const line = await new Promise<string>((res) => p.stdout.once('data', (d) => res(String(d))));
    // the init and the probe itself count too: pidsMax - 2 children at most
    const m = /^forkbomb count=(\d+) errno=EAGAIN\n$/.exec(line);
    expect(m, line).not.toBeNull();
    expect(Number(m![1])).toBe(pidsMax - 2);
    // the host can still start processes of its own
    expect(execFileSync('/bin/echo', ['host ok']).toString()).toBe('host ok\n');
    clearInterval(tick);
    expect(worstLateMs).toBeLessThan(500);
    // the probe reports and exits; its pidsMax - 2 children stay until kill()
    expect((await p.exited).code).toBe(0);
    const procs = `/sys/fs/cgroup/pids/fnhost/${env.nodeId}/${sb.id}/cgroup.procs`;
    expect(readFileSync(procs, 'utf8').trim().split('\n').length).toBe(pidsMax - 1);
    await sb.kill();
    expect(readFileSync(procs, 'utf8').trim()).toBe('');
  });
});
