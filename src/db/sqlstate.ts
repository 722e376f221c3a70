/**
 * The one home of SQLSTATE codes in dfgate's source: PostgreSQL's own codes
 * dfgate raises or recognises, named as in the errcodes appendix
 * (https://www.postgresql.org/docs/current/errcodes-appendix.html), and the
 * set of codes that mean "the infrastructure failed, try again".
 */
export const SqlState = {
  // class 08: connection exception
  ConnectionException: '08000',
  ConnectionDoesNotExist: '08003',
  ConnectionFailure: '08006',
  UnableToConnect: '08001',
  RejectedConnection: '08004',
  ProtocolViolation: '08P01',
  // class 0A: feature not supported
  FeatureNotSupported: '0A000',
  // class 22: data exception
  NullValueNotAllowed: '22004',
  InvalidParameterValue: '22023',
  InvalidTextRepresentation: '22P02',
  CharacterNotInRepertoire: '22021',
  // class 25: invalid transaction state
  ReadOnlySqlTransaction: '25006',
  InFailedSqlTransaction: '25P02',
  // class 28: invalid authorization specification
  InvalidAuthorization: '28000',
  InvalidPassword: '28P01',
  // class 40: transaction rollback
  SerializationFailure: '40001',
  DeadlockDetected: '40P01',
  // class 42: syntax error or access rule violation
  InsufficientPrivilege: '42501',
  UndefinedFunction: '42883',
  UndefinedObject: '42704',
  // class 53: insufficient resources
  TooManyConnections: '53300',
  // class 54: program limit exceeded
  ProgramLimitExceeded: '54000',
  // class 55: object not in prerequisite state
  ObjectNotInPrerequisiteState: '55000',
  // class 57: operator intervention
  QueryCanceled: '57014',
  AdminShutdown: '57P01',
  CrashShutdown: '57P02',
  CannotConnectNow: '57P03',
  // class P0: PL/pgSQL
  NoDataFound: 'P0002',
  // class XX: internal error
  InternalError: 'XX000',
} as const;

export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];

/** Infrastructure errors: roll back and run again (DESIGN.md §4 "Errors"); any class 08 code counts too. */
export const RETRYABLE_SQLSTATES: ReadonlySet<string> = new Set<string>([
  SqlState.SerializationFailure,
  SqlState.DeadlockDetected,
  SqlState.AdminShutdown,
  SqlState.CrashShutdown,
  SqlState.CannotConnectNow,
  SqlState.TooManyConnections,
  SqlState.ReadOnlySqlTransaction,
  SqlState.ConnectionException,
  SqlState.ConnectionDoesNotExist,
  SqlState.ConnectionFailure,
  SqlState.UnableToConnect,
  SqlState.RejectedConnection,
]);
