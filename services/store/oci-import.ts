/**
 * @module store/oci-import
 * Imports an image from (a) a `docker save` tarball or (b) an OCI image layout (directory, or tar of one;
 * the outer tar may itself be gzip/zstd compressed). Layers may be plain, gzip or zstd tars (detected
 * from their bytes, whatever the media type says).
 *
 * Every byte is checked against what names it before it is trusted: blobs against their descriptor
 * digest (OCI), each layer's uncompressed tar against the config's `rootfs.diff_ids`, the config against
 * the manifest. A mismatch is InvalidRequest `{reason: 'digest-mismatch'}`. Layers already in the store
 * (same diff_id) are not unpacked again, which is what makes a warm import cheap.
 *
 * The result's layers are the image's layers plus, on top, the mount-points layer (/proc /dev /sys /tmp
 * /var/task as empty dirs) the read-only sandbox rootfs needs. The image's own /etc is left as it is.
 *
 * Removing what a failed import wrote is the caller's (FsImageStore.importImage): it is told of every layer
 * this import created (`ImportHooks.created`) and pins every layer before the import looks for it
 * (`ImportHooks.pin`), which is what lets a concurrent import or gc share a layer safely.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidRequest } from '../common/errors.ts';
import { unpackTar } from './archive.ts';
import { mountPointsLayer } from './base-images.ts';
import { normalizeEntryPath } from './layer-writer.ts';
import type { LayerStore } from './layer-store.ts';
import type { ImageConfig } from './types.ts';

export interface ImportLimits {
  /** cap on the source archive's unpacked size and on the sum of the image's unpacked layers. */
  maxBytes: number;
  maxEntries: number;
}

export interface ImportedImage {
  digest: string;
  /** layer digests, bottom first (the mount-points layer last). */
  layers: string[];
  config: ImageConfig;
  sizeBytes: number;
  source: Record<string, unknown>;
}

/** What the caller learns while the import runs (see the module header). */
export interface ImportHooks {
  /** called with layers' digests BEFORE the store is looked at for them; the caller keeps them pinned. */
  pin(digests: string[]): void;
  /** called with each layer this import wrote (it was not in the store before). */
  created(digest: string): void;
}

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string };
  annotations?: Record<string, string>;
}

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);
/** manifests and configs are small JSON documents; 4 MiB is OCI distribution's own manifest size guidance. */
const MAX_JSON_BYTES = 4 * 1024 * 1024;

function bad(message: string, details: Record<string, unknown> = {}): InvalidRequest {
  return new InvalidRequest(`cannot import image: ${message}`, { reason: 'bad-image', ...details });
}

function checkDigest(d: unknown): string {
  if (typeof d !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d)) throw bad(`unsupported or malformed digest ${JSON.stringify(d)}`);
  return d;
}

/** a path inside the source dir named by the source itself: relative, no "..", not through a symlink. */
async function inside(root: string, rel: string): Promise<string> {
  const norm = normalizeEntryPath(rel, 'path');
  const parts = norm.split('/');
  for (let i = 1; i <= parts.length; i++) {
    const st = await fsp.lstat(join(root, ...parts.slice(0, i))).catch(() => null);
    if (!st) throw bad(`${rel} is missing`, { path: rel });
    if (st.isSymbolicLink()) throw bad(`${rel} goes through a symlink`, { path: rel });
  }
  return join(root, norm);
}

async function readJson<T>(path: string, expectDigest?: string): Promise<T> {
  const st = await fsp.stat(path).catch(() => null);
  if (!st?.isFile()) throw bad(`${expectDigest ?? path} is missing`);
  if (st.size > MAX_JSON_BYTES) throw bad(`${expectDigest ?? path} is too large for a manifest/config`);
  const buf = await fsp.readFile(path);
  if (expectDigest) {
    const got = `sha256:${createHash('sha256').update(buf).digest('hex')}`;
    if (got !== expectDigest) throw new InvalidRequest('blob digest does not match its descriptor', { reason: 'digest-mismatch', expected: expectDigest, actual: got });
  }
  try {
    return JSON.parse(buf.toString('utf8')) as T;
  } catch {
    throw bad(`${expectDigest ?? path} is not JSON`);
  }
}

interface OciConfig {
  config?: { Entrypoint?: string[] | null; Cmd?: string[] | null; Env?: string[] | null; WorkingDir?: string; User?: string };
  rootfs?: { type?: string; diff_ids?: string[] };
}

function toImageConfig(c: OciConfig): ImageConfig {
  const env: Record<string, string> = {};
  for (const kv of c.config?.Env ?? []) {
    const eq = kv.indexOf('=');
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const cfg: ImageConfig = {
    entrypoint: c.config?.Entrypoint ?? [],
    cmd: c.config?.Cmd ?? [],
    env,
    workingDir: c.config?.WorkingDir || '/',
  };
  if (c.config?.User) cfg.user = c.config.User;
  return cfg;
}

/**
 * Imports from a directory, a tar file path, or tar bytes.
 *
 * @example
 * const releases: Array<() => void> = [];
 * const created: string[] = [];
 * const img = await importOci(stateStore, '/tmp/alpine-oci', { maxBytes: 8 << 30, maxEntries: 1e6 },
 *   { pin: (ds) => releases.push(images.lease(ds)), created: (d) => created.push(d) });
 */
export async function importOci(store: LayerStore, source: Buffer | string, limits: ImportLimits, hooks: ImportHooks): Promise<ImportedImage> {
  let dir: string;
  let scratch: string | undefined;
  if (typeof source === 'string' && (await fsp.stat(source).catch(() => null))?.isDirectory()) {
    dir = source;
  } else {
    if (typeof source === 'string' && !(await fsp.stat(source).catch(() => null))?.isFile()) {
      throw new InvalidRequest(`image source ${source} is neither a directory nor a file`, { field: 'source' });
    }
    scratch = await store.tempDir('import');
    dir = scratch;
    // the outer archive goes through the same hostile-archive rules as a layer ('bundle' kind: no whiteouts)
    await unpackTar(typeof source === 'string' ? createReadStream(source) : source, scratch, 'bundle', limits);
  }
  try {
    const hasIndex = !!(await fsp.stat(join(dir, 'index.json')).catch(() => null));
    const hasDockerManifest = !!(await fsp.stat(join(dir, 'manifest.json')).catch(() => null));
    if (hasIndex) return await importLayout(store, dir, limits, hooks);
    if (hasDockerManifest) return await importDockerSave(store, dir, limits, hooks);
    throw bad('neither an OCI image layout (index.json) nor a docker save archive (manifest.json)');
  } finally {
    if (scratch) await fsp.rm(scratch, { recursive: true, force: true });
  }
}

/** a blob of the layout; never through a symlink (an archive could point one at a host file). */
function blobPath(dir: string, digest: string): Promise<string> {
  return inside(dir, `blobs/sha256/${checkDigest(digest).slice(7)}`);
}

async function importLayout(store: LayerStore, dir: string, limits: ImportLimits, hooks: ImportHooks): Promise<ImportedImage> {
  let desc: Descriptor | undefined;
  let doc = await readJson<{ manifests?: Descriptor[]; mediaType?: string }>(await inside(dir, 'index.json'));
  // descend through (nested) indexes to one image manifest for linux/amd64
  for (let depth = 0; depth < 4; depth++) {
    const ms = doc.manifests ?? [];
    const pick = ms.find((m) => !m.platform || (m.platform.os === 'linux' && m.platform.architecture === 'amd64'));
    if (!pick) throw bad('the index has no manifest for linux/amd64');
    desc = pick;
    if (!INDEX_TYPES.has(pick.mediaType ?? '')) break;
    doc = await readJson(await blobPath(dir, pick.digest), pick.digest);
  }
  if (!desc) throw bad('the index lists no manifests');
  const manifest = await readJson<{ config?: Descriptor; layers?: Descriptor[] }>(await blobPath(dir, desc.digest), desc.digest);
  if (!manifest.config || !Array.isArray(manifest.layers)) throw bad('the manifest has no config or no layers');
  const config = await readJson<OciConfig>(await blobPath(dir, manifest.config.digest), manifest.config.digest);
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== manifest.layers.length) {
    throw bad(`the manifest lists ${manifest.layers.length} layers but the config ${diffIds.length} diff_ids`);
  }
  const specs = [];
  for (let i = 0; i < manifest.layers.length; i++) {
    const l = manifest.layers[i]!;
    specs.push({ path: await blobPath(dir, l.digest), blobDigest: l.digest, diffId: checkDigest(diffIds[i]) });
  }
  const layers = await addLayers(store, limits, specs, hooks);
  return finish(store, hooks, desc.digest, layers, config, { format: 'oci-layout', manifest: desc.digest, ref: desc.annotations?.['org.opencontainers.image.ref.name'] });
}

async function importDockerSave(store: LayerStore, dir: string, limits: ImportLimits, hooks: ImportHooks): Promise<ImportedImage> {
  const list = await readJson<Array<{ Config?: string; Layers?: string[]; RepoTags?: string[] }>>(await inside(dir, 'manifest.json'));
  const m = Array.isArray(list) ? list[0] : undefined;
  if (!m?.Config || !Array.isArray(m.Layers)) throw bad('manifest.json has no Config/Layers');
  // docker names the config after its digest (<hex>.json, or blobs/sha256/<hex> since docker 25)
  const hex = /([0-9a-f]{64})(\.json)?$/.exec(m.Config)?.[1];
  const configDigest = hex ? `sha256:${hex}` : undefined;
  const configPath = await inside(dir, m.Config);
  const config = await readJson<OciConfig>(configPath, configDigest);
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== m.Layers.length) throw bad(`manifest.json lists ${m.Layers.length} layers but the config ${diffIds.length} diff_ids`);
  const specs = [];
  for (let i = 0; i < m.Layers.length; i++) {
    const blobHex = /blobs\/sha256\/([0-9a-f]{64})$/.exec(m.Layers[i]!)?.[1];
    specs.push({ path: await inside(dir, m.Layers[i]!), blobDigest: blobHex ? `sha256:${blobHex}` : undefined, diffId: checkDigest(diffIds[i]) });
  }
  const layers = await addLayers(store, limits, specs, hooks);
  const digest = configDigest ?? `sha256:${createHash('sha256').update(await fsp.readFile(configPath)).digest('hex')}`;
  return finish(store, hooks, digest, layers, config, { format: 'docker-save', repoTags: m.RepoTags ?? [] });
}

/**
 * Adds the layers bottom first, reporting the ones it wrote. All are pinned at once before the first is looked
 * for: one lease file per import rather than one per layer (≈0.2 ms each to create and remove here).
 */
async function addLayers(store: LayerStore, limits: ImportLimits, specs: Array<{ path: string; blobDigest?: string; diffId: string }>, hooks: ImportHooks) {
  const out: Array<{ digest: string; sizeBytes: number }> = [];
  let used = 0;
  hooks.pin(specs.map((s) => s.diffId));
  for (const s of specs) {
    const st = await fsp.stat(s.path).catch(() => null);
    if (!st?.isFile()) throw bad(`layer ${s.blobDigest ?? s.path} is missing`);
    const added = await store.addTar(createReadStream(s.path, { highWaterMark: 1 << 20 }),
      { maxBytes: limits.maxBytes - used, maxEntries: limits.maxEntries }, s.diffId, s.blobDigest);
    if (!added.existed) hooks.created(added.digest);
    used += added.sizeBytes;
    out.push({ digest: added.digest, sizeBytes: added.sizeBytes });
  }
  return out;
}

async function finish(store: LayerStore, hooks: ImportHooks, digest: string, layers: Array<{ digest: string; sizeBytes: number }>, config: OciConfig, source: Record<string, unknown>): Promise<ImportedImage> {
  const top = await mountPointsLayer(store, hooks);
  return {
    digest,
    layers: [...layers.map((l) => l.digest), top],
    config: toImageConfig(config),
    sizeBytes: layers.reduce((a, l) => a + l.sizeBytes, 0),
    source,
  };
}
