/**
 * @module host/admin-key
 * The operator's key. From FNHOST_ADMIN_KEY when set; otherwise generated on the first start and written to
 * `<state>/admin-key` with mode 0600 (created exclusively, so two hosts starting on one state dir agree on
 * one key), and reported as `generated` so the caller prints it exactly once.
 *
 * @example
 * const k = await loadAdminKey('/var/lib/fnhost/state');
 * if (k.generated) console.log(`admin key: ${k.key}`);
 */
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKey, hashKey } from '../store/keys.ts';

export interface AdminKey {
  key: string;
  hash: string;
  /** true only on the start that created the key file. */
  generated: boolean;
  /** where it is kept (undefined when it came from the environment). */
  file?: string;
}

export const ADMIN_KEY_FILE = 'admin-key';

export async function loadAdminKey(stateDir: string, fromEnv?: string): Promise<AdminKey> {
  if (fromEnv) return { key: fromEnv, hash: hashKey(fromEnv), generated: false };
  const file = join(stateDir, ADMIN_KEY_FILE);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const key = generateKey();
  try {
    await writeFile(file, key + '\n', { mode: 0o600, flag: 'wx' });
    return { key, hash: hashKey(key), generated: true, file };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  // The file holds a secret: tighten it if someone loosened it, rather than serve with a readable key.
  if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
  const existing = (await readFile(file, 'utf8')).trim();
  if (!existing) throw new Error(`${file} is empty: remove it to generate a new admin key`);
  return { key: existing, hash: hashKey(existing), generated: false, file };
}
