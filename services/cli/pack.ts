/**
 * @module cli/pack
 * Packs a directory as a tar.gz (POSIX ustar) for `fnhost deploy <dir>`: regular files, directories and
 * symlinks, permission bits kept (an exec handler must stay executable), owner 0:0 and mtime 0 so the same
 * tree always gives the same bytes and therefore the same code digest. `.git` is skipped.
 *
 * @example
 * const tgz = await packDirectory('./hello');   // Buffer, ready for the "code" part of a deploy
 */
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

export interface TarEntry {
  /** path inside the archive, '/'-separated, no leading '/'; directories without a trailing '/'. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  data?: Buffer;
  linkTarget?: string;
}

const BLOCK = 512;

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

/** ustar splits long names into prefix (≤155) + '/' + name (≤100); null when no split fits. */
function splitName(path: string): { name: string; prefix: string } | null {
  if (Buffer.byteLength(path) <= 100) return { name: path, prefix: '' };
  for (let i = path.indexOf('/'); i >= 0; i = path.indexOf('/', i + 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return { name, prefix };
  }
  return null;
}

/** One PAX record, "<len> <key>=<value>\n", where <len> counts the whole record including its own digits. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

function header(e: TarEntry, size: number, typeflag?: string): Buffer {
  const h = Buffer.alloc(BLOCK);
  const full = e.type === 'dir' ? `${e.path}/` : e.path;
  // A name no ustar split can hold is carried by a preceding PAX header; this one gets a truncated stand-in.
  const { name, prefix } = splitName(full) ?? { name: Buffer.from(full).subarray(0, 100).toString('utf8').replace(/\uFFFD$/, ''), prefix: '' };
  h.write(name, 0, 100, 'utf8');
  h.write(octal(e.mode & 0o7777, 8), 100, 8, 'ascii');
  h.write(octal(0, 8), 108, 8, 'ascii');
  h.write(octal(0, 8), 116, 8, 'ascii');
  h.write(octal(size, 12), 124, 12, 'ascii');
  h.write(octal(0, 12), 136, 12, 'ascii');
  h.write('        ', 148, 8, 'ascii'); // checksum is computed with its own field as spaces
  h.write(typeflag ?? (e.type === 'dir' ? '5' : e.type === 'symlink' ? '2' : '0'), 156, 1, 'ascii');
  if (e.linkTarget && !typeflag) h.write(e.linkTarget, 157, 100, 'utf8');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 8, 'ascii');
  return h;
}

/** An uncompressed tar of `entries`, in the given order. */
export function tar(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  const push = (h: Buffer, data: Buffer) => {
    parts.push(h);
    if (data.length) {
      parts.push(data);
      const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
      if (pad) parts.push(Buffer.alloc(pad));
    }
  };
  for (const e of entries) {
    const full = e.type === 'dir' ? `${e.path}/` : e.path;
    let pax = '';
    if (!splitName(full)) pax += paxRecord('path', full);
    if (e.linkTarget && Buffer.byteLength(e.linkTarget) > 100) pax += paxRecord('linkpath', e.linkTarget);
    if (pax) {
      const p = Buffer.from(pax, 'utf8');
      push(header({ path: 'PaxHeader', type: 'file', mode: 0o644 }, p.length, 'x'), p);
    }
    const data = e.type === 'file' ? (e.data ?? Buffer.alloc(0)) : Buffer.alloc(0);
    push(header(e, data.length), data);
  }
  parts.push(Buffer.alloc(BLOCK * 2)); // end of archive: two zero blocks
  return Buffer.concat(parts);
}

/** A tar.gz of `files` (path → content; mode 0644, or 0755 for paths listed in `executable`). */
export function tarGz(files: Record<string, string | Buffer>, executable: string[] = []): Buffer {
  const entries: TarEntry[] = Object.entries(files).map(([path, data]) => ({
    path,
    type: 'file',
    mode: executable.includes(path) ? 0o755 : 0o644,
    data: Buffer.isBuffer(data) ? data : Buffer.from(data),
  }));
  return gzipSync(tar(entries));
}

async function walk(root: string, rel: string, out: TarEntry[], onFile?: (bytes: number) => void) {
  const names = (await readdir(join(root, rel))).sort();
  for (const n of names) {
    if (rel === '' && n === '.git') continue;
    const path = rel ? `${rel}/${n}` : n;
    const abs = join(root, path);
    const st = await lstat(abs);
    if (st.isDirectory()) {
      out.push({ path, type: 'dir', mode: st.mode });
      await walk(root, path, out, onFile);
    } else if (st.isSymbolicLink()) {
      out.push({ path, type: 'symlink', mode: 0o777, linkTarget: await readlink(abs) });
    } else if (st.isFile()) {
      const data = await readFile(abs);
      onFile?.(data.length);
      out.push({ path, type: 'file', mode: st.mode, data });
    }
  }
}

/** Packs the content of `dir` (not the folder itself) as a deterministic tar.gz. */
export async function packDirectory(dir: string, onFile?: (bytes: number) => void): Promise<Buffer> {
  const entries: TarEntry[] = [];
  await walk(dir, '', entries, onFile);
  return gzipSync(tar(entries));
}
