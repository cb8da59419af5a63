/**
 * Structured logs at the daemon edge: one JSON line per event (`{ time, level, component, msg }`) or a text line,
 * filtered by level. Its `forComponent(name)` fits the loggers the cache and the fetcher take, so the daemon
 * injects one logger into all of them.
 *
 * @example
 * ```ts
 * const logger = createLogger({ level: 'info', format: 'json' })
 * const log = logger.forComponent('rafspeer:daemon')
 * log('listening on %s', socket)          // info
 * log.error('mount %s failed: %s', mp, err.message)
 * ```
 */
import { format as formatMessage } from 'node:util'

export type LogLevel = 'error' | 'warn' | 'info' | 'debug'
export type LogFormat = 'json' | 'text'

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 }

/** A component's logger: calling it logs at info; the methods log at their level. */
export interface ComponentLog {
  (formatter: string, ...args: unknown[]): void
  error: (formatter: string, ...args: unknown[]) => void
  warn: (formatter: string, ...args: unknown[]) => void
  info: (formatter: string, ...args: unknown[]) => void
  debug: (formatter: string, ...args: unknown[]) => void
  /** whether a message at `level` would be written (to skip building costly arguments) */
  enabled: (level: LogLevel) => boolean
}

export interface DaemonLogger {
  forComponent: (name: string) => ComponentLog
  readonly level: LogLevel
  setLevel: (level: LogLevel) => void
}

export interface LoggerInit {
  /** messages above this level are dropped (default `info`) */
  level?: LogLevel
  /** default `json` */
  format?: LogFormat
  /** default `process.stderr` */
  stream?: { write: (line: string) => unknown }
  /** default `() => new Date()` */
  clock?: () => Date
}

export function createLogger (init: LoggerInit = {}): DaemonLogger {
  let level: LogLevel = init.level ?? 'info'
  const format = init.format ?? 'json'
  const stream = init.stream ?? process.stderr
  const clock = init.clock ?? (() => new Date())

  const write = (lvl: LogLevel, component: string, formatter: string, args: unknown[]): void => {
    if (RANK[lvl] > RANK[level]) return
    const time = clock().toISOString()
    const msg = formatMessage(formatter, ...args)
    const line = format === 'json'
      ? JSON.stringify({ time, level: lvl, component, msg })
      : `${time} ${lvl.toUpperCase().padEnd(5)} ${component} ${msg}`
    try {
      stream.write(line + '\n')
    } catch {
      // a closed stderr must not take the daemon down
    }
  }

  return {
    get level () { return level },
    setLevel: (l) => { level = l },
    forComponent: (component) => Object.assign(
      (f: string, ...args: unknown[]) => { write('info', component, f, args) },
      {
        error: (f: string, ...args: unknown[]) => { write('error', component, f, args) },
        warn: (f: string, ...args: unknown[]) => { write('warn', component, f, args) },
        info: (f: string, ...args: unknown[]) => { write('info', component, f, args) },
        debug: (f: string, ...args: unknown[]) => { write('debug', component, f, args) },
        enabled: (l: LogLevel) => RANK[l] <= RANK[level]
      })
  }
}

/** A logger that writes nothing (tests, library use). */
export const silentDaemonLogger: DaemonLogger = createLogger({ level: 'error', stream: { write: () => true } })
