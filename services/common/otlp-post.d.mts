/** What createPoster needs of the exporter's config (services/common/trace-export.ts OtlpHttpConfig). */
export interface PosterConfig {
  url: string;
  protocol: 'http/protobuf' | 'http/json';
  headers: Record<string, string>;
  timeoutMs: number;
  gzip: boolean;
  maxConcurrentExports: number;
}

export interface Poster {
  /** gzip when configured, POST, then `done(ok, why)` exactly once (ok: a 2xx answer) */
  post(body: Uint8Array | string, done: (ok: boolean, why?: string) => void): void;
  /** closes the kept-alive connections */
  destroy(): void;
}

export function createPoster(cfg: PosterConfig): Poster;
