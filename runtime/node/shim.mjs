// fnhost node runtime shim. Runs INSIDE the sandbox as the runtime process: plain JS, no dependencies.
// Started pre-booted (before any function is known) as `node --input-type=module -e <this file>`; it says
// HELLO on fd 3, waits for LOAD (handler + env), then serves INVOKE frames one at a time.
// The wire protocol (framing, messages, log marker) is specified in runtime/protocol.ts; the codec below
// mirrors it and must stay in step with it.
import { Socket } from 'node:net';
import fs, { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { pathToFileURL } from 'node:url';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import childProcess from 'node:child_process';

const HELLO = 1, LOAD = 2, READY = 3, INVOKE = 4, RESULT = 5, ERROR = 6; // WAKE = 7 (→ shim) needs no handling: its arrival is the point
const HEADER_BYTES = 9;
const EMPTY = Buffer.alloc(0);

const wire = new Socket({ fd: 3, readable: true, writable: true });

function send(type, meta, body = EMPTY) {
  const metaStr = JSON.stringify(meta);
  const metaLen = Buffer.byteLength(metaStr);
  const buf = Buffer.allocUnsafe(HEADER_BYTES + metaLen + body.length);
  buf.writeUInt32BE(5 + metaLen + body.length, 0);
  buf[4] = type;
  buf.writeUInt32BE(metaLen, 5);
  buf.write(metaStr, HEADER_BYTES, metaLen, 'utf8');
  if (body.length) buf.set(body, HEADER_BYTES + metaLen);
  wire.write(buf);
}

// ---- frame reader (one frame processed at a time, in order) ----
// Chunks of an incomplete frame are kept in a list and joined once, when the frame is complete: a 6 MB
// body arrives in ~100 reads and must not be copied ~100 times.
let parts = [];
let partsLen = 0;
let need = 0; // bytes the head frame needs in total (0 = length not known yet)
const queue = [];
let busy = false;

wire.on('data', (chunk) => {
  if (partsLen > 0) {
    parts.push(chunk);
    partsLen += chunk.length;
    if (need === 0 && partsLen >= 4) need = 4 + (parts[0].length >= 4 ? parts[0] : Buffer.concat(parts)).readUInt32BE(0);
    if (need === 0 || partsLen < need) return;
    chunk = Buffer.concat(parts, partsLen);
    parts = [];
    partsLen = 0;
  }
  need = 0;
  let off = 0;
  while (chunk.length - off >= 4) {
    const len = chunk.readUInt32BE(off);
    if (chunk.length - off < 4 + len) {
      need = 4 + len;
      break;
    }
    const type = chunk[off + 4];
    const metaLen = chunk.readUInt32BE(off + 5);
    const metaStart = off + HEADER_BYTES;
    const meta = JSON.parse(chunk.toString('utf8', metaStart, metaStart + metaLen));
    queue.push({ type, meta, body: chunk.subarray(metaStart + metaLen, off + 4 + len) });
    off += 4 + len;
  }
  if (off < chunk.length) {
    parts = [chunk.subarray(off)];
    partsLen = chunk.length - off;
  }
  if (!busy) drain();
});
// The host closing the wire means the instance is being torn down.
wire.on('end', () => process.exit(0));
wire.on('error', () => process.exit(0));

async function drain() {
  busy = true;
  try {
    while (queue.length) {
      const f = queue.shift();
      if (f.type === INVOKE) await invoke(f.meta, f.body);
      else if (f.type === LOAD) await load(f.meta);
    }
  } finally {
    busy = false;
  }
}

// ---- load ----
let loaded = null; // { style: 'fetch'|'event', target, fn, env, cap }

function errorMeta(id, e) {
  const err = e instanceof Error ? e : new Error(typeof e === 'string' ? e : safeJson(e));
  return { id, type: 'FunctionError', message: String(err.message), stack: String(err.stack ?? ''), errorType: err.name || 'Error' };
}

function safeJson(v) {
  try { return JSON.stringify(v); } catch { return String(v); }
}

const requireFrom = createRequire('/');

// Loads a module synchronously where the runtime can (require() of CommonJS, and of ES modules on Node ≥ 22,
// "require(esm)"): import() reads files through the libuv thread pool, and each of those hops is a wake-up
// that shows on a cold start. ES modules with top-level await (and any ESM on Node 20) take import().
// The result has import()'s shape: a namespace whose `default` is a CommonJS module's exports.
async function loadModule(file) {
  let mod;
  try {
    mod = requireFrom(file);
  } catch (e) {
    if (e && (e.code === 'ERR_REQUIRE_ASYNC_MODULE' || e.code === 'ERR_REQUIRE_ESM')) return import(pathToFileURL(file).href);
    throw e;
  }
  if (mod && mod[Symbol.toStringTag] === 'Module') return mod;
  const ns = mod !== null && typeof mod === 'object' ? { ...mod } : {};
  ns.default = mod;
  return ns;
}

// Finds the module for `handler` in codeDir, imports it and picks the entry point (see issue 4 naming).
async function resolveHandler(codeDir, handler) {
  const h = String(handler || 'index');
  const dot = h.lastIndexOf('.');
  const modName = dot > 0 ? h.slice(0, dot) : h;
  const exportName = dot > 0 ? h.slice(dot + 1) : 'default';
  let file = null;
  for (const ext of ['.mjs', '.js', '.cjs', '']) {
    const p = `${codeDir}/${modName}${ext}`;
    if ((ext !== '' || /\.[cm]?js$/.test(modName)) && existsSync(p)) { file = p; break; }
  }
  if (!file) throw new Error(`handler module not found: ${modName}.mjs, ${modName}.js or ${modName}.cjs in ${codeDir}`);
  const ns = await loadModule(file);
  let target;
  if (exportName === 'default') {
    target = ns.default;
    // CJS transpiled from ESM (`exports.default = app`, __esModule) arrives as {default: app}.
    if (target && typeof target === 'object' && typeof target.fetch !== 'function' && target.default) target = target.default;
  } else {
    target = ns[exportName];
    if (target === undefined && ns.default && typeof ns.default === 'object') target = ns.default[exportName];
  }
  if (target && typeof target.fetch === 'function') return { style: 'fetch', target };
  if (typeof target === 'function') return { style: 'event', target };
  throw new Error(`handler ${h}: export "${exportName}" of ${file} is neither a function nor an object with fetch()`);
}

async function load(msg) {
  beginMark = `${msg.logMarker}B\x1e`;
  endMark = `${msg.logMarker}E\x1e`;
  openLogs();
  let out;
  try {
    const t0 = performance.now();
    Object.assign(process.env, msg.env);
    try { process.chdir(msg.codeDir); } catch { /* codeDir may be unreadable; import will say why */ }
    const { style, target } = await resolveHandler(msg.codeDir, msg.handler);
    loaded = { style, target, fn: msg.fn, env: { ...msg.env }, cap: msg.responseCapBytes };
    out = [READY, { style, loadMs: Math.round((performance.now() - t0) * 1000) / 1000 }];
  } catch (e) {
    out = [ERROR, errorMeta(null, e)];
  }
  out[1].marked = closeLogs();
  send(out[0], out[1]);
}

// ---- invoke ----
function makeContext(state, meta, waits) {
  const fn = state.fn;
  const deadline = meta.deadline;
  return {
    invocationId: meta.id,
    awsRequestId: meta.id,
    functionName: fn.name,
    functionVersion: String(fn.version),
    tenant: fn.tenant,
    memoryLimitInMB: fn.memoryMb,
    memoryMb: fn.memoryMb,
    deadline,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    get remainingTimeMs() { return Math.max(0, deadline - Date.now()); },
    logger,
    callbackWaitsForEmptyEventLoop: false,
    waitUntil(p) { waits.push(Promise.resolve(p).catch((e) => console.error(e))); },
    passThroughOnException() {},
  };
}

const logLine = (stream, level) => (...args) => {
  const msg = args.map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.stack : safeJson(a))).join(' ');
  stream.write(`${level} ${msg}\n`);
};
const logger = {
  debug: logLine(process.stdout, 'DEBUG'),
  info: logLine(process.stdout, 'INFO'),
  log: logLine(process.stdout, 'INFO'),
  warn: logLine(process.stderr, 'WARN'),
  error: logLine(process.stderr, 'ERROR'),
};

const TEXTUAL = /^(text\/|application\/(json|.*\+json|xml|.*\+xml|javascript|x-www-form-urlencoded))/i;

function decodeEvent(meta, body) {
  if (body.length === 0) return null;
  const ct = meta.contentType || '';
  if (!isUtf8(body)) return body;
  const text = body.toString('utf8');
  if (/json/i.test(ct) || (!ct && /^\s*[[{"\d\-tfn]/.test(text))) {
    try { return JSON.parse(text); } catch { if (/json/i.test(ct)) return text; }
  }
  if (!ct || TEXTUAL.test(ct)) return text;
  return body;
}

function httpEvent(meta, body) {
  const ct = meta.headers['content-type'] || '';
  const text = body.length > 0 && (!ct || TEXTUAL.test(ct)) && isUtf8(body);
  const qs = {};
  for (const [k, v] of new URLSearchParams(meta.query)) qs[k] = v;
  return {
    method: meta.method,
    path: meta.path,
    rawPath: meta.path,
    query: meta.query,
    rawQueryString: meta.query,
    queryStringParameters: qs,
    headers: meta.headers,
    body: body.length === 0 ? '' : text ? body.toString('utf8') : body.toString('base64'),
    isBase64Encoded: body.length > 0 && !text,
    requestContext: { requestId: meta.id, http: { method: meta.method, path: meta.path } },
  };
}

// An event handler's result → [status, headers, body]. Buffers are sent raw, strings as UTF-8, anything
// else as JSON; for HTTP invocations a Lambda proxy object ({statusCode, headers, body, isBase64Encoded})
// becomes the response.
function encodeResult(meta, r) {
  if (meta.kind === 'http' && r && typeof r === 'object' && typeof r.statusCode === 'number') {
    const headers = {};
    for (const [k, v] of Object.entries(r.headers || {})) headers[k.toLowerCase()] = String(v);
    let b = r.body;
    if (b === undefined || b === null) b = EMPTY;
    else if (typeof b === 'string') b = Buffer.from(b, r.isBase64Encoded ? 'base64' : 'utf8');
    else if (b instanceof Uint8Array) b = Buffer.from(b.buffer, b.byteOffset, b.length);
    else { b = Buffer.from(JSON.stringify(b)); headers['content-type'] ??= 'application/json'; }
    return [r.statusCode, headers, b];
  }
  if (r === undefined || r === null) return [200, {}, EMPTY];
  if (r instanceof Uint8Array) return [200, { 'content-type': 'application/octet-stream' }, Buffer.from(r.buffer, r.byteOffset, r.length)];
  if (r instanceof ArrayBuffer) return [200, { 'content-type': 'application/octet-stream' }, Buffer.from(r)];
  if (typeof r === 'string') return [200, { 'content-type': 'text/plain; charset=utf-8' }, Buffer.from(r)];
  return [200, { 'content-type': 'application/json' }, Buffer.from(JSON.stringify(r))];
}

function toRequest(meta, body) {
  let url;
  let init;
  if (meta.kind === 'http') {
    const host = meta.headers.host && /^[A-Za-z0-9.:\-[\]]+$/.test(meta.headers.host) ? meta.headers.host : 'localhost';
    url = `http://${host}${meta.path}${meta.query ? `?${meta.query}` : ''}`;
    const m = meta.method.toUpperCase();
    init = { method: m, headers: meta.headers, body: m === 'GET' || m === 'HEAD' || body.length === 0 ? undefined : body };
  } else {
    url = 'http://localhost/';
    init = { method: 'POST', headers: meta.contentType ? { 'content-type': meta.contentType } : {}, body };
  }
  return new Request(url, init);
}

// Log boundaries (protocol.ts): while an invocation (or the load) runs, the first write to stdout /
// stderr is preceded by the BEGIN marker and, when it ends, each stream written to gets the END marker;
// RESULT / ERROR says which (`marked`). A quiet invocation costs no extra write at all. console.* and
// process.std*.write all go through these methods; Node's stdout/stderr are synchronous for pipes on
// Linux, so once write() returns the bytes are in the pipe, ahead of the marker and the result.
let inside = false;
let wrote = 0;
let beginMark = '';
let endMark = '';
/** bit → [stream, its own write]: markers written around the hooks below */
const rawWrites = new Map();
for (const [stream, bit] of [[process.stdout, 1], [process.stderr, 2]]) {
  const write = stream.write;
  rawWrites.set(bit, [stream, write]);
  stream.write = function (chunk, ...rest) {
    if (inside && !(wrote & bit)) {
      wrote |= bit;
      // console.log passes (string, callback): one write for marker + text.
      if (typeof chunk === 'string' && (rest.length === 0 || typeof rest[0] === 'function')) return write.call(this, beginMark + chunk, ...rest);
      write.call(this, beginMark);
    }
    return write.call(this, chunk, ...rest);
  };
}

// Writes that bypass process.stdout / process.stderr but go through the fs module to fd 1 / 2 (pino's
// sonic-boom, fs.writeSync(1, ...)) get the same BEGIN treatment. What reaches the fds by other ways
// (a child process with inherited stdio, native code) shows up as background output.
for (const name of ['writeSync', 'write']) {
  const orig = fs[name];
  fs[name] = function (fd, ...rest) {
    // fd 1 / fd 2 are exactly the stdout / stderr bits of `wrote`
    if (inside && (fd === 1 || fd === 2) && !(wrote & fd)) {
      wrote |= fd;
      fs.writeSync(fd, beginMark);
    }
    return orig.call(this, fd, ...rest);
  };
}

// Child processes that share fd 1 / fd 2 (stdio 'inherit', or those fds passed on) write into the same pipes
// without passing through the hooks above. So that what they write belongs to the invocation running when it
// is written, like the shim's own output: a child spawned during an invocation gets BEGIN on the streams it
// shares before it exists, and once any such child was spawned, every invocation marks those streams at its
// start — for good, because what the child left behind (a backgrounded grandchild, a daemon) may write at any
// moment and cannot be tracked from here. The price, only for such functions: BEGIN and END on those streams
// each invocation (≤ 4 small pipe writes). A function that spawns no such child pays nothing. Not covered:
// native code writing to fd 1 / 2 directly.
/** the streams (bit 1 stdout, 2 stderr) some child was given: marked at every invocation's start */
let shared = 0;

/** BEGIN now on the streams of `bits` not yet marked in this invocation (nothing outside one). */
function markBegin(bits) {
  if (!inside) return;
  for (const bit of [1, 2]) {
    if (!(bits & bit) || wrote & bit) continue;
    wrote |= bit;
    const [stream, write] = rawWrites.get(bit);
    write.call(stream, beginMark);
  }
}

/** which of fd 1 / fd 2 a child gets from us, as bits, from spawn's `stdio` option */
function sharedFds(stdio) {
  const list = typeof stdio === 'string' ? [stdio, stdio, stdio] : Array.isArray(stdio) ? stdio : [];
  let bits = 0;
  list.forEach((v, i) => {
    const fd = v === 'inherit' ? i : typeof v === 'number' ? v : v && typeof v === 'object' && typeof v.fd === 'number' ? v.fd : -1;
    if (fd === 1 || fd === 2) bits |= fd;
  });
  return bits;
}

// spawn, fork, exec and execFile all go through ChildProcess#spawn.
const spawnChild = childProcess.ChildProcess.prototype.spawn;
childProcess.ChildProcess.prototype.spawn = function (options) {
  const bits = sharedFds(options && options.stdio);
  if (bits === 0) return spawnChild.call(this, options);
  markBegin(bits);
  const r = spawnChild.call(this, options);
  if (this.pid !== undefined) shared |= bits;
  return r;
};
// The synchronous ones return after the child ended: marking before the call covers the child itself.
for (const name of ['spawnSync', 'execSync', 'execFileSync']) {
  const orig = childProcess[name];
  childProcess[name] = function (...args) {
    const opts = args.findLast((a) => a !== null && typeof a === 'object' && !Array.isArray(a));
    const bits = sharedFds(opts && opts.stdio);
    markBegin(bits);
    // before the call: it throws after a child that exited non-zero, which may have left something behind
    shared |= bits;
    return orig.apply(this, args);
  };
}
syncBuiltinESMExports();

function openLogs() {
  inside = true;
  wrote = 0;
  if (shared) markBegin(shared);
}

function closeLogs() {
  inside = false;
  const m = wrote;
  if (m & 1) process.stdout.write(endMark);
  if (m & 2) process.stderr.write(endMark);
  wrote = 0;
  return m;
}

let invocations = 0;

async function invoke(meta, body) {
  if (!loaded) {
    send(ERROR, { id: meta.id, type: 'FunctionError', message: 'no handler loaded', errorType: 'Error' });
    return;
  }
  const t0 = performance.now();
  // protocol.ts `slept`: sampled, every 8th invocation
  const v0 = (invocations++ & 7) === 0 ? process.resourceUsage().voluntaryContextSwitches : -1;
  openLogs();
  const out = await run(loaded, meta, body);
  out[1].marked = closeLogs();
  out[1].ms = Math.round((performance.now() - t0) * 1000) / 1000;
  if (v0 >= 0) out[1].slept = process.resourceUsage().voluntaryContextSwitches !== v0;
  send(out[0], out[1], out[2]);
}

// One invocation against a loaded handler → [frame type, meta, body] (no I/O of its own: warm-up runs it too).
async function run(state, meta, body) {
  try {
    const waits = [];
    const ctx = makeContext(state, meta, waits);
    let status, headers, resBody;
    if (state.style === 'fetch') {
      const res = await state.target.fetch(toRequest(meta, body), state.env, ctx);
      if (!res || typeof res.arrayBuffer !== 'function' || typeof res.status !== 'number') {
        throw new TypeError('fetch handler did not return a Response');
      }
      status = res.status;
      headers = {};
      res.headers.forEach((v, k) => { headers[k] = v; });
      resBody = res.body === null ? EMPTY : Buffer.from(await res.arrayBuffer());
    } else {
      const event = meta.kind === 'http' ? httpEvent(meta, body) : decodeEvent(meta, body);
      [status, headers, resBody] = encodeResult(meta, await state.target(event, ctx));
    }
    if (waits.length) await Promise.all(waits);
    if (resBody.length > state.cap) {
      return [ERROR, { id: meta.id, type: 'ResponseTooLarge', message: `response of ${resBody.length} bytes exceeds ${state.cap}`, sizeBytes: resBody.length }];
    }
    return [RESULT, { id: meta.id, status, headers }, resBody];
  } catch (e) {
    return [ERROR, errorMeta(meta.id, e)];
  }
}

// Errors that escape a handler (a rejected promise nobody awaited, a throw in a timer) must not kill a
// warm instance silently: they are the function's logs, like on Lambda.
process.on('unhandledRejection', (e) => console.error('Unhandled rejection:', e));
process.on('uncaughtException', (e) => console.error('Uncaught exception:', e));

// Pre-boot warm-up: the first import() (ESM loader), the first Request/Response (undici is loaded lazily,
// ~50 ms on Node 20 here) and the first trip through our own encode paths would otherwise land on the
// function's cold start. Pay them now, before anyone asks.
async function warmUp() {
  await import('data:text/javascript,export default 0');
  // A file import walks more of the loader (file URL resolution, format detection by extension and
  // package scope, the CJS translator) than a data: URL; /tmp is the only writable place, the files go again.
  const dir = mkdtempSync(`${process.env.TMPDIR || '/tmp'}/.fnhost-warm-`);
  try {
    writeFileSync(`${dir}/w.mjs`, 'export const handler = () => 0;');
    writeFileSync(`${dir}/w.cjs`, 'exports.handler = () => 0;');
    writeFileSync(`${dir}/w.js`, 'exports.handler = () => 0;');
    for (const m of ['w.handler', 'w.cjs.handler', 'w.js.handler']) await resolveHandler(dir, m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // The first trip through run() for each style (JIT, lazy internals), with handlers of our own.
  const fn = { tenant: '', name: '', version: 0, memoryMb: 0, timeoutMs: 0 };
  const deadline = Date.now() + 1000;
  const states = [
    { style: 'event', target: async (e) => e, fn, env: {}, cap: 1 << 20 },
    { style: 'fetch', target: { fetch: async (r) => new Response(await r.arrayBuffer(), { headers: { 'x-a': 'b' } }) }, fn, env: {}, cap: 1 << 20 },
  ];
  for (let i = 0; i < 3; i++) {
    for (const st of states) {
      await run(st, { id: 'w', kind: 'event', deadline, contentType: 'application/json' }, Buffer.from('{"a":1}'));
      await run(st, { id: 'w', kind: 'http', deadline, method: 'POST', path: '/p', query: 'q=1', headers: { 'content-type': 'text/plain' } }, Buffer.from('x'));
    }
  }
  const req = toRequest({ kind: 'http', method: 'POST', path: '/', query: 'a=1', headers: { 'content-type': 'text/plain' } }, Buffer.from('x'));
  await req.arrayBuffer();
  const res = new Response(new Uint8Array(1), { headers: { 'x-a': 'b' } });
  res.headers.forEach(() => {});
  await res.arrayBuffer();
  await Response.json({}).arrayBuffer();
  encodeResult({ kind: 'event' }, { a: 1 });
  decodeEvent({ contentType: 'application/json' }, Buffer.from('{"a":1}'));
  httpEvent({ id: 'w', method: 'GET', path: '/', query: 'a=1', headers: {} }, EMPTY);
}

// FNHOST_SHIM_WARMUP=0: the runtime is started on the cold path itself (nothing to pre-pay).
if (process.env.FNHOST_SHIM_WARMUP !== '0') await warmUp().catch(() => {});
delete process.env.FNHOST_SHIM_WARMUP;
send(HELLO, { runtime: 'node', version: process.version, pid: process.pid });
