/**
 * FsImageStore.resolveLeased (services/store/image-store.ts): a sandbox start's lookup and lease in the order the
 * store's removal rule needs. An image deleted and gc'd between the lookup and the lease gives a clean NotFound
 * (resolve() then lease() gave an image whose layers were gone: a failing mount); a lease taken keeps the layers
 * through a delete + gc; a layer briefly out of the tree (a remover between detach and restore) is waited for.
 * Real store in a temp dir, real imports of OCI layouts; the interleaving is forced by holding resolve().
 */
import { existsSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImageStore, type FsImageStore } from '../../services/store/index.ts';
import { makeTar, writeOciLayout } from '../fixtures/oci/tars.ts';

/** unpacking keeps owners (chown): root only. */
const notRoot = process.getuid?.() !== 0 ? 'needs root: unpacking chowns' : false;

let work: string;
let store: FsImageStore;
let seq = 0;

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-resolve-leased-'));
  store = await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state'), gcGraceMs: 0 });
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

async function importImage(name: string): Promise<string[]> {
  const dir = join(work, `layout-${++seq}`);
  writeOciLayout(dir, [makeTar([{ path: 'a', data: `${name} one ${seq}` }]), makeTar([{ path: 'b', data: `${name} two ${seq}` }])]);
  const img = await store.importImage('acme', name, dir);
  rmSync(dir, { recursive: true, force: true });
  return img.layers;
}

const leaseFiles = () => readdirSync(join(work, 'state', 'leases'));

describe.skipIf(notRoot)('resolveLeased', () => {
  it('an image deleted and gc\'d between the lookup and the lease: NotFound, nothing leased', async () => {
    const layers = await importImage('gone');
    const resolve = store.resolve.bind(store);
    let held = false;
    store.resolve = async (ref, tenant) => {
      const img = await resolve(ref, tenant);
      if (!held) {
        held = true;
        // between this start's lookup and its lease: the image is deleted and gc runs
        await store.deleteImage('acme', 'gone');
        const { removed } = await store.gc(new Set());
        expect(removed.length).toBeGreaterThanOrEqual(layers.length);
      }
      return img;
    };
    await expect(store.resolveLeased('gone', 'acme')).rejects.toMatchObject({ type: 'NotFound' });
    for (const l of layers) expect(existsSync(l)).toBe(false);
    expect(leaseFiles()).toEqual([]);
  });

  it('leased first: a delete + gc leaves the layers until release, then removes them', async () => {
    const layers = await importImage('kept');
    const { image, release } = await store.resolveLeased('kept', 'acme');
    expect(image.layers).toEqual(layers);
    await store.deleteImage('acme', 'kept');
    expect((await store.gc(new Set())).removed).toEqual([]);
    for (const l of layers) expect(existsSync(l)).toBe(true);
    expect(leaseFiles()).toHaveLength(1);
    release();
    expect(leaseFiles()).toEqual([]);
    expect((await store.gc(new Set())).removed.length).toBeGreaterThanOrEqual(layers.length);
  });

  it('waits for a layer briefly out of the tree while the record still names it', async () => {
    const layers = await importImage('back');
    const dir = layers[0]!;
    renameSync(dir, `${dir}.away`);
    setTimeout(() => renameSync(`${dir}.away`, dir), 15);
    const { image, release } = await store.resolveLeased('back', 'acme');
    for (const l of image.layers) expect(existsSync(l)).toBe(true);
    release();
    expect(leaseFiles()).toEqual([]);
  });

  it('a name that is no image: NotFound at once, nothing leased', async () => {
    await expect(store.resolveLeased('nope', 'acme')).rejects.toMatchObject({ type: 'NotFound' });
    expect(leaseFiles()).toEqual([]);
  });
});
