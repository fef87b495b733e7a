/**
 * Security: chroot(2) is refused inside the sandbox
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-chroot');

describe.skipIf(process.getuid?.() !== 0)('chroot(2) is refused inside the sandbox (needs root: skipped otherwise)', () => {
  it('chroot fails with EPERM', async () => {
    const r = await env.run(['/bin/probe', 'chroot']);
    expect(r.stdout).toBe('chroot errno=EPERM\n');
  });
});
