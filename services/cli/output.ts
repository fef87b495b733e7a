/**
 * @module cli/output
 * What the CLI prints: aligned tables for humans, JSON for scripts (`--json`), and the small parsers of
 * human units (`10s`, `256M`).
 */
import { CliError, EXIT } from './api.ts';

/** Left-aligned columns separated by two spaces; header row in upper case. */
export function table(headers: string[], rows: (string | number | boolean | null | undefined)[][]): string {
  const cells = [headers.map((h) => h.toUpperCase()), ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `500ms`, `10s`, `1.5m`, `1h` → milliseconds. A bare number is refused: the unit is not guessable. */
export function parseDuration(v: string, flag: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/.exec(v.trim());
  if (!m) throw new CliError(`--${flag} ${JSON.stringify(v)}: give a unit, e.g. 500ms, 10s, 2m`, EXIT.usage);
  return Math.round(Number(m[1]) * DURATION_MS[m[2]!]!);
}

/** `256`, `256M`, `256MB`, `1G`, `1GiB` → MB. */
export function parseMemory(v: string, flag: string): number {
  const m = /^([0-9]+)\s*(m|mb|mib|g|gb|gib)?$/i.exec(v.trim());
  if (!m) throw new CliError(`--${flag} ${JSON.stringify(v)}: give megabytes, e.g. 256 or 1G`, EXIT.usage);
  return Number(m[1]) * (m[2] && m[2].toLowerCase().startsWith('g') ? 1024 : 1);
}

export function parseIntFlag(v: string, flag: string): number {
  if (!/^[0-9]+$/.test(v)) throw new CliError(`--${flag} must be a whole number`, EXIT.usage);
  return Number(v);
}

/** `K=V` pairs (repeatable `--env`) → a map; the value may contain '='. */
export function parseEnvPairs(pairs: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs ?? []) {
    const i = p.indexOf('=');
    if (i <= 0) throw new CliError(`--env ${JSON.stringify(p)}: use NAME=value`, EXIT.usage);
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function formatMs(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** A one-line progress meter on stderr, only when stderr is a terminal. */
export function progress(label: string): { update(sent: number, total: number): void; done(): void } {
  const tty = process.stderr.isTTY;
  let last = -1;
  return {
    update(sent, total) {
      if (!tty) return;
      const pct = total ? Math.floor((sent / total) * 100) : 100;
      if (pct === last) return;
      last = pct;
      process.stderr.write(`\r${label} ${formatBytes(sent)} / ${formatBytes(total)} (${pct}%)`);
    },
    done() {
      if (tty && last >= 0) process.stderr.write('\n');
    },
  };
}
