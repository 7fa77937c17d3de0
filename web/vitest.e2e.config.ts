import { defineConfig } from 'vitest/config';

// End-to-end tests: a real `cmdx dev` (CMDX_BIN) driven through Debian Chromium
// (CHROMIUM, default /usr/bin/chromium) by playwright-core. One file at a time, long timeouts.
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    environment: 'node',
    watch: false,
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 120_000,
    bail: 0,
  },
});
