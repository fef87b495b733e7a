/**
 * @module cli/commands/admin
 * `fnhost tenants create|ls|rm|key` (admin key) and `fnhost images build|import|ls|rm`.
 */
import { readFile } from 'node:fs/promises';
import { CliError, EXIT, check, jsonOf, request } from '../api.ts';
import { formatBytes, parseIntFlag, parseMemory, printJson, progress, table } from '../output.ts';
import type { Common } from './functions.ts';

function requireKey(c: Common, what: string) {
  if (!c.ep.key) throw new CliError(`no ${what} key: pass --key, set FNHOST_KEY${what === 'admin' ? ' or FNHOST_ADMIN_KEY, or run on the host as root' : ''}`, EXIT.usage);
}

export async function tenants(c: Common, sub: string | undefined, name: string | undefined, f: { 'max-memory'?: string; 'max-concurrency'?: string; 'max-functions'?: string }): Promise<number> {
  requireKey(c, 'admin');
  switch (sub) {
    case 'create': {
      if (!name) throw new CliError('usage: fnhost tenants create <name> [--max-memory 1024] [--max-concurrency 100] [--max-functions 100]', EXIT.usage);
      const limits: Record<string, number> = {};
      if (f['max-memory']) limits.maxMemoryMb = parseMemory(f['max-memory'], 'max-memory');
      if (f['max-concurrency']) limits.maxConcurrency = parseIntFlag(f['max-concurrency'], 'max-concurrency');
      if (f['max-functions']) limits.maxFunctions = parseIntFlag(f['max-functions'], 'max-functions');
      const body = JSON.stringify(Object.keys(limits).length ? { name, limits } : { name });
      const v = jsonOf(check(await request(c.ep, { method: 'POST', path: '/v1/tenants', body, headers: { 'content-type': 'application/json' } })));
      if (c.json) printJson(v);
      else process.stdout.write(`tenant ${v.name} created\napi key (shown once): ${v.apiKey}\n`);
      return EXIT.ok;
    }
    case 'ls':
    case undefined: {
      const v = jsonOf(check(await request(c.ep, { method: 'GET', path: '/v1/tenants' })));
      if (c.json) return printJson(v.tenants), EXIT.ok;
      type T = { name: string; limits: { maxMemoryMb: number; maxConcurrency: number; maxFunctions: number }; createdAt: string };
      process.stdout.write(table(['name', 'max memory', 'max concurrency', 'max functions', 'created'], (v.tenants as T[]).map((t) => [t.name, `${t.limits.maxMemoryMb} MB`, t.limits.maxConcurrency, t.limits.maxFunctions, t.createdAt])));
      return EXIT.ok;
    }
    case 'rm': {
      if (!name) throw new CliError('usage: fnhost tenants rm <name>', EXIT.usage);
      check(await request(c.ep, { method: 'DELETE', path: `/v1/tenants/${encodeURIComponent(name)}` }));
      if (c.json) printJson({ deleted: name });
      else process.stdout.write(`deleted tenant ${name} and everything it owned\n`);
      return EXIT.ok;
    }
    case 'key': {
      if (!name) throw new CliError('usage: fnhost tenants key <name>   (adds a key; remove old ones with the API)', EXIT.usage);
      const v = jsonOf(check(await request(c.ep, { method: 'POST', path: `/v1/tenants/${encodeURIComponent(name)}/keys` })));
      if (c.json) printJson(v);
      else process.stdout.write(`new key ${v.keyId} for ${name} (shown once): ${v.apiKey}\n`);
      return EXIT.ok;
    }
    default:
      throw new CliError(`unknown tenants command ${JSON.stringify(sub)}: create | ls | rm | key`, EXIT.usage);
  }
}

export async function images(c: Common, sub: string | undefined, name: string | undefined, file: string | undefined, f: { force?: boolean }): Promise<number> {
  switch (sub) {
    case 'build': {
      // Runs on the host (root): builds the base images into FNHOST_BASE_DIR from the package registries.
      const { buildBaseImages } = await import('../../store/base-images.ts');
      const built = await buildBaseImages({ force: !!f.force });
      if (c.json) printJson(built);
      else process.stdout.write(table(['image', 'digest', 'size', 'layers', 'cached'], built.map((b) => [b.name, b.digest.slice(0, 19), formatBytes(b.sizeBytes), b.layers.length, b.cached ? 'yes' : 'no'])));
      return EXIT.ok;
    }
    case 'import': {
      requireKey(c, 'API');
      if (!name || !file) throw new CliError('usage: fnhost images import <name> <docker-save.tar | oci-layout.tar>', EXIT.usage);
      const body = await readFile(file);
      const bar = progress('uploading');
      const r = check(await request(c.ep, { method: 'PUT', path: `/v1/images/${encodeURIComponent(name)}`, body, headers: { 'content-type': 'application/x-tar' }, onProgress: (s, t) => bar.update(s, t) }).finally(() => bar.done()));
      const v = jsonOf(r);
      if (c.json) printJson(v);
      else process.stdout.write(`imported ${v.name} (${v.digest}, ${v.layers} layers): use runtime "image:${v.name}"\n`);
      return EXIT.ok;
    }
    case 'ls':
    case undefined: {
      requireKey(c, 'API');
      const v = jsonOf(check(await request(c.ep, { method: 'GET', path: '/v1/images' })));
      if (c.json) return printJson(v.images), EXIT.ok;
      type I = { name: string; digest: string; layers: number; sizeBytes: number; base: boolean };
      process.stdout.write(table(['name', 'digest', 'layers', 'size', 'base'], (v.images as I[]).map((i) => [i.name, i.digest.slice(0, 19), i.layers, formatBytes(i.sizeBytes), i.base ? 'yes' : 'no'])));
      return EXIT.ok;
    }
    case 'rm': {
      requireKey(c, 'API');
      if (!name) throw new CliError('usage: fnhost images rm <name>', EXIT.usage);
      check(await request(c.ep, { method: 'DELETE', path: `/v1/images/${encodeURIComponent(name)}` }));
      if (c.json) printJson({ deleted: name });
      else process.stdout.write(`deleted image ${name}\n`);
      return EXIT.ok;
    }
    default:
      throw new CliError(`unknown images command ${JSON.stringify(sub)}: build | import | ls | rm`, EXIT.usage);
  }
}
