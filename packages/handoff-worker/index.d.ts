// Type declarations for @handoff/worker (CommonJS; `import { listen } from '@handoff/worker'` works
// from ESM and TypeScript too).

import type { Server as NetServer } from 'node:net';

/** Any server that net.Server#listen({ fd }) works on: http, https, http2 (plain or secure). */
export type ListenableServer = NetServer;

export interface InheritedSocket {
  /** 3, 4, ... (SD_LISTEN_FDS_START + index) */
  fd: number;
  /** Its LISTEN_FDNAMES entry, or "unknown" (systemd's default) when unnamed. */
  name: string;
}

export interface ListenOptions {
  /** Only the inherited sockets with this LISTEN_FDNAMES name (or any of these names). */
  name?: string | string[];
  /** Without inherited sockets: the port to listen on (default $PORT, else 3000). */
  port?: number;
  /** Without inherited sockets: the address to listen on (default $HOST, else 127.0.0.1). */
  host?: string;
  /** Listen on port/host when no sockets were passed (default true); false rejects instead. */
  fallback?: boolean;
}

export interface ListenResult {
  /** True when serving on sockets handed over by handoff / systemd. */
  inherited: boolean;
  /** The inherited sockets this server serves on (empty when it listens on a port). */
  sockets: InheritedSocket[];
  /** server.address() of the first one. */
  address: ReturnType<NetServer['address']>;
  /** Set when drain() had already started: nothing was listened on. */
  draining?: boolean;
}

export interface ReadyOptions {
  /** Start the WATCHDOG=1 pings if the supervisor asked for them (default true). */
  watchdog?: boolean;
}

export interface DrainOptions {
  /** Close keep-alive connections idle (no request in flight) this long (default 1000 ms). */
  idleGraceMs?: number;
  /** Destroy what is still open after this many ms (default 0: wait; handoff's --drain-timeout is the backstop). */
  timeoutMs?: number;
}

export interface DrainResult {
  /** Connections destroyed because timeoutMs passed. */
  forced: number;
}

export interface WatchdogHandle {
  enabled: boolean;
  /** Ping interval: half of WATCHDOG_USEC, in ms (0 when disabled). */
  intervalMs: number;
  /** Why it is on or off, e.g. "WATCHDOG_USEC is not set". */
  reason: string;
  stop(): void;
}

export interface ServerStats {
  activeRequests: number;
  connections: number;
  draining: boolean;
}

export interface ShutdownOptions {
  /** Default ['SIGTERM', 'SIGINT']. */
  signals?: NodeJS.Signals[];
  /** process.exit() once fn settles: 0, or 1 if it threw (default true). */
  exit?: boolean;
}

export interface WorkerOptions {
  /** Environment to read and strip (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** This process's pid, compared with LISTEN_PID / WATCHDOG_PID (default process.pid). */
  pid?: number;
  /** The systemd-notify binary (default: systemd-notify from PATH). */
  notifyCommand?: string;
  /** Where onShutdown() and the watchdog report (default: stderr). */
  log?: (message: string) => void;
}

export declare class Worker {
  constructor(options?: WorkerOptions);
  readonly pid: number;
  /** HANDOFF_GENERATION as a number, null when not run by handoff. */
  readonly generation: number | null;
  /** HANDOFF_WORKER (0..N-1) as a number, null when not run by handoff. */
  readonly workerIndex: number | null;
  /** The sockets passed to this process (LISTEN_FDS), in order. */
  readonly sockets: InheritedSocket[];
  readonly inherited: boolean;
  /** True once drain() or a shutdown signal started. */
  readonly draining: boolean;
  listen(server: ListenableServer, options?: ListenOptions): Promise<ListenResult>;
  ready(status?: string, options?: ReadyOptions): Promise<boolean>;
  status(text: string): Promise<boolean>;
  notify(assignments: string[], options?: { ready?: boolean; status?: string }): Promise<boolean>;
  startWatchdog(): WatchdogHandle;
  stopWatchdog(): void;
  drain(server: ListenableServer, options?: DrainOptions): Promise<DrainResult>;
  stats(server: ListenableServer): ServerStats;
  onShutdown(fn: (signal: NodeJS.Signals) => unknown, options?: ShutdownOptions): () => void;
}

/** Serves `server` on the inherited sockets (all, or by name), or on a port when run by hand. */
export declare function listen(server: ListenableServer, options?: ListenOptions): Promise<ListenResult>;
/** READY=1 (+ STATUS=); false without NOTIFY_SOCKET; rejects when systemd-notify is missing or fails. */
export declare function ready(status?: string, options?: ReadyOptions): Promise<boolean>;
/** STATUS=<text>, one line. */
export declare function status(text: string): Promise<boolean>;
/** Any KEY=VALUE sd_notify assignments. */
export declare function notify(assignments: string[], options?: { ready?: boolean; status?: string }): Promise<boolean>;
/** WATCHDOG=1 every WATCHDOG_USEC/2 when asked for (ready() starts it by default). */
export declare function startWatchdog(): WatchdogHandle;
/** Stop accepting, finish in-flight and keep-alive requests without resets; resolves when no connection is left. */
export declare function drain(server: ListenableServer, options?: DrainOptions): Promise<DrainResult>;
export declare function stats(server: ListenableServer): ServerStats;
/** Run fn on SIGTERM/SIGINT (once), then exit. Returns a function that removes the handlers. */
export declare function onShutdown(fn: (signal: NodeJS.Signals) => unknown, options?: ShutdownOptions): () => void;
/** Stop the WATCHDOG=1 pings. */
export declare function stopWatchdog(): void;
/** The worker built from process.env at require time. */
export declare const worker: Worker;
export declare function createWorker(options?: WorkerOptions): Worker;

export declare class HandoffWorkerError extends Error {}
export declare class ListenFdsError extends Error {}
export declare class SdNotifyError extends Error {}
export declare class WatchdogError extends Error {}
export declare const SD_LISTEN_FDS_START: 3;
