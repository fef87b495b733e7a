/**
 * A tiny rootfs fixture for sandbox tests, built from the host's static busybox and the static probe
 * (native/build/probe): bin/ with busybox applet links, the mount points the sandbox needs (proc, dev, tmp)
 * and var/task for attach tests. Independent of the images helper's base images.
 */
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROBE_PATH } from '../../services/sandbox/index.ts';

const BUSYBOX = '/bin/busybox';
const APPLETS = ['sh', 'true', 'false', 'echo', 'cat', 'sleep', 'ls', 'id', 'hostname', 'env', 'ps', 'dd', 'head', 'yes', 'wc', 'touch', 'mkdir'];

export interface RootfsFixture {
  /** the base layer (bottom) */
  base: string;
  /** a second layer on top of base, holding etc/hello */
  top: string;
  /** a code-like layer for attach/mount tests: run.sh + data.txt */
  code: string;
  dir: string;
  remove(): void;
}

export function makeRootfs(): RootfsFixture {
  const dir = mkdtempSync(join(tmpdir(), 'fnhost-rootfs-'));
  const base = join(dir, 'base');
  for (const d of ['bin', 'proc', 'dev', 'tmp', 'etc', 'var/task', 'usr/bin']) mkdirSync(join(base, d), { recursive: true });
  copyFileSync(BUSYBOX, join(base, 'bin/busybox'));
  chmodSync(join(base, 'bin/busybox'), 0o755);
  for (const a of APPLETS) symlinkSync('busybox', join(base, 'bin', a));
  copyFileSync(PROBE_PATH, join(base, 'bin/probe'));
  chmodSync(join(base, 'bin/probe'), 0o755);
  // an absolute symlink, resolved inside the rootfs (validate.ts existsInRootfs)
  symlinkSync('/bin/probe', join(base, 'usr/bin/probe-link'));
  writeFileSync(join(base, 'etc/layer'), 'base\n');
  const top = join(dir, 'top');
  mkdirSync(join(top, 'etc'), { recursive: true });
  writeFileSync(join(top, 'etc/layer'), 'top\n');
  writeFileSync(join(top, 'etc/hello'), 'hello from top\n');
  const code = join(dir, 'code');
  mkdirSync(code);
  writeFileSync(join(code, 'data.txt'), 'code layer\n');
  return { base, top, code, dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
