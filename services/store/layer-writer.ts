/**
 * @module store/layer-writer
 * Writes archive entries into a fresh layer directory, one entry at a time, enforcing the hostile-archive
 * rules. Every refusal is an `InvalidRequest` whose `details.reason` names the rule; the caller removes
 * the half-written directory, so a refused archive leaves nothing behind.
 *
 * Rules (issue 3), and why:
 * - `absolute-path`, `path-traversal`: an entry names a path outside the layer.
 * - `write-through-symlink`: an entry's parent path goes through a symlink. A symlink may point anywhere
 *   (absolute targets are normal in images and resolve inside the rootfs at run time), but we never write
 *   *through* one, because on the host it would resolve against the host's root. Parents are checked with
 *   lstat, and regular files are opened O_EXCL|O_NOFOLLOW after removing whatever was there, so an earlier
 *   symlink or hardlink at the same path is replaced, never written through.
 * - `hardlink-outside`: a hardlink's target must be a non-directory entry already in this layer.
 * - `device-node`, `fifo`: device nodes would give the sandbox a door to host devices; refused. (The only
 *   char devices we create ourselves are overlayfs whiteouts, from OCI `.wh.` entries.)
 * - setuid/setgid bits are STRIPPED, not refused: real images (debian's su, passwd, mount) carry them, and
 *   inside the sandbox they could never work anyway (no_new_privs), so refusing would only break imports.
 *   The count is reported (`strippedSetid`). File capability xattrs (pax SCHILY.xattr.*) are not applied.
 * - size caps (`maxBytes` on the uncompressed stream, `maxEntries`): a decompression bomb stops with
 *   PayloadTooLarge as soon as the cap is crossed, before the disk fills.
 *
 * Whiteouts (`.wh.<name>`, `.wh..wh..opq`) are converted to overlayfs's own form when the layer is sealed:
 * a 0:0 character device for a removed name, `trusted.overlay.opaque=y` on an opaque directory. Layers then
 * stack as plain overlayfs lower dirs and stay shareable between images (the alternative, flattening each
 * image into one tree, copies every shared layer per image). Node has no mknod/setxattr, so one python3
 * process applies all of a layer's whiteouts. python3 stays on purpose (measured 2026-11-30, this VM): its
 * start costs ≈30 ms per imported layer that has whiteouts (median; 1 op 32 ms, 500 ops 294 ms, of which
 * mknod on ext4 itself is ≈0.23 ms a node, the same from any tool), on an import that unpacks for hundreds of
 * ms; infra/setup.sh installs python3 explicitly (most Debian installs have it anyway). Each way around it
 * is more work and more code than ≈30 ms per such import is worth: mknod + lsetxattr in the native addon (a
 * new addon surface in its .d.ts, a native rebuild), Debian's mknod(1) + setfattr(1) (a process per whiteout,
 * one more package, `attr`; busybox has no setfattr), or a helper binary built by infra/build-native.sh. Without python3 an import
 * of a layer with whiteouts fails with `Internal` {reason: 'python3-missing'} as soon as its first whiteout
 * entry is read (the rest is not unpacked); layers without whiteouts (and bundles) never need it.
 *
 * The per-entry filesystem calls are synchronous on purpose: each is a few microseconds, while the
 * async versions cost a thread-pool round trip each; measured on the python layer (1,241 entries,
 * 45 MB, tmpfs): 700 ms with fs/promises against GNU tar's 76 ms.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { InvalidRequest, Internal } from '../common/errors.ts';
import type { TarEntry } from './tar.ts';

export interface LayerWriterOptions {
  /** 'image': keep owners/modes (minus setuid/setgid), turn whiteouts into overlayfs whiteouts.
   *  'bundle': owner 0:0, modes normalised to 0644/0755 so the sandbox's uid can read everything; no whiteouts. */
  kind: 'image' | 'bundle';
  /** cap on the number of entries (an inode bomb is a bomb too). */
  maxEntries: number;
}

export interface LayerStats {
  entries: number;
  /** sum of regular file sizes. */
  sizeBytes: number;
  whiteouts: number;
  strippedSetid: number;
}

/** Path length cap: Linux's PATH_MAX (4096, linux/limits.h). */
const PATH_MAX = 4096;

function refuse(reason: string, message: string, path: string, extra: Record<string, unknown> = {}): InvalidRequest {
  return new InvalidRequest(`refused archive entry ${JSON.stringify(path)}: ${message}`, { reason, path, ...extra });
}

/**
 * The normalised relative path of an archive entry ("" for the archive's root), or a refusal.
 * `./a//b/` → `a/b`; `/a`, `a/../b` are refused.
 */
export function normalizeEntryPath(raw: string, what = 'path'): string {
  if (raw.includes('\0')) throw refuse('bad-path', `${what} contains NUL`, raw);
  if (Buffer.byteLength(raw) > PATH_MAX) throw refuse('bad-path', `${what} is longer than PATH_MAX`, raw.slice(0, 200));
  if (raw.startsWith('/')) throw refuse('absolute-path', `${what} is absolute`, raw);
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw refuse('path-traversal', `${what} contains ".."`, raw);
  return parts.join('/');
}

export class LayerWriter {
  readonly stats: LayerStats = { entries: 0, sizeBytes: 0, whiteouts: 0, strippedSetid: 0 };
  /** relative paths known to be real directories we made or checked (never symlinks). */
  private readonly safeDirs = new Set<string>(['']);
  private readonly whiteoutOps: Array<{ op: 'whiteout' | 'opaque'; path: string }> = [];

  constructor(readonly root: string, private readonly opts: LayerWriterOptions) {}

  /** writes one entry; `body` yields a regular file's bytes. */
  async apply(e: TarEntry, body: AsyncIterable<Buffer>): Promise<void> {
    if (++this.stats.entries > this.opts.maxEntries) {
      throw new InvalidRequest(`archive has more than ${this.opts.maxEntries} entries`, { reason: 'too-many-entries', limit: this.opts.maxEntries });
    }
    const rel = normalizeEntryPath(e.path);
    if (rel === '') return; // the archive's "./": the layer root's own mode/owner are ours
    const slash = rel.lastIndexOf('/');
    const parent = slash < 0 ? '' : rel.slice(0, slash);
    const base = slash < 0 ? rel : rel.slice(slash + 1);

    if (this.opts.kind === 'image' && base.startsWith('.wh.')) {
      if (this.whiteoutOps.length === 0) checkWhiteoutHelper();
      await this.ensureDir(parent, rel);
      if (base === '.wh..wh..opq') {
        this.whiteoutOps.push({ op: 'opaque', path: parent });
      } else {
        const name = base.slice(4);
        if (name === '' || name === '.' || name === '..' || name.startsWith('.wh.')) throw refuse('bad-whiteout', 'invalid whiteout name', e.path);
        this.whiteoutOps.push({ op: 'whiteout', path: parent ? `${parent}/${name}` : name });
      }
      this.stats.whiteouts++;
      return;
    }

    let mode = e.mode;
    if (mode & 0o6000) {
      this.stats.strippedSetid++;
      mode &= ~0o6000;
    }
    let uid = e.uid;
    let gid = e.gid;
    if (this.opts.kind === 'bundle') {
      uid = 0;
      gid = 0;
      mode = e.type === 'dir' || mode & 0o111 ? 0o755 : 0o644;
    }
    const abs = join(this.root, rel);
    switch (e.type) {
      case 'dir': {
        await this.ensureDir(parent, rel);
        const st = lstatOrNull(abs);
        if (st && !st.isDirectory()) await this.remove(rel);
        if (!st || !st.isDirectory()) fs.mkdirSync(abs, { mode: 0o755 });
        this.safeDirs.add(rel);
        fs.lchownSync(abs, uid, gid);
        fs.chmodSync(abs, mode);
        return;
      }
      case 'file': {
        await this.ensureDir(parent, rel);
        await this.remove(rel);
        const C = fs.constants;
        const fd = fs.openSync(abs, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
        try {
          for await (const chunk of body) {
            this.stats.sizeBytes += chunk.length;
            for (let off = 0; off < chunk.length;) off += fs.writeSync(fd, chunk, off);
          }
          fs.fchownSync(fd, uid, gid);
          fs.fchmodSync(fd, mode);
          if (e.mtime > 0) fs.futimesSync(fd, e.mtime, e.mtime);
        } finally {
          fs.closeSync(fd);
        }
        return;
      }
      case 'symlink': {
        if (e.linkname === '' || e.linkname.includes('\0')) throw refuse('bad-symlink', 'empty symlink target', e.path);
        await this.ensureDir(parent, rel);
        await this.remove(rel);
        fs.symlinkSync(e.linkname, abs);
        fs.lchownSync(abs, uid, gid);
        return;
      }
      case 'hardlink': {
        let target: string;
        try {
          target = normalizeEntryPath(e.linkname, 'hardlink target');
        } catch (err) {
          throw refuse('hardlink-outside', `hardlink target ${JSON.stringify(e.linkname)} is outside the layer`, e.path, { cause: (err as InvalidRequest).details.reason });
        }
        if (target === '' || target === rel || target.startsWith(`${rel}/`)) throw refuse('hardlink-outside', 'hardlink to the layer root, to itself or below itself', e.path);
        await this.checkInside(target, e.path);
        const tst = lstatOrNull(join(this.root, target));
        if (!tst) throw refuse('hardlink-outside', `hardlink target ${JSON.stringify(e.linkname)} is not an earlier entry of this layer`, e.path);
        if (tst.isDirectory()) throw refuse('hardlink-outside', 'hardlink to a directory', e.path);
        await this.ensureDir(parent, rel);
        await this.remove(rel);
        fs.linkSync(join(this.root, target), abs);
        return;
      }
      case 'char':
      case 'block':
        throw refuse('device-node', `${e.type} device ${e.devmajor}:${e.devminor} is not allowed in a layer`, e.path);
      case 'fifo':
        throw refuse('fifo', 'named pipes are not supported in layers', e.path);
    }
  }

  /** applies the collected whiteouts; call once after the last entry. */
  async seal(): Promise<void> {
    if (this.whiteoutOps.length === 0) return;
    const removed = new Set(this.whiteoutOps.filter((o) => o.op === 'whiteout').map((o) => o.path));
    const underRemoved = (p: string) => [...removed].some((r) => p.startsWith(`${r}/`));
    // an op below a removed name is moot: the whiteout above it hides everything there
    const ops = this.whiteoutOps.filter((o) => !underRemoved(o.path));
    for (const op of ops) {
      if (op.op === 'whiteout') {
        // a whiteout replaces anything of the same name in this layer (the OCI spec says the two must not coexist)
        await this.remove(op.path);
      }
    }
    await applyOverlayWhiteouts(this.root, ops);
  }

  /** makes sure `dir` (relative) and its parents are real directories inside the root. */
  private async ensureDir(dir: string, entryPath: string): Promise<void> {
    if (this.safeDirs.has(dir)) return;
    const parts = dir.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (this.safeDirs.has(p)) continue;
      const st = lstatOrNull(join(this.root, p));
      if (!st) {
        fs.mkdirSync(join(this.root, p), { mode: 0o755 });
      } else if (st.isSymbolicLink()) {
        throw refuse('write-through-symlink', `parent ${JSON.stringify(p)} is a symlink; writing through it is not allowed`, entryPath);
      } else if (!st.isDirectory()) {
        throw refuse('not-a-directory', `parent ${JSON.stringify(p)} is not a directory`, entryPath);
      }
      this.safeDirs.add(p);
    }
  }

  /** like ensureDir but creates nothing: every parent of `rel` must already be a real directory. */
  private async checkInside(rel: string, entryPath: string): Promise<void> {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (this.safeDirs.has(p)) continue;
      const st = lstatOrNull(join(this.root, p));
      if (!st || !st.isDirectory()) {
        throw refuse('hardlink-outside', `hardlink target goes through ${JSON.stringify(p)}, which is not a directory of this layer`, entryPath);
      }
      this.safeDirs.add(p);
    }
  }

  /** removes whatever is at `rel` (never following a symlink). */
  private async remove(rel: string): Promise<void> {
    const abs = join(this.root, rel);
    const st = lstatOrNull(abs);
    if (!st) return;
    if (st.isDirectory()) {
      fs.rmSync(abs, { recursive: true, force: true });
      for (const d of this.safeDirs) if (d === rel || d.startsWith(`${rel}/`)) this.safeDirs.delete(d);
    } else {
      fs.unlinkSync(abs);
    }
  }
}

function lstatOrNull(p: string): fs.Stats | null {
  return fs.lstatSync(p, { throwIfNoEntry: false }) ?? null;
}

/**
 * Python's os.mknod/os.setxattr do what Node cannot. The paths were validated by the writer (no symlink
 * in any parent), and the script re-checks with O_NOFOLLOW semantics: it refuses a symlink as an opaque
 * dir (setxattr would follow it).
 */
const WHITEOUT_PY = `
import json, os, stat, sys
root = sys.argv[1]
for op in json.load(sys.stdin):
    p = os.path.join(root, op["path"])
    if op["op"] == "whiteout":
        os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    else:
        if not stat.S_ISDIR(os.lstat(p).st_mode):
            sys.exit("opaque whiteout target is not a directory: " + op["path"])
        os.setxattr(p, "trusted.overlay.opaque", b"y", follow_symlinks=False)
`;

/** The python3 that ships with Debian (/usr/bin/python3); pyenv shims on PATH are not for system work. */
const python = (): string => process.env.FNHOST_PYTHON || '/usr/bin/python3';

function pythonMissing(path: string, cause?: unknown): Internal {
  return new Internal(
    `importing an image layer with whiteouts needs python3 at ${path} (FNHOST_PYTHON overrides the path; infra/setup.sh installs Debian's python3)`,
    { reason: 'python3-missing', path },
    { cause },
  );
}

/** Fails fast, before the rest of a layer is unpacked, when the whiteout helper cannot run. */
function checkWhiteoutHelper(): void {
  const path = python();
  try {
    fs.accessSync(path, fs.constants.X_OK);
  } catch (e) {
    throw pythonMissing(path, e);
  }
}

async function applyOverlayWhiteouts(root: string, ops: Array<{ op: string; path: string }>): Promise<void> {
  const path = python();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(path, ['-S', '-I', '-c', WHITEOUT_PY, root], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    // removed (or made non-executable) between the check and now
    child.on('error', (e) => reject(pythonMissing(path, e)));
    // a python that died before reading its ops must not crash the host with EPIPE; 'close' reports it
    child.stdin.on('error', () => {});
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new Internal('could not create overlayfs whiteouts', { root, stderr: err.slice(-2000) }));
    });
    child.stdin.end(JSON.stringify(ops));
  });
}
