/**
 * Shared set-up of the gateway's route tests: a gateway over the REAL metadata store (the run's Redis, a
 * unique key prefix per test file, removed afterwards), a scripted InvocationClient (the scheduler's side is
 * not under test here: these tests check the gateway's own logic) and an ImageStore stand-in that unpacks
 * bundles with the system's tar/unzip into a temp dir.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { NotFound, InvalidRequest } from '../../services/common/errors.ts';
import type { LogLine } from '../../services/common/model.ts';
import { Admission } from '../../services/gateway/admission.ts';
import { createGateway } from '../../services/gateway/app.ts';
import type { GatewayDeps } from '../../services/gateway/context.ts';
import { generateKey, hashKey } from '../../services/store/keys.ts';
import { createMetadataStore, type MetadataStore } from '../../services/store/metadata.ts';
import { openImageStore, type FsImageStore } from '../../services/store/image-store.ts';
import type { CodeLayer, ImageStore, ImageSummary, ResolvedImage } from '../../services/store/types.ts';
import type { InvocationClient, InvocationRecord, InvokeRequest, LogQuery, SyncResult } from '../../services/scheduler/types.ts';
import { redisUrl } from '../helpers/redis.ts';
import { makeTar, writeOciLayout } from '../fixtures/oci/tars.ts';

/** A client whose answers the test scripts; it keeps what it was asked. */
export class ScriptedClient implements InvocationClient {
  calls: InvokeRequest[] = [];
  records = new Map<string, InvocationRecord>();
  deadLetters = new Map<string, InvocationRecord>();
  logLines: (LogLine & { tenant: string; function: string })[] = [];
  readyValue = true;
  next: ((req: InvokeRequest) => Promise<SyncResult>) | null = null;
  private seq = 0;

  async invoke(req: InvokeRequest): Promise<SyncResult> {
    this.calls.push(req);
    if (this.next) return this.next(req);
    const id = `inv-${++this.seq}`;
    const record: InvocationRecord = {
      id, tenant: req.fn.tenant, function: req.fn.name, version: req.fn.version, mode: req.mode, status: 'succeeded',
      start: 'warm', attempts: 1, createdAt: Date.now(), durationMs: 3,
      response: { status: 200, headers: { 'content-type': 'application/octet-stream' }, body: Buffer.alloc(0) },
    };
    this.records.set(id, record);
    const body = req.payload.body;
    return { record, response: { status: 200, headers: { 'content-type': 'application/octet-stream' }, body } };
  }
  async enqueue(req: InvokeRequest) {
    this.calls.push(req);
    const id = `inv-${++this.seq}`;
    this.records.set(id, { id, tenant: req.fn.tenant, function: req.fn.name, version: req.fn.version, mode: 'async', status: 'queued', attempts: 0, createdAt: Date.now() });
    return { invocationId: id, duplicate: false };
  }
  async get(tenant: string, id: string) {
    const r = this.records.get(id);
    return r && r.tenant === tenant ? r : null;
  }
  async listDeadLetters(tenant: string) {
    return [...this.deadLetters.values()].filter((r) => r.tenant === tenant);
  }
  async redrive(tenant: string, id: string) {
    const r = this.deadLetters.get(id);
    if (!r || r.tenant !== tenant) throw new NotFound(`dead letter ${id} not found`);
    this.deadLetters.delete(id);
    return { invocationId: id };
  }
  async logs(tenant: string, q: LogQuery) {
    return this.logLines.filter((l) => l.tenant === tenant && (!q.function || l.function === q.function) && (!q.invocation || l.invocationId === q.invocation) && (!q.since || l.ts >= q.since));
  }
  async *followLogs(tenant: string, q: LogQuery, signal: AbortSignal): AsyncIterable<LogLine> {
    for (const l of await this.logs(tenant, q)) yield l;
    while (!signal.aborted) await new Promise((r) => setTimeout(r, 10));
  }
  async depth() {
    return 0;
  }
  async ready() {
    return this.readyValue;
  }
  async close() {}
}

/** Unpacks bundles with tar/unzip into `<root>/<sha256>`; images are names registered by the test. */
export class DirImageStore implements ImageStore {
  images = new Map<string, ResolvedImage>();
  bundles = 0;
  constructor(readonly root: string) {}
  async resolve(ref: string, tenant?: string): Promise<ResolvedImage> {
    const img = this.images.get(`${tenant}/${ref}`) ?? this.images.get(`/${ref}`);
    if (!img) throw new NotFound(`image ${ref} not found`);
    return img;
  }
  async addBundle(bundle: Buffer): Promise<CodeLayer> {
    const digest = 'sha256:' + createHash('sha256').update(bundle).digest('hex');
    const dir = join(this.root, digest.slice(7));
    if (!existsSync(dir)) {
      const tmp = `${dir}.tmp`;
      mkdirSync(tmp, { recursive: true });
      const file = join(this.root, `${digest.slice(7)}.upload`);
      writeFileSync(file, bundle);
      try {
        if (bundle[0] === 0x50) execFileSync('unzip', ['-q', file, '-d', tmp], { stdio: 'ignore' });
        else execFileSync('tar', ['-xzf', file, '-C', tmp], { stdio: 'ignore' });
      } catch {
        rmSync(tmp, { recursive: true, force: true });
        throw new InvalidRequest('code is not a readable archive', { field: 'code' });
      } finally {
        rmSync(file, { force: true });
      }
      execFileSync('mv', [tmp, dir]);
      this.bundles++;
    }
    return { digest, dir, sizeBytes: bundle.length };
  }
  async codeLayer(digest: string): Promise<CodeLayer> {
    return { digest, dir: join(this.root, digest.slice(7)), sizeBytes: 0 };
  }
  async discardCode(digest: string): Promise<boolean> {
    const dir = join(this.root, digest.slice(7));
    const there = existsSync(dir);
    rmSync(dir, { recursive: true, force: true });
    return there;
  }
  async importImage(tenant: string, name: string, source: Buffer | string): Promise<ResolvedImage> {
    const img: ResolvedImage = { ref: name, digest: `sha256:${name}`, layers: [typeof source === 'string' ? source : 'buf'], config: { entrypoint: [], cmd: [], env: {}, workingDir: '/' } };
    this.images.set(`${tenant}/${name}`, img);
    return img;
  }
  async listImages(tenant: string): Promise<ImageSummary[]> {
    return [...this.images.entries()]
      .filter(([k]) => k.startsWith(`${tenant}/`) || k.startsWith('/'))
      .map(([k, v]) => ({ name: v.ref, digest: v.digest, layers: v.layers.length, sizeBytes: 0, base: k.startsWith('/') }));
  }
  async deleteImage(tenant: string, name: string) {
    if (!this.images.delete(`${tenant}/${name}`)) throw new NotFound(`image ${name} not found`);
  }
  lease() {
    return () => {};
  }
  async gc() {
    return { removed: [] };
  }
}

export interface Harness {
  app: ReturnType<typeof createGateway>;
  store: MetadataStore;
  client: ScriptedClient;
  images: DirImageStore;
  admission: Admission;
  /** where the gateway spools image uploads */
  tmpDir: string;
  adminKey: string;
  redis: Redis;
  prefix: string;
  /** fetch-like helper: JSON bodies are encoded, the key becomes the Bearer header. */
  req(method: string, path: string, opts?: { key?: string; json?: unknown; body?: string | Buffer | FormData | null; headers?: Record<string, string> }): Promise<Response>;
  /** creates a tenant and returns its key. */
  tenant(name: string, limits?: Record<string, number>): Promise<string>;
  close(): Promise<void>;
}

export async function createHarness(extra: Partial<GatewayDeps> = {}): Promise<Harness> {
  const redis = new Redis(redisUrl(), { maxRetriesPerRequest: 1 });
  const prefix = `test:gw:${randomBytes(4).toString('hex')}:`;
  const store = createMetadataStore(redis, prefix);
  const client = new ScriptedClient();
  const root = mkdtempSync(join(tmpdir(), 'fnhost-gw-test-'));
  const images = new DirImageStore(join(root, 'layers'));
  mkdirSync(images.root);
  const adminKey = generateKey();
  const admission = new Admission(store);
  const app = createGateway({ store, client, images, admission, adminKeyHash: hashKey(adminKey), tmpDir: join(root, 'tmp'), ...extra });
  const req: Harness['req'] = async (method, path, opts = {}) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.key) headers.authorization = `Bearer ${opts.key}`;
    let body = opts.body;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers['content-type'] ??= 'application/json';
    }
    return app.request(path, { method, headers, body: body ?? null });
  };
  const h: Harness = {
    app, store, client, images, admission, tmpDir: join(root, 'tmp'), adminKey, redis, prefix, req,
    async tenant(name, limits) {
      const r = await req('POST', '/v1/tenants', { key: adminKey, json: limits ? { name, limits } : { name } });
      if (r.status !== 201) throw new Error(`tenant ${name}: ${r.status} ${await r.text()}`);
      return ((await r.json()) as { apiKey: string }).apiKey;
    },
    async close() {
      await store.close();
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
      rmSync(root, { recursive: true, force: true });
    },
  };
  return h;
}

/** A multipart deploy body. */
/** createFsImageHarness's result: the gateway harness over a real image store, tenant 'acme' and its key. */
export interface FsImageHarness {
  h: Harness;
  images: FsImageStore;
  /** the temp dir holding the store (`state/`, `base/`) */
  root: string;
  key: string;
  /** closes the harness and removes `root` */
  close(): Promise<void>;
  /** imports a one-layer image `name` for 'acme' (its content differs on every call: a new digest each time) */
  importImage(name: string): Promise<void>;
  /** an authenticated request as 'acme' */
  call(method: string, path: string): Promise<Response>;
  /** PUT /v1/functions/:name as 'acme' (deployForm) */
  deploy(name: string, config: Record<string, unknown>, code?: Buffer): Promise<Response>;
}

/**
 * A gateway harness over a REAL image store (services/store) in a fresh temp dir, with tenant 'acme' made.
 *
 * @example
 * beforeAll(async () => ({ h, images, root, key, close } = await createFsImageHarness('deploy-discard')));
 * afterAll(() => close?.());
 */
export async function createFsImageHarness(name: string): Promise<FsImageHarness> {
  const root = mkdtempSync(join(tmpdir(), `fnhost-${name}-`));
  let h: Harness | undefined;
  try {
    const images = await openImageStore({ stateDir: join(root, 'state'), baseDir: join(root, 'base') });
    h = await createHarness({ images });
    const key = await h.tenant('acme');
    const made = h;
    let seq = 0;
    return {
      h: made, images, root, key,
      async importImage(img) {
        const dir = join(root, `layout-${img}-${++seq}`);
        writeOciLayout(dir, [makeTar([{ path: 'hello', data: `${img} ${seq}` }])]);
        await images.importImage('acme', img, dir);
        rmSync(dir, { recursive: true, force: true });
      },
      call: async (method, path) => made.app.request(path, { method, headers: { authorization: `Bearer ${key}` } }),
      deploy: async (fn, config, code) => made.app.request(`/v1/functions/${fn}`, { method: 'PUT', headers: { authorization: `Bearer ${key}` }, body: deployForm(config, code) }),
      async close() {
        await made.close();
        rmSync(root, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await h?.close();
    rmSync(root, { recursive: true, force: true });
    throw e;
  }
}

export function deployForm(config: unknown, code?: Buffer | string): FormData {
  const f = new FormData();
  f.set('config', typeof config === 'string' ? config : JSON.stringify(config));
  if (code !== undefined) f.set('code', new Blob([typeof code === 'string' ? Buffer.from(code) : code]), 'code.tgz');
  return f;
}
