/**
 * The images alone, without the sandbox: each base image and an imported OCI image with whiteouts mounted
 * as a plain read-only overlay (mount(2) through mount(8)) in a private mount namespace (`unshare -m`) and
 * entered with chroot as uid 65534. This pins the store's side (layer order, whiteouts, mount points,
 * libraries) independently of services/sandbox; images.test.ts runs the same images in real sandboxes.
 * The namespace dies with its process, so no mount can outlive a test; the test checks that too.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openImageStore, type FsImageStore, type ResolvedImage } from '../../services/store/index.ts';

const notRoot = process.getuid?.() !== 0 ? 'needs root: mount namespaces and overlay mounts' : false;
const FIXTURE_SCRIPT = join(import.meta.dirname, '../fixtures/oci/make-umoci-layout.sh');

let work: string;
let store: FsImageStore;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-images-ovl-'));
  store = await openImageStore({ stateDir: join(work, 'state'), gcGraceMs: 0 });
});
afterAll(() => rmSync(work, { recursive: true, force: true }));
afterEach(() => {
  expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(work);
});

/** mounts `img` read-only at a fresh dir in a private mount namespace and runs argv there as 65534. */
function runChrooted(img: ResolvedImage, argv: string[]): { code: number | null; stdout: string; stderr: string } {
  const mnt = mkdtempSync(join(work, 'mnt-'));
  const lower = [...img.layers].reverse().join(':');
  const script = 'mount -t overlay -o "ro,lowerdir=$1" overlay "$2" && shift 2 && exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp /usr/sbin/chroot --userspec=65534:65534 "$MNT" "$@"';
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', lower, mnt, ...argv],
    { encoding: 'utf8', env: { ...process.env, MNT: mnt }, timeout: 20_000 });
  rmSync(mnt, { recursive: true, force: true });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(notRoot)('base images as plain overlays', () => {
  it('busybox runs sh', async () => {
    expect(runChrooted(await store.resolve('busybox'), ['sh', '-c', 'echo ok'])).toMatchObject({ code: 0, stdout: 'ok\n' });
  });

  it('node runs node and prints the recorded version', async () => {
    const img = await store.resolve('node');
    expect(runChrooted(img, ['node', '-e', 'console.log(process.version)'])).toMatchObject({ code: 0, stdout: `v${img.config.env.NODE_VERSION}\n` });
  });

  it('python runs python3 with its compiled stdlib', async () => {
    const r = runChrooted(await store.resolve('python'), ['python3', '-c', 'import json, ssl, sqlite3, decimal; print(1)']);
    expect(r).toMatchObject({ code: 0, stdout: '1\n', stderr: '' });
  });

  it('the mounted image is read-only', async () => {
    const r = runChrooted(await store.resolve('busybox'), ['sh', '-c', 'touch /x 2>&1; true']);
    expect(r.stdout).toMatch(/Read-only file system/);
  });
});

describe.skipIf(notRoot)('an imported OCI image with whiteouts as a plain overlay', () => {
  it('shows exactly what umoci unpacks', async () => {
    const fx = join(work, 'umoci');
    mkdirSync(fx);
    execFileSync('bash', [FIXTURE_SCRIPT, fx], { stdio: ['ignore', 'ignore', 'inherit'] });
    const img = await store.importImage('t1', 'umoci', join(fx, 'layout'));
    const expected = readFileSync(join(fx, 'expected.txt'), 'utf8').split('\n').filter(Boolean).map((p) => p.slice(1));
    const r = runChrooted(img, ['/bin/busybox', 'find', '/']);
    expect(r.code).toBe(0);
    const tree = r.stdout.split('\n').filter((l) => l && l !== '/').sort();
    expect(tree).toEqual([...expected, '/dev', '/proc', '/sys', '/tmp', '/var', '/var/task'].sort());
  });
});
