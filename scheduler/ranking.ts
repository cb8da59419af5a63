/**
 * How good a parent a holder is for a given asker, in the spirit of Dragonfly's evaluator (the scheduler's
 * `evaluator` package, which scores candidate parents by load, success and locality): mostly load (free upload slots, free bandwidth, chunks this scheduler
 * handed out lately), then the success rate other peers report, per-chunk latency, and zone affinity with the
 * asker. A holder reported as sending bad bytes drops sharply (×0.2 per recent report) and is banned once enough
 * distinct peers reported it. Pure functions over plain records, so the simulator's model mode runs the same code.
 */
import type { PeerOutcome } from '../p2p/index.js'
import type { RankingWeights } from './types.js'

export const DEFAULT_WEIGHTS: Readonly<RankingWeights> = Object.freeze({ load: 0.4, success: 0.25, latency: 0.15, zone: 0.2, jitter: 0.05 })

/** reported outcomes fade with this half-life, so a peer that recovered gets its chance back */
export const REPUTATION_HALF_LIFE_MS = 10 * 60_000
/** chunks handed out by the scheduler fade with this half-life (a chunk is served in well under a second) */
export const PENDING_HALF_LIFE_MS = 1000
/** the bandwidth assumed for a peer that did not declare one (100 MB/s) */
export const ASSUMED_UPLOAD_BPS = 100e6
/** per-chunk latency that scores one half */
export const LATENCY_REF_MS = 25
/** latency score of a peer nobody reported on yet: a fair chance, below a proven fast peer */
export const UNKNOWN_LATENCY_SCORE = 0.6
/** each recent `bad` report multiplies the score by this */
export const BAD_FACTOR = 0.2
const LATENCY_EWMA_ALPHA = 0.3

/** What other peers reported about one peer. Outlives the peer's registration, so a ban survives a re-join. */
export interface Reputation {
  ok: number
  failed: number
  bad: number
  /** when ok/failed/bad were last decayed */
  at: number
  /** EWMA of ms per delivered chunk; NaN until the first success */
  latencyMs: number
  /** distinct peers that reported bad bytes since the last ban */
  badReporters: Set<string> | undefined
  bannedUntil: number
  /**
   * Distinct other peers that reported a verified delivery from this peer (at most {@link MAX_VOUCHERS}): what
   * admits an identity to a larger share of a full index (`admission.ts`). Cleared by a ban.
   */
  vouchers: Set<string> | undefined
  /** digests this peer may hold while the index is under pressure, set when its holdings were evicted */
  cap: number
}

/** vouchers remembered per peer: enough to tell "served someone" from "served nobody" */
export const MAX_VOUCHERS = 4

export const newReputation = (now: number): Reputation =>
  ({ ok: 0, failed: 0, bad: 0, at: now, latencyMs: NaN, badReporters: undefined, bannedUntil: 0, vouchers: undefined, cap: Infinity })

const fade = (ageMs: number, halfLifeMs: number): number => ageMs <= 0 ? 1 : Math.pow(2, -ageMs / halfLifeMs)

function decay (rep: Reputation, now: number): void {
  const f = fade(now - rep.at, REPUTATION_HALF_LIFE_MS)
  if (f < 1) {
    rep.ok *= f
    rep.failed *= f
    rep.bad *= f
    rep.at = now
  }
}

export interface BanPolicy {
  banAfterBadReporters: number
  banMs: number
}

/**
 * Applies one outcome reported by `reporter` to the reputation of the peer it names. Returns true when the peer
 * has just been banned.
 */
export function recordOutcome (rep: Reputation, o: PeerOutcome, reporter: string, now: number, policy: BanPolicy): boolean {
  decay(rep, now)
  if (o.bad) {
    rep.bad += 1
    rep.failed += 1
    rep.badReporters ??= new Set()
    if (rep.badReporters.size < policy.banAfterBadReporters) rep.badReporters.add(reporter)
    if (rep.badReporters.size >= policy.banAfterBadReporters && rep.bannedUntil <= now) {
      rep.bannedUntil = now + policy.banMs
      rep.badReporters = undefined
      rep.vouchers = undefined
      return true
    }
    return false
  }
  if (o.failed) {
    rep.failed += 1
  } else if (o.chunks > 0) {
    rep.ok += 1
    rep.vouchers ??= new Set()
    if (rep.vouchers.size < MAX_VOUCHERS) rep.vouchers.add(reporter)
    const perChunk = o.ms / o.chunks
    rep.latencyMs = Number.isNaN(rep.latencyMs) ? perChunk : rep.latencyMs + LATENCY_EWMA_ALPHA * (perChunk - rep.latencyMs)
  }
  return false
}

export const isBanned = (rep: Reputation, now: number): boolean => rep.bannedUntil > now

/** Load as the index knows it; `pending` is the decayed count of chunks recently handed out for this peer. */
export interface LoadView {
  uploadSlots: number
  uploadBps: number
  activeUploads: number
  recentUploadBps: number
  pending: number
  pendingAt: number
}

/** Decayed chunks-handed-out count at `now`. */
export const pendingAt = (p: LoadView, now: number): number => p.pending * fade(now - p.pendingAt, PENDING_HALF_LIFE_MS)

/** Adds `n` handed-out chunks to a peer's pending count. */
export function addPending (p: LoadView, n: number, now: number): void {
  p.pending = pendingAt(p, now) + n
  p.pendingAt = now
}

/** 1 for an idle peer, towards 0 as its slots, bandwidth and recent hand-outs fill up. */
export function loadQuality (p: LoadView, now: number): number {
  const slots = p.uploadSlots > 0 ? p.uploadSlots : 0
  const slotsFree = slots > 0 ? Math.max(0, 1 - p.activeUploads / slots) : 1 / (1 + p.activeUploads / 8)
  const cap = p.uploadBps > 0 ? p.uploadBps : ASSUMED_UPLOAD_BPS
  const bwFree = Math.max(0, 1 - p.recentUploadBps / cap)
  const pendingFree = 1 / (1 + pendingAt(p, now) / (16 * Math.max(1, slots > 0 ? slots : 4)))
  return 0.4 * slotsFree + 0.3 * bwFree + 0.3 * pendingFree
}

/** Laplace-smoothed share of good outcomes; a peer nobody reported on scores 1. */
export function successRate (rep: Reputation, now: number): number {
  decay(rep, now)
  return (rep.ok + 1) / (rep.ok + rep.failed + 1)
}

export const latencyScore = (rep: Reputation): number =>
  Number.isNaN(rep.latencyMs) ? UNKNOWN_LATENCY_SCORE : 1 / (1 + rep.latencyMs / LATENCY_REF_MS)

/** Splits a zone label into its levels (`'eu|fra|rack-3'` → 3 levels); '' has none. */
export const zonePath = (zone: string): string[] => zone === '' ? [] : zone.toLowerCase().split('|')

/** Shared leading levels over the deeper path's depth: 1 for the same zone, 0 when either is unknown. */
export function zoneAffinity (a: readonly string[], b: readonly string[]): number {
  const depth = Math.max(a.length, b.length)
  if (a.length === 0 || b.length === 0) return 0
  let same = 0
  while (same < a.length && same < b.length && a[same] === b[same]) same++
  return same / depth
}

/** The asker-independent part of a score, before zone affinity, jitter and the bad-bytes penalty. */
export function baseScore (p: LoadView, rep: Reputation, now: number, w: RankingWeights): number {
  return w.load * loadQuality(p, now) + w.success * successRate(rep, now) + w.latency * latencyScore(rep)
}

/** ×0.2 per recent `bad` report (call after {@link successRate} or {@link baseScore}, which decay the counts). */
export const badPenalty = (rep: Reputation): number => rep.bad > 0.05 ? Math.pow(BAD_FACTOR, rep.bad) : 1

/** The full score of a holder for an asker; `jitter01` is a random draw in [0, 1). */
export function scoreFor (base: number, affinity: number, penalty: number, w: RankingWeights, jitter01: number): number {
  return (base + w.zone * affinity + w.jitter * jitter01) * penalty
}
