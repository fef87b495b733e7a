/**
 * @module scheduler/fair-queue
 * Local waiting room for invocations a node has picked up but cannot run yet (memory full, function at its
 * instance cap). FIFO within a tenant, round-robin across tenants: when capacity frees, each tenant's oldest
 * waiter is offered it in turn, starting after the tenant served last — so a tenant with hundreds of waiters
 * gets one turn per round like a tenant with one.
 */

export interface FairWaiter<T> {
  tenant: string;
  /** tries to take capacity now: a value = served (removed), undefined = still waiting. May throw (removed, rejected). */
  attempt(): T | undefined;
  resolve(v: T): void;
  reject(e: unknown): void;
}

export class FairQueue<T> {
  private readonly byTenant = new Map<string, FairWaiter<T>[]>();
  private order: string[] = [];
  private cursor = 0;
  private n = 0;

  get size(): number {
    return this.n;
  }

  countFor(pred: (w: FairWaiter<T>) => boolean): number {
    let c = 0;
    for (const l of this.byTenant.values()) for (const w of l) if (pred(w)) c++;
    return c;
  }

  push(w: FairWaiter<T>): void {
    let l = this.byTenant.get(w.tenant);
    if (!l) {
      l = [];
      this.byTenant.set(w.tenant, l);
      this.order.push(w.tenant);
    }
    l.push(w);
    this.n++;
  }

  remove(w: FairWaiter<T>): boolean {
    const l = this.byTenant.get(w.tenant);
    const i = l ? l.indexOf(w) : -1;
    if (!l || i < 0) return false;
    l.splice(i, 1);
    this.n--;
    if (l.length === 0) this.dropTenant(w.tenant);
    return true;
  }

  private dropTenant(t: string) {
    this.byTenant.delete(t);
    const i = this.order.indexOf(t);
    if (i >= 0) {
      this.order.splice(i, 1);
      if (i < this.cursor) this.cursor--;
    }
  }

  /**
   * Offers capacity round-robin until a full round serves nobody. Within a tenant, the first waiter that can
   * be served is (a later waiter of the same tenant for a different function may fit where the first does not).
   */
  pump(): number {
    let served = 0;
    let idleRounds = 0;
    while (this.order.length > 0 && idleRounds < this.order.length) {
      if (this.cursor >= this.order.length) this.cursor = 0;
      const t = this.order[this.cursor]!;
      const l = this.byTenant.get(t)!;
      let hit = false;
      for (let i = 0; i < l.length; i++) {
        const w = l[i]!;
        let v: T | undefined;
        try {
          v = w.attempt();
        } catch (e) {
          l.splice(i--, 1);
          this.n--;
          w.reject(e);
          continue;
        }
        if (v !== undefined) {
          l.splice(i, 1);
          this.n--;
          w.resolve(v);
          hit = true;
          break;
        }
      }
      if (l.length === 0) this.dropTenant(t);
      else this.cursor++;
      if (hit) {
        served++;
        idleRounds = 0;
      } else idleRounds++;
    }
    return served;
  }
}
