import { defineConfig } from 'vitest/config';

// Unit tests: pure client logic, no browser, no hub.
export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
    watch: false,
  },
});
