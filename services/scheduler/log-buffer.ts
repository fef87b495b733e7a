/**
 * @module scheduler/log-buffer
 * Collects an invocation's log lines while it runs and hands them over in one batch with its result (one
 * XADD pipeline per invocation instead of one round trip per line). Lines of invocations that are not
 * running here (a runtime's load-time output, late stragglers) are written in batches every 50 ms.
 */
import type { FunctionVersion, LogLine } from '../common/model.ts';

const STRAY_FLUSH_MS = 50;

export class LogBuffer {
  private readonly running = new Map<string, LogLine[]>();
  private stray: Array<{ fn: FunctionVersion; line: LogLine }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly write: (fn: FunctionVersion, lines: LogLine[]) => Promise<void>) {}

  begin(invocationId: string): void {
    this.running.set(invocationId, []);
  }

  add(fn: FunctionVersion, line: LogLine): void {
    const l = this.running.get(line.invocationId);
    if (l) {
      l.push(line);
      return;
    }
    this.stray.push({ fn, line });
    if (!this.timer) this.timer = setTimeout(() => void this.flushStray(), STRAY_FLUSH_MS);
  }

  /** The invocation's lines so far; later lines of it are written as strays. */
  take(invocationId: string): LogLine[] {
    const l = this.running.get(invocationId) ?? [];
    this.running.delete(invocationId);
    return l;
  }

  async flushStray(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.stray;
    this.stray = [];
    const byFn = new Map<string, { fn: FunctionVersion; lines: LogLine[] }>();
    for (const { fn, line } of batch) {
      const k = `${fn.tenant}\u0000${fn.name}`;
      let e = byFn.get(k);
      if (!e) byFn.set(k, (e = { fn, lines: [] }));
      e.lines.push(line);
    }
    await Promise.all([...byFn.values()].map((e) => this.write(e.fn, e.lines).catch(() => {})));
  }
}
