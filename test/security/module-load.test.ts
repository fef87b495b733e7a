/**
 * Security: kernel modules cannot be loaded; bpf is refused
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-module-load');

describe.skipIf(process.getuid?.() !== 0)('kernel modules cannot be loaded; bpf is refused (needs root: skipped otherwise)', () => {
  it('finit_module and bpf fail with EPERM', async () => {
    const r = await env.run(['/bin/sh', '-c', 'probe module; probe bpf']);
    expect(r.stdout).toBe('module errno=EPERM\nbpf errno=EPERM\n');
  });
});
