/**
 * @module model
 * The records that cross service boundaries (gateway ↔ Redis ↔ scheduler ↔ runtime). One definition each.
 */

export type RuntimeName = 'node' | 'python' | 'exec' | `image:${string}`;

/** One immutable version of a function (DESIGN.md: code digest + runtime + config). */
export interface FunctionVersion {
  tenant: string;
  name: string;
  version: number;
  runtime: RuntimeName;
  /** node: "index.handler" | "index"; python: "main.handler"; exec: "run" (path in the code root). */
  handler: string;
  /** sha256 digest of the code layer ("sha256:<hex>"), or null for an image-only function. */
  codeDigest: string | null;
  memoryMb: number;
  timeoutMs: number;
  env: Record<string, string>;
  /** invocations one instance may run at the same time (default 1). */
  concurrency: number;
  /** max instances of this function on one node (default: unlimited within memory). */
  maxInstances?: number;
  /** async attempts (default 3). */
  retries?: number;
  public: boolean;
  createdAt: string;
}

export type StartKind = 'cold' | 'warm';
export type InvocationMode = 'sync' | 'async' | 'http';
export type InvocationStatus = 'queued' | 'running' | 'succeeded' | 'failed';

/** What an invocation asks the function to do: an event (bytes) or an HTTP request. */
export type InvocationPayload =
  | { kind: 'event'; body: Buffer; contentType?: string }
  | {
      kind: 'http';
      method: string;
      /** path after /fn/<tenant>/<name>, starting with "/" */
      path: string;
      /** raw query string without "?" ("" when none) */
      query: string;
      headers: Record<string, string>;
      body: Buffer;
    };

/** The function's answer. For events, status 200 and the handler's result as the body. */
export interface InvocationResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** One captured line of a function's stdout/stderr, tagged with its invocation. */
export interface LogLine {
  /** the invocation running when the line was written; '' when none was (a timer or child process left behind). */
  invocationId: string;
  stream: 'stdout' | 'stderr';
  /** epoch ms */
  ts: number;
  line: string;
}
