/**
 * Security: ptrace(2) is refused (no attaching to the init or anything else)
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-ptrace');

describe.skipIf(process.getuid?.() !== 0)('ptrace(2) is refused (no attaching to the init or anything else) (needs root: skipped otherwise)', () => {
  it('PTRACE_ATTACH to PID 1 fails with EPERM', async () => {
    const r = await env.run(['/bin/probe', 'ptrace']);
    expect(r.stdout).toBe('ptrace errno=EPERM\n');
  });
});
