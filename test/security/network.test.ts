/**
 * Security: the network namespace has only loopback
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-network');

describe.skipIf(process.getuid?.() !== 0)('the network namespace has only loopback (needs root: skipped otherwise)', () => {
  it('only lo exists', async () => {
    const r = await env.run(['/bin/probe', 'ifaces']);
    expect(r.stdout).toBe('ifaces lo\n');
  });
});
