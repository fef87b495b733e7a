/**
 * Security: mount(2) is refused inside the sandbox
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-mount');

describe.skipIf(process.getuid?.() !== 0)('mount(2) is refused inside the sandbox (needs root: skipped otherwise)', () => {
  it('mount fails with EPERM', async () => {
    const r = await env.run(['/bin/probe', 'mount']);
    expect(r.stdout).toBe('mount errno=EPERM\n');
  });
});
