/**
 * The snapshot store's metadata in LevelDB (`<root>/metadata`): one record per snapshot under its key or name
 * (sublevel `snap!`) and the id counter (`meta!`). The rules are those of containerd's `snapshots/storage`
 * (which every containerd snapshotter shares), so the answers and their error classes are the ones containerd's own
 * overlayfs snapshotter gives.
 *
 * Everything is also held in memory (a node has hundreds, not millions, of snapshots): reads never touch the
 * disk, and a write is one batch that the memory copy follows only once it is on disk. Writers must be
 * serialized by the caller (the store's one lock), because each write is checked against the memory copy.
 *
 * @example
 * ```ts
 * const md = new SnapshotMetadata(join(root, 'metadata'))
 * await md.open()
 * const plan = md.planCreate('active', 'k1', '', {})
 * await md.insert('k1', plan.record)
 * ```
 */
import { Level } from 'level'
import { SnapshotterError } from './errors.js'
import type { SnapshotInfo, SnapshotKind, SnapshotUsage } from './types.js'

/** a label's key and value together, in UTF-8 bytes (containerd's `labels.Validate`) */
export const MAX_LABEL_BYTES = 4096
const FORMAT_VERSION = '1'
/**
 * every write reaches the disk before it is answered, as containerd's bolt transactions do: a removal whose
 * record came back after a power cut would point at a deleted directory
 */
const SYNC = { sync: true } as object

export interface SnapshotRecord {
  /** names the directory `<root>/snapshots/<id>`; never reused */
  id: number
  kind: SnapshotKind
  parent: string
  /** ms since the epoch */
  createdAt: number
  updatedAt: number
  labels: Record<string, string>
  /** committed snapshots: what their `fs` held when committed */
  usage?: SnapshotUsage
  /** a layer rafspeer serves lazily (committed by a claimed Prepare): it has no directory of its own */
  remote?: boolean
}

export interface CreatePlan {
  record: SnapshotRecord
  /** the parent and its ancestors, nearest first */
  ancestors: Array<{ name: string, record: SnapshotRecord }>
}

const notFound = (msg: string): SnapshotterError => new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_NOT_FOUND', msg)
const exists = (msg: string): SnapshotterError => new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS', msg)
const precondition = (msg: string): SnapshotterError => new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION', msg)
const invalid = (msg: string): SnapshotterError => new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT', msg)

/** containerd's label rule; the key is named so the user finds the offending label */
export function validateLabels (labels: Readonly<Record<string, string>>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== 'string') throw invalid(`label ${JSON.stringify(k)}: value is not a string`)
    const n = Buffer.byteLength(k) + Buffer.byteLength(v)
    if (n > MAX_LABEL_BYTES) throw invalid(`label key and value greater than maximum size (${MAX_LABEL_BYTES} bytes), key: ${k.slice(0, 64)}`)
  }
}

/** containerd stores no empty label values: setting one to '' deletes it */
function cleanLabels (labels: Readonly<Record<string, string>> | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(labels ?? {})) if (v !== '' && v !== undefined) out[k] = v
  return out
}

export function toInfo (name: string, r: SnapshotRecord): SnapshotInfo {
  return { name, parent: r.parent, kind: r.kind, createdAt: new Date(r.createdAt), updatedAt: new Date(r.updatedAt), labels: { ...r.labels } }
}

export class SnapshotMetadata {
  readonly location: string
  readonly #db: Level<string, string>
  readonly #meta
  readonly #snap
  readonly #records = new Map<string, SnapshotRecord>()
  readonly #children = new Map<string, Set<string>>()
  #nextId = 1
  #open = false

  constructor (location: string) {
    this.location = location
    this.#db = new Level<string, string>(location, { valueEncoding: 'utf8' })
    this.#meta = this.#db.sublevel<string, string>('meta', { valueEncoding: 'utf8' })
    this.#snap = this.#db.sublevel<string, SnapshotRecord>('snap', { valueEncoding: 'json' })
  }

  async open (): Promise<void> {
    try {
      await this.#db.open()
    } catch (err) {
      const locked = (err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED'
      throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', locked
        ? `snapshot metadata ${this.location} is in use by another process (is another rafspeer snapshotter running on this root?)`
        : `cannot open snapshot metadata ${this.location}: ${(err as Error).message}`, { cause: err })
    }
    const version = await this.#meta.get('version')
    if (version !== undefined && version !== FORMAT_VERSION) {
      await this.#db.close()
      throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', `snapshot metadata ${this.location} has format ${version}, this rafspeer reads ${FORMAT_VERSION}`)
    }
    if (version === undefined) await this.#meta.put('version', FORMAT_VERSION, SYNC)
    const next = Number(await this.#meta.get('next-id') ?? '1')
    this.#nextId = Number.isSafeInteger(next) && next > 0 ? next : 1
    this.#records.clear()
    this.#children.clear()
    for await (const [name, record] of this.#snap.iterator()) {
      this.#records.set(name, record)
      this.#link(name, record.parent)
      this.#nextId = Math.max(this.#nextId, record.id + 1)
    }
    this.#open = true
  }

  async close (): Promise<void> {
    this.#open = false
    await this.#db.close()
  }

  #check (): void {
    if (!this.#open) throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', 'the snapshot store is not open')
  }

  #link (name: string, parent: string): void {
    if (parent === '') return
    let set = this.#children.get(parent)
    if (set === undefined) this.#children.set(parent, set = new Set())
    set.add(name)
  }

  #unlink (name: string, parent: string): void {
    const set = this.#children.get(parent)
    set?.delete(name)
    if (set?.size === 0) this.#children.delete(parent)
  }

  get (name: string): SnapshotRecord | undefined {
    this.#check()
    return this.#records.get(name)
  }

  /** the record, or NOT_FOUND */
  require (name: string): SnapshotRecord {
    const r = this.get(name)
    if (r === undefined) throw notFound(`snapshot ${JSON.stringify(name)} does not exist`)
    return r
  }

  entries (): Array<[string, SnapshotRecord]> {
    this.#check()
    return [...this.#records]
  }

  hasChildren (name: string): boolean {
    return (this.#children.get(name)?.size ?? 0) > 0
  }

  /** ids in use (directories of other ids are garbage) */
  ids (): Set<number> {
    return new Set([...this.#records.values()].map(r => r.id))
  }

  /** never hand out an id below `min` (a directory may exist for it from before a crash) */
  reserveIdsBelow (min: number): void {
    this.#nextId = Math.max(this.#nextId, min)
  }

  /** `name` and the committed snapshots below it, nearest first */
  ancestors (name: string): Array<{ name: string, record: SnapshotRecord }> {
    const out: Array<{ name: string, record: SnapshotRecord }> = []
    const seen = new Set<string>()
    for (let n = name; n !== ''; n = out[out.length - 1]!.record.parent) {
      const record = this.#records.get(n)
      if (record === undefined) throw notFound(`parent ${JSON.stringify(n)} of the chain below ${JSON.stringify(name)} does not exist`)
      if (seen.has(n)) throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION', `snapshot chain below ${JSON.stringify(name)} loops at ${JSON.stringify(n)}`)
      seen.add(n)
      out.push({ name: n, record })
    }
    return out
  }

  /**
   * storage.CreateSnapshot's checks, in its order (parent first, then the key): the record to insert and its
   * chain. Takes an id; nothing is written.
   */
  planCreate (kind: SnapshotKind, key: string, parent: string, labels: Readonly<Record<string, string>> | undefined, now = Date.now()): CreatePlan {
    this.#check()
    if (key === '') throw invalid('snapshot key must not be empty')
    validateLabels(labels ?? {})
    let ancestors: CreatePlan['ancestors'] = []
    if (parent !== '') {
      const p = this.#records.get(parent)
      if (p === undefined) throw notFound(`missing parent ${JSON.stringify(parent)}`)
      // containerd answers InvalidArgument here (snapshots/storage), not FailedPrecondition
      if (p.kind !== 'committed') throw invalid(`parent ${JSON.stringify(parent)} is not a committed snapshot`)
      ancestors = this.ancestors(parent)
    }
    if (this.#records.has(key)) throw exists(`snapshot ${JSON.stringify(key)} already exists`)
    const record: SnapshotRecord = { id: this.#nextId++, kind, parent, createdAt: now, updatedAt: now, labels: cleanLabels(labels) }
    return { record, ancestors }
  }

  /** writes a planned record (or a claimed remote layer) */
  async insert (name: string, record: SnapshotRecord): Promise<void> {
    this.#check()
    if (this.#records.has(name)) throw exists(`snapshot ${JSON.stringify(name)} already exists`)
    await this.#db.batch([
      { type: 'put', sublevel: this.#snap, key: name, value: record },
      { type: 'put', sublevel: this.#meta, key: 'next-id', value: String(Math.max(this.#nextId, record.id + 1)) }
    ] as never, SYNC)
    this.#records.set(name, record)
    this.#link(name, record.parent)
  }

  /** storage.CommitActive's checks (name first, then the key); nothing is written */
  checkCommit (name: string, key: string, labels: Readonly<Record<string, string>> | undefined): SnapshotRecord {
    this.#check()
    if (name === '') throw invalid('committed snapshot name must not be empty')
    validateLabels(labels ?? {})
    if (this.#records.has(name)) throw exists(`committed snapshot ${JSON.stringify(name)} already exists`)
    const active = this.#records.get(key)
    if (active === undefined) throw notFound(`active snapshot ${JSON.stringify(key)} does not exist`)
    if (active.kind !== 'active') throw precondition(`snapshot ${JSON.stringify(key)} is not active (it is ${active.kind})`)
    return active
  }

  /**
   * The active `key` becomes the committed `name`: same id and parent, new timestamps, the given labels (they
   * replace the active's, as containerd does), the measured usage.
   */
  async commit (name: string, key: string, labels: Readonly<Record<string, string>> | undefined, usage: SnapshotUsage, now = Date.now()): Promise<SnapshotRecord> {
    const active = this.checkCommit(name, key, labels)
    const record: SnapshotRecord = { id: active.id, kind: 'committed', parent: active.parent, createdAt: now, updatedAt: now, labels: cleanLabels(labels), usage }
    await this.#snap.batch([{ type: 'del', key }, { type: 'put', key: name, value: record }], SYNC)
    this.#records.delete(key)
    this.#unlink(key, active.parent)
    this.#records.set(name, record)
    this.#link(name, record.parent)
    return record
  }

  /** storage.Remove's checks; nothing is written */
  checkRemove (key: string): SnapshotRecord {
    this.#check()
    const r = this.#records.get(key)
    if (r === undefined) throw notFound(`snapshot ${JSON.stringify(key)} does not exist`)
    if (this.hasChildren(key)) {
      const some = [...this.#children.get(key)!].slice(0, 3).map(c => JSON.stringify(c)).join(', ')
      throw precondition(`cannot remove snapshot ${JSON.stringify(key)} with children (${some})`)
    }
    return r
  }

  async remove (key: string): Promise<SnapshotRecord> {
    const r = this.checkRemove(key)
    await this.#snap.del(key, SYNC)
    this.#records.delete(key)
    this.#unlink(key, r.parent)
    return r
  }

  /**
   * storage.UpdateInfo: only labels change. `labels` replaces them all, `labels.<k>` sets or (absent or empty in
   * `labels`) deletes one key; no paths means `labels`. Any other path is INVALID_ARGUMENT.
   */
  async update (name: string, labels: Readonly<Record<string, string>>, fieldPaths: readonly string[], now = Date.now()): Promise<SnapshotRecord> {
    this.#check()
    const old = this.#records.get(name)
    if (old === undefined) throw notFound(`snapshot ${JSON.stringify(name)} does not exist`)
    let next: Record<string, string> = { ...old.labels }
    if (fieldPaths.length === 0) {
      next = { ...labels }
    } else {
      for (const path of fieldPaths) {
        if (path.startsWith('labels.')) {
          const k = path.slice('labels.'.length)
          if (Object.hasOwn(labels, k)) next[k] = labels[k]!
          else delete next[k]
        } else if (path === 'labels') {
          next = { ...labels }
        } else {
          throw invalid(`cannot update ${JSON.stringify(path)} field on snapshot ${JSON.stringify(name)}`)
        }
      }
    }
    validateLabels(next)
    // a later update sorts after an earlier one even within one millisecond (containerd keeps nanoseconds)
    const record: SnapshotRecord = { ...old, labels: cleanLabels(next), updatedAt: Math.max(now, old.updatedAt + 1) }
    await this.#snap.put(name, record, SYNC)
    this.#records.set(name, record)
    return record
  }
}
