/**
 * The tar reader and the hostile-archive rules, one case per test. Each refusal must be a typed error
 * naming the rule, and must leave nothing behind in the store (no layer, no temp dir, nothing outside).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Internal, InvalidRequest, PayloadTooLarge, type FnhostError } from '../../services/common/errors.ts';
import { detectBundleFormat, detectCompression } from '../../services/store/archive.ts';
import { LayerStore, dirDigest } from '../../services/store/layer-store.ts';
import { readTar, type TarEntry } from '../../services/store/tar.ts';
import { gnuLongName, makeTar, sha256 } from '../fixtures/oci/tars.ts';


/** unpacking keeps owners (chown) and makes overlayfs whiteouts (mknod, trusted.* xattrs): root only. */
const notRoot = process.getuid?.() !== 0 ? 'needs root: chown, mknod and trusted.* xattrs' : false;
const LIMITS = { maxBytes: 64 * 1024 * 1024, maxEntries: 10_000 };
let work: string;
let store: LayerStore;

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-archive-'));
  store = new LayerStore(join(work, 'store'));
  await store.init();
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

async function refused(p: Promise<unknown>): Promise<FnhostError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, 'expected a refusal').toBeTruthy();
  return e as FnhostError;
}

/** the store holds no layer, no code layer, no temp dir. */
function expectNothingLeft(): void {
  for (const d of ['layers', 'code', 'tmp']) expect(readdirSync(join(store.root, d)), d).toEqual([]);
}

async function entriesOf(tar: Buffer): Promise<Array<TarEntry & { data: string }>> {
  const out: Array<TarEntry & { data: string }> = [];
  await readTar((async function* () { yield tar; })(), async (e, body) => {
    let data = '';
    for await (const c of body) data += c.toString();
    out.push({ ...e, data });
  });
  return out;
}

describe.skipIf(notRoot)('tar reader', () => {
  it('reads ustar, pax and GNU long names', async () => {
    const long = `${'d'.repeat(120)}/${'f'.repeat(130)}`;
    const tar = Buffer.concat([
      makeTar([{ path: 'a/' }, { path: 'a/x', data: 'hello', mode: 0o755, uid: 7, gid: 8 }, { path: long, data: 'pax' },
        { path: 'a/l', type: 'symlink', linkname: `/${'t'.repeat(150)}` }], { end: false }),
      gnuLongName(`g/${'n'.repeat(200)}`, 'gnu'),
      makeTar([{ path: 'h', type: 'hardlink', linkname: 'a/x' }]),
    ]);
    const es = await entriesOf(tar);
    expect(es.map((e) => [e.path, e.type, e.data])).toEqual([
      ['a/', 'dir', ''], ['a/x', 'file', 'hello'], [long, 'file', 'pax'], ['a/l', 'symlink', ''],
      [`g/${'n'.repeat(200)}`, 'file', 'gnu'], ['h', 'hardlink', ''],
    ]);
    expect(es[1]).toMatchObject({ mode: 0o755, uid: 7, gid: 8, size: 5 });
    expect(es[3]!.linkname).toBe(`/${'t'.repeat(150)}`);
  });

  it('reads what GNU tar writes in gnu and pax formats, long names included', async () => {
    const src = join(work, 'src');
    const deep = join(src, 'x'.repeat(90), 'y'.repeat(90));
    mkdirSync(deep, { recursive: true });
    writeFileSync(join(deep, 'z'.repeat(80)), 'deep');
    symlinkSync('../target', join(src, 'link'));
    for (const format of ['gnu', 'pax']) {
      const tar = execFileSync('tar', [`--format=${format}`, '-C', src, '-cf', '-', '.']);
      const r = await store.addTar(tar, LIMITS);
      expect(readFileSync(join(r.dir, 'x'.repeat(90), 'y'.repeat(90), 'z'.repeat(80)), 'utf8')).toBe('deep');
      expect(readlinkSync(join(r.dir, 'link'))).toBe('../target');
      expect(r.digest).toBe(sha256(tar));
    }
  });

  it('writes pax records GNU tar reads, at every length boundary of the record size', async () => {
    // 100 is where ustar ends and pax begins; around 990 the pax record ("<len> path=<p>\n") reaches 1000 bytes and its length prefix gains a digit
    const lengths = [99, 100, 101, 102, 988, 989, 990, 991, 992, 993, 994];
    const paths = lengths.map((n) => `p/${'x'.repeat(n - 2)}`);
    const tar = makeTar(paths.map((p) => ({ path: p, data: p.length.toString() })));
    expect(execFileSync('tar', ['-tf', '-'], { input: tar }).toString().trim().split('\n')).toEqual(paths);
    const es = await entriesOf(tar);
    expect(es.map((e) => e.path)).toEqual(paths);
  });

  it('refuses a header with a bad checksum', async () => {
    const tar = makeTar([{ path: 'f', data: 'x' }]);
    tar[0] = 'g'.charCodeAt(0);
    const e = await refused(store.addTar(tar, LIMITS));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details.reason).toBe('bad-header');
    expectNothingLeft();
  });

  it('the layer digest is the sha256 of the uncompressed tar, whatever the compression', async () => {
    const tar = makeTar([{ path: 'f', data: 'same' }]);
    const gz = gzipSync(tar);
    const zst = execFileSync('zstd', ['-q', '-c'], { input: tar });
    expect(detectCompression(gz)).toBe('gzip');
    expect(detectCompression(zst)).toBe('zstd');
    const a = await store.addTar(tar, LIMITS);
    const b = await store.addTar(gz, LIMITS);
    const c = await store.addTar(zst, LIMITS);
    expect(a.digest).toBe(sha256(tar));
    expect([b.digest, c.digest]).toEqual([a.digest, a.digest]);
    expect([a.existed, b.existed, c.existed]).toEqual([false, true, true]);
    expect(readdirSync(join(store.root, 'layers')).filter((n) => !n.endsWith('.json'))).toHaveLength(1);
  });

  it('dirDigest of an unpacked layer equals the digest of the tar our writer would produce', async () => {
    const tar = makeTar([{ path: 'd/' }, { path: 'd/f', data: 'x' }, { path: 'l', type: 'symlink', linkname: 'd/f', mode: 0o777 }]);
    const r = await store.addTar(tar, LIMITS);
    expect((await dirDigest(r.dir)).digest).toBe(r.digest);
  });
});

describe.skipIf(notRoot)('hostile archives', () => {
  it('refuses ".." paths', async () => {
    const e = await refused(store.addTar(makeTar([{ path: 'ok', data: '1' }, { path: 'a/../../escape', data: 'x' }]), LIMITS));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details).toMatchObject({ reason: 'path-traversal', path: 'a/../../escape' });
    expect(existsSync(join(store.root, 'escape'))).toBe(false);
    expectNothingLeft();
  });

  it('refuses absolute paths', async () => {
    const target = join(work, 'abs-target');
    const e = await refused(store.addTar(makeTar([{ path: target, data: 'x' }]), LIMITS));
    expect(e.details).toMatchObject({ reason: 'absolute-path' });
    expect(existsSync(target)).toBe(false);
    expectNothingLeft();
  });

  it('refuses a write through a symlink that points outside', async () => {
    const outside = join(work, 'outside');
    mkdirSync(outside);
    const tar = makeTar([{ path: 'evil', type: 'symlink', linkname: outside }, { path: 'evil/pwned', data: 'x' }]);
    const e = await refused(store.addTar(tar, LIMITS));
    expect(e.details).toMatchObject({ reason: 'write-through-symlink', path: 'evil/pwned' });
    expect(readdirSync(outside)).toEqual([]);
    expectNothingLeft();
  });

  it('refuses a write through a relative symlink that climbs out', async () => {
    const tar = makeTar([{ path: 'a/' }, { path: 'a/up', type: 'symlink', linkname: '../../../..' }, { path: 'a/up/tmp/pwned', data: 'x' }]);
    const e = await refused(store.addTar(tar, LIMITS));
    expect(e.details.reason).toBe('write-through-symlink');
    expectNothingLeft();
  });

  it('refuses a hardlink that points outside the layer', async () => {
    const victim = join(work, 'victim');
    writeFileSync(victim, 'original');
    for (const linkname of [victim, '../../victim', 'nonexistent']) {
      const tar = makeTar([{ path: 'hl', type: 'hardlink', linkname }, { path: 'hl', data: 'overwritten' }]);
      const e = await refused(store.addTar(tar, LIMITS));
      expect(e.details.reason, linkname).toBe('hardlink-outside');
    }
    expect(readFileSync(victim, 'utf8')).toBe('original');
    expectNothingLeft();
  });

  it('a file written over an inner hardlink replaces the link, never writes through it', async () => {
    const tar = makeTar([{ path: 'orig', data: 'original' }, { path: 'hl', type: 'hardlink', linkname: 'orig' }, { path: 'hl', data: 'new' }]);
    const r = await store.addTar(tar, LIMITS);
    expect(readFileSync(join(r.dir, 'orig'), 'utf8')).toBe('original');
    expect(readFileSync(join(r.dir, 'hl'), 'utf8')).toBe('new');
  });

  it('a file written over a symlink replaces the symlink, never writes through it', async () => {
    const victim = join(work, 'victim2');
    writeFileSync(victim, 'original');
    const r = await store.addTar(makeTar([{ path: 's', type: 'symlink', linkname: victim }, { path: 's', data: 'new' }]), LIMITS);
    expect(readFileSync(victim, 'utf8')).toBe('original');
    expect(lstatSync(join(r.dir, 's')).isFile()).toBe(true);
  });

  it('refuses device nodes', async () => {
    for (const type of ['char', 'block'] as const) {
      const e = await refused(store.addTar(makeTar([{ path: 'dev/', type: 'dir' }, { path: 'dev/mem', type, devmajor: 1, devminor: 1 }]), LIMITS));
      expect(e).toBeInstanceOf(InvalidRequest);
      expect(e.details).toMatchObject({ reason: 'device-node', path: 'dev/mem' });
    }
    expectNothingLeft();
  });

  it('strips setuid and setgid bits (documented choice) and keeps the rest of the mode', async () => {
    const r = await store.addTar(makeTar([{ path: 'su', data: '#!/bin/sh', mode: 0o4755 }, { path: 'sg/', mode: 0o2775 }, { path: 't/', mode: 0o1777 }]), LIMITS);
    expect(statSync(join(r.dir, 'su')).mode & 0o7777).toBe(0o755);
    expect(statSync(join(r.dir, 'sg')).mode & 0o7777).toBe(0o775);
    expect(statSync(join(r.dir, 't')).mode & 0o7777).toBe(0o1777);
    expect((await store.meta(r.digest)).strippedSetid).toBe(2);
  });

  it('refuses a layer whose digest does not match the manifest', async () => {
    const tar = makeTar([{ path: 'f', data: 'real' }]);
    const claimed = sha256('something else');
    const e = await refused(store.addTar(tar, LIMITS, claimed));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details).toMatchObject({ reason: 'digest-mismatch', expected: claimed, actual: sha256(tar) });
    expectNothingLeft();
  });

  it('stops a decompression bomb at the unpacked-size cap', async () => {
    const big = Buffer.alloc(64 * 1024 * 1024);
    const bomb = gzipSync(makeTar([{ path: 'zeros', data: big }]));
    expect(bomb.length).toBeLessThan(200 * 1024); // 64 MiB of zeros gzip to ~64 KiB
    const e = await refused(store.addTar(bomb, { maxBytes: 8 * 1024 * 1024, maxEntries: 100 }));
    expect(e).toBeInstanceOf(PayloadTooLarge);
    expect(e.details).toMatchObject({ reason: 'unpacked-size', limitBytes: 8 * 1024 * 1024 });
    expectNothingLeft();
  });

  it('stops an inode bomb at the entry cap', async () => {
    const many = makeTar(Array.from({ length: 50 }, (_, i) => ({ path: `f${i}` })));
    const e = await refused(store.addTar(many, { maxBytes: LIMITS.maxBytes, maxEntries: 20 }));
    expect(e.details.reason).toBe('too-many-entries');
    expectNothingLeft();
  });

  it('refuses a truncated tar (mid-file, and without the end-of-archive block)', async () => {
    const tar = makeTar([{ path: 'a', data: 'x'.repeat(3000) }, { path: 'b', data: 'y' }]);
    for (const cut of [700, tar.length - 1024]) {
      const e = await refused(store.addTar(tar.subarray(0, cut), LIMITS));
      expect(e).toBeInstanceOf(InvalidRequest);
      expect(e.details.reason).toBe('truncated');
    }
    const gz = gzipSync(tar);
    const e = await refused(store.addTar(gz.subarray(0, gz.length - 20), LIMITS));
    expect(e.details.reason).toBe('truncated');
    const zst = execFileSync('zstd', ['-q', '-c'], { input: tar });
    const z = await refused(store.addTar(zst.subarray(0, zst.length - 20), LIMITS));
    expect(z).toBeInstanceOf(InvalidRequest);
    expect(['truncated', 'bad-compression']).toContain(z.details.reason);
    expectNothingLeft();
  });
});

describe.skipIf(notRoot)('whiteouts', () => {
  it('become overlayfs whiteouts (0:0 char device, opaque xattr); nested ones under a removed name are moot', async () => {
    const r = await store.addTar(makeTar([{ path: 'a/.wh.x' }, { path: '.wh.gone' }, { path: 'gone/.wh.y' }, { path: 'o/.wh..wh..opq' }, { path: 'o/kept', data: '1' }]), LIMITS);
    const x = lstatSync(join(r.dir, 'a/x'));
    expect(x.isCharacterDevice() && x.rdev === 0).toBe(true);
    expect(lstatSync(join(r.dir, 'gone')).isCharacterDevice()).toBe(true);
    const xattr = execFileSync('/usr/bin/python3', ['-c', 'import os,sys; print(os.getxattr(sys.argv[1], "trusted.overlay.opaque").decode())', join(r.dir, 'o')]).toString();
    expect(xattr.trim()).toBe('y');
    expect(readdirSync(join(r.dir, 'o'))).toEqual(['kept']);
    expect((await store.meta(r.digest)).whiteouts).toBe(4);
  });

  it('without a runnable python3 a layer with whiteouts is refused (Internal, python3-missing) and leaves nothing; one without needs none', async () => {
    const prev = process.env.FNHOST_PYTHON;
    const fake = join(work, 'python3');
    try {
      // absent; present but not executable
      for (const make of [() => {}, () => writeFileSync(fake, '#!/bin/sh\n', { mode: 0o644 })]) {
        rmSync(fake, { force: true });
        make();
        process.env.FNHOST_PYTHON = fake;
        const e = await refused(store.addTar(makeTar([{ path: 'a/f', data: '1' }, { path: 'a/.wh.x' }, { path: 'b/g', data: '2' }]), LIMITS));
        expect(e).toBeInstanceOf(Internal);
        expect(e.details).toMatchObject({ reason: 'python3-missing', path: fake });
        expect(e.message).toContain(`python3 at ${fake}`);
        expectNothingLeft();
      }
      // one that runs but fails: Internal with its stderr, nothing left
      rmSync(fake, { force: true });
      writeFileSync(fake, '#!/bin/sh\necho broken python >&2; exit 1\n', { mode: 0o755 });
      const e = await refused(store.addTar(makeTar([{ path: 'a/.wh.x' }]), LIMITS));
      expect(e).toBeInstanceOf(Internal);
      expect(e.details).toMatchObject({ stderr: expect.stringContaining('broken python') });
      expectNothingLeft();
      const ok = await store.addTar(makeTar([{ path: 'a/f', data: '1' }]), LIMITS);
      expect(readFileSync(join(ok.dir, 'a/f'), 'utf8')).toBe('1');
    } finally {
      if (prev === undefined) delete process.env.FNHOST_PYTHON;
      else process.env.FNHOST_PYTHON = prev;
    }
  });
});

describe('bundle detection', () => {
  it('goes by magic bytes', () => {
    expect(detectBundleFormat(Buffer.from('PK\x03\x04rest'))).toBe('zip');
    expect(detectBundleFormat(gzipSync(Buffer.from('x')))).toBe('tar.gz');
    expect(detectBundleFormat(makeTar([{ path: 'f' }]))).toBe('tar');
    expect(detectBundleFormat(Buffer.from('#!/bin/sh\necho not an archive'))).toBeNull();
  });
});
