/**
 * @module gateway/body
 * Reading request bodies under a size cap. A declared Content-Length above the cap is refused before a byte
 * is read; a chunked body is counted as it arrives and refused the moment it passes the cap, so an
 * oversized upload never sits whole in memory or on disk.
 */
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { PayloadTooLarge } from '../common/errors.ts';

function tooLarge(what: string, limit: number) {
  return new PayloadTooLarge(`${what} is larger than ${limit} bytes`, { limitBytes: limit });
}

/** The body's chunks, counted; throws PayloadTooLarge (after cancelling the stream) the moment it passes `limit`. */
async function* cappedChunks(body: ReadableStream<Uint8Array>, limit: number, what: string): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    n += value.byteLength;
    if (n > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge(what, limit);
    }
    yield value;
  }
}

function declaredTooLarge(req: Request, limit: number): boolean {
  const len = req.headers.get('content-length');
  return len !== null && /^[0-9]+$/.test(len) && Number(len) > limit;
}

/** The whole body as one Buffer, at most `limit` bytes. */
export async function readBody(req: Request, limit: number, what = 'request body'): Promise<Buffer> {
  if (declaredTooLarge(req, limit)) throw tooLarge(what, limit);
  if (req.method === 'GET' || req.method === 'HEAD') return Buffer.alloc(0);
  // With a declared length (already checked against the cap) arrayBuffer() is @hono/node-server's fast path: it
  // reads the socket directly instead of materialising a WHATWG Request with its stream and AbortSignal,
  // which costs more than the rest of the gateway's work on a small invocation. Node's HTTP parser stops at
  // Content-Length, so the cap holds. Chunked bodies are counted chunk by chunk below.
  if (req.headers.get('content-length') !== null) {
    const ab = await req.arrayBuffer();
    return Buffer.from(ab);
  }
  if (!req.body) return Buffer.alloc(0);
  const chunks: Uint8Array[] = [];
  let n = 0;
  for await (const value of cappedChunks(req.body, limit, what)) {
    n += value.byteLength;
    chunks.push(value);
  }
  return chunks.length === 1 ? Buffer.from(chunks[0]!.buffer, chunks[0]!.byteOffset, chunks[0]!.byteLength) : Buffer.concat(chunks, n);
}

/** Streams the body to `path` (created 0600), at most `limit` bytes; the file is removed on any failure. */
export async function spoolBody(req: Request, path: string, limit: number, what = 'request body'): Promise<number> {
  if (declaredTooLarge(req, limit)) throw tooLarge(what, limit);
  const out = createWriteStream(path, { mode: 0o600, flags: 'wx' });
  let n = 0;
  try {
    if (req.body) {
      for await (const value of cappedChunks(req.body, limit, what)) {
        n += value.byteLength;
        if (!out.write(value)) await new Promise<void>((res, rej) => out.once('drain', res).once('error', rej));
      }
    }
    await new Promise<void>((res, rej) => out.end((e?: Error | null) => (e ? rej(e) : res())));
    return n;
  } catch (e) {
    // createWriteStream opens its file asynchronously: remove the file only once the stream has closed, or an
    // open still in flight would create it again after the rm (seen as a stray spool file after a 413).
    await new Promise<void>((res) => {
      if (out.closed) return res();
      out.once('close', () => res());
      out.destroy();
    });
    await rm(path, { force: true });
    throw e;
  }
}
