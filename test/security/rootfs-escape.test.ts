/**
 * Security: the function's process cannot get out of its rootfs to what lies below it. The init enters the
 * rootfs by moving it onto its namespace's "/" and chroot()ing (native/init/mount.c mnt_enter); below it is only
 * the stage (an empty read-only tmpfs) and never a host mount. These are the escape attempts a process with no
 * capabilities has: walking up past "/", its own and PID 1's /proc root links, the mount table, and chroot/mount
 * themselves (refused: chroot.test.ts, mount.test.ts). From the host, entering the sandbox's mount namespace
 * lands in the rootfs as well.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { collect, useSandboxEnv } from '../helpers/sandbox.ts';

const env = useSandboxEnv('sec-escape');

/** The rootfs fixture's top-level entries (test/helpers/sandbox-rootfs.ts), as `ls /` prints them. */
const ROOTFS_TOP = 'bin dev etc proc tmp usr var';

describe.skipIf(process.getuid?.() !== 0)('rootfs escape (needs root: skipped otherwise)', () => {
  it('"/.." is "/": walking up from the root stays in the rootfs', async () => {
    const r = await env.run(['/bin/sh', '-c', 'cd /; cd ..; cd ../..; echo $(ls); echo $(ls /../../..); set -- $(ls -di / /.. /../..); [ "$1" = "$3" ] && [ "$1" = "$5" ] && echo same inode']);
    expect(r.stdout).toBe(`${ROOTFS_TOP}\n${ROOTFS_TOP}\nsame inode\n`);
  });

  it('its own and PID 1\'s root links lead to the rootfs or nowhere', async () => {
    const r = await env.run(['/bin/sh', '-c', 'echo $(ls /proc/self/root/); ls -l /proc/self/root | sed "s/.*-> //"; ls /proc/1/root/ 2>&1 >/dev/null | wc -l']);
    const [self, link, pid1Denied] = r.stdout.trim().split('\n');
    expect(self).toBe(ROOTFS_TOP);
    expect(link).toBe('/');
    // PID 1 (the init) belongs to root: an unprivileged process may not follow its root link at all
    expect(pid1Denied).toBe('1');
  });

  it('the mount table shows no mount below the rootfs, and the rootfs is read-only at "/"', async () => {
    const r = await env.run(['/bin/cat', '/proc/self/mountinfo']);
    const lines = r.stdout.trim().split('\n').map((l) => l.split(' '));
    const ids = new Set(lines.map((f) => f[0]));
    const root = lines.filter((f) => f[4] === '/');
    expect(root).toHaveLength(1);
    expect(root[0]![5]!.split(',')).toContain('ro');
    expect(root[0]!.slice(root[0]!.indexOf('-') + 1)[0]).toBe('overlay');
    // the stage the rootfs sits on is the root's parent: outside the process's root, so not listed
    expect(ids.has(root[0]![1]!)).toBe(false);
  });

  it('from the host, the sandbox\'s mount namespace has the rootfs at "/" (the stage is covered)', async () => {
    const sb = await env.create();
    const p = await sb.start({ layers: [env.fx().base], argv: ['/bin/sleep', '30'] });
    try {
      const r = spawnSync('nsenter', [`--mount=/proc/${sb.initPid}/ns/mnt`, '--', '/bin/ls', '/'], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim().split('\n').join(' ')).toBe(ROOTFS_TOP);
    } finally {
      await sb.destroy();
    }
    expect((await collect(p)).status.signal).toBe('SIGKILL');
  });
});
