/**
 * Security: /tmp is a tmpfs capped at tmpfsMb
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-tmp-cap');

describe.skipIf(process.getuid?.() !== 0)('/tmp is a tmpfs capped at tmpfsMb (needs root: skipped otherwise)', () => {
  it('writing past the cap stops with ENOSPC at the cap', async () => {
    const r = await env.run(['/bin/probe', 'fill', '/tmp/big', '12'], { tmpfsMb: 4 });
    expect(r.stdout).toBe('fill mib=4 errno=ENOSPC\n');
  });

  it('below the cap, /tmp is writable and readable back', async () => {
    const r = await env.run(['/bin/sh', '-c', 'echo hi > /tmp/f && cat /tmp/f'], { tmpfsMb: 4 });
    expect(r.stdout).toBe('hi\n');
  });

  it('the cap is the mount\'s size: 64 MiB by default, tmpfsMb otherwise; mode 1777', async () => {
    // the init makes /tmp before start at the default size and resizes it for another tmpfsMb (native/init/mount.c mnt_tmp)
    const cmd = ['/bin/sh', '-c', 'grep " /tmp " /proc/self/mountinfo | sed "s/.* - //"; ls -ld /tmp | cut -c1-10'];
    const byDefault = await env.run(cmd);
    expect(byDefault.stdout).toBe('tmpfs tmpfs rw,size=65536k\ndrwxrwxrwt\n');
    const small = await env.run(cmd, { tmpfsMb: 4 });
    expect(small.stdout).toBe('tmpfs tmpfs rw,size=4096k\ndrwxrwxrwt\n');
  });
});
