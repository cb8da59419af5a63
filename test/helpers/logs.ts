/** A real logger (the daemon's, text lines at debug level) whose lines a test can read. */
import { createLogger, type ComponentLogger } from '../../base/index.js'

export interface CapturedLogs {
  logger: ComponentLogger
  /** every line written so far, without its newline */
  lines: string[]
}

export function captureLogs (): CapturedLogs {
  const lines: string[] = []
  const logger = createLogger({ level: 'debug', format: 'text', stream: { write: (line: string) => { lines.push(line.replace(/\n$/, '')) } } })
  return { logger, lines }
}
