/**
 * @module store/build-base-main
 * `node --import tsx services/store/build-base-main.ts [--force]`: the entry point infra/build-images.sh
 * runs. Progress and sizes on stderr; exit 0 when the base images are in place.
 */
import { buildBaseImages } from './base-images.ts';

try {
  await buildBaseImages({ force: process.argv.includes('--force') });
} catch (e) {
  process.stderr.write(`images: build failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
}
