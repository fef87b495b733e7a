/**
 * @module scheduler/callback-url
 * The `X-Callback-Url` of an async invocation (./callbacks.ts delivers to it): what a valid one is, and the
 * host's optional allow-list of destinations (`FNHOST_CALLBACK_ALLOW`).
 *
 * A callback is an HTTP request the host makes on a tenant's behalf, so it is a server-side request forgery
 * (SSRF) vector: by default any destination is allowed (a self-hosted host, like OpenFaaS' `X-Callback-Url`),
 * which includes loopback and the private network the host sits in. An operator whose tenants must not reach
 * those sets the allow-list; it is checked on the address actually connected to (after DNS, so a name that
 * resolves to a forbidden address is refused at delivery, whatever it resolved to at enqueue time).
 *
 * @example
 * validateCallbackUrl('https://hooks.example.com/fnhost');   // 'https://hooks.example.com/fnhost'
 * const p = parseCallbackAllow('hooks.example.com, *.corp.example, 10.0.0.0/8');
 * allowedName(p, 'a.corp.example');   // true
 * allowedAddress(p, '10.1.2.3');      // true
 */
import { BlockList, isIP } from 'node:net';
import { InvalidRequest } from '../common/errors.ts';

/**
 * 2,048 characters: the longest URL every common HTTP client, proxy and CDN is known to pass (the de facto
 * limit since Internet Explorer's); a callback URL has no reason to be longer, and it travels in every job.
 */
export const CALLBACK_URL_MAX = 2048;

/** `FNHOST_CALLBACK_ALLOW`, parsed: host names (exact, or `*.suffix`) and CIDR blocks. Undefined = any. */
export interface CallbackAllow {
  names: string[];
  /** `*.example.com` → `.example.com` */
  suffixes: string[];
  blocks: BlockList;
  hasBlocks: boolean;
  /** the text it was parsed from (for error messages and logs) */
  text: string;
}

const FIELD = 'X-Callback-Url';

/**
 * The URL as given when it is an absolute http(s) URL of at most CALLBACK_URL_MAX printable ASCII
 * characters, with a host and without credentials (a `user:pass@` would be stored in Redis and logged);
 * otherwise InvalidRequest naming the header. With an allow-list, a destination it can already tell is not
 * allowed (a host name no rule admits, an IP literal outside every block) is refused here too.
 */
export function validateCallbackUrl(v: unknown, allow?: CallbackAllow): string {
  if (typeof v !== 'string' || v.length === 0) throw new InvalidRequest(`${FIELD} must be an absolute http(s) URL`, { field: FIELD });
  if (v.length > CALLBACK_URL_MAX) throw new InvalidRequest(`${FIELD} is longer than ${CALLBACK_URL_MAX} characters`, { field: FIELD });
  // printable ASCII only: an IRI or a stray space/control byte is a caller's mistake, and the URL goes into headers and logs
  if (!/^[\x21-\x7e]+$/.test(v)) throw new InvalidRequest(`${FIELD} must be printable ASCII without spaces (percent-encode the rest)`, { field: FIELD });
  // literally scheme://host…: no URL-parser repairs (`http:///h`, `http:\\h`, `HTTP:h`) that a receiver's logs would not show
  if (!/^https?:\/\/[^/\\?#]/i.test(v)) throw new InvalidRequest(`${FIELD} must be an absolute http(s) URL (http://host/…)`, { field: FIELD });
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new InvalidRequest(`${FIELD} must be an absolute http(s) URL`, { field: FIELD });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidRequest(`${FIELD} must use http or https`, { field: FIELD });
  if (!u.hostname) throw new InvalidRequest(`${FIELD} must name a host`, { field: FIELD });
  if (u.username || u.password) throw new InvalidRequest(`${FIELD} must not carry credentials; callbacks are signed (X-Fnhost-Signature)`, { field: FIELD });
  if (allow) {
    const host = bareHost(u.hostname);
    const ok = isIP(host) ? allowedAddress(allow, host) : allowedName(allow, host) || allow.hasBlocks;
    if (!ok) throw new InvalidRequest(`${FIELD} host ${host} is not in the host's callback allow-list`, { field: FIELD, host });
  }
  return v;
}

/** `[::1]` → `::1` (URL.hostname keeps the brackets of an IPv6 literal). */
export function bareHost(hostname: string): string {
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}

/**
 * Parses `FNHOST_CALLBACK_ALLOW`: comma-separated host names (`hooks.example.com`), wildcard suffixes
 * (`*.example.com`, any depth below it) and CIDR blocks or single addresses (`10.0.0.0/8`, `::1`).
 * Empty or unset → undefined (any destination). A malformed entry is an InvalidRequest: the host refuses to
 * start with a policy it cannot read rather than silently allowing more than meant.
 */
export function parseCallbackAllow(text: string | undefined): CallbackAllow | undefined {
  if (text === undefined || text.trim() === '') return undefined;
  const out: CallbackAllow = { names: [], suffixes: [], blocks: new BlockList(), hasBlocks: false, text };
  for (const raw of text.split(',')) {
    const e = raw.trim().toLowerCase();
    if (!e) continue;
    const slash = e.indexOf('/');
    const addr = slash < 0 ? e : e.slice(0, slash);
    const family = isIP(addr);
    if (family) {
      const type = family === 4 ? 'ipv4' : 'ipv6';
      const max = family === 4 ? 32 : 128;
      const bits = slash < 0 ? max : Number(e.slice(slash + 1));
      if (!Number.isInteger(bits) || bits < 0 || bits > max || (slash >= 0 && !/^[0-9]{1,3}$/.test(e.slice(slash + 1)))) {
        throw new InvalidRequest(`FNHOST_CALLBACK_ALLOW: bad CIDR ${JSON.stringify(raw.trim())}`, { field: 'FNHOST_CALLBACK_ALLOW' });
      }
      out.blocks.addSubnet(addr, bits, type);
      out.hasBlocks = true;
    } else if (/^\*\.[a-z0-9.-]+$/.test(e)) out.suffixes.push(e.slice(1));
    else if (/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/.test(e)) out.names.push(e);
    else throw new InvalidRequest(`FNHOST_CALLBACK_ALLOW: ${JSON.stringify(raw.trim())} is neither a host name, *.suffix nor a CIDR`, { field: 'FNHOST_CALLBACK_ALLOW' });
  }
  return out;
}

/** A host name an explicit name rule admits (its addresses are then trusted as DNS gives them). */
export function allowedName(allow: CallbackAllow, host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return allow.names.includes(h) || allow.suffixes.some((s) => h.endsWith(s));
}

/** An address inside one of the CIDR blocks (IPv4-mapped IPv6 addresses are judged as IPv4). */
export function allowedAddress(allow: CallbackAllow, address: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return allow.blocks.check(mapped[1]!, 'ipv4');
  const family = isIP(address);
  if (!family) return false;
  return allow.blocks.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

let envAllow: { text: string | undefined; allow: CallbackAllow | undefined } | undefined;
/** The allow-list of this process's environment (parsed once per distinct value). */
export function envCallbackAllow(env: NodeJS.ProcessEnv = process.env): CallbackAllow | undefined {
  const text = env.FNHOST_CALLBACK_ALLOW;
  if (!envAllow || envAllow.text !== text) envAllow = { text, allow: parseCallbackAllow(text) };
  return envAllow.allow;
}
