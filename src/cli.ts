#!/usr/bin/env node
/** The dfgate command line (DESIGN.md §6). */
import { ConfigError, helpText, parseConfig, type Config } from './config.js';
import { createLogger } from './log.js';
import { runCheck } from './dsl/check.js';
import { runRoles } from './roles.js';
import { migrateUpstream, serveForever } from './serve.js';
import { maskSecrets } from './url.js';

async function runMigrate(cfg: Config): Promise<number> {
  const log = createLogger(cfg.logLevel);
  try {
    await migrateUpstream(cfg.upstream as string, log);
    return 0;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    log.error({ upstream: maskSecrets(cfg.upstream ?? '') }, maskSecrets(msg));
    return 1;
  }
}

export async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  let cfg: Config;
  try {
    cfg = parseConfig(argv, env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`dfgate: ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  }
  if (cfg.help) {
    process.stdout.write(helpText(cfg.command) + '\n');
    return 0;
  }
  switch (cfg.command) {
    case 'migrate':
      return await runMigrate(cfg);
    case 'serve':
      return await serveForever(cfg, createLogger(cfg.logLevel));
    case 'worker':
      return await serveForever(cfg, createLogger(cfg.logLevel), false);
    case 'roles':
      return await runRoles(cfg);
    case 'check':
      return await runCheck(cfg.files);
  }
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(
      `dfgate: ${maskSecrets(err instanceof Error ? (err.stack ?? err.message) : String(err))}\n`,
    );
    process.exitCode = 1;
  },
);
