/**
 * Message type bytes of the PostgreSQL frontend/backend protocol.
 * https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

/** Messages a client (frontend) sends, by their type byte. */
export const Frontend = {
  Bind: 0x42, // 'B'
  Close: 0x43, // 'C'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyFail: 0x66, // 'f'
  Describe: 0x44, // 'D'
  Execute: 0x45, // 'E'
  Flush: 0x48, // 'H'
  FunctionCall: 0x46, // 'F'
  Parse: 0x50, // 'P'
  Password: 0x70, // 'p' (PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse)
  Query: 0x51, // 'Q'
  Sync: 0x53, // 'S'
  Terminate: 0x58, // 'X'
} as const;

/** Messages the server (backend) sends that dfgate looks at. */
export const Backend = {
  Authentication: 0x52, // 'R'
  BackendKeyData: 0x4b, // 'K'
  CommandComplete: 0x43, // 'C'
  CopyInResponse: 0x47, // 'G'
  DataRow: 0x44, // 'D'
  ErrorResponse: 0x45, // 'E'
  NegotiateProtocolVersion: 0x76, // 'v'
  NoticeResponse: 0x4e, // 'N'
  NotificationResponse: 0x41, // 'A'
  ParameterStatus: 0x53, // 'S'
  ReadyForQuery: 0x5a, // 'Z'
} as const;

/** Request codes of the untyped startup-phase packets. */
export const StartupCode = {
  /** 1234.5679 */
  SSLRequest: 80877103,
  /** 1234.5680 */
  GSSENCRequest: 80877104,
  /** 1234.5678 */
  CancelRequest: 80877102,
} as const;

/** Protocol versions: major << 16 | minor. */
export const ProtocolVersion = {
  V3_0: 196608,
  V3_2: 196610,
} as const;

/** Authentication request codes inside an 'R' message. */
export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

const FRONTEND_TYPES = new Set<number>(Object.values(Frontend));

export function isFrontendType(b: number): boolean {
  return FRONTEND_TYPES.has(b);
}

/** The largest startup packet PostgreSQL accepts (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10_000;

/**
 * PostgreSQL (14 and later) caps these messages at 10,000 bytes, length word
 * included (PQ_SMALL_MESSAGE_LIMIT), and closes the connection on a longer one.
 */
export const SMALL_MESSAGE_LIMIT = 10_000;
const SMALL_TYPES = new Set<number>([
  Frontend.Close,
  Frontend.Describe,
  Frontend.Execute,
  Frontend.Flush,
  Frontend.Sync,
  Frontend.Terminate,
  Frontend.CopyDone,
  Frontend.CopyFail,
]);

/**
 * The longest password, SASL or GSSAPI message PostgreSQL reads during
 * authentication, length word included (PG_MAX_AUTH_TOKEN_LENGTH); it closes
 * the connection without answering a longer one.
 */
export const MAX_AUTH_MESSAGE = 65_535;

/**
 * How many bytes of one inspected client message dfgate holds before the
 * session is established. Past it, reading from the client pauses until the
 * server's first ReadyForQuery: a client that has not logged in cannot make
 * dfgate buffer a message of up to --max-message-size.
 */
export const MAX_HELD_BEFORE_LOGIN = 256 * 1024;

/**
 * The longest body of a client message dfgate assembles to look into (a Query
 * or Parse that may call df.*, a Bind of a statement whose Binds are checked,
 * and in transaction mode every Query, Parse and Bind). A longer one streams to
 * the server as it arrives, seen through its first CLIENT_INSPECT_MAX bytes
 * (docs/proxy.md, "Very large client messages"), so that what any login can
 * make dfgate hold stays bounded: PostgreSQL accepts a Query of up to 1 GB. It
 * holds every message the edge compiles (the longest, a Query of 256 Ki
 * characters, takes at most 768 KiB of UTF-8; edgeSkips) and the statement
 * names at the start of a Parse or Bind.
 */
export const CLIENT_INSPECT_MAX = 1024 * 1024;

export function isSmallFrontendType(b: number): boolean {
  return SMALL_TYPES.has(b);
}
