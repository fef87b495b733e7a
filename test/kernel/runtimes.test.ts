/**
 * Runtime conformance suite (issue 4): the same behaviours against every runtime style — node-fetch,
 * node-event, node-cjs, python, exec-sh (busybox) and exec in an imported image — through the public host
 * API (prepare → specialise → invoke) on real sandboxes when they are available (runtimes-backend.ts).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Crashed, FunctionError, OutOfMemory, ResponseTooLarge, Timeout, type FnhostError } from '../../services/common/errors.ts';
import type { FunctionVersion, InvocationPayload, LogLine, RuntimeName } from '../../services/common/model.ts';
import type { Sandbox } from '../../services/sandbox/types.ts';
import type { CodeLayer, ResolvedImage } from '../../services/store/types.ts';
import { logsOf, prepare, specialise, type Instance } from '../../runtime/host/index.ts';
import { codeLayer, type ImageName } from './runtimes-backend.ts';
import { useRuntimeBackend } from './runtimes-lifecycle.ts';

type Behaviour = 'echo' | 'env' | 'context' | 'throw' | 'exit' | 'oom' | 'slow' | 'log' | 'flood' | 'big';

interface Style {
  name: string;
  runtime: RuntimeName;
  fixture: string;
  image: ImageName | 'imported';
  handler: (b: Behaviour) => string;
  /** true for exec: a non-zero exit is the function's error, the body is stdin → stdout bytes. */
  exec: boolean;
  /** exec: the pooled sandbox is pre-started with the image's rootfs (PrepareOptions.prestart, the scheduler's busybox pool). */
  prestart?: boolean;
}

const STYLES: Style[] = [
  { name: 'node-fetch', runtime: 'node', fixture: 'node-fetch', image: 'node', handler: (b) => b, exec: false },
  { name: 'node-event', runtime: 'node', fixture: 'node-event', image: 'node', handler: (b) => `${b}.handler`, exec: false },
  { name: 'node-cjs', runtime: 'node', fixture: 'node-cjs', image: 'node', handler: (b) => `${b}.handler`, exec: false },
  { name: 'python', runtime: 'python', fixture: 'python', image: 'python', handler: (b) => `${b}.handler`, exec: false },
  { name: 'exec-sh', runtime: 'exec', fixture: 'exec-sh', image: 'busybox', handler: (b) => b, exec: true },
  { name: 'exec-image', runtime: 'image:imported', fixture: 'exec-sh', image: 'imported', handler: (b) => b, exec: true },
  { name: 'exec-sh-prestarted', runtime: 'exec', fixture: 'exec-sh', image: 'busybox', handler: (b) => b, exec: true, prestart: true },
];

const images = new Map<string, ResolvedImage | null>();
const suite = useRuntimeBackend(async (be) => {
  for (const n of ['node', 'python', 'busybox'] as const) images.set(n, await be.image(n));
  images.set('imported', await be.importedImage());
});
const { live, sandboxes } = suite;

let seq = 0;
function fnVersion(style: Style, b: Behaviour, over: Partial<FunctionVersion> = {}): FunctionVersion {
  return {
    tenant: 'rt-tenant', name: `rt-${style.name}-${b}`, version: 7, runtime: style.runtime, handler: style.handler(b),
    codeDigest: 'sha256:test', memoryMb: 128, timeoutMs: 5000, env: { GREETING: 'hello from env' }, concurrency: 1,
    public: false, createdAt: new Date(0).toISOString(), ...over,
  };
}

async function instance(
  style: Style,
  b: Behaviour,
  opts: { fn?: Partial<FunctionVersion>; code?: CodeLayer; onLog?: (l: LogLine) => void; logCapBytes?: number; pooledMemoryMb?: number } = {},
): Promise<Instance> {
  const image = images.get(style.image);
  if (!image) throw new Error(`image ${style.image} is not available on backend ${suite.be.name}`);
  const sb = await suite.be.createSandbox();
  sandboxes.push(sb);
  const pooled = await prepare(sb, style.runtime, image, { memoryMb: opts.pooledMemoryMb, prestart: style.prestart });
  const inst = await specialise(pooled, fnVersion(style, b, opts.fn), opts.code ?? codeLayer(style.fixture), image, {
    onLog: opts.onLog, logCapBytes: opts.logCapBytes,
  });
  live.push(inst);
  return inst;
}

const event = (body: Buffer | string, contentType?: string): InvocationPayload => ({
  kind: 'event', body: Buffer.isBuffer(body) ? body : Buffer.from(body), ...(contentType ? { contentType } : {}),
});
const id = () => `inv-${process.pid}-${++seq}-${randomBytes(3).toString('hex')}`;

async function rejection(p: Promise<unknown>): Promise<FnhostError> {
  try {
    await p;
  } catch (e) {
    return e as FnhostError;
  }
  throw new Error('expected the invocation to fail');
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.each(STYLES)('runtime $name', (style) => {
  it('echoes a JSON event', async () => {
    const inst = await instance(style, 'echo');
    const { response, handlerMs, durationMs, handlerSlept } = await inst.invoke({ id: id(), payload: event('{"a":1,"b":[true,null,"x"]}', 'application/json') });
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body.toString())).toEqual({ a: 1, b: [true, null, 'x'] });
    // the runtime's own time (the scheduler's hot set goes by it): at most what the host saw end to end
    expect(handlerMs).toBeGreaterThanOrEqual(0);
    expect(handlerMs).toBeLessThanOrEqual(durationMs);
    // node / python sample whether the call blocked, starting with an instance's first invocation
    expect(typeof handlerSlept).toBe(style.exec ? 'undefined' : 'boolean');
  });

  it('round-trips a binary body byte-exact', async () => {
    const inst = await instance(style, 'echo');
    // small, and large enough to arrive in many reads each way (5 MiB: under the 6 MiB response cap)
    for (const size of [1000, 5 * 1024 * 1024]) {
      const body = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(size)]);
      const { response } = await inst.invoke({ id: id(), payload: event(body, 'application/octet-stream') });
      expect(response.status).toBe(200);
      expect(response.body.equals(body)).toBe(true);
    }
  });

  it('sees the function env vars', async () => {
    const inst = await instance(style, 'env');
    const { response } = await inst.invoke({ id: id(), payload: event('') });
    const out = JSON.parse(response.body.toString());
    expect(out.GREETING).toBe('hello from env');
    if (style.name === 'node-fetch') expect(out.processEnv).toBe('hello from env');
  });

  it('passes the context fields', async () => {
    const inst = await instance(style, 'context', { fn: { memoryMb: 160, timeoutMs: 4000 } });
    const invId = id();
    const t0 = Date.now();
    const { response } = await inst.invoke({ id: invId, payload: event('{}', 'application/json') });
    const ctx = JSON.parse(response.body.toString());
    expect(ctx.invocationId).toBe(invId);
    expect(ctx.functionName).toBe(`rt-${style.name}-context`);
    expect(ctx.functionVersion).toBe('7');
    expect(ctx.memoryLimitInMB).toBe(160);
    if (style.exec) {
      expect(ctx.deadlineMs).toBeGreaterThan(t0 + 3000);
      expect(ctx.deadlineMs).toBeLessThanOrEqual(Date.now() + 4000);
    } else {
      expect(ctx.remainingMs).toBeGreaterThan(3000);
      expect(ctx.remainingMs).toBeLessThanOrEqual(4000);
      expect(ctx.hasLogger).toBe(true);
    }
  });

  it('reports a thrown error as FunctionError and stays alive', async () => {
    const inst = await instance(style, 'throw');
    const err = await rejection(inst.invoke({ id: id(), payload: event('{}') }));
    expect(err).toBeInstanceOf(FunctionError);
    if (style.exec) {
      expect(err.details.exitCode).toBe(7);
      expect(String(err.details.stderrTail)).toContain('boom from handler');
    } else {
      expect(err.message).toContain('boom from handler');
      expect(err.details.errorType).toBe('TypeError');
      expect(String(err.details.stack)).toContain('boom from handler');
    }
    expect(inst.alive).toBe(true);
    // The same instance keeps serving.
    await expect(inst.invoke({ id: id(), payload: event('{}') })).rejects.toBeInstanceOf(FunctionError);
  });

  it('reports a process exit mid-invocation as Crashed and destroys the instance', async () => {
    const inst = await instance(style, 'exit');
    const err = await rejection(inst.invoke({ id: id(), payload: event('{}') }));
    expect(err).toBeInstanceOf(Crashed);
    if (style.exec) expect(err.details.signal).toBe('SIGKILL');
    else expect(err.details.exitCode).toBe(3);
    expect(inst.alive).toBe(false);
    expect(inst.sandbox.state).toBe('destroyed');
    await expect(inst.invoke({ id: id(), payload: event('{}') })).rejects.toThrow(/not alive/);
  });

  it('reports allocating past the cap as OutOfMemory', { timeout: 40_000 }, async (t) => {
    if (!suite.be.enforcesMemory) t.skip(`backend ${suite.be.name} has no memory cgroup (real sandboxes not available yet)`);
    // A cgroup at its cap reclaims the runtime's own file-backed pages before the OOM killer fires; on a
    // busy 2-core host that can take seconds, so the deadline here is far away (this case is about the word).
    // created with the default 128 MiB, said so to prepare() as the scheduler does: the 64 MiB cap is still applied
    const inst = await instance(style, 'oom', { fn: { memoryMb: 64, timeoutMs: 25_000 }, pooledMemoryMb: 128 });
    const err = await rejection(inst.invoke({ id: id(), payload: event('{}') }));
    expect(err).toBeInstanceOf(OutOfMemory);
    expect(err.details.limitMb).toBe(64);
    expect(Number(err.details.peakMb)).toBeGreaterThan(32);
    expect(inst.alive).toBe(false);
    expect(inst.sandbox.state).toBe('destroyed');
  });

  it('kills an invocation that sleeps past its deadline with Timeout', async () => {
    const inst = await instance(style, 'slow', { fn: { timeoutMs: 300 } });
    const t0 = Date.now();
    const err = await rejection(inst.invoke({ id: id(), payload: event('{}') }));
    expect(err).toBeInstanceOf(Timeout);
    expect(err.details.timeoutMs).toBe(300);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(inst.alive).toBe(false);
    expect(inst.sandbox.state).toBe('destroyed');
  });

  it('serves 100 invocations on one instance', async () => {
    const inst = await instance(style, 'echo');
    for (let i = 0; i < 100; i++) {
      const body = Buffer.from(JSON.stringify({ i, pad: 'x'.repeat(i * 10) }));
      const { response } = await inst.invoke({ id: id(), payload: event(body, 'application/json') });
      expect(JSON.parse(response.body.toString())).toEqual({ i, pad: 'x'.repeat(i * 10) });
    }
    expect(inst.invocations).toBe(100);
    expect(inst.alive).toBe(true);
  });

  it('tags logs per invocation and keeps them out of the response', async () => {
    const sink: LogLine[] = [];
    const inst = await instance(style, 'log', { onLog: (l) => sink.push(l) });
    const ids = [id(), id(), id()];
    for (const [n, invId] of ids.entries()) {
      const { response, logs } = await inst.invoke({ id: invId, payload: event(String(n), 'text/plain') });
      expect(response.body.toString()).toBe('logged');
      expect(logs.map((l) => [l.invocationId, l.line]).sort()).toEqual(
        [[invId, `hello ${n}`], [invId, `warn ${n}`]].sort(),
      );
      expect(logs.find((l) => l.line === `warn ${n}`)!.stream).toBe('stderr');
    }
    for (const [n, invId] of ids.entries()) {
      expect(sink.filter((l) => l.invocationId === invId).map((l) => l.line).sort()).toEqual([`hello ${n}`, `warn ${n}`]);
    }
  });

  it('caps logs per invocation with a truncation marker', async () => {
    const cap = 64 * 1024;
    const inst = await instance(style, 'flood', { logCapBytes: cap });
    for (let round = 0; round < 2; round++) {
      const { response, logs, truncatedLogs } = await inst.invoke({ id: id(), payload: event('{}') });
      expect(response.body.toString()).toBe('done');
      expect(truncatedLogs).toBe(true);
      const kept = logs.filter((l) => !l.line.startsWith('[fnhost]'));
      expect(kept.reduce((n, l) => n + l.line.length + 1, 0)).toBeLessThanOrEqual(cap);
      expect(kept.length).toBeGreaterThan(50);
      expect(logs.at(-1)!.line).toMatch(/^\[fnhost\] log truncated: \d+ bytes dropped/);
    }
  });

  it('refuses a response above the cap with ResponseTooLarge', async () => {
    const inst = await instance(style, 'big');
    const err = await rejection(inst.invoke({ id: id(), payload: event('{}') }));
    expect(err).toBeInstanceOf(ResponseTooLarge);
    expect(err.details.limitBytes).toBe(6 * 1024 * 1024);
    expect(inst.alive).toBe(true);
  });
});

describe.each(STYLES.filter((s) => s.name === 'node-event' || s.name === 'python'))('log attribution on $name', (style) => {
  it('keeps every line with its own invocation across mixed successes, errors and quiet calls', async () => {
    const sink: LogLine[] = [];
    const inst = await instance(style, 'echo', { fn: { handler: 'mixed.handler' }, onLog: (l) => sink.push(l) });
    // fd: stderr written straight to fd 2; child (python): stdout from a subprocess with inherited stdio
    const ops = ['', 'out', 'err', 'out+err', 'out+throw', 'err+throw', 'throw', 'out+late', '', 'fd', 'out+fd+throw', 'child'];
    const ids: string[] = [];
    for (let n = 0; n < 90; n++) {
      const op = ops[n % ops.length]!;
      if (style.name === 'python' && op.includes('late')) continue;
      if (style.name !== 'python' && op.includes('child')) continue;
      const invId = id();
      ids.push(invId);
      let logs: LogLine[];
      try {
        const r = await inst.invoke({ id: invId, payload: event(JSON.stringify({ op, n }), 'application/json') });
        expect(op).not.toContain('throw');
        expect(JSON.parse(r.response.body.toString())).toEqual({ n });
        logs = r.logs;
      } catch (e) {
        expect(e).toBeInstanceOf(FunctionError);
        expect((e as Error).message).toBe(`thrown ${n}`);
        logs = logsOf(e);
      }
      const want = [...(op.includes('out') || op.includes('child') ? [`out ${n}`] : []), ...(op.includes('err') || op.includes('fd') ? [`err ${n}`] : [])];
      expect(logs.map((l) => l.line).sort()).toEqual(want.sort());
      expect(logs.every((l) => l.invocationId === invId)).toBe(true);
    }
    // a line written by a timer after the result, while no invocation runs, is no invocation's (sink only,
    // empty id; runtime-log-attribution.test.ts has the rule)
    if (style.name === 'node-event') {
      await until(() => sink.some((l) => l.line === 'late 7'));
      expect(sink.find((l) => l.line === 'late 7')!.invocationId).toBe('');
    }
    expect(inst.alive).toBe(true);
  });
});

describe('several instances at once', () => {
  it('keeps responses and logs apart across instances invoked concurrently', async () => {
    const picks = [STYLES[1]!, STYLES[3]!, STYLES[4]!, STYLES[1]!];
    const insts = await Promise.all(picks.map((st) => instance(st, 'log')));
    const seen = new Map<string, LogLine[]>();
    await Promise.all(insts.map(async (inst, k) => {
      for (let i = 0; i < 25; i++) {
        const invId = id();
        const tag = `${k}-${i}`;
        const { response, logs } = await inst.invoke({ id: invId, payload: event(tag, 'text/plain') });
        expect(response.body.toString()).toBe('logged');
        seen.set(invId, logs);
        expect(logs.map((l) => l.line).sort()).toEqual([`hello ${tag}`, `warn ${tag}`]);
        expect(logs.every((l) => l.invocationId === invId)).toBe(true);
      }
    }));
    expect(seen.size).toBe(100);
  });
});

describe('http invocations', () => {
  const http = (method: string, path: string, query: string, body = Buffer.alloc(0), headers: Record<string, string> = {}): InvocationPayload => ({
    kind: 'http', method, path, query, headers: { host: 'fn.example', ...headers }, body,
  });

  it('runs a Hono app exported as default unchanged', async () => {
    const style = STYLES[0]!;
    const code = codeLayer('node-hono', { withHono: true });
    const inst = await instance(style, 'echo', { code, fn: { handler: 'index' } });
    const a = await inst.invoke({ id: id(), payload: http('GET', '/hello/world', 'q=1') });
    expect(a.response.status).toBe(200);
    expect(a.response.headers['content-type']).toMatch(/application\/json/);
    expect(JSON.parse(a.response.body.toString())).toEqual({ hello: 'world', q: '1' });
    const bin = randomBytes(4096);
    const b = await inst.invoke({ id: id(), payload: http('POST', '/echo', '', bin, { 'content-type': 'application/octet-stream' }) });
    expect(b.response.status).toBe(201);
    expect(b.response.body.equals(bin)).toBe(true);
    const c = await inst.invoke({ id: id(), payload: http('GET', '/env', '') });
    expect(c.response.body.toString()).toBe('hello from env');
    const d = await inst.invoke({ id: id(), payload: http('DELETE', '/nope', '') });
    expect(d.response.status).toBe(404);
    expect(d.response.body.toString()).toBe('no route for DELETE /nope');
  });

  it('gives a fetch handler the path after /fn/<tenant>/<name> and the raw body', async () => {
    const inst = await instance(STYLES[0]!, 'echo');
    const { response } = await inst.invoke({ id: id(), payload: http('PUT', '/a/b', 'x=1&y=2', Buffer.from('payload'), { 'content-type': 'text/plain' }) });
    expect(response.headers['x-method']).toBe('PUT');
    expect(response.headers['x-path']).toBe('/a/b');
    expect(response.headers['x-query']).toBe('?x=1&y=2');
    expect(response.body.toString()).toBe('payload');
  });

  it.each(STYLES.filter((s) => s.name === 'node-event' || s.name === 'python'))('turns a $name Lambda proxy result into the response', async (style) => {
    const inst = await instance(style, 'echo', { fn: { handler: 'proxy.handler' } });
    const { response } = await inst.invoke({ id: id(), payload: http('GET', '/', '') });
    expect(response.status).toBe(418);
    expect(response.headers['x-teapot']).toBe('yes');
    expect(response.body.equals(Buffer.from([0, 1, 2, 253, 254, 255]))).toBe(true);
  });

  it.each(STYLES.filter((s) => s.exec))('gives a $name process the request as CGI variables', async (style) => {
    const inst = await instance(style, 'echo', { fn: { handler: 'cgi' } });
    const { response } = await inst.invoke({ id: id(), payload: http('POST', '/x/y', 'a=1', Buffer.from('body!'), { 'content-type': 'text/plain', 'x-test': 'yes' }) });
    expect(response.body.toString()).toBe('POST /x/y a=1 text/plain yes|body!');
  });

  it('runs a python async def handler', async () => {
    const inst = await instance(STYLES[3]!, 'echo', { fn: { handler: 'async_echo.handler' } });
    const { response } = await inst.invoke({ id: id(), payload: event('{"x":[1,2]}', 'application/json') });
    expect(JSON.parse(response.body.toString())).toEqual({ x: [1, 2] });
  });

  it.each(STYLES.filter((s) => s.name === 'node-event' || s.name === 'python'))('gives a $name event handler an event describing the request', async (style) => {
    const inst = await instance(style, 'echo');
    const bin = Buffer.from([0, 255, 1, 254]);
    const { response } = await inst.invoke({ id: id(), payload: http('POST', '/p', 'k=v', bin, { 'content-type': 'application/octet-stream' }) });
    const ev = JSON.parse(response.body.toString());
    expect(ev).toMatchObject({ method: 'POST', path: '/p', query: 'k=v', queryStringParameters: { k: 'v' }, isBase64Encoded: true });
    expect(Buffer.from(ev.body, 'base64').equals(bin)).toBe(true);
    expect(ev.headers['content-type']).toBe('application/octet-stream');
    const text = await inst.invoke({ id: id(), payload: http('POST', '/t', '', Buffer.from('héllo'), { 'content-type': 'text/plain' }) });
    expect(JSON.parse(text.response.body.toString())).toMatchObject({ body: 'héllo', isBase64Encoded: false });
  });
});

describe('loading', () => {
  it('reports a missing handler export as FunctionError at load and destroys the sandbox', async () => {
    const style = STYLES[1]!;
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const pooled = await prepare(sb, 'node', images.get('node')!);
    const err = await rejection(specialise(pooled, fnVersion(style, 'echo', { handler: 'echo.nope' }), codeLayer('node-event'), images.get('node')!));
    expect(err).toBeInstanceOf(FunctionError);
    expect(err.details.phase).toBe('load');
    expect(err.message).toMatch(/nope/);
    expect(sb.state).toBe('destroyed');
  });

  it.each([
    ['node', 'import-throws.handler', 'node-event', FunctionError, /broken at import/],
    ['python', 'import_throws.handler', 'python', FunctionError, /broken at import/],
    ['node', 'import-exits.handler', 'node-event', Crashed, /code 4/],
    ['node', 'import-slow.handler', 'node-event', Timeout, /loading the handler took longer than 300 ms/],
  ] as const)('reports a %s module failing at import (%s) and destroys the sandbox', async (rt, handler, fixture, Cls, re) => {
    const style = STYLES.find((s) => s.fixture === fixture)!;
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const pooled = await prepare(sb, rt, images.get(rt)!);
    const err = await rejection(specialise(pooled, fnVersion(style, 'echo', { handler, timeoutMs: 300 }), codeLayer(fixture), images.get(rt)!));
    expect(err).toBeInstanceOf(Cls);
    expect(err.message).toMatch(re);
    expect(err.details.phase).toBe('load');
    expect(sb.state).toBe('destroyed');
    expect(pooled.alive).toBe(false);
  });

  it('tags output made while loading the module as the load\'s (init)', async () => {
    const sink: LogLine[] = [];
    const inst = await instance(STYLES[1]!, 'echo', { fn: { handler: 'import-logs.handler' }, onLog: (l) => sink.push(l) });
    expect(sink).toEqual([expect.objectContaining({ invocationId: 'init', stream: 'stdout', line: 'loading module' })]);
    const { logs } = await inst.invoke({ id: id(), payload: event('1', 'application/json') });
    expect(logs).toEqual([]);
  });

  it('reports a python import error as FunctionError at load', async () => {
    const style = STYLES[3]!;
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const pooled = await prepare(sb, 'python', images.get('python')!);
    const err = await rejection(specialise(pooled, fnVersion(style, 'echo', { handler: 'missing_module.handler' }), codeLayer('python'), images.get('python')!));
    expect(err).toBeInstanceOf(FunctionError);
    expect(err.details.errorType).toBe('ModuleNotFoundError');
  });

  it('refuses a pooled sandbox of another runtime and leaves it usable', async () => {
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const pooled = await prepare(sb, 'python', images.get('python')!);
    await expect(specialise(pooled, fnVersion(STYLES[1]!, 'echo'), codeLayer('node-event'), images.get('node')!)).rejects.toThrow(/cannot run/);
    expect(pooled.alive).toBe(true);
    const inst = await specialise(pooled, fnVersion(STYLES[3]!, 'echo'), codeLayer('python'), images.get('python')!);
    live.push(inst);
    const { response } = await inst.invoke({ id: id(), payload: event('"ok"', 'application/json') });
    expect(response.body.toString()).toBe('ok');
  });

  it('loads CommonJS from a plain .js file (index.handler → index.js)', async () => {
    const inst = await instance(STYLES[2]!, 'echo', { fn: { handler: 'plain.handler' } });
    const { response } = await inst.invoke({ id: id(), payload: event('{"k":"v"}', 'application/json') });
    expect(JSON.parse(response.body.toString())).toEqual({ got: { k: 'v' }, fn: 'rt-node-cjs-echo' });
  });

  it('sees its code read-only at /var/task and a writable /tmp', async (t) => {
    if (suite.be.name !== 'sandbox') t.skip('the process stand-in has no read-only rootfs (real sandboxes not available)');
    const inst = await instance(STYLES[1]!, 'echo', { fn: { handler: 'write.handler' } });
    const { response } = await inst.invoke({ id: id(), payload: event('') });
    expect(JSON.parse(response.body.toString())).toEqual({ code: 'EROFS', tmp: 'ok' });
  });

  it('reports a function that writes garbage on the wire as Crashed and destroys the instance', async () => {
    const inst = await instance(STYLES[1]!, 'echo', { fn: { handler: 'forge.handler' } });
    const err = await rejection(inst.invoke({ id: id(), payload: event('{}') }));
    expect(err).toBeInstanceOf(Crashed);
    expect(err.message).toMatch(/broke the wire protocol: unknown frame type 99/);
    expect(inst.alive).toBe(false);
    expect(inst.sandbox.state).toBe('destroyed');
  });

  it('reports an exec handler that does not exist as FunctionError', async () => {
    const inst = await instance(STYLES[4]!, 'echo', { fn: { handler: 'no-such-program' } });
    const err = await rejection(inst.invoke({ id: id(), payload: event('x') }));
    expect(err).toBeInstanceOf(FunctionError);
  });

  it('runs an imported image by its own entrypoint and cmd when no handler is given', async () => {
    const style = STYLES[5]!;
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const image = images.get('imported')!;
    const pooled = await prepare(sb, style.runtime, image);
    const inst = await specialise(pooled, fnVersion(style, 'echo', { handler: '', codeDigest: null }), null, image);
    live.push(inst);
    const { response } = await inst.invoke({ id: id(), payload: event('abc') });
    expect(response.body.toString()).toBe('image:abc');
  });

  it('runs a program inside an imported image named by the handler when there is no code', async () => {
    const style = STYLES[5]!;
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const image = images.get('imported')!;
    const pooled = await prepare(sb, style.runtime, image);
    const inst = await specialise(pooled, fnVersion(style, 'echo', { handler: '/bin/cat', codeDigest: null }), null, image);
    live.push(inst);
    const body = randomBytes(3000);
    const { response } = await inst.invoke({ id: id(), payload: event(body) });
    expect(response.body.equals(body)).toBe(true);
  });

  it('a runtime killed while pooled is reported not alive', async () => {
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const pooled = await prepare(sb, 'node', images.get('node')!);
    expect(pooled.alive).toBe(true);
    await sb.kill();
    await until(() => !pooled.alive);
    await pooled.destroy();
  });
});

describe('pre-started exec sandboxes (the scheduler\'s busybox pool)', () => {
  const style = STYLES.find((s) => s.prestart)!;
  const busybox = () => images.get('busybox')!;

  /** the memory cap of the sandbox's cgroup as the kernel has it (v1 limit_in_bytes / v2 memory.max), in MiB */
  function memoryCapMb(sb: Sandbox): number {
    const lines = readFileSync(`/proc/${sb.initPid}/cgroup`, 'utf8').trim().split('\n');
    const v1 = lines.find((l) => l.split(':')[1]?.split(',').includes('memory'));
    const file = v1 ? `/sys/fs/cgroup/memory${v1.split(':')[2]}/memory.limit_in_bytes` : `/sys/fs/cgroup${lines.find((l) => l.startsWith('0::'))!.slice(3)}/memory.max`;
    return Number(readFileSync(file, 'utf8').trim()) / 2 ** 20;
  }

  async function prestarted(): Promise<{ sb: Sandbox; pooled: Awaited<ReturnType<typeof prepare>> }> {
    const sb = await suite.be.createSandbox();
    sandboxes.push(sb);
    const pooled = await prepare(sb, 'exec', busybox(), { memoryMb: 128, prestart: true });
    return { sb, pooled };
  }

  it('mounts the rootfs in the pool and leaves nothing of its own running', async (t) => {
    if (suite.be.name !== 'sandbox') t.skip('the process stand-in has no rootfs or cgroup (real sandboxes not available)');
    const { sb, pooled } = await prestarted();
    expect(sb.state).toBe('started');
    expect(pooled.prestarted).toBe(true);
    // only the init is left in the sandbox: the pre-start's process has exited and been reaped
    await until(() => readFileSync(`/proc/${sb.initPid}/task/${sb.initPid}/children`, 'utf8').trim() === '');
    await pooled.destroy();
  });

  it('applies the function\'s caps before its first process runs', async (t) => {
    if (!suite.be.enforcesMemory) t.skip(`backend ${suite.be.name} has no memory cgroup (real sandboxes not available yet)`);
    const { sb, pooled } = await prestarted();
    expect(memoryCapMb(sb)).toBe(128);
    const inst = await specialise(pooled, fnVersion(style, 'env', { memoryMb: 48, env: { GREETING: 'first call' } }), codeLayer(style.fixture), busybox());
    live.push(inst);
    // specialised, nothing of the function has run yet: the cap is the function's already
    expect(memoryCapMb(sb)).toBe(48);
    const { response } = await inst.invoke({ id: id(), payload: event('') });
    expect(JSON.parse(response.body.toString())).toEqual({ GREETING: 'first call' });
  });

  it('becomes one instance only, and each function gets a sandbox of its own', async () => {
    const a = await prestarted();
    const b = await prestarted();
    const instA = await specialise(a.pooled, fnVersion(style, 'env', { name: 'pre-a', env: { GREETING: 'from a' } }), codeLayer(style.fixture), busybox());
    live.push(instA);
    await expect(specialise(a.pooled, fnVersion(style, 'env', { name: 'pre-b' }), codeLayer(style.fixture), busybox())).rejects.toThrow(/already specialised/);
    const instB = await specialise(b.pooled, fnVersion(style, 'env', { name: 'pre-b', env: { GREETING: 'from b' } }), codeLayer(style.fixture), busybox());
    live.push(instB);
    expect(instB.sandbox.id).not.toBe(instA.sandbox.id);
    const out = async (i: Instance) => JSON.parse((await i.invoke({ id: id(), payload: event('') })).response.body.toString());
    expect(await out(instA)).toEqual({ GREETING: 'from a' });
    expect(await out(instB)).toEqual({ GREETING: 'from b' });
  });

  it('attaches the code with the first call\'s spawn, in one request to the init', async (t) => {
    if (suite.be.name !== 'sandbox') t.skip('the process stand-in maps paths: attach, then exec (nothing to combine)');
    const { sb, pooled } = await prestarted();
    const calls: string[] = [];
    const { attach, exec } = sb;
    sb.attach = (...a) => (calls.push('attach'), attach.apply(sb, a));
    sb.exec = (spec) => (calls.push(spec.mounts ? `exec+${spec.mounts.map((m) => m.target).join(',')}` : 'exec'), exec.call(sb, spec));
    const inst = await specialise(pooled, fnVersion(style, 'echo'), codeLayer(style.fixture), busybox());
    live.push(inst);
    expect(calls).toEqual([]); // nothing of the function's is sent before its first call
    for (const body of ['one', 'two']) expect((await inst.invoke({ id: id(), payload: event(body) })).response.body.toString()).toBe(body);
    expect(calls).toEqual(['exec+/var/task', 'exec']);
  });

  it('reports a handler that is not in the code as FunctionError on the first call', async () => {
    const { pooled } = await prestarted();
    const inst = await specialise(pooled, fnVersion(style, 'echo', { handler: 'no-such-program' }), codeLayer(style.fixture), busybox());
    live.push(inst);
    const err = await rejection(inst.invoke({ id: id(), payload: event('x') }));
    expect(err).toBeInstanceOf(FunctionError);
    expect(inst.alive).toBe(true); // the function's own mistake: the instance stays
  });

  it('refuses a function on another image and stays usable', async () => {
    const { pooled } = await prestarted();
    const imported = images.get('imported')!;
    const other = STYLES.find((s) => s.image === 'imported')!;
    await expect(specialise(pooled, fnVersion(other, 'echo'), codeLayer(other.fixture), imported)).rejects.toThrow(/runs image/);
    expect(pooled.alive).toBe(true);
    const inst = await specialise(pooled, fnVersion(style, 'echo'), codeLayer(style.fixture), busybox());
    live.push(inst);
    const { response } = await inst.invoke({ id: id(), payload: event('{"a":1}', 'application/json') });
    expect(response.status).toBe(200);
  });
});
