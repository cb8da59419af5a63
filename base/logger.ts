/**
 * Logging: one component logger, injected everywhere. A component asks `logger.forComponent('rafspeer:cache')`
 * (libp2p's `ComponentLogger` shape) and logs with printf-style arguments (`%s %d %j %o`) at four levels. The
 * daemon edge builds the root with {@link createLogger}: pino, one JSON object per line
 * (`{ level, time, component, msg }`) or a plain text line, filtered by level; every component gets a pino child
 * logger bound to its name. Library use and tests get {@link silentLogger}.
 *
 * @example
 * ```ts
 * const logger = createLogger({ level: 'info', format: 'json' })
 * const log = logger.forComponent('rafspeer:daemon')
 * log.info('listening on %s', socket)
 * log.error('mount %s failed: %s', mp, describeError(err))
 * ```
 */
import { createRequire } from 'node:module'
import type { DestinationStream } from 'pino'

export type LogLevel = 'error' | 'warn' | 'info' | 'debug'
export type LogFormat = 'json' | 'text'
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug']

export type LogFn = (message: string, ...args: unknown[]) => void

/** One component's logger. A pino child logger has this shape, so the daemon hands those out unchanged. */
export interface Logger {
  error: LogFn
  warn: LogFn
  info: LogFn
  debug: LogFn
  /** whether `level` is written (to skip building costly arguments) */
  isLevelEnabled: (level: LogLevel) => boolean
}

/** Hands out named loggers: what every component takes as `components.logger`. */
export interface ComponentLogger {
  forComponent: (name: string) => Logger
}

export interface LoggerInit {
  /** messages above this level are dropped (default `info`) */
  level?: LogLevel
  /** default `json` */
  format?: LogFormat
  /** default: standard error, written synchronously (a daemon that exits right after logging loses nothing) */
  stream?: { write: (line: string) => unknown }
  /** default `() => new Date()` */
  clock?: () => Date
}

/**
 * Text lines (`<time> <LEVEL> <component> <message>`) made from pino's JSON lines. pino-pretty would do it, with a
 * dozen packages for one format string; this is the whole of what a daemon log needs.
 */
function textStream (out: { write: (line: string) => unknown }): DestinationStream {
  return {
    write (line: string) {
      let o: { time?: string, level?: string, component?: string, msg?: string }
      try { o = JSON.parse(line) } catch { return out.write(line) }
      return out.write(`${o.time ?? ''} ${(o.level ?? '').toUpperCase().padEnd(5)} ${o.component ?? '-'} ${o.msg ?? ''}\n`)
    }
  }
}

/** A stream whose failures (a closed stderr, EPIPE) never reach the code that logged. */
function safe (out: { write: (line: string) => unknown }): DestinationStream {
  return { write (line: string) { try { out.write(line) } catch {} } }
}

export function createLogger (init: LoggerInit = {}): ComponentLogger {
  // loaded here, not at import: every command imports this module, few of them log
  const { pino } = createRequire(import.meta.url)('pino') as typeof import('pino')
  const clock = init.clock ?? (() => new Date())
  const out = init.stream ?? pino.destination({ fd: 2, sync: true })
  const root = pino({
    level: init.level ?? 'info',
    base: undefined,
    messageKey: 'msg',
    timestamp: () => `,"time":"${clock().toISOString()}"`,
    formatters: { level: (label: string) => ({ level: label }) }
  }, safe(init.format === 'text' ? textStream(out) : out))
  return { forComponent: (name: string) => root.child({ component: name }) }
}

const noop: LogFn = () => {}
const silent: Logger = { error: noop, warn: noop, info: noop, debug: noop, isLevelEnabled: () => false }

/** Writes nothing: the default of every component that is given no logger. */
export const silentLogger: ComponentLogger = { forComponent: () => silent }
