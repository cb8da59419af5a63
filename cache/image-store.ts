/**
 * Image records (ref → manifest digest → bootstrap, blob ids, last access) over the cache index.
 */
import type { CacheIndex, ImageRecord } from './cache-index.js'

export class ImageStore {
  count = 0

  constructor (private readonly index: CacheIndex) {}

  async load (): Promise<void> {
    this.count = (await this.index.listImages()).length
  }

  async put (record: Omit<ImageRecord, 'lastAccess'> & { lastAccess?: number }): Promise<void> {
    const existed = await this.index.getImage(record.ref) !== undefined
    await this.index.putImage({ ...record, blobIds: [...record.blobIds], lastAccess: record.lastAccess ?? Date.now() })
    if (!existed) this.count++
  }

  async get (ref: string): Promise<ImageRecord | undefined> {
    const rec = await this.index.getImage(ref)
    if (rec === undefined) return undefined
    rec.lastAccess = Date.now()
    await this.index.putImage(rec)
    return rec
  }

  async remove (ref: string): Promise<boolean> {
    const removed = await this.index.removeImage(ref)
    if (removed) this.count--
    return removed
  }
}
