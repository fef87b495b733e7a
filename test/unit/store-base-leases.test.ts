/**
 * gc of the base store (gcBaseStore) against its users, on real stores in a temp directory: a base build in
 * progress leases its layers (services/store/base-images.ts buildWith) until its image records are written, and a
 * sandbox lease taken through ANOTHER state dir sharing the base store is seen (a lease of base layers is written
 * to the base store's lease directory too, services/store/leases.ts). gc still removes what nobody wants.
 *
 * The build runs the real build steps (layer store, cache files, records) with tiny recipes; one recipe's build
 * stops until the test lets it go, so the gc runs exactly between "layer A is in the store" and "records written".
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImageStore, type FsImageStore } from '../../services/store/index.ts';
import { buildWith, type ImageSpecs, type LayerRecipe } from '../../services/store/base-images.ts';
import { LayerStore } from '../../services/store/layer-store.ts';
import { tarGz } from '../../services/cli/pack.ts';

/** layers are unpacked and chowned: root only. */
const notRoot = process.getuid?.() !== 0 ? 'needs root: layer trees are chowned' : false;

let work: string;
let baseDir: string;
let store: FsImageStore;

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-base-leases-'));
  baseDir = join(work, 'base');
  store = await openImageStore({ baseDir, stateDir: join(work, 'state'), gcGraceMs: 0, gcBaseStore: true });
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

const config = { entrypoint: [], cmd: ['/bin/sh'], env: {}, workingDir: '/' };

function recipe(name: string, content: string, hold?: { reached(): void; go: Promise<void> }): LayerRecipe {
  return {
    name,
    key: async () => ({ key: `${name}-${content}`, inputs: {} }),
    async build(staging) {
      writeFileSync(join(staging, `${name}.txt`), content);
      if (hold) {
        hold.reached();
        await hold.go;
      }
    },
  };
}

function specsOf(layers: string[]): ImageSpecs {
  return { busybox: { layers, config }, node: { layers, config }, python: { layers, config } };
}

/** a base layer no record names (left by an earlier build) */
async function strayBaseLayer(content: string): Promise<string> {
  const base = new LayerStore(baseDir);
  await base.init();
  const staging = await base.tempDir('stray');
  writeFileSync(join(staging, 'stray.txt'), content);
  return (await base.addDir(staging)).digest;
}

const baseHas = (digest: string) => existsSync(new LayerStore(baseDir).dir(digest));

describe.skipIf(notRoot)('gc of the base store', () => {
  it('spares the layers of a base build in progress (built or found cached), then removes what the new records do not name', async () => {
    // a first build leaves layer A cached (and records naming A, B1)
    await buildWith(baseDir, () => {}, false, [recipe('a', 'A'), recipe('b', 'B1')], specsOf(['a', 'b']));
    const first = await store.resolve('busybox');
    const [aDigest, b1Digest] = first.layerDigests!;
    // the next build: A cached, B rebuilt with new content; it stops inside B's build
    let reached!: () => void;
    const atB = new Promise<void>((r) => (reached = r));
    let go!: () => void;
    const hold = { reached, go: new Promise<void>((r) => (go = r)) };
    // the first build's records are replaced by an image that no longer names A (as a recipe change would do)
    rmSync(join(baseDir, 'images'), { recursive: true, force: true });
    const building = buildWith(baseDir, () => {}, false, [recipe('a', 'A'), recipe('b', 'B2', hold)], specsOf(['a', 'b']));
    await atB;
    // A is named by no record now, and older than the grace (0): only the build's lease keeps it
    expect(readdirSync(join(baseDir, 'leases')).filter((f) => f.endsWith('.json'))).toHaveLength(1);
    const { removed } = await store.gc(new Set());
    expect(removed).not.toContain(aDigest);
    expect(baseHas(aDigest!)).toBe(true);
    // B1 was named by the removed records only and nobody leases it: gc still removes what nobody wants
    expect(removed).toContain(b1Digest);
    go();
    const built = await building;
    const img = await store.resolve('busybox');
    expect(img.layerDigests![0]).toBe(aDigest);
    for (const d of img.layerDigests!) expect(baseHas(d)).toBe(true);
    expect(built.map((b) => b.layers)).toEqual([img.layerDigests, img.layerDigests, img.layerDigests]);
    // the build's leases are gone with it
    expect(readdirSync(join(baseDir, 'leases')).filter((f) => !f.startsWith('.'))).toEqual([]);
    // and gc keeps what the records name
    expect((await store.gc(new Set())).removed).toEqual([]);
  });

  it('sees a sandbox lease of a base layer taken through another state dir sharing the base store', async () => {
    const other = await openImageStore({ baseDir, stateDir: join(work, 'state2'), gcGraceMs: 0 });
    const stray = await strayBaseLayer(`in use ${Math.random()}`);
    // a sandbox of the other state dir runs on it (an older base image's layer, still mounted)
    const release = other.lease([new LayerStore(baseDir).dir(stray)]);
    expect((await store.gc(new Set())).removed).not.toContain(stray);
    expect(baseHas(stray)).toBe(true);
    release();
    expect((await store.gc(new Set())).removed).toContain(stray);
    expect(baseHas(stray)).toBe(false);
  });

  it('a lease of base layers is written to the base store too (and goes with its release); of state layers only, it is not', async () => {
    const stray = await strayBaseLayer(`leased ${Math.random()}`);
    const baseLeases = () => readdirSync(join(baseDir, 'leases')).filter((f) => f.endsWith('.json'));
    const code = await store.addBundle(tarGz({ 'index.js': 'x' }));
    const releaseState = store.lease([code.dir]);
    expect(existsSync(join(baseDir, 'leases')) ? baseLeases() : []).toEqual([]);
    const releaseBase = store.lease([new LayerStore(baseDir).dir(stray), code.dir]);
    expect(baseLeases()).toHaveLength(1);
    expect(JSON.parse(readFileSync(join(baseDir, 'leases', baseLeases()[0]!), 'utf8'))).toEqual([stray.slice(7)]);
    releaseBase();
    releaseState();
    expect(baseLeases()).toEqual([]);
  });
});
