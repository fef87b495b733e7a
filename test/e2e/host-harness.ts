/**
 * A real host for the gateway's e2e tests: startHost() in this process (real Redis from the run's
 * global set-up, real BullMQ scheduler, real native sandboxes, base images from FNHOST_BASE_DIR), on a
 * loopback port, with key prefixes and a node id of its own so that nothing it does can touch another
 * test's work; `close()` stops it, asserts nothing leaked and removes its Redis keys and state dir.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { Redis } from 'ioredis';
import { createLogger } from '../../services/common/log.ts';
import { hostConfig } from '../../services/host/config.ts';
import { startHost, type Host, type HostOptions } from '../../services/host/index.ts';
import { sandboxUnavailableReason } from '../../services/sandbox/index.ts';
import { assertNoLeaks } from '../helpers/leaks.ts';
import { redisUrl } from '../helpers/redis.ts';

const BASE_DIR = process.env.FNHOST_BASE_DIR ?? '/var/lib/fnhost/base';

/** Why the e2e tests cannot run here, or null. In CI (root, after infra/setup.sh) this must be null. */
export function e2eSkipReason(): string | null {
  const reason = sandboxUnavailableReason();
  if (reason) return reason;
  if (!existsSync(join(BASE_DIR, 'images', 'node.json'))) return `no base images in ${BASE_DIR} (run infra/setup.sh)`;
  return null;
}

export interface TestHost {
  host: Host;
  url: string;
  adminKey: string;
  nodeId: string;
  prefix: string;
  metaPrefix: string;
  stateDir: string;
  redis: Redis;
  /** fetch with the key as Bearer; JSON bodies encoded. */
  req(method: string, path: string, opts?: { key?: string; json?: unknown; body?: string | Buffer | FormData | Uint8Array; headers?: Record<string, string>; signal?: AbortSignal }): Promise<Response>;
  /** creates a tenant, returns its key. */
  tenant(name: string, limits?: Record<string, number>): Promise<string>;
  close(): Promise<void>;
}

/** `embeddedRedis`: the host starts its own redis-server in its state dir (REDIS_URL unset), as `npm start` does. */
export async function startTestHost(name: string, opts: HostOptions = {}, how: { embeddedRedis?: boolean } = {}): Promise<TestHost> {
  const uid = randomBytes(3).toString('hex');
  const nodeId = `e2e-${name}-${uid}`;
  const prefix = `e2e-${name}-${uid}`;
  const metaPrefix = `${prefix}:meta:`;
  const stateDir = mkdtempSync(join(tmpdir(), `fnhost-e2e-${name}-`));
  const flags: Record<string, string> = { port: '0', host: '127.0.0.1', 'state-dir': stateDir, 'node-id': nodeId, 'base-dir': BASE_DIR };
  if (!how.embeddedRedis) flags['redis-url'] = redisUrl();
  const host = await startHost(hostConfig({}, flags), {
    logger: createLogger(`e2e-${name}`, process.env.FNHOST_LOG_LEVEL ?? 'silent'),
    metadataPrefix: metaPrefix,
    ...opts,
    scheduler: { prefix, ...opts.scheduler },
    client: { prefix, ...opts.client },
  });
  const redis = new Redis(redisUrl());
  const req: TestHost['req'] = (method, path, o = {}) => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.key) headers.authorization = `Bearer ${o.key}`;
    let body = o.body as RequestInit['body'];
    if (o.json !== undefined) {
      body = JSON.stringify(o.json);
      headers['content-type'] ??= 'application/json';
    }
    return fetch(host.url + path, { method, headers, body: body ?? null, ...(o.signal ? { signal: o.signal } : {}) });
  };
  return {
    host, url: host.url, adminKey: host.adminKey.key, nodeId, prefix, metaPrefix, stateDir, redis, req,
    async tenant(t, limits) {
      const r = await req('POST', '/v1/tenants', { key: host.adminKey.key, json: limits ? { name: t, limits } : { name: t } });
      if (r.status !== 201) throw new Error(`tenant ${t}: ${r.status} ${await r.text()}`);
      return ((await r.json()) as { apiKey: string }).apiKey;
    },
    async close() {
      try {
        await host.close();
        await assertNoLeaks(nodeId, { paths: [stateDir], deadlineMs: 5000 });
      } finally {
        for (const pattern of [`${prefix}*`]) {
          let cursor = '0';
          do {
            const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
            cursor = next;
            if (keys.length) await redis.del(...keys);
          } while (cursor !== '0');
        }
        redis.disconnect();
        rmSync(stateDir, { recursive: true, force: true });
      }
    },
  };
}

/** A multipart deploy body. */
export function deployForm(config: unknown, code?: Buffer): FormData {
  const f = new FormData();
  f.set('config', JSON.stringify(config));
  if (code) f.set('code', new Blob([code]), 'code.tgz');
  return f;
}

/** Hono's ESM build (dist without cjs/ and types/) as files under `prefix` for a function bundle. */
export function vendoredHono(prefix = 'hono'): Record<string, Buffer> {
  const root = join(process.cwd(), 'node_modules', 'hono', 'dist');
  const out: Record<string, Buffer> = {};
  const walk = (dir: string) => {
    for (const n of readdirSync(dir)) {
      const p = join(dir, n);
      const rel = relative(root, p);
      if (rel === 'cjs' || rel === 'types') continue;
      if (statSync(p).isDirectory()) walk(p);
      else if (n.endsWith('.js')) out[`${prefix}/${rel}`] = readFileSync(p);
    }
  };
  walk(root);
  return out;
}

/** Polls `fn` until it returns a truthy value or the deadline passes (no fixed sleeps in assertions). */
export async function until<T>(fn: () => Promise<T | null | undefined | false>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
