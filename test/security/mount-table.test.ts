/**
 * Security: the sandbox's mount table holds only its own mounts — none of the host's (they were never copied
 * into it: sandboxes are born in a copy of the template namespace, or detach the host's copy before ready).
 */
import { describe, expect, it } from 'vitest';
import { setTemplateNamespaceForTests } from '../../services/sandbox/index.ts';
import { useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-mounttable');

describe.skipIf(process.getuid?.() !== 0)('mount table (needs root: skipped otherwise)', () => {
  it('lists exactly /, /var/task, /tmp, /proc and /dev', async () => {
    const r = await env.run(['/bin/probe', 'mounts'], { mounts: [{ target: '/var/task', layers: [env.fx().code] }] });
    const points = r.stdout.trim().split(' ').slice(1).sort();
    expect(points).toEqual(['/', '/dev', '/proc', '/tmp', '/var/task']);
  });

  it('the same without the template namespace (sandboxes stage from a copy of the host\'s tree)', async () => {
    setTemplateNamespaceForTests(false);
    try {
      const r = await env.run(['/bin/probe', 'mounts']);
      expect(r.stdout.trim().split(' ').slice(1).sort()).toEqual(['/', '/dev', '/proc', '/tmp']);
    } finally {
      setTemplateNamespaceForTests(true);
    }
  });
});
