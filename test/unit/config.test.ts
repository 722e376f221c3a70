import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig, parseHostPort } from '../../src/config.js';
import { maskSecrets, parsePostgresUrl } from '../../src/url.js';

const UP = 'postgres://u:secret@127.0.0.1:5432/db';

describe('configuration', () => {
  it('parses flags into a frozen object with defaults', () => {
    const c = parseConfig(['--upstream', UP], {});
    expect(c).toMatchObject({
      command: 'serve',
      upstream: UP,
      executorUrl: UP,
      listen: { host: '127.0.0.1', port: 6432 },
      executor: true,
      migrate: true,
      logLevel: 'info',
    });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.listen)).toBe(true);
  });

  it('reads every flag from the environment, flags win', () => {
    const env = {
      DFGATE_UPSTREAM: UP,
      DFGATE_LISTEN: '0.0.0.0:7000',
      DFGATE_NO_MIGRATE: '1',
      DFGATE_LOG_LEVEL: 'debug',
      DFGATE_ADMIN_LISTEN: '127.0.0.1:9000',
    };
    const c = parseConfig([], env);
    expect(c).toMatchObject({
      listen: { host: '0.0.0.0', port: 7000 },
      migrate: false,
      logLevel: 'debug',
      adminListen: { host: '127.0.0.1', port: 9000 },
    });
    expect(parseConfig(['--listen=127.0.0.1:1', '--log-level', 'warn'], env)).toMatchObject({
      listen: { port: 1 },
      logLevel: 'warn',
    });
  });

  it('subcommands', () => {
    expect(parseConfig(['migrate', '--upstream', UP], {}).command).toBe('migrate');
    expect(parseConfig(['check', 'a.sql', 'b.sql'], {})).toMatchObject({
      command: 'check',
      files: ['a.sql', 'b.sql'],
    });
    expect(
      parseConfig(['worker', '--upstream', UP, '--executor-url', 'postgres://e@127.0.0.1/db'], {})
        .executorUrl,
    ).toBe('postgres://e@127.0.0.1/db');
  });

  it.each([
    [['--bogus'], /unknown flag --bogus/],
    [['--upstream', 'mysql://x'], /must start with postgres:\/\//],
    [['--upstream', 'not a url'], /not a valid URL/],
    [[], /--upstream .* is required/],
    [['--upstream', UP, '--listen', 'nope'], /--listen must be HOST:PORT/],
    [['--upstream', UP, '--log-level', 'loud'], /--log-level must be one of/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [
      ['migrate', '--upstream', UP, '--listen', '1:1'],
      /unknown flag --listen for "dfgate migrate"/,
    ],
    [['check'], /at least one FILE/],
    [['--upstream'], /needs a value/],
  ])('%j is a clear error', (argv, msg) => {
    expect(() => parseConfig(argv as string[], {})).toThrow(ConfigError);
    expect(() => parseConfig(argv as string[], {})).toThrow(msg);
  });

  it('never prints a password in an error', () => {
    expect(() => parseConfig(['--upstream', 'postgres://u:hunter2@'], {})).toThrow(/\*\*\*/);
    try {
      parseConfig(['--upstream', 'postgres://u:hunter2@'], {});
    } catch (e) {
      expect(String(e)).not.toContain('hunter2');
    }
  });

  it('host:port and URL helpers', () => {
    expect(parseHostPort('[::1]:5', 'x')).toEqual({ host: '::1', port: 5 });
    expect(parseHostPort(':5', 'x')).toEqual({ host: '127.0.0.1', port: 5 });
    expect(maskSecrets(`connect ${UP} and postgresql://a:b@h/d?password=zz`)).toBe(
      'connect postgres://u:***@127.0.0.1:5432/db and postgresql://a:***@h/d?password=***',
    );
    expect(parsePostgresUrl(UP).hostname).toBe('127.0.0.1');
  });
});
