/** CPU accounting of a PostgreSQL cluster from /proc (Linux), for the benchmarks. */
import { readdirSync, readFileSync } from 'node:fs';

import type { RunningCluster } from '../src/pg/cluster.js';

const HZ = 100; // USER_HZ on Linux

/** The postmaster's pid, from the cluster's postmaster.pid. */
export function postmasterPid(cluster: RunningCluster): number {
  return Number(readFileSync(`${cluster.dataDir}/postmaster.pid`, 'utf8').split('\n')[0]);
}

/** CPU seconds (user + system) of one process, from /proc; 0 once it has ended. */
export function pidCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / HZ;
  } catch {
    return 0;
  }
}

/**
 * CPU seconds (user + system) of the postmaster and its living children;
 * with `reaped`, also of the children the postmaster has reaped (its cutime
 * + cstime), so backends that exited during a window count too.
 */
export function clusterCpuSeconds(postmaster: number, reaped = false): number {
  let ticks = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(e) !== postmaster && Number(rest[1]) !== postmaster) continue;
      ticks += Number(rest[11]) + Number(rest[12]);
      if (reaped && Number(e) === postmaster) ticks += Number(rest[13]) + Number(rest[14]);
    } catch {
      // the process ended meanwhile
    }
  }
  return ticks / HZ;
}
