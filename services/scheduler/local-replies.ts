/**
 * @module scheduler/local-replies
 * Result hand-over to a waiting client in the same process (`fnhost start` runs the gateway's client and a
 * scheduler together; so does the scheduler benchmark). The scheduler still writes the final record with the
 * same script (so `GET /v1/invocations/:id`, the exactly-once view and remote clients are unchanged); it
 * skips the PUBLISH on the client's reply channel and calls the client directly — for a sync job at once,
 * with the record following in the next write batch (./record-batch.ts). A job from a client in another
 * process finds no entry here and is published as before.
 *
 * Why: per sync invocation that saves Redis a PUBLISH and the host a pub/sub read, a JSON.parse of the whole
 * record and an event-loop wake-up on the subscriber connection (measured with /tmp/perf/tput.mts, see
 * the perf notes).
 */
import type { InvocationRecord } from './types.ts';
import { ProcessRegistry } from './process-registry.ts';

/**
 * `rec` is final, its response as bytes (no base64 round trip in-process); `written` settles once Redis has
 * the record (the client answers `get()` from memory until then — the record may go out in a batch, see
 * ./record-batch.ts).
 */
export type LocalSettle = (id: string, rec: InvocationRecord, written: Promise<unknown>) => void;

const clients = new ProcessRegistry<LocalSettle>();

/** Registers a client's result callback under its id; returns the unregister function. */
export function registerLocalClient(clientId: string, settle: LocalSettle): () => void {
  return clients.register(clientId, settle);
}

/** The in-process client waiting on `clientId`, if there is one. */
export function localClient(clientId: string | undefined): LocalSettle | undefined {
  return clients.get(clientId);
}
