/**
 * Security: the function runs unprivileged: uid != 0, no capabilities in any set, no_new_privs, seccomp
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-privileges');

describe.skipIf(process.getuid?.() !== 0)('the function runs unprivileged: uid != 0, no capabilities in any set, no_new_privs, seccomp (needs root: skipped otherwise)', () => {
  it('uid/gid are not 0, CapEff/CapPrm/CapBnd/CapAmb are 0, NoNewPrivs 1, Seccomp 2 (filter)', async () => {
    const r = await env.run(['/bin/probe', 'ids']);
    expect(r.stdout).toBe([
      'uid=65534 gid=65534 euid=65534', 'CapEff=0000000000000000', 'CapPrm=0000000000000000',
      'CapBnd=0000000000000000', 'CapAmb=0000000000000000', 'NoNewPrivs=1', 'Seccomp=2', '',
    ].join('\n'));
  });

  it('mknod is refused (no CAP_MKNOD)', async () => {
    const r = await env.run(['/bin/probe', 'mknod']);
    expect(r.stdout).toBe('mknod errno=EPERM\n');
  });
});
