import { defineConfig } from 'vitest/config';

// Kernel, security and e2e tests create real namespaces, cgroups and mounts and assert that none of ours
// is left afterwards; running files one at a time keeps those assertions about one file's own work, and
// keeps timing-sensitive tests off a 2-core machine's second core.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/bench/**', 'node_modules/**'],
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: ['default'],
    globalSetup: ['test/global-setup.ts'],
  },
});
