/**
 * The prefetch runner in a swarm (an advisor picks each slice): it takes only what the advisor picks, keeps one
 * slice of registry chunks in flight, skips chunks a read brought meanwhile, waits while everything waits on other
 * peers, and takes the rest in plan order once the swarm has been quiet for the patience. Against a real embedded
 * registry and a real fetcher; the advisor is scripted, as a swarm's would answer.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { getEventListeners } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { delay } from '../../base/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../../registry/index.js'
import { buildTestImage, MemoryChunkCache, type TestImage } from '../../test/helpers/fetch-kit.js'
import { Fetcher, RegistrySource, type PrefetchAdvisor } from '../fetch/index.js'
import { planPrefetch, runPrefetch } from './prefetch.js'
import type { PrefetchStatus } from './types.js'

/** Even chunks are this node's to fetch from the registry, odd ones neighbours have; `waiting` ones wait. */
class ScriptedSwarm implements PrefetchAdvisor {
  readonly waiting = new Set<number>()
  /** registry chunks picked so far */
  readonly sourced: ChunkInfo[] = []
  picks = 0
  /** what the runner asked, in order: `p` a pick, `c` a wait for news */
  log = ''
  /** waits for news not settled yet, and the most at once */
  waits = 0
  maxWaits = 0
  /** picks that allowed registry chunks while one picked earlier was not in the cache yet */
  overlapping = 0
  private wake: (() => void) | undefined

  constructor (private readonly cache: MemoryChunkCache, private readonly blobId: string, private readonly quiet = false) {}

  async pick (_blob: RafsBlobInfo, chunks: readonly ChunkInfo[], opts: { max: number, maxSource: number, maxSourceBytes: number }): Promise<{ chunks: ChunkInfo[], source: number }> {
    this.picks++
    this.log += 'p'
    if (opts.maxSource > 0 && this.sourced.some(c => !this.cache.has(this.blobId, c.index))) this.overlapping++
    const open = chunks.filter(c => !this.waiting.has(c.index))
    // two at a time, as a group still filling would allow: a prefetch needs several registry slices
    const source = open.filter(c => c.index % 2 === 0).slice(0, Math.min(opts.max, opts.maxSource, 2))
    const have = open.filter(c => c.index % 2 === 1).slice(0, opts.max - source.length)
    this.sourced.push(...source)
    return { chunks: [...source, ...have], source: source.length }
  }

  async changed (_blob: RafsBlobInfo, ms: number, signal: AbortSignal): Promise<boolean> {
    this.log += 'c'
    if (this.quiet) { await delay(ms, signal); return false }
    // as the locator does: the timer and the listener on `signal` go as soon as it settles
    let timer: NodeJS.Timeout | undefined
    let onAbort: (() => void) | undefined
    this.maxWaits = Math.max(this.maxWaits, ++this.waits)
    try {
      return await new Promise<boolean>((resolve, reject) => {
        this.wake = () => { resolve(true) }
        timer = setTimeout(() => { resolve(false) }, ms)
        onAbort = () => { reject(signal.reason) }
        signal.addEventListener('abort', onAbort, { once: true })
      })
    } finally {
      this.waits--
      clearTimeout(timer)
      if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
    }
  }

  /** neighbours got the waiting chunks */
  release (): void {
    this.waiting.clear()
    this.wake?.()
  }
}

const newStatus = (): PrefetchStatus => ({ state: 'none', chunksTotal: 0, chunksDone: 0, bytesTotal: 0, bytesDone: 0 })

describe('runPrefetch with a swarm advisor', () => {
  let img: TestImage
  let root: string
  let reg: RegistryServer
  let ref: string
  const client = new RegistryClient({ retries: 0, timeoutMs: 10_000 })

  before(async () => {
    img = await buildTestImage()
    root = await mkdtemp(join(tmpdir(), 'rafspeer-prefetch-'))
    reg = await startRegistryServer({ root })
    ref = `${reg.host}/prefetch/swarm`
    await client.pushBlob(ref, `sha256:${img.blobId}`, img.blobSize, img.blobPath)
  })

  after(async () => {
    await reg?.stop()
    await rm(root, { recursive: true, force: true })
    await img?.cleanup()
    await client.close()
  })

  const fetcherOf = (cache: MemoryChunkCache): Fetcher => new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository: ref })] })

  it('takes what the advisor picks, one registry slice at a time, and the waiting chunks once neighbours have them', async () => {
    const cache = new MemoryChunkCache()
    const fetcher = fetcherOf(cache)
    const plan = await planPrefetch(img.reader, 'all')
    const all = plan.flatMap(s => s.chunks)
    assert.ok(all.length >= 8, `${all.length} chunks`)
    const swarm = new ScriptedSwarm(cache, img.blobId)
    // two chunks in the middle wait, each between picked ones: the slices around them must not take them along
    // (no gap filled in a swarm)
    const waits = [all[10]!, all[21]!]
    for (const c of waits) swarm.waiting.add(c.index)
    // a read took one chunk before the prefetch: it is not fetched again, and counts as done
    const read = all[all.length - 1]!
    await fetcher.ensureChunks(img.blobs[0]!, [read], { priority: 'read' })
    const status = newStatus()
    const ac = new AbortController()
    const run = runPrefetch(fetcher, img.reader, plan, status, { signal: ac.signal, advisor: swarm, patienceMs: 60_000 })
    // everything but the waiting chunks lands; they wait (the patience is far off)
    for (let i = 0; i < 1000 && cache.chunks.size < all.length - waits.length; i++) await delay(10)
    assert.equal(cache.chunks.size, all.length - waits.length)
    await delay(300)
    for (const c of waits) assert.ok(!cache.has(img.blobId, c.index), `chunk ${c.index} waits for the swarm`)
    assert.equal(status.state, 'running')
    swarm.release()
    await run
    assert.equal(status.state, 'done', status.error)
    for (const c of all) assert.ok(cache.has(img.blobId, c.index))
    assert.equal(status.chunksDone, status.chunksTotal)
    assert.equal(status.bytesDone, status.bytesTotal)
    assert.equal(swarm.overlapping, 0, 'never a second registry slice while one is in flight')
    assert.ok(!swarm.sourced.includes(read), 'the chunk a read brought is not picked')
    assert.equal(fetcher.counters.chunksFetched, all.length, 'each chunk fetched once')
    assert.equal(getEventListeners(ac.signal, 'abort').length, 0, 'no wait left listening to the prefetch\'s signal')
    assert.equal(swarm.maxWaits, 1, 'a wait for news ends when a registry slice ending wakes the runner first')
  })

  it('takes the waiting chunks in plan order once the swarm has been quiet for the patience', async () => {
    const cache = new MemoryChunkCache()
    const fetcher = fetcherOf(cache)
    const plan = await planPrefetch(img.reader, 'all')
    const all = plan.flatMap(s => s.chunks)
    const swarm = new ScriptedSwarm(cache, img.blobId, true)
    for (const c of all) swarm.waiting.add(c.index)
    const status = newStatus()
    const t0 = performance.now()
    await runPrefetch(fetcher, img.reader, plan, status, { signal: AbortSignal.timeout(20_000), advisor: swarm, patienceMs: 200 })
    assert.equal(status.state, 'done', status.error)
    for (const c of all) assert.ok(cache.has(img.blobId, c.index))
    assert.ok(performance.now() - t0 >= 200, 'not before the patience')
    assert.equal(swarm.sourced.length, 0, 'the advisor never picked any')
    // one patience, then slice after slice while the swarm stays quiet: no wait between the forced slices
    assert.match(swarm.log, /^pc+p+$/, swarm.log)
  })

  it('a prefetch cancelled while it waits on the swarm ends as cancelled', async () => {
    const cache = new MemoryChunkCache()
    const plan = await planPrefetch(img.reader, 'all')
    const swarm = new ScriptedSwarm(cache, img.blobId)
    for (const c of plan.flatMap(s => s.chunks)) swarm.waiting.add(c.index)
    const status = newStatus()
    const ac = new AbortController()
    setTimeout(() => { ac.abort() }, 100)
    await runPrefetch(fetcherOf(cache), img.reader, plan, status, { signal: ac.signal, advisor: swarm, patienceMs: 60_000 })
    assert.equal(status.state, 'cancelled')
    assert.equal(cache.chunks.size, 0)
  })
})
