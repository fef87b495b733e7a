/**
 * @module store/image-records
 * Image records on disk: one JSON file per image (`<dir>/<name>.json`), written to a temp name and
 * renamed, so a reader sees the old record or the new one, never half of one. Base images live in
 * `<base>/images/`, a tenant's imported images in `<state>/images/<tenant>/`.
 */
import { createHash } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidRequest, NotFound } from '../common/errors.ts';
import type { ImageConfig } from './types.ts';

export interface ImageRecord {
  name: string;
  /** manifest digest (OCI), config digest (docker save) or, for base images, imageDigest(). */
  digest: string;
  /** layer digests, bottom first. */
  layers: string[];
  config: ImageConfig;
  sizeBytes: number;
  base: boolean;
  createdAt: string;
  /** where it came from (recipe inputs, import format): for humans and `images list`. */
  source?: Record<string, unknown>;
}

/** lower-case names as OCI repository path components allow, without '/' (one file per image). */
const NAME = /^[a-z0-9][a-z0-9._-]{0,127}$/;

export function checkName(name: string, field: string): void {
  if (!NAME.test(name) || name.includes('..')) {
    throw new InvalidRequest(`invalid ${field} ${JSON.stringify(name)}: use [a-z0-9._-], up to 128 characters`, { field });
  }
}

/** a stable digest for an image defined by its layers and config (keys sorted). */
export function imageDigest(layers: string[], config: ImageConfig): string {
  const canon = JSON.stringify({ layers, config }, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1))) : v);
  return `sha256:${createHash('sha256').update(canon).digest('hex')}`;
}

export class ImageRecords {
  constructor(readonly dir: string) {}

  async get(name: string): Promise<ImageRecord> {
    checkName(name, 'image name');
    try {
      return JSON.parse(await fsp.readFile(join(this.dir, `${name}.json`), 'utf8')) as ImageRecord;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`image ${JSON.stringify(name)} not found`, { image: name });
      throw e;
    }
  }

  async put(name: string, rec: ImageRecord): Promise<void> {
    checkName(name, 'image name');
    await fsp.mkdir(this.dir, { recursive: true });
    const tmp = join(this.dir, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
    await fsp.writeFile(tmp, JSON.stringify(rec, null, 1));
    await fsp.rename(tmp, join(this.dir, `${name}.json`));
  }

  async delete(name: string): Promise<void> {
    checkName(name, 'image name');
    try {
      await fsp.unlink(join(this.dir, `${name}.json`));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`image ${JSON.stringify(name)} not found`, { image: name });
      throw e;
    }
  }

  async list(): Promise<ImageRecord[]> {
    const names = await fsp.readdir(this.dir).catch(() => [] as string[]);
    const out: ImageRecord[] = [];
    for (const f of names.sort()) {
      if (!f.endsWith('.json') || f.startsWith('.')) continue;
      const rec = await this.get(f.slice(0, -5)).catch(() => null);
      if (rec) out.push(rec);
    }
    return out;
  }
}
