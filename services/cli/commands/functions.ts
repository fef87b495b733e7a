/**
 * @module cli/commands/functions
 * `fnhost deploy | invoke | logs | ls | rm | config | invocation | dead-letters`: the tenant's commands.
 */
import { randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { CliError, EXIT, check, jsonOf, request, type Endpoint } from '../api.ts';
import { formatMs, parseDuration, parseEnvPairs, parseIntFlag, parseMemory, printJson, progress, table } from '../output.ts';
import { packDirectory } from '../pack.ts';

export interface Common {
  json: boolean;
  ep: Endpoint;
}

function requireKey(ep: Endpoint) {
  if (!ep.key) throw new CliError('no API key: pass --key, set FNHOST_KEY, or put "key" in ~/.config/fnhost/config.json', EXIT.usage);
}

/** multipart/form-data with a JSON `config` part and a binary `code` part (RFC 7578). */
export function multipart(config: unknown, code: Buffer | null, codeName: string): { body: Buffer; contentType: string } {
  const boundary = `fnhost-${randomBytes(12).toString('hex')}`;
  const parts: Buffer[] = [
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="config"\r\nContent-Type: application/json\r\n\r\n${JSON.stringify(config)}\r\n`),
  ];
  if (code) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="code"; filename="${codeName.replace(/["\r\n]/g, '_')}"\r\nContent-Type: application/octet-stream\r\n\r\n`));
    parts.push(code, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(parts), contentType: `multipart/form-data; boundary=${boundary}` };
}

/** The runtime a directory most likely holds, from its entry files; null when nothing says. */
async function guessRuntime(dir: string): Promise<string | null> {
  const has = async (f: string) => stat(`${dir}/${f}`).then(() => true, () => false);
  if ((await has('index.js')) || (await has('index.mjs')) || (await has('index.cjs'))) return 'node';
  if (await has('main.py')) return 'python';
  if (await has('run')) return 'exec';
  return null;
}

export interface DeployFlags {
  name?: string;
  runtime?: string;
  handler?: string;
  memory?: string;
  timeout?: string;
  env?: string[];
  concurrency?: string;
  retries?: string;
  public?: boolean;
}

export async function deploy(c: Common, source: string | undefined, f: DeployFlags): Promise<number> {
  requireKey(c.ep);
  if (!source && !f.runtime?.startsWith('image:')) throw new CliError('usage: fnhost deploy <dir|archive> --name <name> [--runtime node|python|exec|image:<name>] ...', EXIT.usage);
  let code: Buffer | null = null;
  let runtime = f.runtime;
  let codeName = 'code.tar.gz';
  if (source) {
    const st = await stat(source).catch(() => null);
    if (!st) throw new CliError(`${source}: no such file or directory`, EXIT.usage);
    if (st.isDirectory()) {
      let files = 0;
      code = await packDirectory(source, () => files++);
      if (!c.json) process.stderr.write(`packed ${files} files from ${source} (${(code.length / 1024).toFixed(1)} KiB)\n`);
      runtime ??= (await guessRuntime(source)) ?? undefined;
    } else {
      code = await readFile(source);
      codeName = basename(source);
    }
  }
  if (!runtime) throw new CliError('--runtime is required (node, python, exec or image:<name>)', EXIT.usage);
  const name = f.name ?? (source ? basename(source).replace(/\.(zip|tar\.gz|tgz)$/, '').toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '') : '');
  if (!name) throw new CliError('--name is required', EXIT.usage);
  const config: Record<string, unknown> = { runtime };
  if (f.handler) config.handler = f.handler;
  if (f.memory) config.memoryMb = parseMemory(f.memory, 'memory');
  if (f.timeout) config.timeoutMs = parseDuration(f.timeout, 'timeout');
  if (f.env?.length) config.env = parseEnvPairs(f.env);
  if (f.concurrency) config.concurrency = parseIntFlag(f.concurrency, 'concurrency');
  if (f.retries) config.retries = parseIntFlag(f.retries, 'retries');
  if (f.public) config.public = true;
  const { body, contentType } = multipart(config, code, codeName);
  const bar = progress('uploading');
  const r = check(
    await request(c.ep, { method: 'PUT', path: `/v1/functions/${encodeURIComponent(name)}`, body, headers: { 'content-type': contentType }, onProgress: (s, t) => bar.update(s, t) }).finally(() => bar.done()),
  );
  const v = jsonOf(r);
  if (c.json) printJson(v);
  else {
    process.stdout.write(`deployed ${v.name} version ${v.version} (${v.runtime}, ${v.memoryMb} MB, timeout ${formatMs(v.timeoutMs)}${v.public ? ', public' : ''})\n`);
    process.stdout.write(`endpoint: ${c.ep.url}/fn/${v.tenant}/${v.name}/\n`);
  }
  return EXIT.ok;
}

export interface InvokeFlags {
  data?: string;
  file?: string;
  async?: boolean;
  'content-type'?: string;
  'idempotency-key'?: string;
  /** async only: the host POSTs the final outcome there, signed (sent as X-Callback-Url; README "Completion callbacks") */
  'callback-url'?: string;
  verbose?: boolean;
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function invoke(c: Common, ref: string | undefined, f: InvokeFlags): Promise<number> {
  requireKey(c.ep);
  if (!ref) throw new CliError('usage: fnhost invoke <name>[:version] [--data <text> | --file <path|->] [--async [--callback-url URL]]', EXIT.usage);
  if (f.data !== undefined && f.file !== undefined) throw new CliError('give --data or --file, not both', EXIT.usage);
  if (f['callback-url'] !== undefined && !f.async) throw new CliError('--callback-url needs --async (a sync invocation answers directly)', EXIT.usage);
  const body = f.data !== undefined ? Buffer.from(f.data) : f.file === '-' ? await readStdin() : f.file !== undefined ? await readFile(f.file) : Buffer.alloc(0);
  const headers: Record<string, string> = { 'content-type': f['content-type'] ?? (f.data !== undefined && /^\s*[[{"]/.test(f.data) ? 'application/json' : 'application/octet-stream') };
  if (f['idempotency-key']) headers['idempotency-key'] = f['idempotency-key'];
  // sent as given, even empty: the host judges the URL (scheme, credentials, allow-list) and answers 400
  if (f['callback-url'] !== undefined) headers['x-callback-url'] = f['callback-url'];
  const path = `/v1/functions/${encodeURIComponent(ref)}/invoke${f.async ? '?mode=async' : ''}`;
  const r = await request(c.ep, { method: 'POST', path, body, headers });
  const id = r.headers['x-fnhost-invocation-id'];
  try {
    check(r);
  } catch (e) {
    if (id) process.stderr.write(`invocation ${id}\n`);
    throw e;
  }
  if (f.async) {
    const v = jsonOf(r);
    if (c.json) printJson(v);
    else process.stdout.write(`${v.invocationId}\n`);
    return EXIT.ok;
  }
  if (f.verbose || c.json) process.stderr.write(`invocation ${id} start=${r.headers['x-fnhost-start']} duration=${r.headers['x-fnhost-duration-ms']}ms\n`);
  process.stdout.write(r.body);
  if (process.stdout.isTTY && r.body.length && r.body[r.body.length - 1] !== 10) process.stdout.write('\n');
  return EXIT.ok;
}

export async function invocation(c: Common, id: string | undefined): Promise<number> {
  requireKey(c.ep);
  if (!id) throw new CliError('usage: fnhost invocation <id>', EXIT.usage);
  const v = jsonOf(check(await request(c.ep, { method: 'GET', path: `/v1/invocations/${encodeURIComponent(id)}` })));
  if (c.json) printJson(v);
  else {
    process.stdout.write(table(['id', 'function', 'status', 'start', 'attempts', 'duration'], [[v.id, `${v.function}:${v.version}`, v.status, v.start, v.attempts, v.durationMs === undefined ? undefined : `${v.durationMs}ms`]]));
    if (v.error) process.stdout.write(`error: ${v.error.type}: ${v.error.message}\n`);
    if (v.result !== undefined) process.stdout.write(`result: ${typeof v.result === 'string' ? v.result : JSON.stringify(v.result)}\n`);
  }
  return v.status === 'failed' ? EXIT.functionFailed : EXIT.ok;
}

export async function logs(c: Common, ref: string | undefined, f: { follow?: boolean; invocation?: string; since?: string; limit?: string }): Promise<number> {
  requireKey(c.ep);
  if (!ref) throw new CliError('usage: fnhost logs <name> [-f] [--invocation <id>] [--since 5m]', EXIT.usage);
  const q = new URLSearchParams();
  if (f.invocation) q.set('invocation', f.invocation);
  if (f.since) q.set('since', f.since);
  if (f.limit) q.set('limit', f.limit);
  if (f.follow) q.set('follow', '1');
  let rest = '';
  const print = (line: string) => {
    if (!line) return;
    if (c.json) return void process.stdout.write(line + '\n');
    const l = JSON.parse(line) as { ts: number; stream: string; invocationId: string; line: string };
    process.stdout.write(`${new Date(l.ts).toISOString()} ${l.invocationId.slice(0, 12)} ${l.stream === 'stderr' ? 'ERR' : 'OUT'} ${l.line}\n`);
  };
  const onChunk = (b: Buffer) => {
    const parts = (rest + b.toString('utf8')).split('\n');
    rest = parts.pop()!;
    parts.forEach(print);
  };
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  try {
    const r = await request(c.ep, { method: 'GET', path: `/v1/functions/${encodeURIComponent(ref)}/logs?${q}`, onChunk, signal: ac.signal });
    if (r.status === 499) return EXIT.ok;
    check(r);
    print(rest);
  } finally {
    process.off('SIGINT', stop);
  }
  return EXIT.ok;
}

export async function list(c: Common): Promise<number> {
  requireKey(c.ep);
  const v = jsonOf(check(await request(c.ep, { method: 'GET', path: '/v1/functions' })));
  if (c.json) return printJson(v.functions), EXIT.ok;
  type F = { name: string; version: number; runtime: string; memoryMb: number; timeoutMs: number; public: boolean; createdAt: string };
  process.stdout.write(
    table(
      ['name', 'version', 'runtime', 'memory', 'timeout', 'public', 'updated'],
      (v.functions as F[]).map((f) => [f.name, f.version, f.runtime, `${f.memoryMb} MB`, formatMs(f.timeoutMs), f.public ? 'yes' : 'no', f.createdAt]),
    ),
  );
  return EXIT.ok;
}

/**
 * `fnhost rm <name>` deletes the function (every version); `fnhost rm <name>:<n>` deletes version n only
 * (the server refuses the latest: deploy a newer one first, or delete the function).
 * @example
 * await remove(c, 'hello:2');   // DELETE /v1/functions/hello/versions/2
 */
export async function remove(c: Common, ref: string | undefined): Promise<number> {
  requireKey(c.ep);
  if (!ref) throw new CliError('usage: fnhost rm <name>[:<version>]', EXIT.usage);
  const i = ref.lastIndexOf(':');
  const name = i < 0 ? ref : ref.slice(0, i);
  const path = i < 0 ? `/v1/functions/${encodeURIComponent(name)}` : `/v1/functions/${encodeURIComponent(name)}/versions/${encodeURIComponent(ref.slice(i + 1))}`;
  check(await request(c.ep, { method: 'DELETE', path }));
  if (c.json) printJson({ deleted: ref });
  else process.stdout.write(`deleted ${ref}\n`);
  return EXIT.ok;
}

export interface ConfigFlags {
  memory?: string;
  timeout?: string;
  env?: string[];
  'unset-env'?: string[];
  concurrency?: string;
  retries?: string;
  public?: boolean;
  private?: boolean;
}

/** `fnhost config <name> --memory 512 ...`: a PATCH; --env adds/overrides names, --unset-env removes them. */
export async function config(c: Common, name: string | undefined, f: ConfigFlags): Promise<number> {
  requireKey(c.ep);
  if (!name) throw new CliError('usage: fnhost config <name> [--memory 512] [--timeout 10s] [--env K=V] [--unset-env K] [--public|--private]', EXIT.usage);
  if (f.public && f.private) throw new CliError('give --public or --private, not both', EXIT.usage);
  const patch: Record<string, unknown> = {};
  if (f.memory) patch.memoryMb = parseMemory(f.memory, 'memory');
  if (f.timeout) patch.timeoutMs = parseDuration(f.timeout, 'timeout');
  if (f.concurrency) patch.concurrency = parseIntFlag(f.concurrency, 'concurrency');
  if (f.retries) patch.retries = parseIntFlag(f.retries, 'retries');
  if (f.public) patch.public = true;
  if (f.private) patch.public = false;
  if (f.env?.length || f['unset-env']?.length) {
    const cur = jsonOf(check(await request(c.ep, { method: 'GET', path: `/v1/functions/${encodeURIComponent(name)}` })));
    const env: Record<string, string> = { ...cur.env, ...parseEnvPairs(f.env) };
    for (const k of f['unset-env'] ?? []) delete env[k];
    patch.env = env;
  }
  if (Object.keys(patch).length === 0) {
    const cur = jsonOf(check(await request(c.ep, { method: 'GET', path: `/v1/functions/${encodeURIComponent(name)}` })));
    if (c.json) printJson(cur);
    else process.stdout.write(table(['name', 'version', 'runtime', 'handler', 'memory', 'timeout', 'public', 'env'], [[cur.name, cur.version, cur.runtime, cur.handler, `${cur.memoryMb} MB`, formatMs(cur.timeoutMs), cur.public ? 'yes' : 'no', Object.keys(cur.env).join(',')]]));
    return EXIT.ok;
  }
  const v = jsonOf(check(await request(c.ep, { method: 'PATCH', path: `/v1/functions/${encodeURIComponent(name)}`, body: JSON.stringify(patch), headers: { 'content-type': 'application/json' } })));
  if (c.json) printJson(v);
  else process.stdout.write(`${v.name} version ${v.version}: ${v.memoryMb} MB, timeout ${formatMs(v.timeoutMs)}${v.public ? ', public' : ''}\n`);
  return EXIT.ok;
}

export async function deadLetters(c: Common, sub: string | undefined, id: string | undefined): Promise<number> {
  requireKey(c.ep);
  if (sub === 'ls' || sub === undefined) {
    const v = jsonOf(check(await request(c.ep, { method: 'GET', path: '/v1/dead-letters' })));
    if (c.json) return printJson(v.deadLetters), EXIT.ok;
    type D = { id: string; function: string; version: number; attempts: number; error?: { type: string; message: string } };
    process.stdout.write(table(['id', 'function', 'attempts', 'error'], (v.deadLetters as D[]).map((d) => [d.id, `${d.function}:${d.version}`, d.attempts, d.error ? `${d.error.type}: ${d.error.message}` : ''])));
    return EXIT.ok;
  }
  if (sub === 'redrive' && id) {
    const v = jsonOf(check(await request(c.ep, { method: 'POST', path: `/v1/dead-letters/${encodeURIComponent(id)}/redrive` })));
    if (c.json) printJson(v);
    else process.stdout.write(`${v.invocationId}\n`);
    return EXIT.ok;
  }
  throw new CliError('usage: fnhost dead-letters [ls | redrive <id>]', EXIT.usage);
}
