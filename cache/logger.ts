/**
 * The logger shape the cache accepts: libp2p's `ComponentLogger` (`logger.forComponent('rafspeer:cache')`),
 * so a daemon can inject its own; the default is silent.
 */

export interface Logger {
  (formatter: string, ...args: unknown[]): void
  error: (formatter: string, ...args: unknown[]) => void
}

export interface ComponentLogger {
  forComponent: (name: string) => Logger
}

const noop = (): void => {}

export const silentLogger: ComponentLogger = {
  forComponent: () => Object.assign(noop, { error: noop })
}
