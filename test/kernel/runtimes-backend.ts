/**
 * Where the runtime conformance suite (runtimes.test.ts) and the runtimes bench get sandboxes, images and
 * code layers from.
 *
 *   sandbox  real sandboxes (services/sandbox) on the real base images (services/store, built by
 *            infra/build-images.sh) — the default as soon as both are present;
 *   process  runtime/host/process-sandbox.ts: plain host child processes, host node + python3, no cgroup
 *            (used when the native sandbox or the base images are not there yet; OOM cases skip).
 *
 * FNHOST_RUNTIMES_BACKEND=process|sandbox forces one.
 */
import { chmodSync, cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Sandbox } from '../../services/sandbox/types.ts';
import type { CodeLayer, ResolvedImage } from '../../services/store/types.ts';
import { createProcessSandbox } from '../../runtime/host/process-sandbox.ts';
import { findLeftovers } from '../helpers/leaks.ts';

export const FIXTURES = resolve(fileURLToPath(new URL('../fixtures/functions', import.meta.url)));
const HONO_DIST = resolve(fileURLToPath(new URL('../../node_modules/hono/dist', import.meta.url)));

export type ImageName = 'node' | 'python' | 'busybox';

export interface Backend {
  name: 'sandbox' | 'process';
  /** true when memory caps are enforced by a real cgroup (OOM cases can run). */
  enforcesMemory: boolean;
  createSandbox(): Promise<Sandbox>;
  image(name: ImageName): Promise<ResolvedImage>;
  /** an image an "imported OCI image" exec function runs on (entrypoint + cmd set, no handler). */
  importedImage(): Promise<ResolvedImage | null>;
  /** this run's sandbox cgroups and processes still present (both empty after every test). */
  leftovers(): { cgroups: string[]; processes: number[] };
  /** removes what the backend made; `leftovers` = sandboxes of this run still found (should be 0). */
  close(): Promise<{ leftovers: number }>;
}

const hostImage = (ref: string, config: Partial<ResolvedImage['config']> = {}): ResolvedImage => ({
  ref,
  digest: `host:${ref}`,
  layers: [],
  config: { entrypoint: [], cmd: [], env: {}, workingDir: '/', ...config },
});

function processBackend(): Backend {
  return {
    name: 'process',
    enforcesMemory: false,
    createSandbox: async () => createProcessSandbox(),
    image: async (name) => hostImage(name),
    // The "image" is the host with an entrypoint that echoes stdin, as an imported image's own program would.
    importedImage: async () => hostImage('imported', { entrypoint: ['/bin/sh', '-c'], cmd: ['printf "image:"; cat'] }),
    leftovers: () => ({ cgroups: [], processes: [] }),
    close: async () => ({ leftovers: 0 }),
  };
}

/** The backend for this run (see the module header). */
export async function backend(): Promise<Backend> {
  const want = process.env.FNHOST_RUNTIMES_BACKEND;
  if (want === 'process') return processBackend();
  const real = await sandboxBackend().catch((e: Error) => {
    if (want === 'sandbox') throw e;
    process.stderr.write(`[runtimes] real sandbox backend unavailable (${e.message}); using host processes\n`);
    return null;
  });
  return real ?? processBackend();
}

async function sandboxBackend(): Promise<Backend> {
  const sandbox = await import('../../services/sandbox/index.ts');
  const reason = sandbox.sandboxUnavailableReason();
  if (reason) throw new Error(reason);
  sandbox.assertCanSandbox();
  const { openImageStore } = await import('../../services/store/index.ts');
  const stateDir = mkdtempSync(join(tmpdir(), 'fnhost-rt-state-'));
  const store = await openImageStore({ stateDir });
  const base = new Map<ImageName, ResolvedImage>();
  for (const n of ['node', 'python', 'busybox'] as const) base.set(n, await store.resolve(n));
  // A per-process node id keeps this run's cgroups apart from other test files and other helpers.
  const nodeId = `rt-test-${process.pid}`;
  let imported: ResolvedImage | null = null;
  return {
    name: 'sandbox',
    enforcesMemory: true,
    createSandbox: () => sandbox.createSandbox({ nodeId }),
    image: async (name) => base.get(name)!,
    importedImage: async () => {
      imported ??= await importTestImage(store, base.get('busybox')!, stateDir);
      return imported;
    },
    leftovers: () => {
      const { cgroups, processes } = findLeftovers(nodeId);
      return { cgroups, processes };
    },
    close: async () => {
      const live = sandbox.liveSandboxes().filter((s) => s.state !== 'destroyed').length;
      const { sandboxes } = await sandbox.cleanupLeftovers(nodeId);
      rmSync(stateDir, { recursive: true, force: true });
      return { leftovers: live + sandboxes };
    },
  };
}

/**
 * Builds an OCI image layout by hand (busybox's layer, entrypoint `/bin/sh -c`, cmd `printf "image:"; cat`)
 * and imports it through the store, as a tenant's `docker save` / OCI upload would be.
 */
async function importTestImage(
  store: { importImage(t: string, n: string, s: string): Promise<ResolvedImage> },
  busybox: ResolvedImage,
  scratch: string,
): Promise<ResolvedImage> {
  const { createHash } = await import('node:crypto');
  const { execFileSync } = await import('node:child_process');
  const { mkdirSync, readFileSync, renameSync } = await import('node:fs');
  const layout = join(scratch, 'oci-layout');
  const blobs = join(layout, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const put = (b: Buffer) => {
    const h = sha(b);
    writeFileSync(join(blobs, h), b);
    return { digest: `sha256:${h}`, size: b.length };
  };
  const tarPath = join(scratch, 'layer.tar');
  execFileSync('tar', ['--numeric-owner', '-C', busybox.layers[0]!, '-cf', tarPath, '.']);
  const layerBuf = readFileSync(tarPath);
  const layer = put(layerBuf);
  renameSync(tarPath, `${tarPath}.done`);
  const config = put(Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux',
    config: { Entrypoint: ['/bin/sh', '-c'], Cmd: ['printf "image:"; cat'], Env: ['PATH=/usr/local/bin:/usr/bin:/bin'], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
  })));
  const manifest = put(Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  })));
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
  }));
  const image = await store.importImage('rt-tenant', 'imported', layout);
  return { ...image, ref: 'imported' };
}

/** Temp code layers made by tests; removed by `removeCodeLayers()`. */
const made: string[] = [];

/**
 * A code layer holding fixture dir `name` (plus hono's dist at hono/ when `withHono`). Copied to a fresh
 * 0755 temp dir: the sandbox's unprivileged uid must be able to read it, and each test gets its own.
 */
export function codeLayer(name: string, opts: { withHono?: boolean } = {}): CodeLayer {
  const dir = mkdtempSync(join(tmpdir(), 'fnhost-rt-code-'));
  made.push(dir);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  if (opts.withHono) {
    cpSync(HONO_DIST, join(dir, 'hono'), {
      recursive: true,
      filter: (src) => !/[/\\](cjs|types)([/\\]|$)/.test(src.slice(HONO_DIST.length)),
    });
    // hono's dist is ESM in .js files; outside its package that takes a package.json saying so.
    writeFileSync(join(dir, 'hono', 'package.json'), '{"type":"module"}\n');
  }
  chmodSync(dir, 0o755);
  return { digest: `sha256:test-${name}`, dir, sizeBytes: 0 };
}

export function removeCodeLayers(): void {
  for (const d of made.splice(0)) if (existsSync(d)) rmSync(d, { recursive: true, force: true });
}
