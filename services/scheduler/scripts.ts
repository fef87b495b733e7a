/**
 * @module scheduler/scripts
 * Defines every Lua script of the scheduler on a connection at once. Call it right after creating a
 * connection, before its first command: with `enableAutoPipelining`, ioredis builds its pipelines from the
 * command table as it was, and a script defined later is missing from them ("pipeline[fn] is not a function").
 */
import type { Redis } from 'ioredis';
import { defineRecordScript } from './records.ts';
import { defineRoutingScripts } from './routing.ts';
import { defineFastLaneScript } from './fast-lane.ts';

export function defineScripts(redis: Redis): Redis {
  defineRecordScript(redis);
  defineRoutingScripts(redis);
  defineFastLaneScript(redis);
  return redis;
}
