/**
 * Images in real sandboxes: each base image mounted as the read-only overlay rootfs of a sandbox
 * (services/sandbox) runs its runtime; an OCI image made by umoci with deletions in upper layers shows
 * exactly the tree umoci itself unpacks (whiteouts applied by overlayfs); an opaque directory hides the
 * layers below it; a code layer appears read-only at /var/task. After each test nothing of ours is left
 * (processes, cgroups, mounts).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanupLeftovers, createSandbox, sandboxUnavailableReason, type Sandbox, type StartSpec } from '../../services/sandbox/index.ts';
import { BASE_IMAGE_NAMES, buildBaseImages, openImageStore, type FsImageStore, type ResolvedImage } from '../../services/store/index.ts';
import { collect, type Collected } from '../helpers/sandbox.ts';
import { assertNoLeaks } from '../helpers/leaks.ts';
import { makeTar, writeOciLayout } from '../fixtures/oci/tars.ts';

const reason = sandboxUnavailableReason();
const nodeId = `test-images-${process.pid}`;
const FIXTURE_SCRIPT = join(import.meta.dirname, '../fixtures/oci/make-umoci-layout.sh');

let work: string;
let store: FsImageStore;
const made: Sandbox[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-images-k-'));
  // base images from the real base store (infra/build-images.sh); imports and code into a temp state dir
  store = await openImageStore({ stateDir: join(work, 'state'), gcGraceMs: 0 });
});
afterAll(async () => {
  rmSync(work, { recursive: true, force: true });
  // the node's own cgroup dir (fnhost/<nodeId>) goes too: nothing of this file is left
  await cleanupLeftovers(nodeId);
});
afterEach(async () => {
  await Promise.all(made.splice(0).map((s) => s.destroy()));
  await assertNoLeaks(nodeId, { paths: [work, store.base.root] });
});

async function runIn(img: ResolvedImage, argv: string[], extra: Partial<StartSpec> = {}): Promise<Collected> {
  const sb = await createSandbox({ nodeId });
  made.push(sb);
  const p = await sb.start({ layers: img.layers, argv, env: img.config.env, cwd: '/', ...extra });
  p.stdin.end();
  const out = await collect(p);
  await sb.destroy();
  return out;
}

describe('base image build', () => {
  it('is a cached no-op once built, and every image has the sandbox\'s mount points and user', async () => {
    const lines: string[] = [];
    const built = await buildBaseImages({ baseDir: store.base.root, progress: (l) => lines.push(l) });
    expect(built.map((b) => [b.name, b.cached])).toEqual(BASE_IMAGE_NAMES.map((n) => [n, true]));
    expect(lines.filter((l) => l.startsWith('building'))).toEqual([]);
    expect(built.find((b) => b.name === 'node')!.sizeBytes).toBeLessThan(150e6);
    for (const b of built) {
      const img = await store.resolve(b.name);
      expect(img.digest).toBe(b.digest);
      const top = img.layers.at(-1)!;
      for (const d of ['proc', 'dev', 'sys', 'tmp', 'var/task']) expect(statSync(join(top, d)).isDirectory(), `${b.name} /${d}`).toBe(true);
      expect(statSync(join(top, 'tmp')).mode & 0o7777).toBe(0o1777);
      expect(readFileSync(join(top, 'etc/passwd'), 'utf8')).toContain('nobody:x:65534:65534:');
    }
  });
});

describe.skipIf(reason)('base images in a sandbox', () => {
  it('busybox: sh -c "echo ok"', async () => {
    const r = await runIn(await store.resolve('busybox'), ['sh', '-c', 'echo ok']);
    expect(r.stdout).toBe('ok\n');
    expect(r.status.code).toBe(0);
  });

  it('node: node -e "console.log(process.version)" prints the recorded LTS version', async () => {
    const img = await store.resolve('node');
    const r = await runIn(img, ['node', '-e', 'console.log(process.version)']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`v${img.config.env.NODE_VERSION}\n`);
    expect(img.config.env.NODE_VERSION).toMatch(/^(22|24)\./);
  });

  it('python: python3 -c "print(1)", with the stdlib modules a function expects', async () => {
    const r = await runIn(await store.resolve('python'), ['python3', '-c', 'import json, ssl, sqlite3, hashlib, zlib, ctypes, decimal, uuid; print(1)']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('1\n');
  });

  it('the rootfs is read-only, /tmp is writable, and the user is nobody', async () => {
    const r = await runIn(await store.resolve('busybox'), ['sh', '-c', 'touch /x 2>&1; touch /tmp/y && echo tmp-ok; id -un; grep -c nobody /etc/passwd']);
    expect(r.stdout).toMatch(/Read-only file system/);
    expect(r.stdout).toContain('tmp-ok\nnobody\n1\n');
  });

  it('a code layer appears read-only at /var/task', async () => {
    const src = join(work, 'code');
    mkdirSync(src, { recursive: true });
    writeFileSync(join(src, 'index.js'), 'console.log("from task", require("fs").readdirSync("/var/task").join(","));\n');
    const code = await store.addBundle(execFileSync('tar', ['-C', src, '-czf', '-', '.']));
    const r = await runIn(await store.resolve('node'), ['sh', '-c', 'node /var/task/index.js && touch /var/task/x 2>&1'],
      { mounts: [{ target: '/var/task', layers: [code.dir] }] });
    expect(r.stdout).toContain('from task index.js\n');
    expect(r.stdout).toMatch(/Read-only file system/);
  });
});

/** every path of the rootfs, without the sandbox's own mounts' contents. */
async function treeOf(img: ResolvedImage): Promise<string[]> {
  const r = await runIn(img, ['/bin/busybox', 'find', '/', '-xdev']);
  expect(r.status.code).toBe(0);
  return r.stdout.split('\n').filter((l) => l && l !== '/').sort();
}

describe.skipIf(reason)('OCI images with whiteouts', () => {
  it('a 3-layer umoci image with deletions shows what umoci unpacks (what docker run shows)', async () => {
    const fx = join(work, 'umoci');
    execFileSync('bash', [FIXTURE_SCRIPT, fx], { stdio: ['ignore', 'ignore', 'inherit'] });
    const img = await store.importImage('t1', 'umoci', join(fx, 'layout'));
    const expected = readFileSync(join(fx, 'expected.txt'), 'utf8').split('\n').filter(Boolean).map((p) => p.slice(1));
    // the list umoci produced, as a literal, so a change in umoci cannot silently change the test
    expect(expected).toEqual(['/a', '/a/three', '/a/two', '/b', '/b/new', '/bin', '/bin/busybox', '/bin/sh', '/keep', '/link']);
    const mountPoints = ['/dev', '/proc', '/sys', '/tmp', '/var', '/var/task'];
    expect(await treeOf(img)).toEqual([...expected, ...mountPoints].sort());
    const r = await runIn(img, ['/bin/sh', '-c', 'cat /b/new /link; stat -c %a /keep']);
    expect(r.stdout).toBe('newer\nthree\n600\n');
  });

  it('an opaque directory hides everything below it; a whiteout hides one name', async () => {
    const busybox = readFileSync('/bin/busybox');
    const dir = join(work, 'opaque');
    writeOciLayout(dir, [
      makeTar([{ path: 'bin/' }, { path: 'bin/busybox', data: busybox, mode: 0o755 }, { path: 'd/' }, { path: 'd/a', data: 'a' },
        { path: 'd/sub/' }, { path: 'd/sub/deep', data: 'x' }, { path: 'e/' }, { path: 'e/gone', data: 'g' }, { path: 'e/kept', data: 'k' }]),
      makeTar([{ path: 'd/' }, { path: 'd/.wh..wh..opq' }, { path: 'd/c', data: 'c' }, { path: 'e/.wh.gone' }]),
    ]);
    const img = await store.importImage('t1', 'opaque', dir);
    const tree = (await treeOf(img)).filter((p) => /^\/[de](\/|$)/.test(p));
    expect(tree).toEqual(['/d', '/d/c', '/e', '/e/kept']);
  });
});
