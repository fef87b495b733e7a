/**
 * The image store on a temp directory: bundles (zip/tar.gz made by real zip/tar), OCI imports of images
 * made by real tools (umoci, skopeo), digest checks, gc and leases, atomicity. Whiteouts' effect on the
 * mounted overlay is checked in test/kernel/images.test.ts.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Conflict, InvalidRequest, NotFound, PayloadTooLarge, type FnhostError } from '../../services/common/errors.ts';
import { openImageStore, type FsImageStore } from '../../services/store/index.ts';
import { makeTar, sha256, writeOciLayout } from '../fixtures/oci/tars.ts';


/** unpacking keeps owners (chown) and makes overlayfs whiteouts (mknod, trusted.* xattrs): root only. */
const notRoot = process.getuid?.() !== 0 ? 'needs root: chown, mknod and trusted.* xattrs' : false;
const FIXTURE_SCRIPT = join(import.meta.dirname, '../fixtures/oci/make-umoci-layout.sh');

let fixtures: string;
let work: string;
let store: FsImageStore;

beforeAll(() => {
  fixtures = mkdtempSync(join(tmpdir(), 'fnhost-store-fx-'));
  execFileSync('bash', [FIXTURE_SCRIPT, join(fixtures, 'umoci')], { stdio: ['ignore', 'ignore', 'inherit'] });
  // the same image converted by skopeo: docker save format, OCI archive, zstd layers
  const src = `oci:${join(fixtures, 'umoci/layout')}:t`;
  execFileSync('skopeo', ['copy', '-q', src, `docker-archive:${join(fixtures, 'docker.tar')}:fx/t:1`]);
  execFileSync('skopeo', ['copy', '-q', src, `oci-archive:${join(fixtures, 'oci.tar')}:t`]);
  execFileSync('skopeo', ['copy', '-q', '--dest-compress-format', 'zstd', src, `oci:${join(fixtures, 'zstd')}:t`]);
});
afterAll(() => rmSync(fixtures, { recursive: true, force: true }));

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-store-'));
  store = await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state'), gcGraceMs: 0 });
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

async function refused(p: Promise<unknown>): Promise<FnhostError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, 'expected a refusal').toBeTruthy();
  return e as FnhostError;
}

function layerDirs(section: 'layers' | 'code' = 'layers'): string[] {
  return readdirSync(join(work, 'state', section)).filter((n) => !n.endsWith('.json'));
}

describe.skipIf(notRoot)('bundles', () => {
  function srcTree(): string {
    const src = join(work, 'src');
    mkdirSync(join(src, 'lib'), { recursive: true });
    writeFileSync(join(src, 'index.js'), 'exports.handler = async () => 1;\n');
    writeFileSync(join(src, 'run.sh'), '#!/bin/sh\n', { mode: 0o700 });
    writeFileSync(join(src, 'lib/util.js'), 'module.exports = 2;\n', { mode: 0o600 });
    symlinkSync('lib/util.js', join(src, 'alias.js'));
    return src;
  }

  it('unpacks a zip made by zip(1), detected from the bytes, readable by the sandbox user', async () => {
    const src = srcTree();
    execFileSync('zip', ['-q', '-r', '-y', join(work, 'b.bin'), '.'], { cwd: src });
    const buf = readFileSync(join(work, 'b.bin'));
    const code = await store.addBundle(buf);
    expect(code.digest).toBe(sha256(buf));
    expect(readFileSync(join(code.dir, 'index.js'), 'utf8')).toContain('handler');
    expect(lstatSync(join(code.dir, 'alias.js')).isSymbolicLink()).toBe(true);
    expect(statSync(join(code.dir, 'run.sh')).mode & 0o777).toBe(0o755);
    expect(statSync(join(code.dir, 'lib/util.js')).mode & 0o777).toBe(0o644);
    expect(code.sizeBytes).toBeGreaterThan(40);
    expect(await store.codeLayer(code.digest)).toEqual(code);
    // the same bytes again: the same layer, nothing unpacked twice
    expect(await store.addBundle(buf)).toEqual(code);
    expect(layerDirs('code')).toHaveLength(1);
  });

  it('unpacks a tar.gz made by tar(1)', async () => {
    const src = srcTree();
    const buf = execFileSync('tar', ['-C', src, '-czf', '-', '.']);
    const code = await store.addBundle(buf);
    expect(readFileSync(join(code.dir, 'lib/util.js'), 'utf8')).toBe('module.exports = 2;\n');
    expect(statSync(code.dir).mode & 0o777).toBe(0o755);
  });

  it('refuses a zip with a ".." entry (written by python zipfile) and leaves nothing', async () => {
    const out = join(work, 'evil.zip');
    execFileSync('/usr/bin/python3', ['-c', `import zipfile\nz=zipfile.ZipFile(${JSON.stringify(out)},'w')\nz.writestr('ok.js','1')\nz.writestr('../../evil.js','x')\nz.close()`]);
    const e = await refused(store.addBundle(readFileSync(out)));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details.reason).toBe('path-traversal');
    expect(layerDirs('code')).toEqual([]);
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
  });

  it('refuses a zip whose symlink points outside and is then written through', async () => {
    const out = join(work, 'link.zip');
    const outside = join(work, 'outside');
    mkdirSync(outside);
    execFileSync('/usr/bin/python3', ['-c', [
      'import zipfile',
      `z = zipfile.ZipFile(${JSON.stringify(out)}, "w")`,
      'i = zipfile.ZipInfo("evil"); i.create_system = 3; i.external_attr = 0o120777 << 16',
      `z.writestr(i, ${JSON.stringify(outside)})`,
      'z.writestr("evil/pwned.js", "x")',
      'z.close()',
    ].join('\n')]);
    const e = await refused(store.addBundle(readFileSync(out)));
    expect(e.details).toMatchObject({ reason: 'write-through-symlink', path: 'evil/pwned.js' });
    expect(readdirSync(outside)).toEqual([]);
    expect(layerDirs('code')).toEqual([]);
  });

  it('refuses a zip bomb at the unpacked cap and a bundle over the compressed cap', async () => {
    const small = await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state'), bundleMaxBytes: 64 * 1024, bundleMaxUnpackedBytes: 1024 * 1024 });
    writeFileSync(join(work, 'zeros'), Buffer.alloc(8 * 1024 * 1024));
    execFileSync('zip', ['-q', '-9', join(work, 'bomb.zip'), 'zeros'], { cwd: work });
    const bomb = readFileSync(join(work, 'bomb.zip'));
    expect(bomb.length).toBeLessThan(64 * 1024);
    const e = await refused(small.addBundle(bomb));
    expect(e).toBeInstanceOf(PayloadTooLarge);
    expect(e.details).toMatchObject({ reason: 'unpacked-size', limitBytes: 1024 * 1024 });
    const big = await refused(small.addBundle(Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(65 * 1024)])));
    expect(big).toBeInstanceOf(PayloadTooLarge);
    expect(big.details).toMatchObject({ reason: 'bundle-size', limitBytes: 64 * 1024 });
    expect(layerDirs('code')).toEqual([]);
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
  });

  it('refuses bytes that are no archive, and an unknown code digest', async () => {
    const e = await refused(store.addBundle(Buffer.from('console.log(1)')));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details).toMatchObject({ field: 'bundle', reason: 'bad-format' });
    expect(await refused(store.codeLayer(sha256('nope')))).toBeInstanceOf(NotFound);
  });

  it('finds a code layer by its digest, with or without its metadata file', async () => {
    const code = await store.addBundle(execFileSync('tar', ['-C', srcTree(), '-czf', '-', '.']));
    expect(await store.codeLayer(code.digest)).toEqual(code);
    // a layer whose metadata file is gone (written by an older version) is still found, its size recounted
    rmSync(`${code.dir}.json`);
    expect(await store.codeLayer(code.digest)).toEqual(code);
    // a metadata file without its layer is no layer
    writeFileSync(`${code.dir}.json`, JSON.stringify({ digest: code.digest, sizeBytes: 1, entries: 1 }));
    rmSync(code.dir, { recursive: true });
    expect(await refused(store.codeLayer(code.digest))).toBeInstanceOf(NotFound);
  });

  it('discards a code layer at once (gone before the promise settles), but not a leased one, and refuses a non-digest', async () => {
    const code = await store.addBundle(execFileSync('tar', ['-C', srcTree(), '-czf', '-', '.']));
    const release = store.lease([code.digest]);
    expect(await store.discardCode(code.digest)).toBe(false);
    expect(existsSync(code.dir)).toBe(true);
    release();
    const p = store.discardCode(code.digest);
    // taken out of the tree synchronously: no lookup in between can find it
    expect(existsSync(code.dir)).toBe(false);
    expect(existsSync(`${code.dir}.json`)).toBe(false);
    expect(await p).toBe(true);
    expect(await refused(store.codeLayer(code.digest))).toBeInstanceOf(NotFound);
    expect(layerDirs('code')).toEqual([]);
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    expect(await store.discardCode(code.digest)).toBe(false);
    expect((await refused(store.discardCode('../etc'))).type).toBe('InvalidRequest');
  });
});

describe.skipIf(notRoot)('OCI import', () => {
  const EXPECTED_CONFIG = { cmd: ['/bin/sh'], env: { FOO: 'bar' }, workingDir: '/a', entrypoint: [] };

  it('imports an OCI layout made by umoci, from a directory and from skopeo\'s oci-archive, docker-archive and zstd copies', async () => {
    const fromDir = await store.importImage('t1', 'umoci', join(fixtures, 'umoci/layout'));
    expect(fromDir.config).toEqual(EXPECTED_CONFIG);
    expect(fromDir.layers).toHaveLength(4); // 3 layers + the mount-points layer
    const three = fromDir.layerDigests!.slice(0, 3);
    for (const [name, src] of [['oci-tar', join(fixtures, 'oci.tar')], ['docker', join(fixtures, 'docker.tar')], ['zstd', join(fixtures, 'zstd')]] as const) {
      const img = await store.importImage('t1', name, src);
      expect(img.layerDigests!.slice(0, 3), name).toEqual(three); // the same uncompressed layers: stored once
      expect(img.config, name).toEqual(EXPECTED_CONFIG);
    }
    expect(layerDirs()).toHaveLength(4);
    // upper layers carry overlayfs whiteouts for umoci's deletions
    const l2 = fromDir.layers[1]!;
    expect(lstatSync(join(l2, 'a/one')).isCharacterDevice()).toBe(true);
    expect(lstatSync(join(l2, 'a/one')).rdev).toBe(0);
    expect(lstatSync(join(l2, 'b/dir')).isCharacterDevice()).toBe(true);
    expect(existsSync(join(l2, 'a/.wh.one'))).toBe(false);
    const names = (await store.listImages('t1')).filter((i) => !i.base).map((i) => i.name);
    expect(names).toEqual(['docker', 'oci-tar', 'umoci', 'zstd']);
  });

  it('imports from bytes too, and resolves the image for its tenant only', async () => {
    const img = await store.importImage('t1', 'bytes', readFileSync(join(fixtures, 'docker.tar')));
    const r = await store.resolve('bytes', 't1');
    expect(r.digest).toBe(img.digest);
    expect(r.layers.every((d) => d.startsWith(join(work, 'state', 'layers')))).toBe(true);
    expect(await refused(store.resolve('bytes', 't2'))).toBeInstanceOf(NotFound);
    expect(await refused(store.resolve('bytes'))).toBeInstanceOf(NotFound);
  });

  it('refuses a layer blob that does not match its descriptor, keeping nothing', async () => {
    const dir = join(work, 'tampered');
    writeOciLayout(dir, [makeTar([{ path: 'a', data: 'one' }]), makeTar([{ path: 'b', data: 'two' }])], {
      tamper: (i, blob) => (i === 1 ? Buffer.from(execFileSync('gzip', ['-c'], { input: makeTar([{ path: 'b', data: 'EVIL' }]) })) : blob),
    });
    const e = await refused(store.importImage('t1', 'x', dir));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details.reason).toBe('digest-mismatch');
    expect(await refused(store.resolve('x', 't1'))).toBeInstanceOf(NotFound);
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    expect(layerDirs()).toEqual([]);
  });

  it('refuses an uncompressed layer whose diff_id in the config is wrong', async () => {
    const dir = join(work, 'badid');
    writeOciLayout(dir, [makeTar([{ path: 'a', data: 'one' }])], { compress: 'none', diffIds: () => [sha256('not it')] });
    const e = await refused(store.importImage('t1', 'x', dir));
    expect(e.details).toMatchObject({ reason: 'digest-mismatch', expected: sha256('not it') });
    expect(layerDirs()).toEqual([]);
  });

  it('refuses a hostile layer inside an otherwise valid image', async () => {
    const dir = join(work, 'hostile');
    writeOciLayout(dir, [makeTar([{ path: 'ok', data: '1' }]), makeTar([{ path: '../../../etc/cron.d/x', data: 'x' }])]);
    const e = await refused(store.importImage('t1', 'x', dir));
    expect(e.details.reason).toBe('path-traversal');
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    expect(layerDirs()).toEqual([]); // the good first layer it had unpacked is gone again
  });

  it('never follows a symlinked blob out of an image archive (it could name a host file)', async () => {
    const dir = join(work, 'linked');
    const layer = makeTar([{ path: 'secret-copy', data: 'host secret' }]);
    writeOciLayout(dir, [layer]);
    const blobs = join(dir, 'blobs/sha256');
    const [blob] = readdirSync(blobs).filter((f) => readFileSync(join(blobs, f))[0] === 0x1f); // the gzip layer
    const hostFile = join(work, 'host-file');
    writeFileSync(hostFile, readFileSync(join(blobs, blob!))); // a "host file" whose digest the attacker knows
    rmSync(join(blobs, blob!));
    symlinkSync(hostFile, join(blobs, blob!));
    const tar = execFileSync('tar', ['-C', dir, '-cf', '-', '.']);
    const e = await refused(store.importImage('t1', 'x', tar));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details.reason).toBe('bad-image');
    expect(String(e.message)).toMatch(/symlink/);
    expect(layerDirs()).toEqual([]);
  });

  it('refuses bad names, base names and non-images', async () => {
    expect(await refused(store.importImage('t1', '../x', join(fixtures, 'oci.tar')))).toBeInstanceOf(InvalidRequest);
    expect(await refused(store.importImage('T 1', 'x', join(fixtures, 'oci.tar')))).toBeInstanceOf(InvalidRequest);
    expect(await refused(store.importImage('t1', 'node', join(fixtures, 'oci.tar')))).toBeInstanceOf(Conflict);
    const e = await refused(store.importImage('t1', 'x', makeTar([{ path: 'hello', data: 'x' }])));
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details.reason).toBe('bad-image');
  });
});

describe.skipIf(notRoot)('gc and leases', () => {
  it('removes layers no image references, spares kept and leased ones, and never a leased one', async () => {
    const img = await store.importImage('t1', 'a', join(fixtures, 'docker.tar'));
    const code = await store.addBundle(execFileSync('tar', ['-czf', '-', '-C', fixtures, 'umoci/expected.txt']));
    expect((await store.gc(new Set([code.digest]))).removed).toEqual([]);

    await store.deleteImage('t1', 'a');
    const release = store.lease([img.layers[0]!, img.layerDigests![1]!]);
    const { removed } = await store.gc(new Set([code.digest]));
    expect(removed.sort()).toEqual([img.layerDigests![2]!, img.layerDigests![3]!].sort());
    expect(existsSync(img.layers[0]!)).toBe(true);
    expect(existsSync(img.layers[1]!)).toBe(true);

    release();
    release(); // idempotent
    expect((await store.gc(new Set())).removed.sort()).toEqual([img.layerDigests![0]!, img.layerDigests![1]!, code.digest].sort());
    expect(layerDirs()).toEqual([]);
    expect(layerDirs('code')).toEqual([]);
    expect(readdirSync(join(work, 'state', 'leases'))).toEqual([]);
  });

  it('honours another live process\'s lease file and drops a dead one\'s', async () => {
    const img = await store.importImage('t1', 'a', join(fixtures, 'docker.tar'));
    await store.deleteImage('t1', 'a');
    const other = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const leases = join(work, 'state', 'leases');
      writeFileSync(join(leases, `${other.pid}-1.json`), JSON.stringify([img.layerDigests![0]!.slice(7)]));
      writeFileSync(join(leases, '999999999-1.json'), JSON.stringify([img.layerDigests![1]!.slice(7)]));
      const { removed } = await store.gc(new Set());
      expect(removed).not.toContain(img.layerDigests![0]);
      expect(removed).toContain(img.layerDigests![1]);
      expect(readdirSync(leases)).toEqual([`${other.pid}-1.json`]);
    } finally {
      other.kill('SIGKILL');
    }
  });

  it('spares young layers within the grace period (an import in flight elsewhere)', async () => {
    const graceful = await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state') });
    await graceful.importImage('t1', 'a', join(fixtures, 'docker.tar'));
    await graceful.deleteImage('t1', 'a');
    expect((await graceful.gc(new Set())).removed).toEqual([]);
  });

  it('a crashed unpack leaves only a temp dir, which is not a layer and is swept when stale', async () => {
    const half = join(work, 'state', 'tmp', 'layer-1-dead');
    mkdirSync(join(half, 'usr'), { recursive: true });
    writeFileSync(join(half, 'usr', 'half'), 'x');
    expect(await store.state.list()).toEqual([]);
    const old = Date.now() / 1000 - 2 * 3600;
    utimesSync(half, old, old);
    await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state') });
    expect(existsSync(half)).toBe(false);
  });
});
