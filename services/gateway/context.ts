/**
 * @module gateway/context
 * What the gateway is built from ({@link GatewayDeps}) and what a request carries through its middleware
 * ({@link GatewayEnv}). Everything the routes use arrives through `createGateway({...})`; nothing is global.
 */
import type { MiddlewareHandler } from 'hono';
import type { Logger } from '../common/log.ts';
import type { InvocationClient } from '../scheduler/types.ts';
import type { ImageStore } from '../store/types.ts';
import type { MetadataStore } from '../store/metadata.ts';
import type { Admission } from './admission.ts';
import type { FailedCallbacksApi } from './callbacks.ts';

/** Who is calling: the operator (admin key) or one tenant (one of its keys). */
export type Principal = { kind: 'admin' } | { kind: 'tenant'; tenant: string; keyId: string };

export type GatewayEnv = {
  Variables: {
    principal: Principal;
  };
};

/** Size caps of request bodies, in bytes. */
export interface GatewayLimits {
  /** sync invoke and HTTP endpoint bodies. */
  syncBodyBytes: number;
  /** async invoke bodies (they are stored in Redis until run). */
  asyncBodyBytes: number;
  /** the `code` part of a deploy. */
  codeBytes: number;
  /** an image import (`docker save` / OCI layout tar), streamed to a temp file. */
  imageBytes: number;
}

/**
 * Defaults of the contract (issue 6): 6 MB sync and 256 KB async bodies and 50 MB code, AWS Lambda's
 * request caps (reference/peers.md [L1][L2]), in binary units. Images: 2 GiB, a generous ceiling for a
 * function's rootfs that still bounds the temp file.
 */
export const DEFAULT_LIMITS: GatewayLimits = {
  syncBodyBytes: 6 * 1024 * 1024,
  asyncBodyBytes: 256 * 1024,
  codeBytes: 50 * 1024 * 1024,
  imageBytes: 2 * 1024 * 1024 * 1024,
};

/** The hooks the observability part plugs in (services/common/metrics.ts and tracing); all optional. */
export interface GatewayObservability {
  /** mounted first: spans/metrics per HTTP request ('http request'). */
  httpMiddleware?: MiddlewareHandler;
  /** GET /metrics: Prometheus text exposition. */
  metrics?: () => Promise<{ contentType: string; body: string }>;
}

export interface GatewayDeps {
  store: MetadataStore;
  client: InvocationClient;
  images: ImageStore;
  /** sha256 hex of the admin key (services/store/keys.ts hashKey); the plain key is never held. */
  adminKeyHash: string;
  /** where image uploads are spooled before import (on the state dir's filesystem). */
  tmpDir: string;
  limits?: Partial<GatewayLimits>;
  /** tenant concurrency accounting; the composition root starts (heartbeat) and closes it. Default: one that assumes a single gateway. */
  admission?: Admission;
  observability?: GatewayObservability;
  logger?: Logger;
  /** a tenant's callback verification key (services/scheduler/callback-signer.ts), for GET /v1/callbacks/secret */
  callbackSecret?: (tenant: string) => Promise<string>;
  /** failed completion callbacks (services/scheduler/callback-failures.ts), for /v1/callbacks/failed */
  failedCallbacks?: FailedCallbacksApi;
}
