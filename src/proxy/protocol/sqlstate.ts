/** SQLSTATE codes dfgate itself sends (https://www.postgresql.org/docs/current/errcodes-appendix.html). */
export const SqlState = {
  ProtocolViolation: '08P01',
  ConnectionFailure: '08006',
  UnableToConnect: '08001',
  FeatureNotSupported: '0A000',
  TooManyConnections: '53300',
  ProgramLimitExceeded: '54000',
  AdminShutdown: '57P01',
  CannotConnectNow: '57P03',
  InvalidAuthorization: '28000',
  InvalidParameterValue: '22023',
  InsufficientPrivilege: '42501',
  InternalError: 'XX000',
} as const;

export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];
