// Type declarations for egg-handoff.

export interface StartOptions {
  /** The Egg app directory (default $EGG_BASE_DIR, else the current directory). */
  baseDir?: string;
  /** While draining, close keep-alive connections idle this long (default $EGG_DRAIN_IDLE_MS or 1000). */
  idleGraceMs?: number;
  /** Where progress goes (default: stderr, one line per event). */
  log?: (message: string) => void;
}

/** Boots the app single-process on handoff's sockets, reports READY=1, drains on SIGTERM. */
export declare function start(options?: StartOptions): Promise<void>;

export interface HandoffIdentity {
  /** HANDOFF_GENERATION as a number; null when not run by handoff. */
  generation: number | null;
  /** HANDOFF_WORKER (0..N-1) as a number; null when not run by handoff. */
  worker: number | null;
}

export declare function handoffIdentity(env?: NodeJS.ProcessEnv): HandoffIdentity;

/** What the plugin adds to the Egg application (`app.handoff`). */
export interface AppHandoff extends HandoffIdentity {
  /** Scheduled tasks running right now. */
  readonly runningTasks: number;
  /** No new scheduled runs; resolves once the running ones have finished. */
  stopSchedules(): Promise<void>;
}

/** config.handoff */
export interface HandoffConfig {
  /** Which worker of a generation runs the app's `type: 'worker'` schedules: an index (default 0) or 'all'. */
  scheduleWorker?: number | 'all';
}

declare module 'egg' {
  interface Application {
    handoff: AppHandoff;
  }
  interface Agent {
    handoff: HandoffIdentity;
  }
  interface EggAppConfig {
    handoff: HandoffConfig;
  }
}
