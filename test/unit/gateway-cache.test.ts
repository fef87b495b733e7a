/**
 * The metadata cache across gateways: two gateways on one Redis, caches with a TTL far longer than the
 * test, so only the published invalidations can make a change visible. A PATCH, a delete and a key
 * revocation done through one gateway must be seen by the other at once (polled with a deadline).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { createGateway } from '../../services/gateway/app.ts';
import { createMetadataStore, type MetadataStore } from '../../services/store/metadata.ts';
import { MetadataCache } from '../../services/store/metadata-cache.ts';
import { hashKey } from '../../services/store/keys.ts';
import { createHarness, deployForm, ScriptedClient, type Harness } from './gateway-harness.ts';

let h: Harness;
let other: MetadataStore;
let b: ReturnType<typeof createGateway>;
let key: string;

async function poll(fn: () => Promise<boolean>, what: string) {
  const deadline = Date.now() + 3000;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`not seen within 3 s: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  h = await createHarness();
  // gateway B: same Redis and prefix, its own cache (1 h TTL: only invalidations can refresh it)
  other = createMetadataStore(h.redis.duplicate(), h.prefix, { cacheTtlMs: 3_600_000 });
  b = createGateway({ store: other, client: new ScriptedClient(), images: h.images, adminKeyHash: hashKey(h.adminKey), tmpDir: '/tmp' });
  key = await h.tenant('acme');
  const r = await h.req('PUT', '/v1/functions/f', { key, body: deployForm({ runtime: 'node', memoryMb: 256 }, tarGz({ 'index.js': 'exports.handler = (e) => e;' })) });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await other?.close();
  other?.redis.disconnect();
  await h?.close();
});

const onB = (method: string, path: string, body?: string) => b.request(path, { method, headers: { authorization: `Bearer ${key}` }, body: body ?? null });

describe('metadata cache invalidation across gateways', () => {
  it('a PATCH through A is what B runs next; a delete through A is 404 on B', async () => {
    expect(((await (await onB('GET', '/v1/functions/f')).json()) as { memoryMb: number }).memoryMb).toBe(256); // now cached on B
    expect((await h.req('PATCH', '/v1/functions/f', { key, json: { memoryMb: 64 } })).status).toBe(200);
    await poll(async () => ((await (await onB('GET', '/v1/functions/f')).json()) as { memoryMb: number }).memoryMb === 64, 'the PATCH on B');
    expect((await h.req('DELETE', '/v1/functions/f', { key })).status).toBe(204);
    await poll(async () => (await onB('GET', '/v1/functions/f')).status === 404, 'the delete on B');
  });

  it('a key revoked through A stops working on B', async () => {
    const k2 = (await (await h.req('POST', '/v1/tenants/acme/keys', { key: h.adminKey })).json()) as { apiKey: string; keyId: string };
    const onB2 = () => b.request('/v1/functions', { headers: { authorization: `Bearer ${k2.apiKey}` } });
    expect((await onB2()).status).toBe(200); // cached on B
    expect((await h.req('DELETE', `/v1/tenants/acme/keys/${k2.keyId}`, { key: h.adminKey })).status).toBe(204);
    await poll(async () => (await onB2()).status === 401, 'the revocation on B');
  });

  it('entries expire after the TTL; misses are not cached; the size is bounded', async () => {
    const c = new MetadataCache({ ttlMs: 20, maxEntries: 2 });
    let loads = 0;
    const rec = { tenant: 't', id: 'i', createdAt: '' };
    const load = async () => (loads++, rec);
    await c.key('a', load);
    await c.key('a', load);
    expect(loads).toBe(1);
    await new Promise((r) => setTimeout(r, 30));
    await c.key('a', load);
    expect(loads).toBe(2);
    let misses = 0;
    await c.key('nope', async () => (misses++, null));
    await c.key('nope', async () => (misses++, null));
    expect(misses).toBe(2);
    await c.key('b', load);
    await c.key('c', load); // evicts 'a'
    await c.key('a', load);
    expect(loads).toBe(5);
  });
});
