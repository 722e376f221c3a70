/**
 * The proxy's client session, re-exported under its former module name
 * (the proxy's parts import it under that name; the start-new contract is src/contract).
 */
export { Session, type SessionContext } from './client-session.js';
export { type StartNewRequest } from './edge/intercept.js';
export { mentionsDf } from './sql-scan.js';
