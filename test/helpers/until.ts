/**
 * Polls `f` until `ok` holds for its value (tests poll with a deadline instead of sleeping a fixed time).
 * @example
 * const rec = await until(() => client.get('t1', id), (r) => r?.status === 'succeeded');
 */
export async function until<T>(f: () => Promise<T> | T, ok: (v: T) => boolean, ms = 5000, everyMs = 20): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`condition not met in time (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
