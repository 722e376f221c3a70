/**
 * The compile worker (a worker_threads thread, see edge-pool.ts): loads
 * PostgreSQL's parser and answers { id, sql, extended } with the statement's
 * Analysis, so that parsing and compiling never run on the proxy's event loop.
 */
import { parentPort } from 'node:worker_threads';
import { analyzeText, type Analysis } from './edge.js';
import { loadParser } from './parser.js';

export interface EdgeJob {
  readonly id: number;
  readonly sql: string;
  readonly extended: boolean;
}

export interface EdgeAnswer {
  readonly id: number;
  readonly analysis: Analysis;
}

const port = parentPort;
if (port) {
  await loadParser();
  port.on('message', (job: EdgeJob) => {
    const answer: EdgeAnswer = { id: job.id, analysis: analyzeText(job.sql, job.extended) };
    port.postMessage(answer);
  });
  port.postMessage('ready');
}
