// OTLP/HTTP batch POST, shared by the host's event loop and the export thread (services/common/trace-export.ts).
// Plain JS with no dependencies: the export thread loads this file as it is (no TypeScript loader runs in a
// worker started from vitest or tsx), and the loop imports the same file, so there is one POST, not two.
// Types: otlp-post.d.mts.
import http from 'node:http';
import https from 'node:https';
import { gzip } from 'node:zlib';

/**
 * A kept-alive poster for one collector. `post(body, done)` gzips when configured, POSTs, and calls
 * `done(ok, why)` exactly once (ok: a 2xx answer; why: the status or the error).
 */
export function createPoster(cfg) {
  const isHttps = cfg.url.startsWith('https:');
  const agent = new (isHttps ? https : http).Agent({ keepAlive: true, maxSockets: cfg.maxConcurrentExports });
  const request = isHttps ? https.request : http.request;
  const contentType = cfg.protocol === 'http/json' ? 'application/json' : 'application/x-protobuf';
  function send(payload, encoding, finish) {
    const headers = { ...cfg.headers, 'content-type': contentType, 'content-length': Buffer.byteLength(payload) };
    if (encoding) headers['content-encoding'] = encoding;
    const req = request(cfg.url, { method: 'POST', agent, headers, timeout: cfg.timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => finish(res.statusCode >= 200 && res.statusCode < 300, `HTTP ${res.statusCode}`));
      res.on('error', (e) => finish(false, e.message));
    });
    req.on('timeout', () => req.destroy(new Error(`timed out after ${cfg.timeoutMs} ms`)));
    req.on('error', (e) => finish(false, e.message));
    req.end(payload);
  }
  return {
    post(body, done) {
      let settled = false;
      const finish = (ok, why) => {
        if (settled) return;
        settled = true;
        done(ok, why);
      };
      if (cfg.gzip) gzip(body, (err, z) => (err ? finish(false, err.message) : send(z, 'gzip', finish)));
      else send(body, undefined, finish);
    },
    destroy() {
      agent.destroy();
    },
  };
}
