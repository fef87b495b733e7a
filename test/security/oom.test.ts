/**
 * Security: a process allocating past the memory cap is killed by the cgroup's OOM killer, and the caller
 * is told `oomKilled: true` (not a vague failure); the init survives.
 */
import { describe, expect, it } from 'vitest';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-oom');

describe.skipIf(process.getuid?.() !== 0)('memory cap (needs root: skipped otherwise)', () => {
  it('allocating 200 MiB under a 32 MiB cap → SIGKILL with oomKilled, peak near the cap', async () => {
    const sb = await env.create({ limits: { memoryMb: 32 } });
    const r = await collect(await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'alloc', '200'] }));
    expect(r.status).toMatchObject({ code: null, signal: 'SIGKILL', oomKilled: true });
    expect(r.status.peakMemoryBytes).toBeGreaterThan(24 * 1024 * 1024);
    expect(r.status.peakMemoryBytes).toBeLessThanOrEqual(32 * 1024 * 1024);
    expect((await sb.memory()).oomKills).toBe(1);
    // the init was not the victim: the sandbox still runs processes
    const again = await collect(await sb.exec({ argv: ['/bin/probe', 'alloc', '4'] }));
    expect(again.status).toMatchObject({ code: 0, oomKilled: false });
  });

  it('a process within the cap is not reported as oomKilled', async () => {
    const r = await env.run(['/bin/probe', 'alloc', '8'], {}, { limits: { memoryMb: 32 } });
    expect(r.status).toMatchObject({ code: 0, signal: null, oomKilled: false });
  });
});
