/**
 * @module scheduler/fair-queue
 * Local waiting room for invocations a node has picked up but cannot run yet (memory full, function at its
 * instance cap). Round-robin across tenants: when capacity frees, each tenant's oldest servable waiter is
 * offered it in turn, starting after the tenant served last — so a tenant with hundreds of waiters gets one
 * turn per round like a tenant with one.
 *
 * Within a tenant, waiters are grouped (by function version in ./instances.ts): one FIFO per group, and
 * waiters of a group are interchangeable for `attempt()` — if the group's oldest cannot be served, none of
 * it can, so a pump costs one attempt per group, not one per waiter (48 invocations of one function
 * waiting for its 16 instances would otherwise be 48 attempts per release). Groups are offered
 * oldest head first, so a tenant stays FIFO across its functions as far as capacity allows.
 *
 * Removal (a waiter's time is up) is lazy: the waiter is marked and skipped when it reaches its FIFO's head.
 */

export interface FairWaiter<T> {
  tenant: string;
  /** waiters of one group are interchangeable for attempt() (default: one group per tenant). */
  group?: string;
  /** tries to take capacity now: a value = served (removed), undefined = still waiting. May throw (removed, rejected). */
  attempt(): T | undefined;
  resolve(v: T): void;
  reject(e: unknown): void;
}

interface Slot<T> {
  w: FairWaiter<T>;
  seq: number;
  gone: boolean;
}

/** FIFO with a moving head; compacts once the dead prefix is at least half of the array. */
class Fifo<T> {
  items: Slot<T>[] = [];
  head = 0;
  live = 0;

  push(s: Slot<T>) {
    this.items.push(s);
    this.live++;
  }

  /** the oldest waiter still waiting, dropping removed ones ahead of it. */
  peek(): Slot<T> | undefined {
    while (this.head < this.items.length && this.items[this.head]!.gone) this.head++;
    if (this.head > 32 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return this.items[this.head];
  }

  shift(): Slot<T> | undefined {
    const s = this.peek();
    if (s) {
      this.head++;
      this.live--;
    }
    return s;
  }
}

interface Tenant<T> {
  name: string;
  groups: Map<string, Fifo<T>>;
  live: number;
}

export class FairQueue<T> {
  private readonly tenants = new Map<string, Tenant<T>>();
  private readonly slots = new Map<FairWaiter<T>, Slot<T>>();
  private order: string[] = [];
  private cursor = 0;
  private seq = 0;

  get size(): number {
    return this.slots.size;
  }

  /** waiters of (tenant, group) still waiting. */
  countGroup(tenant: string, group: string): number {
    return this.tenants.get(tenant)?.groups.get(group)?.live ?? 0;
  }

  countFor(pred: (w: FairWaiter<T>) => boolean): number {
    let c = 0;
    for (const w of this.slots.keys()) if (pred(w)) c++;
    return c;
  }

  /** every waiter still waiting, oldest first within a group (deadline sweeps). */
  waiters(): IterableIterator<FairWaiter<T>> {
    return this.slots.keys();
  }

  push(w: FairWaiter<T>): void {
    let t = this.tenants.get(w.tenant);
    if (!t) {
      t = { name: w.tenant, groups: new Map(), live: 0 };
      this.tenants.set(w.tenant, t);
      this.order.push(w.tenant);
    }
    const g = w.group ?? '';
    let f = t.groups.get(g);
    if (!f) t.groups.set(g, (f = new Fifo()));
    const s: Slot<T> = { w, seq: ++this.seq, gone: false };
    f.push(s);
    t.live++;
    this.slots.set(w, s);
  }

  remove(w: FairWaiter<T>): boolean {
    const s = this.slots.get(w);
    if (!s) return false;
    s.gone = true;
    this.forget(s);
    return true;
  }

  /**
   * Takes the oldest waiter of (tenant, group) off the queue without attempting it: for a caller that has
   * capacity only that group can use (a slot of one function's instance) and hands it over itself.
   */
  shiftGroup(tenant: string, group: string): FairWaiter<T> | undefined {
    const t = this.tenants.get(tenant);
    const f = t?.groups.get(group);
    const s = f?.shift();
    if (!s) return undefined;
    s.gone = true;
    this.slots.delete(s.w);
    this.afterTake(t!, group, f!);
    return s.w;
  }

  private forget(s: Slot<T>) {
    this.slots.delete(s.w);
    const g = s.w.group ?? '';
    const t = this.tenants.get(s.w.tenant)!;
    const f = t.groups.get(g)!;
    f.live--;
    this.afterTake(t, g, f);
  }

  private afterTake(t: Tenant<T>, g: string, f: Fifo<T>) {
    t.live--;
    if (f.live === 0) t.groups.delete(g);
    if (t.live === 0) this.dropTenant(t);
  }

  private dropTenant(t: Tenant<T>) {
    this.tenants.delete(t.name);
    const i = this.order.indexOf(t.name);
    if (i >= 0) {
      this.order.splice(i, 1);
      if (i < this.cursor) this.cursor--;
    }
  }

  /**
   * One turn of a tenant: its groups oldest head first; the first that can be served is. 'rejected' when
   * nobody was served but attempts threw (those waiters are gone: progress all the same).
   */
  private turn(t: Tenant<T>): 'served' | 'rejected' | 'none' {
    let rejected = false;
    const heads: Slot<T>[] = [];
    for (const f of t.groups.values()) {
      const h = f.peek();
      if (h) heads.push(h);
    }
    if (heads.length > 1) heads.sort((a, b) => a.seq - b.seq);
    for (const h of heads) {
      let v: T | undefined;
      try {
        v = h.w.attempt();
      } catch (e) {
        h.gone = true;
        this.forget(h);
        h.w.reject(e);
        rejected = true;
        continue;
      }
      if (v !== undefined) {
        h.gone = true;
        this.forget(h);
        h.w.resolve(v);
        return 'served';
      }
    }
    return rejected ? 'rejected' : 'none';
  }

  /** Offers capacity round-robin until a full round serves nobody. */
  pump(): number {
    let served = 0;
    let idleRounds = 0;
    while (this.order.length > 0 && idleRounds < this.order.length) {
      if (this.cursor >= this.order.length) this.cursor = 0;
      const name = this.order[this.cursor]!;
      const t = this.tenants.get(name)!;
      const r = this.turn(t);
      // turn() may have dropped this tenant (served or rejected its last waiter): the cursor already points
      // at the next one then.
      if (this.tenants.get(name) === t) this.cursor++;
      if (r === 'none') idleRounds++;
      else {
        if (r === 'served') served++;
        idleRounds = 0;
      }
    }
    return served;
  }
}
