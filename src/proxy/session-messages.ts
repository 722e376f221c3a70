/**
 * Which server messages a session (client-session.ts) looks into, and
 * which may arrive at any time, outside the answer to a client's message.
 */
import { Backend } from './protocol/codes.js';

/** Notices, parameter changes and notifications: not answers to anything the client sent. */
export const ASYNC_MESSAGES = new Set<number>([
  Backend.NoticeResponse,
  Backend.ParameterStatus,
  Backend.NotificationResponse,
]);

/** Looked into before they are relayed (the rest passes by type alone). */
export const SERVER_INSPECT = new Uint8Array(256);
for (const t of [
  Backend.Authentication,
  Backend.BackendKeyData,
  Backend.ParameterStatus,
  Backend.ReadyForQuery,
  Backend.ErrorResponse,
  Backend.CopyInResponse,
]) {
  SERVER_INSPECT[t] = 1;
}
