/**
 * What the blob cache learnt lately about chunk digests, so that `findByDigest` — asked for every chunk a neighbour
 * requests and for every chunk a read misses (another blob may hold it) — need not go to the index each time: a
 * LevelDB prefix iterator and a get per call were a tenth of a daemon's CPU in an 8-node swarm (`bench/RESULTS.md`).
 *
 * Two bounded maps, oldest forgotten first: where a digest was found present (a hint: the cache re-checks presence,
 * and falls back to the index when every place it names is gone), and digests the index did not hold. A chunk made
 * present is recorded as such at once and unlearns its absence; an absence learnt from a look-up that overlapped a
 * store is not kept (the store may have been of that very digest).
 */

export interface DigestPlace<C> { blobId: string, chunk: C }

/** places remembered per digest (a chunk shared by more blobs than this is found in the index past them) */
const MAX_PLACES = 4

interface Known<C> { places: Array<DigestPlace<C>>, /** the store count when a store last added a place */ storedAt: number }

export class DigestMemo<C extends { index: number }> {
  private readonly present = new Map<string, Known<C>>()
  private readonly absent = new Set<string>()
  /** counts stores: an index look-up that began before a store of its digest may not teach absence */
  private stores = 0

  constructor (private readonly maxEntries = 1 << 15) {}

  /** the places a digest was last seen present (to re-check), undefined when unknown */
  places (key: string): ReadonlyArray<DigestPlace<C>> | undefined { return this.present.get(key)?.places }

  /** true when a look-up found the digest present nowhere, and nothing was stored since under it */
  knownAbsent (key: string): boolean { return this.absent.has(key) }

  /** a token to hand back to {@link learnt} with an index look-up's answer */
  begin (): number { return this.stores }

  /** what an index look-up that began at `token` found (an empty list: the index holds the digest nowhere) */
  learnt (key: string, token: number, found: Array<DigestPlace<C>>): void {
    const known = this.present.get(key)
    // a store of this digest since the look-up began knows better than the look-up
    if (known !== undefined && known.storedAt > token) return
    if (found.length > 0) {
      this.absent.delete(key)
      this.remember(key, found, 0)
    } else if (token === this.stores || known !== undefined) {
      // (with stores since, and this digest no longer remembered, one of them may have been of it: learn nothing)
      this.present.delete(key)
      this.absent.add(key)
      if (this.absent.size > this.maxEntries) this.absent.delete(this.absent.values().next().value as string)
    }
  }

  /** a chunk with this digest was just made present in `blobId` */
  stored (key: string, place: DigestPlace<C>): void {
    const at = ++this.stores
    this.absent.delete(key)
    const known = this.present.get(key)
    if (known === undefined) {
      this.remember(key, [place], at)
      return
    }
    known.storedAt = at
    if (!known.places.some(p => p.blobId === place.blobId && p.chunk.index === place.chunk.index)) {
      known.places.unshift(place)
      if (known.places.length > MAX_PLACES) known.places.length = MAX_PLACES
    }
  }

  clear (): void {
    this.present.clear()
    this.absent.clear()
    this.stores++
  }

  private remember (key: string, places: Array<DigestPlace<C>>, storedAt: number): void {
    this.present.delete(key)
    this.present.set(key, { places: places.slice(0, MAX_PLACES), storedAt })
    if (this.present.size > this.maxEntries) this.present.delete(this.present.keys().next().value as string)
  }
}
