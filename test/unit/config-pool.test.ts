import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';

const UP = 'postgres://u:secret@127.0.0.1:5432/db';

describe('pooling flags', () => {
  it('default to session mode with the documented limits', () => {
    expect(parseConfig(['--upstream', UP], {})).toMatchObject({
      poolMode: 'session',
      poolSize: 20,
      maxServerConnections: 100,
      poolTimeoutMs: 30_000,
      serverIdleTimeoutMs: 600_000,
    });
  });

  it('read flags and DFGATE_POOL_* variables; flags win', () => {
    const env = {
      DFGATE_POOL_MODE: 'transaction',
      DFGATE_POOL_SIZE: '7',
      DFGATE_MAX_SERVER_CONNECTIONS: '9',
      DFGATE_POOL_TIMEOUT: '1.5',
      DFGATE_SERVER_IDLE_TIMEOUT: '0',
    };
    expect(parseConfig(['--upstream', UP], env)).toMatchObject({
      poolMode: 'transaction',
      poolSize: 7,
      maxServerConnections: 9,
      poolTimeoutMs: 1500,
      serverIdleTimeoutMs: 0,
    });
    expect(parseConfig(['--upstream', UP, '--pool-size', '3'], env).poolSize).toBe(3);
  });

  it('refuse an unknown mode and out-of-range sizes', () => {
    expect(() => parseConfig(['--upstream', UP, '--pool-mode', 'statement'], {})).toThrow(
      /--pool-mode must be session or transaction/,
    );
    expect(() => parseConfig(['--upstream', UP, '--pool-size', '0'], {})).toThrow(/--pool-size/);
  });
});
