/**
 * The daemon shell: opens the blob cache, builds the mount service around it, serves the admin API and metrics,
 * and on stop unmounts everything and flushes the cache. The mount service comes from an injected factory, so
 * this file knows only the `MountService` contract.
 *
 * @example
 * ```ts
 * const config = await loadDaemonConfig('/etc/rafspeer/config.json')
 * await runDaemon(config, { createMounts: (cache, config, logger) => new MountManager(...) })
 * // serves until SIGTERM/SIGINT, then unmounts, flushes and exits 0
 * ```
 */
import { existsSync, readFileSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BlobCache, type BlobCacheInit } from '../cache/index.js'
import { prepareSocket, startAdminApi, type AdminApi, type DaemonInfo } from './admin-api.js'
import type { DaemonConfig } from './daemon-config.js'
import { createLogger, type ComponentLog, type DaemonLogger } from './logger.js'
import { DaemonMetrics } from './metrics.js'
import type { MountInfo, MountRequest, MountService } from './mount-types.js'
import type { P2PStats } from './p2p-node.js'

/** A mount service the daemon can shut down: `stop()` unmounts everything it mounted. */
export type ManagedMountService = MountService & {
  stop: () => Promise<void>
  /** told the digests the cache durably holds from now on (a P2P node announces them) */
  onChunksStored?: (digests: Buffer[]) => void
  /** the node's peer identity and listen addresses, when it takes part in P2P */
  p2pInfo?: () => { peerId: string, addrs: string[] } | undefined
  /** the node's swarm counters (uploads, downloads from neighbours, scheduler), when it takes part in P2P */
  p2pStats?: () => P2PStats
}

export type CreateMounts = (cache: BlobCache, config: DaemonConfig, logger: DaemonLogger) => ManagedMountService | Promise<ManagedMountService>

export interface DaemonComponents {
  /** builds the mount service (the CLI passes one making a `MountManager`) */
  createMounts: CreateMounts
  /** default: JSON/text on stderr per `config.log` */
  logger?: DaemonLogger
  /** default `BlobCache.open` */
  openCache?: (dir: string, init: BlobCacheInit) => Promise<BlobCache>
}

export interface DaemonInit {
  config: DaemonConfig
  /** process and Node.js metrics in /metrics (default true) */
  defaultMetrics?: boolean
}

export type DaemonLifecycle = 'INIT' | 'STARTING' | 'RUNNING' | 'STOPPING' | 'STOPPED'

/** The rafspeer package version, from the package.json above this file (same code from dist/ and sources). */
export function packageVersion (): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dir !== dirname(dir); dir = dirname(dir)) {
    const p = join(dir, 'package.json')
    if (existsSync(p)) return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version
  }
  return '0.0.0'
}

export class Daemon {
  readonly config: DaemonConfig
  readonly logger: DaemonLogger
  private readonly components: DaemonComponents
  private readonly defaultMetrics: boolean
  private readonly log: ComponentLog
  private readonly version = packageVersion()
  private lifecycle: DaemonLifecycle = 'INIT'
  private startedAt = ''
  private cache: BlobCache | undefined
  private mounts: ManagedMountService | undefined
  private api: AdminApi | undefined
  private stopping: Promise<void> | undefined

  constructor (components: DaemonComponents, init: DaemonInit) {
    this.components = components
    this.config = init.config
    this.defaultMetrics = init.defaultMetrics ?? true
    this.logger = components.logger ?? createLogger({ level: init.config.log.level, format: init.config.log.format })
    this.log = this.logger.forComponent('rafspeer:daemon')
  }

  get state (): DaemonLifecycle { return this.lifecycle }

  /** The mount service (after `start()`). */
  get service (): MountService {
    if (this.mounts === undefined) throw new Error('the daemon is not started')
    return this.mounts
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
      mounts: this.mounts?.list().length ?? 0,
      ...(this.mounts?.p2pInfo?.() !== undefined ? { p2p: this.mounts.p2pInfo() } : {})
    }
  }

  /**
   * Opens the cache, builds the mount service and serves the admin API. Rejects (leaving nothing open) when the
   * cache cannot be opened or another daemon answers on the socket.
   */
  async start (): Promise<void> {
    if (this.lifecycle !== 'INIT') throw new Error(`cannot start a daemon that is ${this.lifecycle}`)
    this.lifecycle = 'STARTING'
    const { config } = this
    try {
      await mkdir(config.workDir, { recursive: true }).catch((err: Error) => {
        throw Object.assign(new Error(`cannot create the work directory ${config.workDir}: ${err.message} (set workDir in the config, or --work-dir)`, { cause: err }),
          { code: 'RAFSPEER_ERR_WORK_DIR' })
      })
      // a second daemon is refused before it touches the cache (whose lock would give a vaguer error)
      await prepareSocket(config.socket)
      const open = this.components.openCache ?? (async (dir, init) => await BlobCache.open(dir, init))
      this.cache = await open(config.cache.dir, {
        ...(config.cache.capBytes > 0 ? { capBytes: config.cache.capBytes } : {}),
        logger: this.logger,
        onChunksStored: digests => { this.mounts?.onChunksStored?.(digests) }
      })
      this.mounts = await this.components.createMounts(this.cache, config, this.logger)
      const cache = this.cache
      const mounts = this.mounts
      const metrics = new DaemonMetrics({
        service: mounts,
        cacheStats: () => cache.stats(),
        ...(mounts.p2pStats !== undefined ? { p2pStats: () => mounts.p2pStats!() } : {})
      }, { defaultMetrics: this.defaultMetrics })
      this.api = await startAdminApi({
        service: this.mounts,
        cacheStats: () => cache.stats(),
        daemonInfo: () => this.info(),
        metrics,
        log: this.logger.forComponent('rafspeer:admin-api')
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

  /** Closes whatever is open, in order (API, mounts, cache); every step runs, failures are logged and returned. */
  private async teardown (): Promise<unknown[]> {
    const errors: unknown[] = []
    const step = async (what: string, f: () => Promise<void>): Promise<void> => {
      try { await f() } catch (err) {
        errors.push(err)
        this.log.error('stop: %s failed: %s', what, (err as Error).message)
      }
    }
    if (this.api !== undefined) { const api = this.api; await step('closing the admin API', async () => { await api.close() }) }
    if (this.mounts !== undefined) { const m = this.mounts; await step('unmounting', async () => { await m.stop() }) }
    if (this.cache !== undefined) { const c = this.cache; await step('closing the cache', async () => { await c.close() }) }
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
}

/**
 * Starts a daemon, then serves until SIGTERM or SIGINT: stop() (unmount all, flush the cache), then exit 0 (1 if
 * stopping failed). A second signal while stopping exits at once with 1.
 */
export async function runDaemon (config: DaemonConfig, components: DaemonComponents, opts: RunDaemonOptions = {}): Promise<Daemon> {
  const daemon = new Daemon(components, { config })
  const log = daemon.logger.forComponent('rafspeer:daemon')
  const exit = opts.exit ?? ((code: number) => process.exit(code))
  await daemon.start()
  const mounted: MountInfo[] = []
  try {
    for (const req of opts.mounts ?? []) mounted.push(await daemon.service.mount(req))
  } catch (err) {
    await daemon.stop().catch(() => {})
    throw err
  }
  let signalled = false
  const onSignal = (signal: NodeJS.Signals): void => {
    if (signalled) {
      log.warn('%s while stopping: exiting now', signal)
      exit(1)
      return
    }
    signalled = true
    log('%s: stopping (unmounting %d images, flushing the cache)', signal, daemon.service.list().length)
    daemon.stop().then(() => {
      log('stopped')
      exit(0)
    }, (err: unknown) => {
      log.error('stop failed: %s', (err as Error).message)
      exit(1)
    })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  log('ready: admin API on %s%s (version %s, pid %d, cache %s)', config.socket,
    daemon.metricsAddress !== undefined ? `, metrics on http://${daemon.metricsAddress}/metrics` : '', packageVersion(), process.pid, config.cache.dir)
  opts.onReady?.(daemon, mounted)
  return daemon
}
