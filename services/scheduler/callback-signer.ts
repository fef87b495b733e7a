/**
 * @module scheduler/callback-signer
 * Signatures of completion callbacks (./callbacks.ts), so a receiver can tell a callback came from this host
 * and was not altered: `X-Fnhost-Signature: sha256=<hex HMAC-SHA256 of the raw body>` — the GitHub webhook
 * scheme, verifiable in a few lines in any language (see {@link verifyCallbackSignature}).
 *
 * The key is per tenant, so one tenant can never forge callbacks to another tenant's receiver:
 *   tenantSecret = hex(HMAC-SHA256(hostSecret, "fnhost-callback-v1:" + tenant))
 * and the receiver uses that hex string (as UTF-8 bytes) as its HMAC key. A tenant reads its own with
 * `GET /v1/callbacks/secret`. The host secret is `FNHOST_CALLBACK_SECRET` when set (rotating it rotates every
 * tenant's), otherwise 32 random bytes created once in Redis (`P:callback:secret`, SET NX) so every node and
 * gateway sharing the Redis signs with the same key across restarts.
 *
 * @example
 * const signer = new CallbackSigner(redis, 'fnhost');
 * const sig = await signer.sign('acme', body);                 // 'sha256=…'
 * verifyCallbackSignature(await signer.secretFor('acme'), body, sig);   // true
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';
import { createKeys } from './keys.ts';

/** 32 bytes: the HMAC-SHA256 block-size guidance (RFC 2104 §3: at least the hash output length). */
const HOST_SECRET_BYTES = 32;
const DERIVE_LABEL = 'fnhost-callback-v1:';

export class CallbackSigner {
  private host: Promise<Buffer> | undefined;
  private readonly tenants = new Map<string, string>();

  /** `configured`: FNHOST_CALLBACK_SECRET (any non-empty string); without it the Redis-held one. */
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly configured?: string,
  ) {}

  /** The Redis key of the generated host secret. */
  static key(prefix: string): string {
    return createKeys(prefix).callbackSecret();
  }

  private hostSecret(): Promise<Buffer> {
    if (this.configured) return Promise.resolve(Buffer.from(this.configured, 'utf8'));
    this.host ??= (async () => {
      const key = CallbackSigner.key(this.prefix);
      await this.redis.set(key, randomBytes(HOST_SECRET_BYTES).toString('hex'), 'NX');
      const v = await this.redis.get(key);
      if (!v) throw new Error('callback secret missing from Redis');
      return Buffer.from(v, 'hex');
    })();
    // a failed read (Redis away) is tried again next time, not cached
    this.host.catch(() => (this.host = undefined));
    return this.host;
  }

  /** The tenant's verification key (hex): what `GET /v1/callbacks/secret` returns to that tenant. */
  async secretFor(tenant: string): Promise<string> {
    const hit = this.tenants.get(tenant);
    if (hit) return hit;
    const s = createHmac('sha256', await this.hostSecret()).update(DERIVE_LABEL + tenant).digest('hex');
    this.tenants.set(tenant, s);
    return s;
  }

  /** The `X-Fnhost-Signature` value of `body` for `tenant`. */
  async sign(tenant: string, body: string | Buffer): Promise<string> {
    return signWith(await this.secretFor(tenant), body);
  }
}

/** `sha256=<hex>` of `body` under `secret` (the tenant's hex string, used as UTF-8 bytes). */
export function signWith(secret: string, body: string | Buffer): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/**
 * What a receiver does (in constant time): recompute over the RAW body bytes, compare.
 * @example
 * if (!verifyCallbackSignature(process.env.FNHOST_TENANT_SECRET!, rawBody, req.headers['x-fnhost-signature'])) return res.status(401);
 */
export function verifyCallbackSignature(secret: string, body: string | Buffer, header: string | undefined | null): boolean {
  if (typeof header !== 'string') return false;
  const want = Buffer.from(signWith(secret, body));
  const got = Buffer.from(header);
  return got.length === want.length && timingSafeEqual(got, want);
}
