/** Structured logging (pino): JSON lines, pretty when stdout is a terminal. */
import pino, { type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export function createLogger(
  level: LevelWithSilent,
  pretty = process.stdout.isTTY === true,
): Logger {
  if (pretty) {
    return pino({
      level,
      transport: {
        target: 'pino-pretty',
        options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' },
      },
    });
  }
  return pino({ level });
}
