/**
 * Pure-logic tests of the sandbox's host side (no kernel needed): control-socket framing, spec validation,
 * rootfs lookups through symlinks, overlay lowerdir order.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidRequest } from '../../services/common/errors.ts';
import { FrameReader, decodeMessage, encodeFrame } from '../../services/sandbox/control.ts';
import { EMPTY_LAYER, lowerdir } from '../../services/sandbox/sandbox.ts';
import { existsInRootfs, resolveCommand, validateLimits, validateProcess } from '../../services/sandbox/validate.ts';

describe('control socket framing', () => {
  it('encodes NUL-terminated strings behind a little-endian length', () => {
    const f = encodeFrame(['run', '7', 'hostname', 'hé']);
    expect(f.readUInt32LE(0)).toBe(f.length - 4);
    expect(f.subarray(4).toString('utf8')).toBe('run\0' + '7\0' + 'hostname\0' + 'hé\0');
  });

  it('reassembles messages split across and merged within chunks', () => {
    const msgs = [['ok', '1', '42'], ['exited', '1', '42', '0', '0'], ['exited', '2', '43', '-1', '9']];
    const bytes = Buffer.concat(msgs.map((m) => encodeFrame(m)));
    const got: unknown[] = [];
    const r = new FrameReader();
    for (let i = 0; i < bytes.length; i += 3) r.push(bytes.subarray(i, i + 3), (p) => got.push(decodeMessage(p)));
    expect(got).toEqual([
      { type: 'ok', reqid: 1, pid: 42 },
      { type: 'exited', reqid: 1, pid: 42, code: 0, signal: null },
      { type: 'exited', reqid: 2, pid: 43, code: null, signal: 9 },
    ]);
  });

  it('decodes errors with errno, syscall, path and message', () => {
    const p = encodeFrame(['error', '3', '2', 'chdir', '/nope', 'working directory']).subarray(4);
    expect(decodeMessage(p)).toEqual({ type: 'error', reqid: 3, errno: 2, syscall: 'chdir', path: '/nope', message: 'working directory' });
    expect(decodeMessage(Buffer.from('bogus\0'))).toBeUndefined();
  });
});

describe('validation', () => {
  const field = (f: () => unknown) => {
    try { f(); } catch (e) { return e instanceof InvalidRequest ? e.details.field : e; }
    return undefined;
  };

  it('limits: minimums, integers, cpuMillis 0 = unlimited', () => {
    expect(validateLimits({ memoryMb: 64, pidsMax: 10, cpuMillis: 0 })).toEqual({ memoryMb: 64, pidsMax: 10, cpuMillis: 0 });
    expect(field(() => validateLimits({ memoryMb: 15 }))).toBe('limits.memoryMb');
    expect(field(() => validateLimits({ pidsMax: 3 }))).toBe('limits.pidsMax');
    expect(field(() => validateLimits({ cpuMillis: 5 }))).toBe('limits.cpuMillis');
    expect(field(() => validateLimits({ memoryMb: 64.5 }))).toBe('limits.memoryMb');
  });

  it('process: argv, env names, cwd, ids', () => {
    expect(validateProcess({ argv: ['/bin/true'], env: { A: 'b' } })).toEqual({ argv: ['/bin/true'], env: ['A=b'], cwd: '/', uid: 65534, gid: 65534, wire: false });
    expect(field(() => validateProcess({ argv: [] }))).toBe('argv');
    expect(field(() => validateProcess({ argv: ['a\0b'] }))).toBe('argv[0]');
    expect(field(() => validateProcess({ argv: ['x'], env: { 'A=B': 'c' } }))).toBe('env');
    expect(field(() => validateProcess({ argv: ['x'], cwd: 'etc' }))).toBe('cwd');
    expect(validateProcess({ argv: ['x'], cwd: '/a/../b/' }).cwd).toBe('/b');
    expect(field(() => validateProcess({ argv: ['x'], gid: 0 }))).toBe('gid');
  });
});

describe('rootfs lookups', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fnhost-lookup-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const low = join(dir, 'low');
  const up = join(dir, 'up');
  mkdirSync(join(low, 'usr/bin'), { recursive: true });
  mkdirSync(join(up, 'opt'), { recursive: true });
  writeFileSync(join(low, 'usr/bin/node'), '');
  symlinkSync('usr/bin', join(low, 'bin')); // merged /usr, relative
  symlinkSync('/usr/bin/node', join(up, 'opt/node')); // absolute: resolved inside the rootfs, not on the host
  const view = { layers: [low, up], mounts: [] };

  it('follows relative and absolute symlinks across layers', () => {
    expect(existsInRootfs(view, '/bin/node')).toBe(true);
    expect(existsInRootfs(view, '/opt/node')).toBe(true);
    expect(existsInRootfs(view, '/usr/bin/python')).toBe(false);
    expect(existsInRootfs(view, '/bin', true)).toBe(true);
  });

  it('resolves bare commands through PATH like execvp', () => {
    const p = validateProcess({ argv: ['node'], env: { PATH: '/nope:/bin' } });
    expect(resolveCommand(view, p)).toBe('/bin/node');
    expect(resolveCommand(view, validateProcess({ argv: ['python'] }))).toBeUndefined();
  });

  it('overlayfs lower layers are top first; a single layer gets an empty one below', () => {
    expect(lowerdir(['/a', '/b', '/c'])).toEqual(['/c', '/b', '/a']);
    expect(lowerdir(['/a'])).toEqual(['/a', EMPTY_LAYER]);
  });
});
