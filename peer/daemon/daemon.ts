/**
 * The daemon shell: assembles the node (the composition root, `node.ts`, unless one is injected), serves the admin
 * API and metrics, and on stop closes the API, then stops the node (unmount everything, leave the swarm, flush the
 * cache).
 *
 * @example
 * ```ts
 * const config = await loadDaemonConfig('/etc/rafspeer/config.json')
 * await runDaemon(config)
 * // serves until SIGTERM/SIGINT, then unmounts, flushes and exits 0
 * ```
 */
import { mkdir } from 'node:fs/promises'
import { RafspeerError, createLogger, describeError, packageVersion, setHeapGrowth, type ComponentLogger, type Logger } from '../../base/index.js'
import { preloadHttpClient } from '../../registry/index.js'
import type { MountInfo, MountRequest, MountService } from '../mount/index.js'
import { prepareSocket, startAdminApi, type AdminApi, type DaemonInfo } from './admin-api.js'
import type { DaemonConfig } from './config.js'
import { DaemonMetrics } from './metrics.js'
import { startNode, type DaemonNode } from './node.js'

/** Builds the node a daemon serves from its config (default: `startNode`, the composition root). */
export type AssembleNode = (config: DaemonConfig, logger: ComponentLogger) => Promise<DaemonNode>

export interface DaemonComponents {
  /** default `startNode` */
  assemble?: AssembleNode
  /** default: JSON/text on stderr per `config.log` */
  logger?: ComponentLogger
}

export interface DaemonInit {
  config: DaemonConfig
  /** process and Node.js metrics in /metrics (default true) */
  defaultMetrics?: boolean
}

/** The daemon cannot start: its work directory cannot be made. */
export class DaemonStartError extends RafspeerError<'RAFSPEER_ERR_WORK_DIR'> {}

export type DaemonLifecycle = 'INIT' | 'STARTING' | 'RUNNING' | 'STOPPING' | 'STOPPED'

export class Daemon {
  readonly config: DaemonConfig
  readonly logger: ComponentLogger
  private readonly assemble: AssembleNode
  private readonly defaultMetrics: boolean
  private readonly log: Logger
  private readonly version = packageVersion()
  private lifecycle: DaemonLifecycle = 'INIT'
  private startedAt = ''
  private node: DaemonNode | undefined
  private api: AdminApi | undefined
  private stopping: Promise<void> | undefined

  constructor (components: DaemonComponents, init: DaemonInit) {
    this.assemble = components.assemble ?? startNode
    this.config = init.config
    this.defaultMetrics = init.defaultMetrics ?? true
    this.logger = components.logger ?? createLogger({ level: init.config.log.level, format: init.config.log.format })
    this.log = this.logger.forComponent('rafspeer:daemon')
  }

  get state (): DaemonLifecycle { return this.lifecycle }

  /** The mount service (after `start()`). */
  get service (): MountService {
    if (this.node === undefined) throw new Error('the daemon is not started')
    return this.node.mounts
  }

  /** The TCP address of /metrics, when one is served. */
  get metricsAddress (): string | undefined { return this.api?.tcpAddress }

  info (): DaemonInfo {
    return {
      state: this.lifecycle === 'RUNNING' ? 'RUNNING' : 'STOPPING',
      version: this.version,
      pid: process.pid,
      startedAt: this.startedAt,
      socket: this.config.socket,
      workDir: this.config.workDir,
      cacheDir: this.config.cache.dir,
      ...(this.api?.tcpAddress !== undefined ? { metricsListen: this.api.tcpAddress } : {}),
      mounts: this.node?.mounts.list().length ?? 0,
      ...(this.node?.p2p !== undefined ? { p2p: this.node.p2p.info() } : {}),
      ...Object.fromEntries((this.node?.extensions ?? []).flatMap(e => e.info !== undefined ? [[e.name, e.info()]] : []))
    }
  }

  /**
   * Assembles the node and serves the admin API. Rejects (leaving nothing open) when the node cannot start (the
   * cache cannot be opened, ...) or another daemon answers on the socket.
   */
  async start (): Promise<void> {
    if (this.lifecycle !== 'INIT') throw new Error(`cannot start a daemon that is ${this.lifecycle}`)
    this.lifecycle = 'STARTING'
    const { config } = this
    try {
      await mkdir(config.workDir, { recursive: true }).catch((err: Error) => {
        throw new DaemonStartError('RAFSPEER_ERR_WORK_DIR',
          `cannot create the work directory ${config.workDir}: ${err.message} (set workDir in the config, or --work-dir)`, { cause: err })
      })
      // a second daemon is refused before it touches the cache (whose lock would give a vaguer error)
      await prepareSocket(config.socket)
      const node = this.node = await this.assemble(config, this.logger)
      const metrics = new DaemonMetrics({
        service: node.mounts,
        cacheStats: node.cacheStats,
        ...(node.p2p !== undefined ? { p2pStats: node.p2p.stats } : {}),
        ...(node.extensions !== undefined ? { extensions: node.extensions } : {})
      }, { defaultMetrics: this.defaultMetrics })
      this.api = await startAdminApi({
        service: node.mounts,
        cacheStats: node.cacheStats,
        daemonInfo: () => this.info(),
        metrics,
        logger: this.logger
      }, { socket: config.socket, ...(config.metrics.listen !== undefined ? { tcp: config.metrics.listen } : {}) })
    } catch (err) {
      await this.teardown()
      this.lifecycle = 'STOPPED'
      throw err
    }
    this.startedAt = new Date().toISOString()
    this.lifecycle = 'RUNNING'
  }

  /** Stops serving the API, unmounts every image, flushes and closes the cache. Idempotent. */
  async stop (): Promise<void> {
    if (this.lifecycle === 'INIT') { this.lifecycle = 'STOPPED'; return }
    this.stopping ??= (async () => {
      this.lifecycle = 'STOPPING'
      const errors = await this.teardown()
      this.lifecycle = 'STOPPED'
      if (errors.length > 0) throw errors[0]
    })()
    await this.stopping
  }

  /** Closes whatever is open, in order (API, then the node); every step runs, failures are logged and returned. */
  private async teardown (): Promise<unknown[]> {
    const errors: unknown[] = []
    const step = async (what: string, f: () => Promise<void>): Promise<void> => {
      try { await f() } catch (err) {
        errors.push(err)
        this.log.error('stop: %s failed: %s', what, describeError(err))
      }
    }
    if (this.api !== undefined) { const api = this.api; await step('closing the admin API', async () => { await api.close() }) }
    if (this.node !== undefined) { const node = this.node; await step('stopping the node (unmount, leave the swarm, flush the cache)', async () => { await node.stop() }) }
    return errors
  }
}

export interface RunDaemonOptions {
  /** mounted once the daemon runs (`rafspeer mount --foreground`); a failure stops the daemon and rejects */
  mounts?: MountRequest[]
  /** called with the mounts' infos once ready */
  onReady?: (daemon: Daemon, mounted: MountInfo[]) => void
  /** default `process.exit` */
  exit?: (code: number) => void
  /**
   * Also stop (as at SIGTERM) when this stream ends: the daemon's stdin, a pipe from the process that started it,
   * ends when that process dies however it dies (a supervisor killed with SIGKILL leaves no daemon and no mount).
   */
  stopWhenEnds?: NodeJS.ReadableStream
}

/**
 * Starts a daemon, then serves until SIGTERM or SIGINT: stop() (unmount all, flush the cache), then exit 0 (1 if
 * stopping failed). A second signal while stopping exits at once with 1.
 */
export async function runDaemon (config: DaemonConfig, components: DaemonComponents = {}, opts: RunDaemonOptions = {}): Promise<Daemon> {
  const daemon = new Daemon(components, { config })
  const log = daemon.logger.forComponent('rafspeer:daemon')
  const exit = opts.exit ?? ((code: number) => process.exit(code))
  // a process that runs a daemon, not a library call: its heap is set for moving bytes all day (base/heap.ts)
  const heap = setHeapGrowth(config.runtime.heapGrowingPercent)
  log.debug('V8 heap growth: %s', heap.state === 'set' ? `${heap.percent}%` : heap.state === 'node-flag' ? `node's ${heap.flag}` : 'V8\'s own')
  await daemon.start()
  const mounted: MountInfo[] = []
  try {
    for (const req of opts.mounts ?? []) mounted.push(await daemon.service.mount(req))
  } catch (err) {
    await daemon.stop().catch(() => {})
    throw err
  }
  let signalled = false
  const onSignal = (signal: NodeJS.Signals | 'parent gone'): void => {
    if (signalled) {
      log.warn('%s while stopping: exiting now', signal)
      exit(1)
      return
    }
    signalled = true
    log.info('%s: stopping (unmounting %d images, flushing the cache)', signal, daemon.service.list().length)
    daemon.stop().then(() => {
      log.info('stopped')
      exit(0)
    }, (err: unknown) => {
      log.error('stop failed: %s', describeError(err))
      exit(1)
    })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  const parent = opts.stopWhenEnds
  if (parent !== undefined) {
    let gone = false
    const onGone = (): void => { if (!gone) { gone = true; if (!signalled) onSignal('parent gone') } }
    parent.once('end', onGone)
    parent.once('close', onGone)
    parent.once('error', onGone)
    parent.resume()
  }
  log.info('ready: admin API on %s%s (version %s, pid %d, cache %s)', config.socket,
    daemon.metricsAddress !== undefined ? `, metrics on http://${daemon.metricsAddress}/metrics` : '', packageVersion(), process.pid, config.cache.dir)
  opts.onReady?.(daemon, mounted)
  // what a first mount loads, loaded while nothing waits: not in the middle of a container's pull
  setImmediate(() => { preloadHttpClient().catch((err: unknown) => { log.debug('preloading the HTTP client: %s', describeError(err)) }) })
  return daemon
}
