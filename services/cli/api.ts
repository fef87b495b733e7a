/**
 * @module cli/api
 * The CLI's HTTP client: where the host is and which key to send (flag → env → config file), requests with
 * JSON or raw bodies, uploads with progress, and the mapping of answers to exit codes.
 *
 * Endpoint and key, first found wins:
 *   1. `--url` / `--key`
 *   2. FNHOST_URL / FNHOST_KEY
 *   3. the config file: $FNHOST_CONFIG, else ~/.config/fnhost/config.json — `{"url": "...", "key": "...", "adminKey": "..."}`
 *   4. url http://127.0.0.1:8080; for admin commands on the host itself, FNHOST_ADMIN_KEY or
 *      `<FNHOST_STATE_DIR>/admin-key` when readable (root on the host).
 *
 * Exit codes ({@link EXIT}): 0 ok · 1 the function failed (FunctionError, OutOfMemory, Crashed, Timeout,
 * ResponseTooLarge) · 2 usage · 3 not allowed (401/403) · 4 not found · 5 request refused (400/409/413/422)
 * · 6 unavailable or busy (429/503, host unreachable) · 7 server fault.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { DEFAULT_STATE_DIR } from '../host/config.ts';
import { ADMIN_KEY_FILE } from '../host/admin-key.ts';

export const EXIT = { ok: 0, functionFailed: 1, usage: 2, auth: 3, notFound: 4, refused: 5, unavailable: 6, server: 7 } as const;

/** A failure the CLI reports with one line and an exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    readonly body?: unknown,
  ) {
    super(message);
  }
}

const FUNCTION_FAILURES = new Set(['FunctionError', 'OutOfMemory', 'Crashed', 'Timeout', 'ResponseTooLarge']);

export function exitCodeFor(status: number, type?: string): number {
  if (type && FUNCTION_FAILURES.has(type)) return EXIT.functionFailed;
  if (status === 401 || status === 403) return EXIT.auth;
  if (status === 404) return EXIT.notFound;
  if (status === 429 || status === 503) return EXIT.unavailable;
  if (status >= 400 && status < 500) return EXIT.refused;
  return EXIT.server;
}

export interface ConfigFile {
  url?: string;
  key?: string;
  adminKey?: string;
}

export function configFilePath(env: NodeJS.ProcessEnv): string {
  return env.FNHOST_CONFIG ?? join(env.HOME ?? homedir(), '.config', 'fnhost', 'config.json');
}

/** Merges `update` into the config file, created 0600 (it holds keys). */
export function writeConfigFile(env: NodeJS.ProcessEnv, update: ConfigFile): string {
  const file = configFilePath(env);
  let cur: ConfigFile = {};
  try {
    cur = JSON.parse(readFileSync(file, 'utf8')) as ConfigFile;
  } catch {
    // absent or unreadable: start afresh
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, JSON.stringify({ ...cur, ...update }, null, 2) + '\n', { mode: 0o600 });
  return file;
}

function readConfigFile(env: NodeJS.ProcessEnv): ConfigFile {
  const file = configFilePath(env);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return {};
  }
  try {
    const v = JSON.parse(text) as ConfigFile;
    return typeof v === 'object' && v ? v : {};
  } catch {
    throw new CliError(`config file ${file} is not valid JSON`, EXIT.usage);
  }
}

export interface Endpoint {
  url: string;
  key?: string;
}

/** Resolves the endpoint and the key; `admin` looks for the admin key too. */
export function resolveEndpoint(flags: { url?: string; key?: string }, env: NodeJS.ProcessEnv, admin = false): Endpoint {
  const file = readConfigFile(env);
  const url = (flags.url ?? env.FNHOST_URL ?? file.url ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+/.test(url)) throw new CliError(`endpoint ${JSON.stringify(url)} must start with http:// or https://`, EXIT.usage);
  let key = flags.key ?? env.FNHOST_KEY ?? (admin ? (env.FNHOST_ADMIN_KEY ?? file.adminKey) : undefined) ?? file.key;
  if (!key && admin) {
    try {
      key = readFileSync(join(env.FNHOST_STATE_DIR ?? DEFAULT_STATE_DIR, ADMIN_KEY_FILE), 'utf8').trim() || undefined;
    } catch {
      // not on the host, or not root: the caller says which key is missing
    }
  }
  return key ? { url, key } : { url };
}

export interface ApiResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export interface RequestOptions {
  method: string;
  path: string;
  body?: Buffer | string;
  headers?: Record<string, string>;
  /** called as the body is written, with bytes sent and the total. */
  onProgress?: (sent: number, total: number) => void;
  /** stream the response (logs -f): called per chunk; the promise resolves at the end. */
  onChunk?: (chunk: Buffer) => void;
  signal?: AbortSignal;
}

/** 64 KiB: progress moves smoothly and the socket's buffer never holds the whole upload. */
const UPLOAD_CHUNK = 64 * 1024;

/** One HTTP request; resolves with any status (see {@link check}); rejects with CliError when unreachable. */
export function request(ep: Endpoint, o: RequestOptions): Promise<ApiResponse> {
  const u = new URL(ep.url + o.path);
  const body = o.body === undefined ? undefined : Buffer.isBuffer(o.body) ? o.body : Buffer.from(o.body);
  const headers: Record<string, string> = { ...o.headers };
  if (ep.key) headers.authorization = `Bearer ${ep.key}`;
  if (body) headers['content-length'] = String(body.length);
  const fn = u.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = fn(u, { method: o.method, headers, ...(o.signal ? { signal: o.signal } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => (o.onChunk && res.statusCode! < 300 ? o.onChunk(c) : chunks.push(c)));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.name === 'AbortError') return resolve({ status: 499, headers: {}, body: Buffer.alloc(0) });
      reject(new CliError(`cannot reach ${ep.url}: ${e.code ?? e.message}`, EXIT.unavailable));
    });
    if (!body) return req.end();
    let sent = 0;
    const write = () => {
      while (sent < body.length) {
        const chunk = body.subarray(sent, sent + UPLOAD_CHUNK);
        sent += chunk.length;
        o.onProgress?.(sent, body.length);
        if (!req.write(chunk)) return void req.once('drain', write);
      }
      req.end();
    };
    write();
  });
}

/** Throws the server's typed error as a CliError unless the status is 2xx. */
export function check(r: ApiResponse): ApiResponse {
  if (r.status < 300) return r;
  let type: string | undefined;
  let message = `HTTP ${r.status}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(r.body.toString('utf8'));
    const e = (parsed as { error?: { type?: string; message?: string; field?: string } }).error;
    if (e?.type) {
      type = e.type;
      message = `${e.type}: ${e.message ?? ''}${e.field ? ` (field: ${e.field})` : ''}`;
    }
  } catch {
    if (r.body.length) message += `: ${r.body.toString('utf8').slice(0, 200)}`;
  }
  throw new CliError(message, exitCodeFor(r.status, type), parsed);
}

export function jsonOf<T = any>(r: ApiResponse): T {
  return JSON.parse(r.body.toString('utf8')) as T;
}
