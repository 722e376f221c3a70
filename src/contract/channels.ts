/**
 * The NOTIFY channels dfgate's parts share (the executor, the web console):
 * dfgate_wake carries 'start:<id>', 'signal:<id>' and 'cancel:<id>' from
 * df.start, df.signal and df.cancel on commit (migration 0003); dfgate_ui
 * carries {"r": owner, "i": [ids]} for the console (migration 0011, the
 * executor's batched announcements).
 */
export const WAKE_CHANNEL = 'dfgate_wake';
export const UI_CHANNEL = 'dfgate_ui';
