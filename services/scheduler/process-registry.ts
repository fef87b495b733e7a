/**
 * @module scheduler/process-registry
 * A map of this process's live parts by key, for the in-process short cuts between a client and a scheduler
 * that happen to share a process (./local-replies.ts, ./local-dispatch.ts). Unregistering only removes the
 * entry it registered, so a part closing late never removes its successor under the same key.
 *
 * @example
 * const reg = new ProcessRegistry<Settle>();
 * const unregister = reg.register(clientId, settle);
 * reg.get(clientId)?.(id, rec);
 */
export class ProcessRegistry<T> {
  private readonly entries = new Map<string, T>();

  /** Registers `value` under `key`; returns the unregister function. */
  register(key: string, value: T): () => void {
    this.entries.set(key, value);
    return () => {
      if (this.entries.get(key) === value) this.entries.delete(key);
    };
  }

  get(key: string | undefined): T | undefined {
    return key === undefined ? undefined : this.entries.get(key);
  }
}
