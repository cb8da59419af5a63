/**
 * The snapshot store behind rafspeer's containerd snapshotter: containerd's overlayfs snapshotter semantics on
 * `<root>/snapshots/<id>/{fs,work}` with LevelDB metadata, plus the `RemoteLayers` seam through which layers that
 * rafspeer serves lazily take the place of unpacked ones.
 *
 * A claimed layer (a Prepare carrying `containerd.io/snapshot.ref` that `remote.claims`) is committed at once under
 * its target name and answered ALREADY_EXISTS, so containerd skips its download; an active snapshot or a view on a
 * chain holding such a layer gets the directory `remote.attach` returns as its lowest lowerdir, held in the name of
 * its key until the key is removed or committed.
 *
 * Metadata changes are serialized by one lock, which is never held while a remote layer is attached (that can
 * take a registry round trip). Directories are made under a temporary name and renamed before the metadata
 * points at them, and removed after the metadata forgot them, so a crash leaves only garbage for `cleanup()`.
 *
 * @example
 * ```ts
 * const snapshots = new Snapshots({ logger, remote }, { root: '/var/lib/rafspeer/snapshotter' })
 * await snapshots.start()
 * const mounts = await snapshots.prepare('k', 'sha256:…', {})
 * ```
 */
import { lchown, lstat, mkdir, mkdtemp, readdir, rename, rm, stat } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { randomBytes } from 'node:crypto'
import { describeError, silentLogger, type ComponentLogger, type Logger } from '../base/index.js'
import { SnapshotterError } from './errors.js'
import { matches, parseFilters, snapshotFields } from './filters.js'
import { SnapshotMetadata, toInfo, validateLabels, type SnapshotRecord } from './metadata.js'
import {
  TARGET_REF_LABEL, type RemoteLayers, type SnapshotInfo, type SnapshotKind, type SnapshotMount, type SnapshotUsage
} from './types.js'

/** What the gRPC service (or a test) needs of a store. */
export interface SnapshotStore {
  prepare: (key: string, parent: string, labels?: Record<string, string>, opts?: { signal?: AbortSignal }) => Promise<SnapshotMount[]>
  view: (key: string, parent: string, labels?: Record<string, string>, opts?: { signal?: AbortSignal }) => Promise<SnapshotMount[]>
  mounts: (key: string, opts?: { signal?: AbortSignal }) => Promise<SnapshotMount[]>
  commit: (name: string, key: string, labels?: Record<string, string>, opts?: { signal?: AbortSignal }) => Promise<void>
  remove: (key: string, opts?: { signal?: AbortSignal }) => Promise<void>
  stat: (key: string) => Promise<SnapshotInfo>
  update: (info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldPaths?: readonly string[]) => Promise<SnapshotInfo>
  list: (filters?: readonly string[]) => Promise<SnapshotInfo[]>
  usage: (key: string, opts?: { signal?: AbortSignal }) => Promise<SnapshotUsage>
  cleanup: (opts?: { signal?: AbortSignal }) => Promise<void>
}

export interface SnapshotsComponents {
  logger?: ComponentLogger
  /** rafspeer's lazily served layers; without it this is a plain overlay snapshotter */
  remote?: RemoteLayers
}

export interface SnapshotsInit {
  /** holds `metadata/` and `snapshots/` */
  root: string
  /**
   * add `index=off` to overlay mounts. Default: when the kernel's overlay `index` feature is on by default, as
   * containerd does (with it on, a lower layer shared by several overlays makes the later mounts fail).
   */
  overlayIndexOff?: boolean
}

const USAGE_WALKERS = 16

/** One async lock: the metadata is checked against its memory copy, so writers take turns. */
class Mutex {
  #tail: Promise<unknown> = Promise.resolve()

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn)
    this.#tail = result.catch(() => {})
    return await result
  }
}

function kernelOverlayIndexOn (): boolean {
  try {
    return readFileSync('/sys/module/overlay/parameters/index', 'utf8').trim() === 'Y'
  } catch {
    return false
  }
}

/**
 * containerd's `fs.DiskUsage`: bytes allocated (`st_blocks * 512`) and inodes below and including `root`, each
 * hard-linked inode once. Entries vanishing during the walk are skipped.
 */
export async function diskUsage (root: string, opts: { signal?: AbortSignal } = {}): Promise<SnapshotUsage> {
  const seen = new Set<string>()
  let size = 0
  const queue = [root]
  const visit = async (p: string): Promise<void> => {
    let st
    try { st = await lstat(p, { bigint: true }) } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && p !== root) return
      throw err
    }
    const id = `${st.dev}:${st.ino}`
    if (!seen.has(id)) {
      seen.add(id)
      size += Number(st.blocks) * 512
    }
    if (!st.isDirectory()) return
    let names: string[]
    try { names = await readdir(p) } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    for (const n of names) queue.push(join(p, n))
  }
  let running = 0
  await new Promise<void>((resolve, reject) => {
    const pump = (): void => {
      if (opts.signal?.aborted === true) { reject(opts.signal.reason); return }
      while (running < USAGE_WALKERS && queue.length > 0) {
        running++
        visit(queue.pop()!).then(() => { running--; pump() }, reject)
      }
      if (running === 0 && queue.length === 0) resolve()
    }
    pump()
  })
  return { size, inodes: seen.size }
}

export class Snapshots implements SnapshotStore {
  readonly root: string
  readonly #snapshotsDir: string
  readonly #metadataDir: string
  /** made at each start: a LevelDB handle opens when made and does not reopen once closed */
  #md!: SnapshotMetadata
  readonly #log: Logger
  readonly #remote: RemoteLayers | undefined
  readonly #indexOff: boolean
  readonly #lock = new Mutex()
  #shutdown = new AbortController()
  readonly #background = new Set<Promise<void>>()
  /** trash directories being deleted by a remove; cleanup leaves them alone */
  readonly #removing = new Set<string>()
  #started = false

  constructor (components: SnapshotsComponents, init: SnapshotsInit) {
    this.root = resolve(init.root)
    // overlay's mount options are split at ',' and lowerdir at ':'
    if (/[,:]/.test(this.root)) throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT', `snapshotter root ${this.root} must not contain ',' or ':' (overlay mount options cannot carry them)`)
    this.#snapshotsDir = join(this.root, 'snapshots')
    this.#metadataDir = join(this.root, 'metadata')
    this.#log = (components.logger ?? silentLogger).forComponent('rafspeer:snapshotter')
    this.#remote = components.remote
    this.#indexOff = init.overlayIndexOff ?? kernelOverlayIndexOn()
  }

  async start (): Promise<void> {
    if (this.#started) return
    await mkdir(this.#snapshotsDir, { recursive: true, mode: 0o700 })
    this.#md = new SnapshotMetadata(this.#metadataDir)
    this.#shutdown = new AbortController()
    await this.#md.open()
    // a crash between renaming a directory in and writing its record leaves a directory whose id the counter
    // never saved: skip past every id on disk
    let max = 0
    for (const name of await readdir(this.#snapshotsDir)) if (/^\d+$/.test(name)) max = Math.max(max, Number(name))
    this.#md.reserveIdsBelow(max + 1)
    this.#started = true
    this.#inBackground(this.cleanup({ signal: this.#shutdown.signal }), 'cleanup at start')
    // a restarted snapshotter serves the mounts of running containers again: their remote layers are remounted
    for (const [name, r] of this.#md.entries()) {
      if (r.kind === 'committed' || r.parent === '' || this.#remote === undefined) continue
      let ancestors
      try { ancestors = this.#md.ancestors(r.parent) } catch (err) {
        this.#log.warn('snapshot %s: %s', name, describeError(err))
        continue
      }
      if (!ancestors.some(a => this.#isRemote(a.record))) continue
      this.#inBackground(this.#lowerDirs(name, ancestors, this.#shutdown.signal).then(dirs => {
        this.#log.info('re-attached the remote layer of %s at %s', name, dirs[dirs.length - 1])
      }), `re-attaching the remote layer of ${name}`)
    }
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#shutdown.abort(new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', 'the snapshotter is stopping'))
    await Promise.allSettled([...this.#background])
    // after the writes already queued
    await this.#lock.run(async () => { await this.#md.close() })
  }

  #inBackground (p: Promise<unknown>, what: string): void {
    const done: Promise<void> = p.then(() => {}, (err) => {
      if (!this.#shutdown.signal.aborted) this.#log.warn('%s failed: %s', what, describeError(err))
    }).finally(() => this.#background.delete(done))
    this.#background.add(done)
  }

  #assertStarted (): void {
    if (!this.#started) throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', 'the snapshotter is not running')
  }

  #dir (id: number): string { return join(this.#snapshotsDir, String(id)) }
  #fs (id: number): string { return join(this.#snapshotsDir, String(id), 'fs') }
  #work (id: number): string { return join(this.#snapshotsDir, String(id), 'work') }

  #isRemote (r: SnapshotRecord): boolean {
    return r.remote === true || (this.#remote?.isRemote(r.labels) ?? false)
  }

  #chainIsRemote (parent: string): boolean {
    if (parent === '') return false
    try {
      return this.#md.ancestors(parent).some(a => this.#isRemote(a.record))
    } catch {
      return false
    }
  }

  async prepare (key: string, parent: string, labels: Record<string, string> = {}, opts: { signal?: AbortSignal } = {}): Promise<SnapshotMount[]> {
    this.#assertStarted()
    const target = labels[TARGET_REF_LABEL]
    if (target !== undefined && target !== '' && this.#remote?.claims(labels) === true) await this.#claim(target, parent, labels)
    return await this.#create('active', key, parent, labels, opts.signal)
  }

  async view (key: string, parent: string, labels: Record<string, string> = {}, opts: { signal?: AbortSignal } = {}): Promise<SnapshotMount[]> {
    this.#assertStarted()
    return await this.#create('view', key, parent, labels, opts.signal)
  }

  /** commits the layer rafspeer serves under `target` and answers ALREADY_EXISTS: containerd then Stats `target` */
  async #claim (target: string, parent: string, labels: Record<string, string>): Promise<never> {
    await this.#lock.run(async () => {
      validateLabels(labels)
      if (this.#md.get(target) !== undefined) {
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS', `target snapshot ${JSON.stringify(target)} already exists`)
      }
      const plan = this.#md.planCreate('committed', target, parent, labels)
      await this.#md.insert(target, { ...plan.record, usage: { size: 0, inodes: 0 }, remote: true })
    })
    this.#log.info('layer %s (parent %s) is served by rafspeer: committed without content', target, parent === '' ? '-' : parent)
    this.#remote?.pulled?.(labels)
    throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS', `target snapshot ${JSON.stringify(target)} already exists (served lazily by rafspeer)`)
  }

  async #create (kind: SnapshotKind, key: string, parent: string, labels: Record<string, string>, signal?: AbortSignal): Promise<SnapshotMount[]> {
    const plan = await this.#lock.run(async () => {
      const plan = this.#md.planCreate(kind, key, parent, labels)
      const tmp = await mkdtemp(join(this.#snapshotsDir, 'new-'))
      try {
        await mkdir(join(tmp, 'fs'), { mode: 0o755 })
        if (kind === 'active') await mkdir(join(tmp, 'work'), { mode: 0o711 })
        await rename(tmp, this.#dir(plan.record.id))
      } catch (err) {
        await rm(tmp, { recursive: true, force: true })
        throw err
      }
      try {
        await this.#md.insert(key, plan.record)
      } catch (err) {
        await rm(this.#dir(plan.record.id), { recursive: true, force: true })
        throw err
      }
      return plan
    })
    const { record } = plan
    this.#log.debug('%s %s (id %d) on %s', kind, key, record.id, parent === '' ? '-' : parent)
    try {
      const lowers = await this.#lowerDirs(key, plan.ancestors, signal)
      if (this.#md.get(key)?.id !== record.id) {
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_NOT_FOUND', `snapshot ${JSON.stringify(key)} was removed while it was being prepared`)
      }
      // the upper dir's root is the container's root directory: it takes the owner of the layer below, as
      // containerd's overlay snapshotter does
      if (kind === 'active' && lowers.length > 0) {
        const st = await stat(lowers[0]!)
        await lchown(this.#fs(record.id), st.uid, st.gid)
      }
      return this.#mountsOf(kind, record.id, lowers)
    } catch (err) {
      // containerd forgets a failed Prepare's key, so nobody would ever remove it
      let now: SnapshotRecord | undefined | null
      try { now = this.#md.get(key) } catch { now = null } // stopped meanwhile: the error at hand says enough
      if (now?.id === record.id) {
        await this.remove(key).catch((e) => { this.#log.warn('undoing %s %s: %s', kind, key, describeError(e)) })
      } else if (now === undefined && this.#remote !== undefined && plan.ancestors.some(a => this.#isRemote(a.record))) {
        await this.#remote.release(key).catch(() => {})
      }
      throw err
    }
  }

  /** the chain's directories nearest first; the first remote layer ends it with the directory of its whole image */
  async #lowerDirs (holder: string, ancestors: Array<{ name: string, record: SnapshotRecord }>, signal?: AbortSignal): Promise<string[]> {
    const dirs: string[] = []
    for (const { name, record } of ancestors) {
      if (!this.#isRemote(record)) {
        dirs.push(this.#fs(record.id))
        continue
      }
      if (this.#remote === undefined) {
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', `layer ${name} is served by rafspeer, but this snapshotter runs without its remote layers`)
      }
      const sig = signal === undefined ? this.#shutdown.signal : AbortSignal.any([signal, this.#shutdown.signal])
      let dir: string
      try {
        dir = await this.#remote.attach(holder, toInfo(name, record), { signal: sig })
      } catch (err) {
        if (err instanceof SnapshotterError) throw err
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_MOUNT', `cannot mount layer ${name} for ${holder}: ${describeError(err)}`, { cause: err })
      }
      if (/[,:]/.test(dir)) {
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_MOUNT', `layer ${name} is mounted at ${dir}, which overlay cannot take as a lowerdir (',' or ':')`)
      }
      dirs.push(dir)
      break
    }
    return dirs
  }

  #mountsOf (kind: SnapshotKind, id: number, lowers: string[]): SnapshotMount[] {
    if (lowers.length === 0) {
      // overlay needs a lower layer: an empty chain is a bind of the snapshot's own directory
      return [{ type: 'bind', source: this.#fs(id), options: [kind === 'view' ? 'ro' : 'rw', 'rbind'] }]
    }
    if (kind === 'view' && lowers.length === 1) return [{ type: 'bind', source: lowers[0]!, options: ['ro', 'rbind'] }]
    const options = this.#indexOff ? ['index=off'] : []
    if (kind === 'active') options.push(`workdir=${this.#work(id)}`, `upperdir=${this.#fs(id)}`)
    options.push(`lowerdir=${lowers.join(':')}`)
    return [{ type: 'overlay', source: 'overlay', options }]
  }

  async mounts (key: string, opts: { signal?: AbortSignal } = {}): Promise<SnapshotMount[]> {
    this.#assertStarted()
    const r = this.#md.require(key)
    if (r.kind === 'committed') {
      throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION', `requested snapshot ${JSON.stringify(key)} is not active or view`)
    }
    const ancestors = r.parent === '' ? [] : this.#md.ancestors(r.parent)
    return this.#mountsOf(r.kind, r.id, await this.#lowerDirs(key, ancestors, opts.signal))
  }

  async commit (name: string, key: string, labels: Record<string, string> = {}, opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#assertStarted()
    // the walk may be long: measured before taking the lock, checked again under it
    const active = this.#md.checkCommit(name, key, labels)
    const usage = await diskUsage(this.#fs(active.id), opts)
    await this.#lock.run(async () => {
      if (this.#md.get(key)?.id !== active.id) {
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION', `active snapshot ${JSON.stringify(key)} changed while it was being committed`)
      }
      await this.#md.commit(name, key, labels, usage)
    })
    this.#log.debug('committed %s as %s (id %d, %d bytes, %d inodes)', key, name, active.id, usage.size, usage.inodes)
    await rm(this.#work(active.id), { recursive: true, force: true }).catch((err) => {
      this.#log.warn('removing the work dir of %s: %s', name, describeError(err))
    })
    if (this.#remote !== undefined && this.#chainIsRemote(active.parent)) {
      // the commit stands either way: a failed release must not make containerd retry it
      await this.#remote.release(key).catch((err) => { this.#log.warn('releasing the remote layer held by %s: %s', key, describeError(err)) })
    }
  }

  async remove (key: string, _opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#assertStarted()
    const r = this.#md.checkRemove(key)
    if (r.kind !== 'committed' && this.#remote !== undefined && this.#chainIsRemote(r.parent)) {
      // before the metadata goes: the last hold's end unmounts, and it must not find the key's overlay gone
      // from our books but still stacked on it. A failure keeps the snapshot, as FAILED_PRECONDITION: containerd's
      // garbage collector logs that and goes on with the other snapshots (any other class stops the collection)
      try {
        await this.#remote.release(key)
      } catch (err) {
        throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION', `cannot remove ${key} yet: releasing the layer rafspeer serves it failed: ${describeError(err)}`, { cause: err })
      }
    }
    const removed = await this.#lock.run(async () => await this.#md.remove(key))
    this.#log.debug('removed %s (id %d)', key, removed.id)
    const trash = `rm-${removed.id}-${randomBytes(4).toString('hex')}`
    this.#removing.add(trash)
    try {
      await rename(this.#dir(removed.id), join(this.#snapshotsDir, trash))
      await rm(join(this.#snapshotsDir, trash), { recursive: true, force: true, maxRetries: 3 })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#log.warn('removing the directory of %s: %s (cleanup will retry)', key, describeError(err))
    } finally {
      this.#removing.delete(trash)
    }
  }

  async stat (key: string): Promise<SnapshotInfo> {
    this.#assertStarted()
    return toInfo(key, this.#md.require(key))
  }

  async update (info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldPaths: readonly string[] = []): Promise<SnapshotInfo> {
    this.#assertStarted()
    const r = await this.#lock.run(async () => await this.#md.update(info.name, info.labels ?? {}, fieldPaths))
    return toInfo(info.name, r)
  }

  async list (filters: readonly string[] = []): Promise<SnapshotInfo[]> {
    this.#assertStarted()
    const f = parseFilters(filters)
    return this.#md.entries()
      .sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
      .map(([name, r]) => toInfo(name, r))
      .filter(info => matches(f, snapshotFields(info)))
  }

  async usage (key: string, opts: { signal?: AbortSignal } = {}): Promise<SnapshotUsage> {
    this.#assertStarted()
    const r = this.#md.require(key)
    if (r.kind === 'active') return await diskUsage(this.#fs(r.id), opts)
    return { ...(r.usage ?? { size: 0, inodes: 0 }) }
  }

  /** removes the directories no snapshot owns (left by a crash, or by a remove whose rm failed) */
  async cleanup (opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#assertStarted()
    const trash = await this.#lock.run(async () => {
      const ids = this.#md.ids()
      const out: string[] = []
      for (const name of await readdir(this.#snapshotsDir)) {
        if (/^\d+$/.test(name) && ids.has(Number(name))) continue
        if (this.#removing.has(name)) continue
        if (name.startsWith('rm-')) { out.push(name); continue }
        const t = `rm-${name}-${randomBytes(4).toString('hex')}`
        await rename(join(this.#snapshotsDir, name), join(this.#snapshotsDir, t))
        out.push(t)
      }
      return out
    })
    for (const t of trash) {
      opts.signal?.throwIfAborted()
      await rm(join(this.#snapshotsDir, t), { recursive: true, force: true, maxRetries: 3 })
      this.#log.debug('cleanup removed %s', t)
    }
  }
}
