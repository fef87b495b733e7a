/**
 * @module scheduler/record-batch
 * Final records (and log lines) of calls dispatched in-process (./local-dispatch.ts), written to Redis in
 * batches: one script call for all the batch's records (+ the log lines, in the same pipeline) per `flushMs`
 * or per `maxBatch` records, instead of one auto-pipelined EVALSHA write per invocation.
 *
 * Why it is allowed here: nobody waits for these writes (the caller already has its answer; `client.get()`
 * answers from its in-process map until the batch is acknowledged), and a local call's record key is written
 * by nobody else, so the plain HSET + EXPIRE needs no "never over a final record" script (./records.ts).
 * Why it pays: with the queue gone, the record write was the host's largest cost per warm invocation after
 * the HTTP response itself — 15 % of the host's CPU in socket writes and 7 % in ioredis (--cpu-prof of
 * `fnhost start` at 32 connections, /tmp/fnhost-notes/dispatch.md).
 *
 * @example
 * const batch = new RecordBatch(redis, keys, { recordS: 86400 }, logRetention);
 * await batch.add(record, lines);   // resolves once Redis acknowledged the batch it went out in
 * await batch.close();              // flushes what is pending
 */
import type { Redis } from 'ioredis';
import type { LogLine } from '../common/model.ts';
import type { Keys } from './keys.ts';
import type { LogRetention } from './logs.ts';
import type { InvocationRecord } from './types.ts';
import { defineRecordScript, toStored } from './records.ts';

/**
 * 2 ms: at 2,000–4,000 invocations/s that is 4–8 records per write; short enough that a GET from another
 * process right after the response rarely finds the record missing (this process answers from memory).
 */
const FLUSH_MS = 2;
/** a batch this large goes out at once (bounds the pipeline and the memory held). */
const MAX_BATCH = 64;

/** the batch script (./records.ts), defined on every scheduler connection by ./scripts.ts (a pipeline copies it) */
type PutRecords = { fnhostPutRecords(...args: (string | number)[]): Promise<unknown> };

interface Pending {
  record: InvocationRecord;
  lines: LogLine[];
  checked: boolean;
}

export class RecordBatch {
  private pending: Pending[] = [];
  /** settles with the pending batch's write: every record of a batch gets the same promise (one per batch, not per call) */
  private written: Promise<void> | undefined;
  private settle: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly recordTtlS: number,
    private readonly logs: LogRetention,
  ) {
    // A pipeline copies the connection's scripts when it is created (every flush makes a new one).
    defineRecordScript(redis);
  }

  /**
   * Queues the final record (and the invocation's log lines); resolves once Redis has them. `checked`: write
   * with the record script, which never replaces a final record (queued jobs, whose record others may write
   * too); unchecked is a plain HSET for records nobody else writes (in-process calls).
   */
  add(record: InvocationRecord, lines: LogLine[], checked = false): Promise<void> {
    let written = this.written;
    if (!written) {
      written = this.written = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));
      // a batch whose callers all dropped the promise must not turn a failed write into an unhandled rejection
      written.catch(() => {});
    }
    this.pending.push({ record, lines, checked });
    if (this.pending.length >= MAX_BATCH) this.flush();
    else if (!this.timer) this.timer = setTimeout(() => this.flush(), FLUSH_MS);
    return written;
  }

  /**
   * Sends what is pending now: the records in one script call (checked and unchecked alike, ./records.ts),
   * plus the log lines, in one pipeline; without log lines the script call goes alone (no pipeline object).
   */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const settle = this.settle!;
    this.written = undefined;
    this.settle = undefined;
    const n = batch.length;
    // numkeys, KEYS…, ttl, (status, json, checked)…
    const args: (string | number)[] = new Array(2 + 4 * n);
    args[0] = n;
    args[n + 1] = this.recordTtlS;
    let withLines = false;
    for (let i = 0; i < n; i++) {
      const { record, lines, checked } = batch[i]!;
      args[1 + i] = this.keys.record(record.tenant, record.id);
      const a = n + 2 + 3 * i;
      args[a] = record.status;
      args[a + 1] = JSON.stringify(toStored(record));
      args[a + 2] = checked ? '1' : '';
      if (lines.length) withLines = true;
    }
    let sent: Promise<unknown>;
    if (!withLines) {
      sent = (this.redis as unknown as PutRecords).fnhostPutRecords(...args);
    } else {
      const m = this.redis.pipeline();
      (m as unknown as PutRecords).fnhostPutRecords(...args);
      const logFns = new Map<string, Set<string>>();
      for (const { record, lines } of batch) {
        if (!lines.length) continue;
        const lk = this.keys.logs(record.tenant, record.function);
        for (const l of lines) m.xadd(lk, 'MAXLEN', '~', String(this.logs.maxLen), '*', 'i', l.invocationId, 's', l.stream, 't', String(l.ts), 'l', l.line);
        m.expire(lk, this.logs.ttlS);
        let fns = logFns.get(record.tenant);
        if (!fns) logFns.set(record.tenant, (fns = new Set()));
        fns.add(record.function);
      }
      for (const [tenant, fns] of logFns) {
        m.sadd(this.keys.logFunctions(tenant), ...fns);
        m.expire(this.keys.logFunctions(tenant), this.logs.ttlS);
      }
      sent = m.exec().then((res) => {
        const err = res?.find(([e]) => e)?.[0];
        if (err) throw err;
      });
    }
    const p = sent.then(settle.resolve, settle.reject);
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  /** Flushes and waits for every batch sent so far (shutdown). */
  async close(): Promise<void> {
    this.flush();
    await Promise.all([...this.inFlight]);
  }
}
