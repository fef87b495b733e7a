import { inject } from 'vitest';

/** URL of the run's real redis-server (started by test/global-setup.ts). */
export function redisUrl(): string {
  return inject('redisUrl');
}
