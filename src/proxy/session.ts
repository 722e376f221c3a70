/**
 * The proxy's client session, re-exported under its former module name
 * (the executor imports StartNewRequest from here).
 */
export { Session, type SessionContext } from './client-session.js';
export { mentionsDf, type StartNewRequest } from './edge/intercept.js';
