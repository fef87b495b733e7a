/**
 * Security: the sandbox has its own hostname (UTS namespace)
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-hostname');

describe.skipIf(process.getuid?.() !== 0)('the sandbox has its own hostname (UTS namespace) (needs root: skipped otherwise)', () => {
  it('hostname is the spec hostname, and the host keeps its own', async () => {
    const { hostname } = await import('node:os');
    const before = hostname();
    const r = await env.run(['/bin/probe', 'hostname'], { hostname: 'fn-sec' });
    expect(r.stdout).toBe('hostname=fn-sec\n');
    expect(hostname()).toBe(before);
  });
});
