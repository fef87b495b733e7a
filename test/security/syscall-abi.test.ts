/**
 * Security: the seccomp filter cannot be sidestepped through another syscall ABI (i386 `int 0x80` from a
 * 64-bit process is killed) or through io_uring (whose submissions bypass seccomp: io_uring_setup gets ENOSYS).
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-abi');

describe.skipIf(process.getuid?.() !== 0)('syscall ABI (needs root: skipped otherwise)', () => {
  it.skipIf(process.arch !== 'x64')('an i386 syscall (int 0x80) kills the process with SIGSYS', async () => {
    const r = await env.run(['/bin/probe', 'int80']);
    expect(r.stdout).toBe('');
    expect(r.status).toMatchObject({ code: null, signal: 'SIGSYS' });
  });

  it('io_uring_setup fails with ENOSYS', async () => {
    const r = await env.run(['/bin/probe', 'io_uring']);
    expect(r.stdout).toBe('io_uring errno=ENOSYS\n');
  });
});
