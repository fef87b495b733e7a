/**
 * @module scheduler/config
 * Retention and queueing settings shared by the client (which sets them on each job) and the scheduler
 * (which writes records and logs with them). One definition, so both sides agree.
 */

export interface Retention {
  /** seconds an invocation record (and its stashed payload) lives after its last change (default 24 h). */
  recordS: number;
  /** seconds a failed async invocation stays in the dead-letter list, with its record and payload (default 7 days). */
  deadLetterS: number;
  /** seconds an idempotency key maps to its first invocation (default 24 h, as Stripe's Idempotency-Key). */
  idempotencyS: number;
  /** BullMQ job hashes of finished jobs: kept at most this long and this many per queue (default 1 h, 1,000). */
  completedJobAgeS: number;
  completedJobCount: number;
  /** failed async jobs per queue kept for redrive (default 10,000; age = deadLetterS). */
  failedJobCount: number;
}

export const DEFAULT_RETENTION: Retention = {
  recordS: 24 * 3600,
  deadLetterS: 7 * 24 * 3600,
  idempotencyS: 24 * 3600,
  completedJobAgeS: 3600,
  completedJobCount: 1000,
  failedJobCount: 10_000,
};

/** Default async attempts (issue 5: "configurable per function, default 3"). */
export const DEFAULT_ATTEMPTS = 3;
/** First retry after 1 s, then 2 s, 4 s ... (BullMQ exponential backoff). */
export const DEFAULT_BACKOFF_MS = 1000;

/** The id space of node ids: they appear inside keys and Lua-built key names. */
export const NODE_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** A node whose heartbeat is older than this is treated as gone (3 missed beats of 1 s). */
export const HEARTBEAT_MS = 1000;
export const NODE_STALE_MS = 3 * HEARTBEAT_MS;
