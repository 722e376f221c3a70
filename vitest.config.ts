import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/harness/global-setup.ts'],
    setupFiles: ['test/harness/setup-file.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    reporters: [
      'default',
      ['json', { outputFile: process.env['DFGATE_TEST_REPORT'] ?? '.test-report.json' }],
    ],
  },
});
