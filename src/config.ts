/**
 * Command-line and environment configuration, parsed once at the edge into a
 * frozen, fully resolved object (STYLE.md 13). Every flag has an environment
 * variable (DFGATE_<FLAG>); flags win. Unknown flags are errors (exit 2).
 */
import { parsePostgresUrl, UrlError } from './url.js';

export type Command = 'serve' | 'migrate' | 'worker' | 'check' | 'roles';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export interface Config {
  readonly command: Command;
  readonly help: boolean;
  readonly upstream: string | undefined;
  readonly executorUrl: string | undefined;
  readonly listen: HostPort;
  readonly adminListen: HostPort | undefined;
  /** --ui-listen: the web console (docs/ui.md), off by default. */
  readonly uiListen: HostPort | undefined;
  readonly executor: boolean;
  readonly migrate: boolean;
  readonly logLevel: LogLevel;
  readonly files: readonly string[];
  readonly tlsCert: string | undefined;
  readonly tlsKey: string | undefined;
  readonly maxClientConnections: number;
  readonly connectTimeoutMs: number;
  readonly startupTimeoutMs: number;
  /** session: one server connection per client; transaction: lent per transaction (docs/proxy.md). */
  readonly poolMode: 'session' | 'transaction';
  /** Transaction mode: server connections per (role, database, startup settings). */
  readonly poolSize: number;
  /** Transaction mode: server connections in all pools together. */
  readonly maxServerConnections: number;
  /** Transaction mode: how long a client waits for a server connection before 53300. */
  readonly poolTimeoutMs: number;
  /** Transaction mode: an idle server connection is closed after this long (0: never). */
  readonly serverIdleTimeoutMs: number;
  readonly maxMessageSize: number;
  /** Rounds of synthetic compiling before the proxy listens (0: none). */
  readonly warmUpRounds: number;
  readonly shutdownTimeoutMs: number;
  readonly maxConcurrentSteps: number;
  readonly leaseMs: number;
  readonly pollMs: number;
  readonly stepAuth: 'login' | 'set-role';
  readonly slotTimeoutMs: number;
  readonly maxStepsPerRole: number;
  /** Step slots (and instance leases) kept for roles with none (docs/executor.md, "Fairness"). */
  readonly slotReserve: number;
  readonly stepTimeoutMs: number;
  /** Bytes a SQL step's result (its JSON text) may take; over it the step fails. */
  readonly maxResultBytes: number;
  /** DFGATE_STEP_SECRET: step login passwords derive from it (never printed). */
  readonly stepSecret: string | undefined;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly exitCode = 2;
}

type FlagKind = 'string' | 'boolean';
interface FlagSpec {
  readonly name: string;
  readonly kind: FlagKind;
  readonly env: string;
  readonly help: string;
  readonly commands: readonly Command[];
}

const ALL: readonly Command[] = ['serve', 'migrate', 'worker', 'check', 'roles'];
const DB: readonly Command[] = ['serve', 'migrate', 'worker', 'roles'];

export const FLAGS: readonly FlagSpec[] = [
  {
    name: 'upstream',
    kind: 'string',
    env: 'DFGATE_UPSTREAM',
    help: 'PostgreSQL URL of the database dfgate serves',
    commands: DB,
  },
  {
    name: 'listen',
    kind: 'string',
    env: 'DFGATE_LISTEN',
    help: 'HOST:PORT for clients (default 127.0.0.1:6432)',
    commands: ['serve'],
  },
  {
    name: 'executor-url',
    kind: 'string',
    env: 'DFGATE_EXECUTOR_URL',
    help: "URL of the executor's control login (default: --upstream)",
    commands: ['serve', 'worker'],
  },
  {
    name: 'no-executor',
    kind: 'boolean',
    env: 'DFGATE_NO_EXECUTOR',
    help: 'run the proxy only',
    commands: ['serve'],
  },
  {
    name: 'no-migrate',
    kind: 'boolean',
    env: 'DFGATE_NO_MIGRATE',
    help: 'do not apply migrations at start',
    commands: ['serve', 'worker'],
  },
  {
    name: 'admin-listen',
    kind: 'string',
    env: 'DFGATE_ADMIN_LISTEN',
    help: 'HOST:PORT of the HTTP admin port: /healthz, /readyz, /metrics (default off)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'ui-listen',
    kind: 'string',
    env: 'DFGATE_UI_LISTEN',
    help: 'HOST:PORT of the web console (default off; see docs/ui.md)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'tls-cert',
    kind: 'string',
    env: 'DFGATE_TLS_CERT',
    help: 'PEM certificate: offer TLS to clients',
    commands: ['serve'],
  },
  {
    name: 'tls-key',
    kind: 'string',
    env: 'DFGATE_TLS_KEY',
    help: 'PEM private key for --tls-cert',
    commands: ['serve'],
  },
  {
    name: 'max-client-connections',
    kind: 'string',
    env: 'DFGATE_MAX_CLIENT_CONNECTIONS',
    help: 'refuse clients beyond this many with 53300 (default 1000)',
    commands: ['serve'],
  },
  {
    name: 'connect-timeout',
    kind: 'string',
    env: 'DFGATE_CONNECT_TIMEOUT',
    help: 'seconds to wait for the upstream server (default 10)',
    commands: ['serve'],
  },
  {
    name: 'startup-timeout',
    kind: 'string',
    env: 'DFGATE_STARTUP_TIMEOUT',
    help: 'seconds a client gets from connecting until it is logged in (default 60)',
    commands: ['serve'],
  },
  {
    name: 'pool-mode',
    kind: 'string',
    env: 'DFGATE_POOL_MODE',
    help: 'session (one server connection per client, default) or transaction (lent per transaction)',
    commands: ['serve'],
  },
  {
    name: 'pool-size',
    kind: 'string',
    env: 'DFGATE_POOL_SIZE',
    help: 'transaction mode: server connections per role and database (default 20)',
    commands: ['serve'],
  },
  {
    name: 'max-server-connections',
    kind: 'string',
    env: 'DFGATE_MAX_SERVER_CONNECTIONS',
    help: 'transaction mode: server connections in all pools together (default 100)',
    commands: ['serve'],
  },
  {
    name: 'pool-timeout',
    kind: 'string',
    env: 'DFGATE_POOL_TIMEOUT',
    help: 'transaction mode: seconds a client waits for a server connection before 53300 (default 30)',
    commands: ['serve'],
  },
  {
    name: 'server-idle-timeout',
    kind: 'string',
    env: 'DFGATE_SERVER_IDLE_TIMEOUT',
    help: 'transaction mode: seconds before an idle server connection is closed, 0 never (default 600)',
    commands: ['serve'],
  },
  {
    name: 'max-message-size',
    kind: 'string',
    env: 'DFGATE_MAX_MESSAGE_SIZE',
    help: 'largest client message in bytes (default 1073741824)',
    commands: ['serve'],
  },
  {
    name: 'warm-up',
    kind: 'string',
    env: 'DFGATE_WARM_UP',
    help: 'rounds of synthetic compiling before the proxy listens, 0 none (default 20)',
    commands: ['serve'],
  },
  {
    name: 'shutdown-timeout',
    kind: 'string',
    env: 'DFGATE_SHUTDOWN_TIMEOUT',
    help: 'seconds sessions get to finish on SIGTERM (default 30)',
    commands: ['serve'],
  },
  {
    name: 'max-concurrent-steps',
    kind: 'string',
    env: 'DFGATE_MAX_CONCURRENT_STEPS',
    help: 'SQL steps running at once (default 10)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'lease-seconds',
    kind: 'string',
    env: 'DFGATE_LEASE_SECONDS',
    help: 'instance lease length; another process takes over after it expires (default 30)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'poll-interval',
    kind: 'string',
    env: 'DFGATE_POLL_INTERVAL',
    help: 'seconds between safety-net polls for work (default 5)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'step-auth',
    kind: 'string',
    env: 'DFGATE_STEP_AUTH',
    help: 'login (a step login per role, default) or set-role (single-tenant opt-in)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'step-slot-timeout',
    kind: 'string',
    env: 'DFGATE_STEP_SLOT_TIMEOUT',
    help: 'seconds before a step waiting for a slot may fail: only when more roles want slots than there are (default 30)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'max-steps-per-role',
    kind: 'string',
    env: 'DFGATE_MAX_STEPS_PER_ROLE',
    help: 'steps of one role at once, on top of the fair share (default 0: no cap)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'step-slot-reserve',
    kind: 'string',
    env: 'DFGATE_STEP_SLOT_RESERVE',
    help: 'step slots kept for roles with no step running, so they start at once (default 1)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'step-timeout',
    kind: 'string',
    env: 'DFGATE_STEP_TIMEOUT',
    help: 'statement_timeout of every step in seconds (default 0: none)',
    commands: ['serve', 'worker'],
  },
  {
    name: 'max-result-bytes',
    kind: 'string',
    env: 'DFGATE_MAX_RESULT_BYTES',
    help: "bytes a SQL step's result may take; over it the step fails (default 4194304)",
    commands: ['serve', 'worker'],
  },
  {
    name: 'log-level',
    kind: 'string',
    env: 'DFGATE_LOG_LEVEL',
    help: 'fatal|error|warn|info|debug|trace|silent (default info)',
    commands: ALL,
  },
  { name: 'help', kind: 'boolean', env: '', help: 'show this help', commands: ALL },
];

const LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function parseHostPort(text: string, what: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new ConfigError(`${what} must be HOST:PORT (got "${text}")`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

function truthy(v: string): boolean {
  return ['1', 'true', 'yes', 'on'].includes(v.toLowerCase());
}

export function parseConfig(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): Config {
  let command: Command = 'serve';
  let rest = argv;
  const first = argv[0];
  if (first !== undefined && !first.startsWith('-')) {
    if (!(ALL as readonly string[]).includes(first) || first === 'serve') {
      throw new ConfigError(`unknown command "${first}" (commands: migrate, worker, check, roles)`);
    }
    command = first as Command;
    rest = argv.slice(1);
  }
  const values = new Map<string, string | boolean>();
  const files: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i] ?? '';
    if (!arg.startsWith('--')) {
      if (command === 'check') {
        files.push(arg);
        continue;
      }
      throw new ConfigError(`unexpected argument "${arg}"`);
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    const spec = FLAGS.find((f) => f.name === name);
    if (!spec || !spec.commands.includes(command)) {
      throw new ConfigError(
        `unknown flag --${name}${command === 'serve' ? '' : ` for "dfgate ${command}"`} (see --help)`,
      );
    }
    if (spec.kind === 'boolean') {
      if (eq !== -1) throw new ConfigError(`flag --${name} takes no value`);
      values.set(name, true);
    } else {
      const v = eq !== -1 ? arg.slice(eq + 1) : rest[++i];
      if (v === undefined) throw new ConfigError(`flag --${name} needs a value`);
      values.set(name, v);
    }
  }
  for (const spec of FLAGS) {
    if (values.has(spec.name) || !spec.env || !spec.commands.includes(command)) continue;
    const v = env[spec.env];
    if (v === undefined || v === '') continue;
    values.set(spec.name, spec.kind === 'boolean' ? truthy(v) : v);
  }
  const str = (n: string): string | undefined => {
    const v = values.get(n);
    return typeof v === 'string' ? v : undefined;
  };
  const url = (n: string, what: string): string | undefined => {
    const v = str(n);
    if (v === undefined) return undefined;
    try {
      parsePostgresUrl(v, what);
    } catch (err) {
      if (err instanceof UrlError) throw new ConfigError(err.message);
      throw err;
    }
    return v;
  };
  const level = str('log-level') ?? 'info';
  if (!(LEVELS as readonly string[]).includes(level)) {
    throw new ConfigError(`--log-level must be one of ${LEVELS.join(', ')} (got "${level}")`);
  }
  const help = values.get('help') === true;
  const upstream = url('upstream', '--upstream');
  const executorUrl = url('executor-url', '--executor-url') ?? upstream;
  if (!help && command !== 'check' && upstream === undefined) {
    throw new ConfigError(
      '--upstream (or DFGATE_UPSTREAM) is required: the PostgreSQL URL dfgate serves',
    );
  }
  if (!help && command === 'check' && files.length === 0) {
    throw new ConfigError('dfgate check needs at least one FILE.sql');
  }
  const admin = str('admin-listen');
  const ui = str('ui-listen');
  const num = (n: string, dflt: number, min: number, max: number): number => {
    const v = str(n);
    if (v === undefined) return dflt;
    const x = Number(v);
    if (!/^\d+(\.\d+)?$/.test(v) || !(x >= min && x <= max)) {
      throw new ConfigError(`--${n} must be a number from ${min} to ${max} (got "${v}")`);
    }
    return x;
  };
  const stepAuth = str('step-auth') ?? 'login';
  if (stepAuth !== 'login' && stepAuth !== 'set-role') {
    throw new ConfigError(`--step-auth must be login or set-role (got "${stepAuth}")`);
  }
  const poolMode = str('pool-mode') ?? 'session';
  if (poolMode !== 'session' && poolMode !== 'transaction') {
    throw new ConfigError(`--pool-mode must be session or transaction (got "${poolMode}")`);
  }
  const tlsCert = str('tls-cert');
  const tlsKey = str('tls-key');
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new ConfigError('--tls-cert and --tls-key go together');
  }
  return Object.freeze({
    command,
    help,
    upstream,
    executorUrl,
    listen: Object.freeze(parseHostPort(str('listen') ?? '127.0.0.1:6432', '--listen')),
    adminListen:
      admin === undefined ? undefined : Object.freeze(parseHostPort(admin, '--admin-listen')),
    uiListen: ui === undefined ? undefined : Object.freeze(parseHostPort(ui, '--ui-listen')),
    executor: values.get('no-executor') !== true,
    migrate: values.get('no-migrate') !== true,
    logLevel: level as LogLevel,
    files: Object.freeze(files),
    tlsCert,
    tlsKey,
    maxClientConnections: num('max-client-connections', 1000, 1, 1_000_000),
    connectTimeoutMs: num('connect-timeout', 10, 0.1, 3600) * 1000,
    startupTimeoutMs: num('startup-timeout', 60, 0.1, 3600) * 1000,
    poolMode,
    poolSize: num('pool-size', 20, 1, 100_000),
    maxServerConnections: num('max-server-connections', 100, 1, 100_000),
    poolTimeoutMs: num('pool-timeout', 30, 0.01, 86400) * 1000,
    serverIdleTimeoutMs: num('server-idle-timeout', 600, 0, 86400) * 1000,
    maxMessageSize: num('max-message-size', 1024 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    warmUpRounds: Math.floor(num('warm-up', 20, 0, 1000)),
    shutdownTimeoutMs: num('shutdown-timeout', 30, 0, 86400) * 1000,
    maxConcurrentSteps: num('max-concurrent-steps', 10, 1, 1000),
    leaseMs: num('lease-seconds', 30, 0.2, 3600) * 1000,
    pollMs: num('poll-interval', 5, 0.05, 3600) * 1000,
    stepAuth,
    slotTimeoutMs: num('step-slot-timeout', 30, 0.1, 3600) * 1000,
    maxStepsPerRole: num('max-steps-per-role', 0, 0, 1000),
    slotReserve: num('step-slot-reserve', 1, 0, 1000),
    stepTimeoutMs: num('step-timeout', 0, 0, 86400) * 1000,
    maxResultBytes: Math.floor(num('max-result-bytes', 4 * 1024 * 1024, 1024, 256 * 1024 * 1024)),
    stepSecret: env['DFGATE_STEP_SECRET'] || undefined,
  });
}

export function helpText(command: Command): string {
  const usage: Record<Command, string> = {
    serve:
      'dfgate --upstream postgres://USER:PASS@HOST:PORT/DB [--listen HOST:PORT] [flags]\n  proxy + executor in front of a database',
    migrate: 'dfgate migrate --upstream URL\n  create or upgrade the df schema',
    worker: 'dfgate worker --upstream URL\n  run the executor only (no proxy)',
    check: 'dfgate check FILE.sql...\n  validate the df.start(...) calls in workflow files offline',
    roles: 'dfgate roles --upstream URL\n  print the SQL that provisions step logins',
  };
  const lines = [`usage: ${usage[command]}`, '', 'flags:'];
  for (const f of FLAGS) {
    if (!f.commands.includes(command)) continue;
    const flag = f.kind === 'string' ? `--${f.name} VALUE` : `--${f.name}`;
    lines.push(`  ${flag.padEnd(26)} ${f.help}${f.env ? ` [env ${f.env}]` : ''}`);
  }
  if (command === 'serve')
    lines.push('', 'commands: migrate, worker, check, roles (dfgate COMMAND --help)');
  return lines.join('\n');
}
