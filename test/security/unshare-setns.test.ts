/**
 * Security: no new namespaces and no joining others: unshare, setns, clone with namespace flags, clone3
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-unshare-setns');

describe.skipIf(process.getuid?.() !== 0)('no new namespaces and no joining others: unshare, setns, clone with namespace flags, clone3 (needs root: skipped otherwise)', () => {
  it('unshare, setns and clone(CLONE_NEWNET) fail with EPERM; clone3 gets ENOSYS so libcs fall back to clone', async () => {
    const r = await env.run(['/bin/sh', '-c', 'probe unshare; probe setns; probe clone-ns; probe clone3']);
    expect(r.stdout).toBe('unshare errno=EPERM\nsetns errno=EPERM\nclone-ns errno=EPERM\nclone3 errno=ENOSYS\n');
  });

  it('a plain fork (clone without namespace flags) still works', async () => {
    const r = await env.run(['/bin/sh', '-c', '/bin/echo forked']);
    expect(r.stdout).toBe('forked\n');
  });
});
