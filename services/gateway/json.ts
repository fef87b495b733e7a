/**
 * @module gateway/json
 * JSON request bodies: size-capped, parsed, and a parse failure is InvalidRequest (never a 500).
 */
import { InvalidRequest } from '../common/errors.ts';
import { readBody } from './body.ts';

/** 1 MiB: far above any config or PATCH body, small enough that a JSON bomb cannot hurt. */
export const JSON_BODY_LIMIT = 1024 * 1024;

export async function readJson(req: Request, limit = JSON_BODY_LIMIT): Promise<unknown> {
  const buf = await readBody(req, limit);
  return parseJson(buf.toString('utf8'), 'body');
}

export function parseJson(text: string, field: string): unknown {
  if (text.trim() === '') throw new InvalidRequest(`${field} is empty; expected JSON`, { field });
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InvalidRequest(`${field} is not valid JSON: ${(e as Error).message}`, { field });
  }
}
