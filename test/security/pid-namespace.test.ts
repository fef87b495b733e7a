/**
 * Security: no host process is visible: own pid namespace, the probe is PID 1's child
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-pid-namespace');

describe.skipIf(process.getuid?.() !== 0)('no host process is visible: own pid namespace, the probe is a child of PID 1 (needs root: skipped otherwise)', () => {
  it('the probe is a child of PID 1 and /proc lists only the sandbox', async () => {
    const r = await env.run(['/bin/sh', '-c', 'probe pids; probe ps']);
    // sh is pid 2; the first probe is its forked child; busybox sh execs the last command in place (pid 2)
    expect(r.stdout).toMatch(/^pid=3 ppid=2\nps 1 2\n$/);
    const direct = await env.run(['/bin/probe', 'pids']);
    expect(direct.stdout).toBe('pid=2 ppid=1\n');
  });
});
