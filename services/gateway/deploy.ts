/**
 * @module gateway/deploy
 * `PUT /v1/functions/:name` — multipart/form-data with a `config` part (JSON) and a `code` part (zip or
 * tar.gz; optional only for `image:<name>` runtimes). Makes a new immutable version: 201 with its record.
 *
 * Order is the guarantee that bad input changes nothing: the whole request is read (under the cap), parsed
 * and validated, the image (if any) resolved, the code unpacked into a content-addressed layer and its
 * handler file checked, and only then is the version written, by one atomic script that also enforces the
 * tenant's function limit.
 *
 * A request that fails after its code layer was written (no handler file in it, the tenant's function limit,
 * Redis) removes that layer at once (`discardCode`) — but only a layer this request created, and only while
 * nothing else may use it: code layers are named by the bundle's digest, so the same bytes deployed as another
 * function, by another tenant, or by a concurrent request share one directory. A layer that was already on
 * disk is never touched (a deleted function's warm instance may still have it mounted); one referenced by any
 * version (a version made on another node whose layer never reached this one) or wanted by another deploy
 * in flight here stays. Another gateway sharing the state dir cannot see our in-flight set: the two sides
 * re-check after the fact (the remover re-reads the references after removing and restores the layer from the
 * bytes it holds; a committed deploy checks its layer is still there and re-adds it) so a version never points
 * at a missing layer for longer than one re-unpack. Anything left over (a failure while removing) is the image
 * store's gc's, as before.
 *
 * An `image:<name>` deploy reads the tenant's image-delete generation before it looks the image up and commits
 * only if no image delete started since (store/functions.ts, one extra round trip for tenant images only); when
 * one did, it looks the image up again: a deleted image is then a 400, never a version naming a missing image.
 *
 * Errors: 400 InvalidRequest (field: config | code | runtime | handler | ...), 409 Conflict (field runtime: the
 * image is being deleted), 413 PayloadTooLarge (code over 50 MB), 422 LimitExceeded (memory above the tenant's
 * cap, too many functions).
 */
import { access, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Hono } from 'hono';
import { Conflict, InvalidRequest, NotFound, PayloadTooLarge, isFnhostError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import type { FunctionVersion } from '../common/model.ts';
import { BASE_IMAGE_NAMES } from '../store/base-images.ts';
import { IMAGES_CHANGED } from '../store/functions.ts';
import { bundleDigest } from '../store/image-store.ts';
import type { MetadataStore } from '../store/metadata.ts';
import type { CodeLayer, ImageStore } from '../store/types.ts';
import { readBody } from './body.ts';
import type { GatewayDeps, GatewayEnv, GatewayLimits } from './context.ts';
import { tenantOf } from './auth.ts';
import { parseJson } from './json.ts';
import { validateFunctionConfig, validateName, type FunctionConfig } from './validate.ts';

/** Room for the multipart framing and the config part around the code (1 MiB, the JSON body cap). */
const MULTIPART_SLACK = 1024 * 1024;

/**
 * Commits of an `image:` deploy refused because an image delete of the tenant overtook its lookup (each attempt
 * looks the image up again): deletes are rare and one unlink long, so a third overtaking means a delete storm.
 */
const IMAGE_ATTEMPTS = 3;

/** zip local-file or empty-archive header, or the gzip magic (RFC 1952). */
export function archiveKind(b: Buffer): 'zip' | 'tar.gz' | null {
  if (b.length >= 4 && b[0] === 0x50 && b[1] === 0x4b && (b[2] === 3 || b[2] === 5) && (b[3] === 4 || b[3] === 6)) return 'zip';
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'tar.gz';
  return null;
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** Files a handler may name, per runtime (the runtimes issue: `index.handler` → index.mjs|js|cjs, `main.handler` → main.py, exec: a path). */
export function handlerCandidates(runtime: string, handler: string): string[] {
  const slash = handler.lastIndexOf('/');
  const dot = handler.lastIndexOf('.');
  const mod = dot > slash ? handler.slice(0, dot) : handler;
  if (runtime === 'node') {
    const bases = mod === handler ? [handler] : [mod, handler];
    return [...bases.flatMap((b) => ['.mjs', '.js', '.cjs'].map((e) => b + e)), handler];
  }
  if (runtime === 'python') {
    const path = mod.replaceAll('.', '/');
    return [`${path}.py`, `${path}/__init__.py`];
  }
  return [handler];
}

async function checkHandler(dir: string, cfg: FunctionConfig) {
  if (cfg.runtime.startsWith('image:')) return;
  for (const rel of handlerCandidates(cfg.runtime, cfg.handler)) {
    if (await exists(join(dir, rel))) {
      if (cfg.runtime === 'exec' && !(await stat(join(dir, rel))).isFile()) continue;
      return;
    }
  }
  throw new InvalidRequest(
    `handler ${JSON.stringify(cfg.handler)}: none of ${handlerCandidates(cfg.runtime, cfg.handler).join(', ')} is in the code (is the archive's content inside a folder?)`,
    { field: 'handler' },
  );
}

/** true / false, or null when the store could not say (the caller then assumes it is there). */
async function hasCode(images: ImageStore, digest: string): Promise<boolean | null> {
  try {
    await images.codeLayer(digest);
    return true;
  } catch (e) {
    return isFnhostError(e) && e.type === 'NotFound' ? false : null;
  }
}

/**
 * Does any version of any tenant's function name this code digest? (the same set the image store's gc keeps.)
 * One read per function: paid only by a deploy that failed after writing a new layer.
 */
async function referenced(store: MetadataStore, digest: string): Promise<boolean> {
  const tenants = (await store.tenants.list()).map((t) => t.name);
  return (await store.functions.codeDigests(tenants)).has(digest);
}

/**
 * Removes the code layer a failed deploy wrote, when nothing else may use it (see the module header).
 * Never throws: the deploy's own error is what the caller reports.
 */
async function discardCode(
  deps: { store: MetadataStore; images: ImageStore; logger?: Logger },
  layer: CodeLayer,
  bundle: Buffer,
  wantedHere: () => boolean,
): Promise<void> {
  try {
    if (wantedHere() || (await referenced(deps.store, layer.digest))) return;
    // again after the await, then discardCode takes the layer out of the store before ITS first await: no deploy
    // of this process can start using it in between
    if (wantedHere()) return;
    if (!(await deps.images.discardCode(layer.digest))) return;
    // a gateway sharing the state dir may have committed a version of these bytes since the check above
    if (await referenced(deps.store, layer.digest)) await deps.images.addBundle(bundle);
  } catch (e) {
    deps.logger?.warn({ err: e, digest: layer.digest }, 'removing a failed deploy\'s code layer failed; the image store gc will');
  }
}

async function partBytes(v: string | Blob): Promise<Buffer> {
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : Buffer.from(await v.arrayBuffer());
}

export function registerDeploy(app: Hono<GatewayEnv>, deps: GatewayDeps, limits: GatewayLimits) {
  /** deploys in flight in this gateway, by code digest: a failing one never removes a layer another is using. */
  const inFlight = new Map<string, number>();
  app.put('/:name', async (c) => {
    const tenant = tenantOf(c);
    const name = validateName(c.req.param('name'));
    const ct = c.req.header('content-type') ?? '';
    if (!/^multipart\/form-data\s*;/i.test(ct)) {
      throw new InvalidRequest('deploy takes multipart/form-data with a "config" part (JSON) and a "code" part (zip or tar.gz)', { field: 'body' });
    }
    let raw: Buffer;
    try {
      raw = await readBody(c.req.raw, limits.codeBytes + MULTIPART_SLACK, 'code');
    } catch (e) {
      if (isFnhostError(e) && e.type === 'PayloadTooLarge') throw new PayloadTooLarge(`code is larger than ${limits.codeBytes} bytes`, { field: 'code', limitBytes: limits.codeBytes });
      throw e;
    }
    let form: FormData;
    try {
      form = await new Response(raw, { headers: { 'content-type': ct } }).formData();
    } catch (e) {
      throw new InvalidRequest(`malformed multipart body: ${(e as Error).message}`, { field: 'body' });
    }
    for (const k of form.keys()) if (k !== 'config' && k !== 'code') throw new InvalidRequest(`unknown part ${JSON.stringify(k)}`, { field: k });
    if (form.getAll('config').length > 1 || form.getAll('code').length > 1) throw new InvalidRequest('each part may appear once', { field: 'body' });
    const configPart = form.get('config');
    if (configPart === null) throw new InvalidRequest('the "config" part is required', { field: 'config' });
    const json = parseJson((await partBytes(configPart)).toString('utf8'), 'config');

    const t = await deps.store.tenants.get(tenant);
    if (!t) throw new NotFound(`tenant ${tenant} not found`);
    const cfg = validateFunctionConfig(json, t.limits, name);

    const codePart = form.get('code');
    const code = codePart === null ? null : await partBytes(codePart);
    if (code && code.length > limits.codeBytes) throw new PayloadTooLarge(`code is larger than ${limits.codeBytes} bytes`, { field: 'code', limitBytes: limits.codeBytes });
    const isImage = cfg.runtime.startsWith('image:');
    if (!code && !isImage) throw new InvalidRequest('the "code" part (zip or tar.gz) is required', { field: 'code' });
    if (code && !archiveKind(code)) throw new InvalidRequest('code is neither a zip nor a tar.gz archive', { field: 'code' });
    const image = isImage ? cfg.runtime.slice('image:'.length) : null;
    // a tenant's image can be deleted while we work: the generation read before the lookup lets the version
    // script refuse a commit that a delete overtook (services/store/functions.ts); base images are never deleted
    const tenantImage = image !== null && !(BASE_IMAGE_NAMES as readonly string[]).includes(image) ? image : null;
    const findImage = async (): Promise<number | undefined> => {
      if (image === null) return undefined;
      const gen = tenantImage === null ? undefined : await deps.store.functions.imageGeneration(tenant, tenantImage);
      try {
        await deps.images.resolve(image, tenant);
      } catch (e) {
        if (isFnhostError(e) && e.type === 'NotFound') throw new InvalidRequest(`${cfg.runtime}: no such image (import it with PUT /v1/images/<name>)`, { field: 'runtime' });
        throw e;
      }
      return gen;
    };
    let imageGen = await findImage();

    const put = async (codeDigest: string | null): Promise<FunctionVersion> => {
      for (let attempt = 1; ; attempt++) {
        const rec: Omit<FunctionVersion, 'version'> = { tenant, name, ...cfg, codeDigest, createdAt: new Date().toISOString() };
        try {
          return await deps.store.functions.putVersion(rec, { maxFunctions: t.limits.maxFunctions, imageGen });
        } catch (e) {
          // an image delete of this tenant started after our lookup (maybe of another image): look again
          if (!(e instanceof Conflict && e.details.reason === IMAGES_CHANGED) || attempt >= IMAGE_ATTEMPTS) throw e;
          imageGen = await findImage();
        }
      }
    };
    if (!code) return c.json(await put(null), 201);

    const digest = bundleDigest(code);
    inFlight.set(digest, (inFlight.get(digest) ?? 0) + 1);
    try {
      const had = await hasCode(deps.images, digest);
      const layer = await deps.images.addBundle(code);
      let v: FunctionVersion;
      try {
        await checkHandler(layer.dir, cfg).catch(async (e: unknown) => {
          // the layer vanished under us (a failed deploy of the same bytes in another gateway sharing the state
          // dir removed it): unpack it again and look once more, rather than refuse good code
          if ((await hasCode(deps.images, layer.digest)) !== false) throw e;
          await deps.images.addBundle(code);
          await checkHandler(layer.dir, cfg);
        });
        v = await put(layer.digest);
      } catch (e) {
        // only a layer this request wrote (absent before, under the digest we computed)
        if (had === false && layer.digest === digest) await discardCode(deps, layer, code, () => (inFlight.get(digest) ?? 0) > 1);
        throw e;
      }
      // the version is committed: its layer must be on disk even if a failed deploy of the same bytes in another
      // gateway sharing the state dir removed it between our write and our commit (one stat when it is there)
      if ((await hasCode(deps.images, layer.digest)) === false) await deps.images.addBundle(code);
      return c.json(v, 201);
    } finally {
      const n = (inFlight.get(digest) ?? 1) - 1;
      if (n <= 0) inFlight.delete(digest);
      else inFlight.set(digest, n);
    }
  });
}
