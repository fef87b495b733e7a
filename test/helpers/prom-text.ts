/**
 * A strict parser of the Prometheus text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format), for tests: every line
 * must be a comment, blank, or a well-formed sample; a sample's family must have been declared by # TYPE
 * (histograms: the _bucket/_sum/_count series). Throws with the line number on anything else.
 *
 * @example
 * const p = parsePromText(await (await fetch(url + '/metrics')).text());
 * p.value('fnhost_invocations_total', { function: 'hello', outcome: 'success', start: 'warm' }); // 1
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromText {
  samples: Sample[];
  /** family name → type (counter | gauge | histogram | summary | untyped) */
  types: Map<string, string>;
  /** sum of samples named `name` whose labels include all of `labels` (0 when none) */
  value(name: string, labels?: Record<string, string>): number;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{(.*)\\})?\\s+(\\S+)(?:\\s+(-?\\d+))?$`);
const LABEL_RE = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)/y;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(s: string, line: number): number {
  // Prometheus parses values with Go's ParseFloat: Inf/NaN spellings are case-insensitive (prom-client writes "Nan").
  const low = s.toLowerCase();
  if (low === '+inf' || low === 'inf') return Infinity;
  if (low === '-inf') return -Infinity;
  if (low === 'nan') return NaN;
  const v = Number(s);
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s) || Number.isNaN(v)) throw new Error(`line ${line}: bad value ${JSON.stringify(s)}`);
  return v;
}

function parseLabels(s: string, line: number): Record<string, string> {
  const out: Record<string, string> = {};
  LABEL_RE.lastIndex = 0;
  let pos = 0;
  while (pos < s.length) {
    LABEL_RE.lastIndex = pos;
    const m = LABEL_RE.exec(s);
    if (!m) throw new Error(`line ${line}: bad labels ${JSON.stringify(s)}`);
    if (m[1] in out) throw new Error(`line ${line}: duplicate label ${m[1]}`);
    out[m[1]] = m[2].replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c));
    pos = LABEL_RE.lastIndex;
    if (m[3] === '' && pos < s.length) throw new Error(`line ${line}: bad labels ${JSON.stringify(s)}`);
  }
  return out;
}

function familyOf(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count', '_total', '_created']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      if (types.has(base)) return base;
    }
  }
  return undefined;
}

export function parsePromText(text: string): PromText {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const n = i + 1;
    const l = raw.trimEnd();
    if (l === '') return;
    if (l.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s+(.*))?$/.exec(l);
      if (!m) return; // plain comment
      if (!new RegExp(`^${NAME}$`).test(m[2])) throw new Error(`line ${n}: bad metric name ${m[2]}`);
      if (m[1] === 'TYPE') {
        if (!TYPES.has(m[3] ?? '')) throw new Error(`line ${n}: bad type ${m[3]}`);
        if (types.has(m[2])) throw new Error(`line ${n}: second TYPE for ${m[2]}`);
        types.set(m[2], m[3]!);
      }
      return;
    }
    const m = SAMPLE_RE.exec(l);
    if (!m) throw new Error(`line ${n}: not a sample: ${JSON.stringify(l)}`);
    const [, name, labelStr, valueStr] = m;
    if (!familyOf(name, types)) throw new Error(`line ${n}: sample ${name} has no # TYPE`);
    samples.push({ name, labels: labelStr ? parseLabels(labelStr, n) : {}, value: parseValue(valueStr, n) });
  });
  return {
    samples,
    types,
    value(name, labels = {}) {
      let sum = 0;
      for (const s of samples) {
        if (s.name !== name) continue;
        if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value;
      }
      return sum;
    },
  };
}
