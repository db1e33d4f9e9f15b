// Compiled (not run) by test/types.test.js: the declarations describe what the examples do.
import * as http from 'node:http';
import * as https from 'node:https';
import * as http2 from 'node:http2';
import * as worker from '@handoff/worker';
import { createWorker, listen, ready, drain, onShutdown, ListenFdsError, type ListenResult, type DrainResult } from '@handoff/worker';

const server = http.createServer((req, res) => res.end('ok'));
onShutdown(async (signal: NodeJS.Signals) => { await drain(server, { idleGraceMs: 500, timeoutMs: 10000 }); });

async function main(): Promise<void> {
  const r: ListenResult = await listen(server, { name: 'web', port: 3000, host: '127.0.0.1' });
  const fds: number[] = r.sockets.map(s => s.fd);
  const sent: boolean = await ready(`serving on ${fds.join(',')}`);
  const wd = worker.startWatchdog();
  const ms: number = wd.intervalMs;
  await worker.listen(https.createServer({}), { name: [ 'a', 'b' ] });
  await worker.listen(http2.createSecureServer({}));
  await worker.listen(http2.createServer());
  const d: DrainResult = await worker.drain(server);
  const forced: number = d.forced;
  const w = createWorker({ env: {}, pid: 1, notifyCommand: 'systemd-notify', log: (m: string) => undefined });
  const g: number | null = w.generation;
  w.stats(server).activeRequests.toFixed();
  await w.notify([ 'EXTEND_TIMEOUT_USEC=1000000' ], { status: 'x' });
  void [ sent, ms, forced, g ];
}
main().catch((e: unknown) => { if (e instanceof ListenFdsError) process.exit(1); });

// @ts-expect-error: listen() takes a server, not a port
listen(3000);
// @ts-expect-error: unknown drain option
drain(server, { idleGrace: 5 });
