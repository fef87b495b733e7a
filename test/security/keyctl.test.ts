/**
 * Security: the kernel keyring is unreachable (keyctl/add_key/request_key)
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-keyctl');

describe.skipIf(process.getuid?.() !== 0)('the kernel keyring is unreachable (keyctl/add_key/request_key) (needs root: skipped otherwise)', () => {
  it('keyctl fails with EPERM', async () => {
    const r = await env.run(['/bin/probe', 'keyctl']);
    expect(r.stdout).toBe('keyctl errno=EPERM\n');
  });
});
