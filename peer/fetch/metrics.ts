/** Counters of the fetch pipeline and a bounded ring of fetch-latency samples for a histogram exporter. */
import type { FetchCounters, FetchSample } from './types.js'

export const MAX_SAMPLES = 4096

export class FetchMetrics {
  readonly counters: FetchCounters = {
    bytesBySource: { cache: 0, registry: 0, peer: 0 },
    reads: 0,
    readBytes: 0,
    readTimeouts: 0,
    chunksFromCache: 0,
    chunksFetched: 0,
    chunksCopied: 0,
    chunksAmplified: 0,
    prefetchChunks: 0,
    prefetchBytes: 0,
    batches: 0,
    sourceAttempts: 0,
    retries: 0,
    singleFlightJoins: 0,
    verifyFailures: 0,
    cacheReadFailures: 0,
    cachePutFailures: 0,
    readWaitMaxMs: 0,
    readHandOffs: 0,
    idleExtensions: 0
  }

  private samples: FetchSample[] = []

  sample (s: FetchSample): void {
    if (this.samples.length >= MAX_SAMPLES) this.samples.shift()
    this.samples.push(s)
  }

  /** Samples since the last drain (oldest dropped past MAX_SAMPLES), for `histogram.observe`. */
  drainSamples (): FetchSample[] {
    const out = this.samples
    this.samples = []
    return out
  }

  snapshot (): FetchCounters {
    return { ...this.counters, bytesBySource: { ...this.counters.bytesBySource } }
  }
}
