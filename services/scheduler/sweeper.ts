/**
 * @module scheduler/sweeper
 * Finishes async invocations whose outcome nobody is left to write. A job BullMQ fails on its own (it stalled
 * out: ./process-job.ts finishLostWorker) is finished by whichever node hears the 'stalled' or 'failed' event;
 * if those nodes die first, the record would stay `queued`/`running` until it expires and a caller polling
 * GET /v1/invocations/:id would never see an outcome. The same holds for a record whose job was never added
 * (the gateway died between the record write and Queue.add: an idempotent retry then returns that id) or
 * was removed, and for a job that ended while its final write was lost.
 *
 * How: every async record enters the index `P:invopen` (ZSET `T:I` → epoch ms, ./keys.ts) in the MULTI that
 * writes it queued (./records.ts queueRecord; redrive re-adds it). Every `intervalMs`, the node that takes the
 * lock `P:sweeper` (SET NX PX 0.9 × intervalMs, left to expire: about one run per interval across all nodes) walks the
 * entries older than `graceMs`, `batch` at a time:
 *   1. the record's status (one pipelined HGET each): final or gone → the entry is dropped;
 *   2. for the others, the job (pipelined: EXISTS of its hash, ZSCORE in failed and completed, and the entry's
 *      score again): still waiting / delayed / active → re-scored to now (looked at again after `graceMs`);
 *      failed, completed or gone → finished through finishLostJob, the path finishLostWorker takes (record
 *      `failed` with Crashed, never over a final record, counted once, callback queued; a failed job is the
 *      dead letter already), then dropped.
 * Entries leave the index only here: the final writes do not touch it, so the invocation paths pay two
 * commands in the enqueue MULTI and nothing else. An entry is dropped only if its score is still the one read
 * (ZSCORE compare in one script), and a candidate is finished only if its score did not change since: a redrive
 * re-scores its entry before forcing the record back to queued, so neither can undo it.
 *
 * Errors say which case it was: `details.reason` 'worker-lost' (stalled out, as finishLostWorker), 'result-lost'
 * (the job failed or completed but no final record was written; `details.jobState`, `details.failedReason`),
 * 'job-lost' (no job: never added, or removed; called back when the queued record kept the callback URL, field
 * `c` — a job-lost invocation has no dead letter: its payload went with the job).
 *
 * @example
 * const sweeper = new Sweeper(ctx, bullRedis, { intervalMs: 30_000, graceMs: 120_000 });
 * sweeper.start();
 * ...
 * await sweeper.close();
 */
import { randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Crashed, type FnhostError } from '../common/errors.ts';
import type { FunctionVersion } from '../common/model.ts';
import { bullConnection } from './client.ts';
import type { JobData } from './job.ts';
import { RECORD_CALLBACK_FIELD, parseOpenMember } from './keys.ts';
import { finishLostJob, isStalledOut, lostJobOf, workerLost, type JobContext, type LostJob } from './process-job.ts';
import { isFinal, type StoredRecord } from './records.ts';

export interface SweeperOptions {
  /** how often each node tries to take the run (default 30 s, BullMQ's stalled-job interval) */
  intervalMs: number;
  /**
   * entries younger than this are left alone (default 2 min): an enqueue between its record write and
   * Queue.add takes milliseconds, and a live node finishes a stalled-out job on BullMQ's events within one
   * stalled-job interval (30 s); a live job's entry is re-checked this often.
   */
  graceMs: number;
  /** entries per round trip (default 500: a pipeline of 500 HGETs is ~50 KB of replies) */
  batch: number;
}

export const DEFAULT_SWEEPER: SweeperOptions = { intervalMs: 30_000, graceMs: 120_000, batch: 500 };

/** What one sweep did (tests, logs). */
export interface SweepResult {
  /** false: another node holds the run lock (or the sweeper is closing) */
  ran: boolean;
  /** entries looked at */
  checked: number;
  /** entries dropped because the record is final or gone */
  dropped: number;
  /** entries whose job is still live (re-scored) */
  live: number;
  /** records this sweep finished (written) */
  finished: number;
}

/** PEXPIRE the lock only if it is still ours (a long run keeps it; one whose lock lapsed stops). */
const RENEW_LUA = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;
/** ZREM each ARGV[2i-1] whose score is still ARGV[2i] (as ZRANGEBYSCORE WITHSCORES printed it). */
const DROP_LUA = `
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return n`;

type JobState = 'live' | 'failed' | 'completed' | 'gone';

export class Sweeper {
  private readonly opts: SweeperOptions;
  private readonly queues = new Map<string, Queue>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private closing = false;

  constructor(
    private readonly ctx: JobContext,
    /** BullMQ's connection (maxRetriesPerRequest: null), shared by the queues that load jobs */
    private readonly bull: Redis,
    opts: Partial<SweeperOptions> = {},
  ) {
    this.opts = { ...DEFAULT_SWEEPER, ...opts };
  }

  /**
   * The lock outlives the run on purpose (one run per interval across nodes) but not the interval: a lock of exactly
   * intervalMs, taken one round trip after the tick, would still be there at the same node's next tick, and a lone
   * node would sweep every other interval.
   */
  private lockMs(): number {
    return Math.max(1, Math.floor(this.opts.intervalMs * 0.9));
  }

  /** Runs a sweep every `intervalMs` (skipped while the previous one runs). */
  start(): void {
    if (this.timer || this.closing) return;
    this.timer = setInterval(() => {
      if (this.running) return;
      const run = this.sweep().catch((e) => this.ctx.log.warn({ err: String((e as Error)?.message ?? e) }, 'sweeper: run failed'));
      this.running = run;
      void run.finally(() => (this.running = undefined));
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  /** One run, if this node gets the lock. */
  async sweep(): Promise<SweepResult> {
    const out: SweepResult = { ran: false, checked: 0, dropped: 0, live: 0, finished: 0 };
    const { redis, keys } = this.ctx;
    const lock = keys.sweeperLock();
    const token = `${this.ctx.nodeId}:${randomUUID()}`;
    if (this.closing || (await redis.set(lock, token, 'PX', this.lockMs(), 'NX')) !== 'OK') return out;
    out.ran = true;
    const index = keys.openInvocations();
    const recordOf = (member: string) => `${keys.prefix}:inv:${member}`;
    for (;;) {
      const due = await redis.zrangebyscore(index, '-inf', Date.now() - this.opts.graceMs, 'WITHSCORES', 'LIMIT', 0, this.opts.batch);
      const n = due.length / 2;
      if (n === 0) break;
      out.checked += n;
      const statuses = await exec(redis, (m) => {
        for (let i = 0; i < n; i++) m.hget(recordOf(due[2 * i]!), 's');
      });
      const drop: string[] = [];
      const open: Array<{ member: string; score: string; tenant: string; id: string }> = [];
      for (let i = 0; i < n; i++) {
        const member = due[2 * i]!;
        const score = due[2 * i + 1]!;
        const s = statuses[i] as StoredRecord['status'] | null;
        const who = parseOpenMember(member);
        if (s === null || isFinal(s) || !who) drop.push(member, score);
        else open.push({ member, score, ...who });
      }
      const rescore: string[] = [];
      if (open.length) {
        const facts = await exec(redis, (m) => {
          for (const o of open) {
            const q = `${keys.bullPrefix}:${keys.tenantQueue(o.tenant)}`;
            m.exists(`${q}:${o.id}`).zscore(`${q}:failed`, o.id).zscore(`${q}:completed`, o.id).zscore(index, o.member);
          }
        });
        for (let i = 0; i < open.length; i++) {
          const o = open[i]!;
          const [exists, failed, completed, score] = facts.slice(4 * i, 4 * i + 4);
          // re-scored since it was read: a redrive made it open again — it is not this run's to judge
          if (score !== o.score) continue;
          const state: JobState = !exists ? 'gone' : failed !== null ? 'failed' : completed !== null ? 'completed' : 'live';
          if (state === 'live') {
            out.live++;
            rescore.push(String(Date.now()), o.member);
            continue;
          }
          try {
            if (await this.finish(o.tenant, o.id, recordOf(o.member), state)) out.finished++;
            drop.push(o.member, o.score);
          } catch (e) {
            // looked at again after graceMs
            rescore.push(String(Date.now()), o.member);
            this.ctx.log.warn({ invocationId: o.id, tenant: o.tenant, err: String((e as Error)?.message ?? e) }, 'sweeper: finishing a lost invocation failed');
          }
        }
      }
      if (drop.length) out.dropped += Number(await redis.eval(DROP_LUA, 1, index, ...drop));
      if (rescore.length) await redis.zadd(index, 'XX', ...rescore);
      // still ours? (a run longer than the lock keeps it; one that lost it stops)
      if (n < this.opts.batch || this.closing || !(await redis.eval(RENEW_LUA, 1, lock, token, this.lockMs()))) break;
    }
    if (out.finished) this.ctx.log.info({ ...out }, 'sweeper: finished invocations whose outcome was lost');
    return out;
  }

  /** Writes the outcome of one open invocation whose job is no longer live; true when this call wrote it. */
  private async finish(tenant: string, id: string, recKey: string, state: Exclude<JobState, 'live'>): Promise<boolean> {
    if (state !== 'gone') {
      const job = (await Job.fromId<JobData>(this.queue(tenant), id)) as Job<JobData> | undefined;
      // removed between the check and now: then it is gone
      if (job?.data?.fn) {
        const err: FnhostError = state === 'failed' && isStalledOut(job, undefined)
          ? workerLost(job)
          : new Crashed(`the invocation's job ${state === 'failed' ? 'failed' : 'completed'} but its outcome was never written (its scheduler node died or lost Redis before writing it)`, {
              reason: 'result-lost', jobState: state, ...(job.failedReason ? { failedReason: job.failedReason } : {}),
            });
        return finishLostJob(this.ctx, lostJobOf(job), err);
      }
    }
    const [raw, callbackUrl] = await this.ctx.redis.hmget(recKey, 'r', RECORD_CALLBACK_FIELD);
    if (!raw) return false;
    const rec = JSON.parse(raw) as StoredRecord;
    if (isFinal(rec.status)) return false;
    const err = new Crashed("the invocation's job is gone from the queue (never added, or removed) and it has no outcome", { reason: 'job-lost' });
    return finishLostJob(this.ctx, this.lostOfRecord(rec, callbackUrl ?? undefined), err);
  }

  /**
   * A job that is gone, as its record describes it: only what finishLostJob reads (the identity), and the
   * callback URL when the queued record kept it (field `c` of the record hash, ./keys.ts): then the outcome is
   * called back. The payload and reply channel went with the job: no dead letter (nothing to redrive it with).
   */
  private lostOfRecord(rec: StoredRecord, callbackUrl?: string): LostJob {
    const fn = { tenant: rec.tenant, name: rec.function, version: rec.version } as FunctionVersion;
    const data: JobData = { id: rec.id, mode: rec.mode, fn, payload: { kind: 'event', body: { utf8: '' } }, createdAt: rec.createdAt, deadline: 0 };
    if (callbackUrl) data.callbackUrl = callbackUrl;
    return {
      data,
      attempt: { queueName: this.ctx.keys.tenantQueue(rec.tenant), timestamp: rec.createdAt, attempt: rec.attempts || 1, maxAttempts: 1, restarted: true },
      processedOn: rec.startedAt,
    };
  }

  private queue(tenant: string): Queue {
    const name = this.ctx.keys.tenantQueue(tenant);
    let q = this.queues.get(name);
    if (!q) {
      q = new Queue(name, { connection: bullConnection(this.bull), prefix: this.ctx.keys.bullPrefix });
      this.queues.set(name, q);
    }
    return q;
  }

  /** Stops the timer and waits for a run in progress (it stops after its current batch). */
  async close(): Promise<void> {
    this.closing = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
    await Promise.all([...this.queues.values()].map((q) => q.close().catch(() => {})));
    this.queues.clear();
  }
}

/** Runs a pipeline and returns its replies, throwing the first error. */
async function exec(redis: Redis, build: (m: ReturnType<Redis['pipeline']>) => void): Promise<unknown[]> {
  const m = redis.pipeline();
  build(m);
  const res = (await m.exec()) ?? [];
  return res.map(([err, v]) => {
    if (err) throw err;
    return v;
  });
}
