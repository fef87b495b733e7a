/**
 * The image store's removals against concurrent users, on a real store in a temp directory: a failed import's
 * cleanup, gc and discardCode never take a layer from under another import (in flight or done), a foreign
 * process's lease, or a record; and a failed import still leaves nothing of its own behind.
 *
 * The interleavings are made exact, not timed: the state LayerStore's addTar is wrapped so that an import
 * stops, before a chosen layer, until the test lets it go (everything else — unpacking, renames, records,
 * lease files — is the real thing).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidRequest, NotFound, type FnhostError } from '../../services/common/errors.ts';
import { openImageStore, type FsImageStore } from '../../services/store/index.ts';
import type { LayerStore } from '../../services/store/layer-store.ts';
import { makeTar, sha256, writeOciLayout } from '../fixtures/oci/tars.ts';

/** unpacking keeps owners (chown): root only. */
const notRoot = process.getuid?.() !== 0 ? 'needs root: unpacking chowns' : false;

let work: string;
let store: FsImageStore;

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'fnhost-store-races-'));
  store = await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state'), gcGraceMs: 0 });
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

const SHARED = makeTar([{ path: 'shared/', type: 'dir' }, { path: 'shared/file', data: 'shared layer' }]);
const SHARED_ID = sha256(SHARED);
const OTHER = makeTar([{ path: 'other', data: 'B only' }]);
const OTHER_ID = sha256(OTHER);
const OWN = makeTar([{ path: 'own', data: 'A only' }]);
const OWN_ID = sha256(OWN);
const LAST = makeTar([{ path: 'last', data: 'refused' }]);
const LAST_ID = sha256(LAST);

/** an OCI layout of `tars`; with `refuseLast`, the last layer's blob does not match its descriptor. */
function layout(name: string, tars: Buffer[], refuseLast = false): string {
  const dir = join(work, name);
  writeOciLayout(dir, tars, {
    tamper: (i, blob) => (refuseLast && i === tars.length - 1 ? gzipSync(makeTar([{ path: 'last', data: 'EVIL' }])) : blob),
  });
  return dir;
}

function layerDirs(section: 'layers' | 'code' = 'layers'): string[] {
  return readdirSync(join(work, 'state', section)).filter((n) => !n.endsWith('.json')).sort();
}

const hexOf = (d: string) => d.slice(7);

async function refused(p: Promise<unknown>): Promise<FnhostError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, 'expected a refusal').toBeTruthy();
  return e as FnhostError;
}

const gates = new Map<string, { arrived: () => void; open: Promise<void> }>();

/**
 * Holds an import before it adds the layer with diff_id `diffId`: `reached` resolves when it gets there,
 * `go()` lets it continue.
 */
function gate(diffId: string): { reached: Promise<void>; go: () => void } {
  let arrived!: () => void;
  let go!: () => void;
  const reached = new Promise<void>((r) => (arrived = r));
  const open = new Promise<void>((r) => (go = r));
  gates.set(diffId, { arrived, open });
  return { reached, go };
}

function installGates(layers: LayerStore): void {
  const addTar = layers.addTar.bind(layers);
  layers.addTar = async (src, limits, expectDiffId, expectBlobDigest) => {
    const g = expectDiffId ? gates.get(expectDiffId) : undefined;
    if (g) {
      gates.delete(expectDiffId!);
      g.arrived();
      await g.open;
    }
    return addTar(src, limits, expectDiffId, expectBlobDigest);
  };
}

async function expectIntact(tenant: string, name: string): Promise<void> {
  const img = await store.resolve(name, tenant);
  for (const dir of img.layers) {
    expect(statSync(dir, { throwIfNoEntry: false })?.isDirectory(), `${name}: ${dir}`).toBe(true);
    expect(existsSync(`${dir}.json`), `${name}: ${dir}.json`).toBe(true);
  }
}

describe.skipIf(notRoot)('a failed import and a concurrent import sharing a new layer', () => {
  beforeEach(() => installGates(store.state));
  afterEach(() => gates.clear());

  it('keeps the layer for an import that found it and has not written its record yet', async () => {
    const a = layout('a', [SHARED, LAST], true);
    const b = layout('b', [SHARED, OTHER]);
    const aAtLast = gate(LAST_ID);
    const bAtOther = gate(OTHER_ID);

    const importA = store.importImage('t1', 'a', a);
    await aAtLast.reached; // A has written the shared layer (it was new)
    expect(layerDirs()).toEqual([hexOf(SHARED_ID)]);
    const importB = store.importImage('t2', 'b', b);
    await bAtOther.reached; // B found it in the store and moved on

    aAtLast.go();
    const e = await refused(importA);
    expect(e).toBeInstanceOf(InvalidRequest);
    expect(e.details.reason).toBe('digest-mismatch');
    expect(existsSync(join(work, 'state', 'layers', hexOf(SHARED_ID), 'shared', 'file'))).toBe(true);

    bAtOther.go();
    const img = await importB;
    expect(img.layerDigests!.slice(0, 2)).toEqual([SHARED_ID, OTHER_ID]);
    await expectIntact('t2', 'b');
    expect(readFileSync(join(img.layers[0]!, 'shared', 'file'), 'utf8')).toBe('shared layer');
    expect(await refused(store.resolve('a', 't1'))).toBeInstanceOf(NotFound);
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    expect(readdirSync(join(work, 'state', 'leases'))).toEqual([]);
  });

  it('keeps the layer for an import that has already finished with it', async () => {
    const a = layout('a', [SHARED, LAST], true);
    const b = layout('b', [SHARED, OTHER]);
    const aAtLast = gate(LAST_ID);

    const importA = store.importImage('t1', 'a', a);
    await aAtLast.reached;
    await store.importImage('t2', 'b', b); // reuses A's new layer and writes its record

    aAtLast.go();
    expect(await refused(importA)).toBeInstanceOf(InvalidRequest);
    await expectIntact('t2', 'b');
    expect(layerDirs()).toContain(hexOf(SHARED_ID));
  });

  it('still removes every layer it wrote when nobody else uses them, and none that were there before', async () => {
    await store.importImage('t1', 'before', layout('before', [SHARED]));
    const before = layerDirs(); // the shared layer + the mount-points layer
    const a = layout('a', [SHARED, OWN, LAST], true);
    expect(await refused(store.importImage('t1', 'a', a))).toBeInstanceOf(InvalidRequest);
    expect(layerDirs()).toEqual(before);
    expect(layerDirs()).not.toContain(hexOf(OWN_ID));
    expect(existsSync(join(work, 'state', 'layers', `${hexOf(OWN_ID)}.json`))).toBe(false);
    await expectIntact('t1', 'before');

    // and from an empty store: nothing at all (no layer, no metadata, no temp entry, no lease file)
    const fresh = join(work, 'fresh');
    const s2 = await openImageStore({ baseDir: join(fresh, 'base'), stateDir: join(fresh, 'state'), gcGraceMs: 0 });
    expect(await refused(s2.importImage('t1', 'a', a))).toBeInstanceOf(InvalidRequest);
    for (const d of ['layers', 'tmp', 'leases']) expect(readdirSync(join(fresh, 'state', d)), d).toEqual([]);
  });

  it('removes what it wrote when the import fails after its layers, at the record write', async () => {
    // the tenant's image directory is a file: writing the record fails after every layer is in
    writeFileSync(join(work, 'state', 'images', 't1'), 'not a directory');
    const e = await refused(store.importImage('t1', 'a', layout('a', [SHARED, OWN])));
    expect((e as unknown as NodeJS.ErrnoException).code).toMatch(/^(EEXIST|ENOTDIR)$/);
    expect(layerDirs()).toEqual([]);
    expect(readdirSync(join(work, 'state', 'leases'))).toEqual([]);
  });
});

describe.skipIf(notRoot)('gc against an import in flight', () => {
  beforeEach(() => installGates(store.state));
  afterEach(() => gates.clear());

  it('spares an unreferenced old layer that an import in flight has just found in the store', async () => {
    await store.importImage('t1', 'old', layout('old', [SHARED]));
    await store.deleteImage('t1', 'old'); // its layers: referenced by nothing now
    const old = Date.now() / 1000 - 3600;
    utimesSync(join(work, 'state', 'layers', hexOf(SHARED_ID)), old, old);

    const bAtOther = gate(OTHER_ID);
    const importB = store.importImage('t1', 'b', layout('b', [SHARED, OTHER]));
    await bAtOther.reached;
    const { removed } = await store.gc(new Set());
    expect(removed).not.toContain(SHARED_ID);
    expect(removed).toHaveLength(1); // the old image's mount-points layer: nobody had pinned it yet

    bAtOther.go();
    await importB;
    await expectIntact('t1', 'b');
    // once B's record is written, gc leaves the layer for that reason
    expect((await store.gc(new Set())).removed).toEqual([]);
  });
});

/** a live process that is not us (its lease files count), killed by the caller. */
function otherProcess() {
  return spawn('sleep', ['30'], { stdio: 'ignore' });
}

describe.skipIf(notRoot)('another process pins a layer while it is being removed', () => {
  beforeEach(() => installGates(store.state));
  afterEach(() => gates.clear());

  it('a failed import puts back its new layer when another process leased it meanwhile', async () => {
    const aAtLast = gate(LAST_ID);
    const importA = store.importImage('t1', 'a', layout('a', [SHARED, LAST], true));
    await aAtLast.reached;
    const other = otherProcess();
    try {
      // an import in another process found A's new layer (it leases before it looks)
      writeFileSync(join(work, 'state', 'leases', `${other.pid}-1.json`), JSON.stringify([hexOf(SHARED_ID)]));
      aAtLast.go();
      expect(await refused(importA)).toBeInstanceOf(InvalidRequest);
      expect(readFileSync(join(work, 'state', 'layers', hexOf(SHARED_ID), 'shared', 'file'), 'utf8')).toBe('shared layer');
      expect(existsSync(join(work, 'state', 'layers', `${hexOf(SHARED_ID)}.json`))).toBe(true);
      expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    } finally {
      other.kill('SIGKILL');
    }
  });

  it('gc puts back a layer another process leased after gc read the leases', async () => {
    await store.importImage('t1', 'old', layout('old', [SHARED]));
    await store.deleteImage('t1', 'old');
    const other = otherProcess();
    const list = store.state.list.bind(store.state);
    try {
      store.state.list = async (section) => {
        const r = await list(section);
        // gc has read the lease files and listed the layers: now another process's import pins one
        if (section === 'layers') writeFileSync(join(work, 'state', 'leases', `${other.pid}-1.json`), JSON.stringify([hexOf(SHARED_ID)]));
        return r;
      };
      const { removed } = await store.gc(new Set());
      expect(removed).not.toContain(SHARED_ID);
      expect(removed).toHaveLength(1); // the mount-points layer nobody pinned
      expect(existsSync(join(work, 'state', 'layers', hexOf(SHARED_ID), 'shared', 'file'))).toBe(true);
    } finally {
      other.kill('SIGKILL');
    }
  });
});

describe.skipIf(notRoot)('gc against a deploy that reuses a code layer', () => {
  it('spares a code layer a deploy reused after gc read its keep set (the grace period covers reuse)', async () => {
    const graceful = await openImageStore({ baseDir: join(work, 'base'), stateDir: join(work, 'state') });
    const src = join(work, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'index.js'), 'exports.handler = async () => 1;\n');
    const bundle = execFileSync('tar', ['-C', src, '-czf', '-', '.']);
    const code = await graceful.addBundle(bundle);
    const old = Date.now() / 1000 - 3600; // written an hour ago, its function since deleted: gc's to remove
    utimesSync(code.dir, old, old);
    const list = graceful.state.list.bind(graceful.state);
    graceful.state.list = async (section) => {
      const r = await list(section);
      // gc has its keep set and the layers' ages: now a deploy of the same bytes finds the layer and commits
      if (section === 'code') expect((await graceful.addBundle(bundle)).dir).toBe(code.dir);
      return r;
    };
    expect((await graceful.gc(new Set())).removed).toEqual([]);
    expect(await graceful.codeLayer(code.digest)).toEqual(code);
    graceful.state.list = list;
    // and without a reuse, the same old unreferenced layer goes
    utimesSync(code.dir, old, old);
    expect((await graceful.gc(new Set())).removed).toEqual([code.digest]);
  });

  it('with `keep` as a function, gc reads it again after detaching: a version committed meanwhile keeps its layer', async () => {
    const src = join(work, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'index.js'), 'exports.handler = async () => 2;\n');
    const code = await store.addBundle(execFileSync('tar', ['-C', src, '-czf', '-', '.']));
    // the first read: no version names it; by the second, a deploy has committed one (grace 0: only the re-read helps)
    const reads: number[] = [];
    const keep = async () => (reads.push(reads.length), new Set(reads.length > 1 ? [code.digest] : []));
    expect((await store.gc(keep)).removed).toEqual([]);
    expect(reads).toHaveLength(2);
    expect(await store.codeLayer(code.digest)).toEqual(code);
    // read twice, empty both times: it goes
    expect((await store.gc(async () => new Set())).removed).toEqual([code.digest]);
  });
});

describe.skipIf(notRoot)('removal re-checks other processes\' leases after taking the layer out', () => {
  it('discardCode puts back a code layer a live process leased, with its metadata and mtime', async () => {
    const src = join(work, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'index.js'), 'exports.handler = async () => 1;\n');
    const code = await store.addBundle(execFileSync('tar', ['-C', src, '-czf', '-', '.']));
    const old = Math.floor(Date.now() / 1000) - 3600;
    utimesSync(code.dir, old, old);
    const other = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      writeFileSync(join(work, 'state', 'leases', `${other.pid}-1.json`), JSON.stringify([hexOf(code.digest)]));
      expect(await store.discardCode(code.digest)).toBe(false);
      expect(await store.codeLayer(code.digest)).toEqual(code);
      expect(existsSync(`${code.dir}.json`)).toBe(true);
      expect(Math.floor(statSync(code.dir).mtimeMs / 1000)).toBe(old); // gc's grace period is not reset
      expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    } finally {
      other.kill('SIGKILL');
    }
  });

  it('a detached layer is out of the tree at once and restore() gives way to a writer that re-added it', async () => {
    const first = await store.importImage('t1', 'a', layout('a', [SHARED]));
    const dir = first.layers[0]!;
    const detached = store.state.detach(SHARED_ID)!;
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(`${dir}.json`)).toBe(false);
    expect(store.state.detach(SHARED_ID)).toBeNull();
    // a writer that looks now finds nothing and writes its own copy
    const again = await store.state.addTar(SHARED, { maxBytes: 1 << 20, maxEntries: 100 }, SHARED_ID);
    expect(again.existed).toBe(false);
    expect(await detached.restore()).toBe(false);
    expect(readFileSync(join(dir, 'shared', 'file'), 'utf8')).toBe('shared layer');
    expect(readdirSync(join(work, 'state', 'tmp'))).toEqual([]);
    // and back into an empty slot
    const d2 = store.state.detach(SHARED_ID)!;
    expect(await d2.restore()).toBe(true);
    await expectIntact('t1', 'a');
  });
});
