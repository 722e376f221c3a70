/** Structured logging (pino): JSON lines, pretty when stdout is a terminal. */
import pino, { type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * Keys pino writes itself on every line. A logged object carrying one of them
 * would repeat the key in the JSON line (invalid for strict parsers), so it is
 * renamed instead.
 */
const OWN_KEYS: Readonly<Record<string, string>> = {
  msg: 'message',
  level: 'level_',
  time: 'time_',
  pid: 'pid_',
  hostname: 'hostname_',
};

/** The logged object with pino's own keys renamed (the same object when none occurs). */
export function withoutOwnKeys(obj: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const k of Object.keys(OWN_KEYS)) {
    if (!Object.prototype.hasOwnProperty.call(obj, k)) continue;
    out ??= { ...obj };
    out[OWN_KEYS[k] as string] = out[k];
    delete out[k];
  }
  return out ?? obj;
}

export function createLogger(
  level: LevelWithSilent,
  pretty = process.stdout.isTTY === true,
): Logger {
  const formatters = { log: withoutOwnKeys };
  if (pretty) {
    return pino({
      level,
      formatters,
      transport: {
        target: 'pino-pretty',
        options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' },
      },
    });
  }
  return pino({ level, formatters });
}
