/**
 * Security: the function runs unprivileged: uid != 0, no capabilities in any set, no_new_privs, seccomp
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-privileges');

describe.skipIf(process.getuid?.() !== 0)('the function runs unprivileged: uid != 0, no capabilities in any set, no_new_privs, seccomp (needs root: skipped otherwise)', () => {
  it('uid/gid are not 0, CapEff/CapPrm/CapBnd/CapAmb are 0, NoNewPrivs 1, Seccomp 2 (filter)', async () => {
    const r = await env.run(['/bin/probe', 'ids']);
    expect(r.stdout).toBe([
      'uid=65534 gid=65534 euid=65534', 'CapEff=0000000000000000', 'CapPrm=0000000000000000',
      'CapBnd=0000000000000000', 'CapAmb=0000000000000000', 'NoNewPrivs=1', 'Seccomp=2', '',
    ].join('\n'));
  });

  it('every later process (exec) is as unprivileged as the first, and the init keeps only what it needs', async () => {
    // The function's child shares the init's memory until exec (native/init/process.c): nothing it does to
    // drop privileges may leak into the init's bookkeeping, or a later spawn would keep capabilities.
    const sb = await env.create();
    const first = await sb.start({ layers: [env.fx().base], argv: ['/bin/probe', 'ids'] });
    first.stdin.end();
    const want = (await collect(first)).stdout;
    expect(want).toContain('CapBnd=0000000000000000');
    for (let i = 0; i < 3; i++) {
      const p = await sb.exec({ argv: ['/bin/probe', 'ids'] });
      p.stdin.end();
      expect((await collect(p)).stdout).toBe(want);
    }
    // CAP_SETGID(6) | CAP_SETUID(7) | CAP_SETPCAP(8) | CAP_SYS_ADMIN(21) (include/uapi/linux/capability.h)
    const status = readFileSync(`/proc/${sb.initPid}/status`, 'utf8');
    expect(status).toMatch(/^CapBnd:\s+00000000002001c0$/m);
    expect(status).toMatch(/^CapEff:\s+00000000002001c0$/m);
  });

  it('mknod is refused (no CAP_MKNOD)', async () => {
    const r = await env.run(['/bin/probe', 'mknod']);
    expect(r.stdout).toBe('mknod errno=EPERM\n');
  });
});
