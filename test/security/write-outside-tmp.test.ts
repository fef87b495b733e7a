/**
 * Security: the rootfs is read-only: writing anywhere but /tmp fails with EROFS
 * One escape attempt, made by the in-sandbox probe (test/fixtures/probe) as the function's process would.
 */
import { describe, expect, it } from 'vitest';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-write-outside-tmp');

describe.skipIf(process.getuid?.() !== 0)('the rootfs is read-only: writing anywhere but /tmp fails with EROFS (needs root: skipped otherwise)', () => {
  it('writes to /, /etc, /bin, /var/task and /dev fail with EROFS; /tmp works', async () => {
    const r = await env.run(['/bin/sh', '-c', 'for p in /x /etc/x /bin/x /var/task/x /dev/x /tmp/x; do probe write $p; done'], {
      mounts: [{ target: '/var/task', layers: [env.fx().code] }],
    });
    expect(r.stdout).toBe(['EROFS', 'EROFS', 'EROFS', 'EROFS', 'EROFS'].map((e) => `write errno=${e}`).join('\n') + '\nwrite ok\n');
  });

  it('the layers on the host are untouched', async () => {
    await env.run(['/bin/sh', '-c', 'probe write /etc/layer']);
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(`${env.fx().base}/etc/layer`, 'utf8')).toBe('base\n');
  });
});
