/**
 * @module scheduler/keys
 * The one place that names every Redis key and BullMQ queue the scheduler and its client use.
 * Everything lives under one prefix (default "fnhost") so that several hosts can share a Redis and a node's
 * start-up clean-up can find exactly its own keys.
 *
 * Layout (P = prefix, T = tenant, F = function name, V = version, N = node id, I = invocation id):
 *
 * | key | type | written by | lifetime |
 * | --- | --- | --- | --- |
 * | `P:bull:inv.T:*` | BullMQ queue of tenant T | client (add), scheduler (worker) | jobs removed on complete/fail by age+count |
 * | `P:tenants` | SET of tenants that have used the fast lane; pub/sub channel of the same name announces "T" or "bull:T" | client | permanent (tiny) |
 * | `P:tenants:bull` | SET of tenants with a BullMQ queue (async, or sync on the BullMQ lane): nodes run a BullMQ worker only for these | client | permanent (tiny) |
 * | `P:inv:T:I` | HASH {s: status, r: record JSON, c?: callback URL of an async invocation, for the sweeper} | client (queued, c), scheduler (running, final: s and r) | `retentionS` (async failures: `deadLetterRetentionS`) |
 * | `P:payload:I` | STRING, body bytes of a large payload | client | the invocation's retention |
 * | `P:idem:T:<key>` | STRING invocation id | client (SET NX) | `idempotencyTtlS` |
 * | `P:reply:<clientId>` | pub/sub channel: "I\n{record, response}" | scheduler | — |
 * | `P:logs:T:F` | STREAM {i, s, t, l} capped at `logMaxLen` | scheduler | `logTtlS`, refreshed on write |
 * | `P:logfns:T` | SET of F with a log stream | scheduler | `logTtlS` |
 * | `P:nodes` | ZSET N → last heartbeat (epoch ms) | scheduler | entries older than 3 heartbeats are stale |
 * | `P:node:N` | HASH node facts (capacity, used MiB, pools) | scheduler | TTL 3 heartbeats |
 * | `P:warm:T:F:V` | HASH N → epoch ms until which N keeps a warm instance | scheduler | TTL = keep-alive |
 * | `P:nodeq:N` | STRING count of routed jobs not yet picked up on N | client (INCR), scheduler (DECR) | TTL 1 h, reset at node start |
 * | `P:bull:node.N:*` | BullMQ queue of jobs routed to node N (a warm instance is there) | client, scheduler N | as tenant queues |
 * | `P:fast:T` | LIST of sync/http job JSON of tenant T (fast lane, ./fast-lane.ts) | client LPUSH, scheduler BLMPOP | TTL ≥ the last job's deadline |
 * | `P:fastn:N` | LIST of sync/http jobs routed to node N | client, scheduler N (other nodes once N's heartbeat is stale) | as above |
 * | `P:fastnodes` | SET of node ids that have (had) a routed list | scheduler | members removed by their node on graceful stop |
 * | `P:fnv:T:<hash>` | STRING FunctionVersion JSON by content hash, for fast-lane jobs that carry only the reference (./fn-refs.ts) | client | 24 h, refreshed while in use |
 * | `P:invopen` | ZSET `T:I` (the record key after `P:inv:`) → epoch ms: async invocations that may not be final yet (./sweeper.ts) | client (with the queued record), redrive; sweeper removes final ones, re-scores live ones | TTL `deadLetterS`, refreshed on write |
 * | `P:sweeper` | STRING lock of the sweeper run (node id + token) | sweeper (SET NX PX) | the lock's PX |
 * | `P:bull:callbacks:*` | BullMQ queue of completion callbacks (./callbacks.ts), all tenants | scheduler (add, worker) | completed and failed jobs removed by age + count (`DEFAULT_RETENTION`) |
 * | `P:callback:outbox` | HASH delivery id → callback job JSON, written with the final record, moved to the queue | scheduler (record script; move, sweep) | entry until moved; key TTL ≥ the longest record's |
 * | `P:callback:failed:T` · `P:callback:failedinfo:T` | ZSET delivery id → failedAt; HASH delivery id → FailedCallback JSON (./callback-failures.ts) | callback worker; list/redrive/delete | TTL as the failed jobs', refreshed on write |
 * | `P:callback:secret` | STRING generated host secret of callback signatures (when `FNHOST_CALLBACK_SECRET` is unset) | first scheduler (SET NX) | permanent |
 *
 * Names inside keys are URI-encoded: tenant and function names are validated by the gateway, but a ':' in a
 * name must never be able to reach into another tenant's keys, and BullMQ refuses ':' in queue names.
 */

export const DEFAULT_PREFIX = 'fnhost';

/**
 * The field of a record hash `P:inv:T:I` holding an async invocation's callback URL from its queued write
 * (./records.ts queueRecord), so the sweeper (./sweeper.ts) still calls back a 'job-lost' outcome; final writes
 * set only `s` and `r`, and the record JSON never holds the URL (it is not rendered).
 */
export const RECORD_CALLBACK_FIELD = 'c';

/** what encodeURIComponent leaves as it is, minus '.' (and the other marks, for a simple test) */
const PLAIN = /^[A-Za-z0-9_-]*$/;
/** Most names (and every uuid) are plain: a regex test is ~10× cheaper than encode + replace, on every key of every call. */
const enc = (s: string) => (PLAIN.test(s) ? s : encodeURIComponent(s).replace(/\./g, '%2E'));

export interface Keys {
  readonly prefix: string;
  /** BullMQ's own prefix (passed as `prefix` to Queue/Worker). */
  readonly bullPrefix: string;
  tenantQueue(tenant: string): string;
  nodeQueue(nodeId: string): string;
  tenants(): string;
  tenantsBull(): string;
  record(tenant: string, id: string): string;
  payload(id: string): string;
  idempotency(tenant: string, key: string): string;
  replyChannel(clientId: string): string;
  logs(tenant: string, fn: string): string;
  logFunctions(tenant: string): string;
  nodes(): string;
  node(nodeId: string): string;
  warm(tenant: string, fn: string, version: number): string;
  nodePending(nodeId: string): string;
  /** fast lane (./fast-lane.ts): sync/http jobs of tenant T, and those routed to node N */
  fastTenant(tenant: string): string;
  fastNode(nodeId: string): string;
  fastNodes(): string;
  /** a function version by content reference (./fn-refs.ts; the reference starts with the encoded tenant) */
  fnVersion(ref: string): string;
  /** the tenant a queue name belongs to, or null for a node queue. */
  tenantOfQueue(queueName: string): string | null;
  /** ZSET of async invocations that may not be final yet (./sweeper.ts); members `T:I` (openEntryOf, parseOpenMember) */
  openInvocations(): string;
  /** the sweeper's run lock */
  sweeperLock(): string;
  /** completion callbacks (./callbacks.ts): the outbox HASH delivery id → callback job JSON */
  callbackOutbox(): string;
  /** tenant T's failed callbacks (./callback-failures.ts): `index` ZSET delivery id → failedAt, `info` HASH delivery id → FailedCallback JSON */
  failedCallbacks(tenant: string): { index: string; info: string };
  /** the generated host secret of callback signatures (./callback-signer.ts) */
  callbackSecret(): string;
}

export function createKeys(prefix = DEFAULT_PREFIX): Keys {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(prefix)) throw new Error(`invalid key prefix ${JSON.stringify(prefix)}`);
  const P = prefix;
  return {
    prefix: P,
    bullPrefix: `${P}:bull`,
    tenantQueue: (t) => `inv.${enc(t)}`,
    nodeQueue: (n) => `node.${enc(n)}`,
    tenants: () => `${P}:tenants`,
    tenantsBull: () => `${P}:tenants:bull`,
    record: (t, id) => `${P}:inv:${enc(t)}:${enc(id)}`,
    payload: (id) => `${P}:payload:${enc(id)}`,
    idempotency: (t, k) => `${P}:idem:${enc(t)}:${enc(k)}`,
    replyChannel: (c) => `${P}:reply:${enc(c)}`,
    logs: (t, f) => `${P}:logs:${enc(t)}:${enc(f)}`,
    logFunctions: (t) => `${P}:logfns:${enc(t)}`,
    nodes: () => `${P}:nodes`,
    node: (n) => `${P}:node:${enc(n)}`,
    warm: (t, f, v) => `${P}:warm:${enc(t)}:${enc(f)}:${v}`,
    // node ids match NODE_ID_RE (config.ts), so Lua scripts can build these two from a node id verbatim
    nodePending: (n) => `${P}:nodeq:${n}`,
    fastTenant: (t) => `${P}:fast:${enc(t)}`,
    fastNode: (n) => `${P}:fastn:${n}`,
    fastNodes: () => `${P}:fastnodes`,
    // the reference is `<encoded tenant>:<base64url hash>` (./fn-refs.ts): safe in a key as it is
    fnVersion: (r) => `${P}:fnv:${r}`,
    tenantOfQueue: (q) => (q.startsWith('inv.') ? decodeURIComponent(q.slice(4)) : null),
    openInvocations: () => `${P}:invopen`,
    sweeperLock: () => `${P}:sweeper`,
    callbackOutbox: () => `${P}:callback:outbox`,
    failedCallbacks: (t) => ({ index: `${P}:callback:failed:${enc(t)}`, info: `${P}:callback:failedinfo:${enc(t)}` }),
    callbackSecret: () => `${P}:callback:secret`,
  };
}

/**
 * The open-invocations index entry of a record key `P:inv:T:I`: the index key `P:invopen` and the member `T:I`
 * (encoded as in the record key). Derived from the record key so the writers that hold only that key
 * (./records.ts queueRecord, setRecord) add to the index without another argument. Null for any other key.
 */
export function openEntryOf(recordKey: string): { index: string; member: string } | null {
  const i = recordKey.indexOf(':inv:');
  // the prefix has no ':' (createKeys), so the first ':inv:' ends it
  if (i <= 0 || recordKey.lastIndexOf(':', i - 1) >= 0) return null;
  return { index: `${recordKey.slice(0, i)}:invopen`, member: recordKey.slice(i + 5) };
}

/** The tenant and invocation id of an open-invocations member `T:I` (names are encoded, so neither holds ':'). */
export function parseOpenMember(member: string): { tenant: string; id: string } | null {
  const i = member.indexOf(':');
  if (i <= 0 || member.indexOf(':', i + 1) >= 0) return null;
  try {
    return { tenant: decodeURIComponent(member.slice(0, i)), id: decodeURIComponent(member.slice(i + 1)) };
  } catch {
    return null;
  }
}
