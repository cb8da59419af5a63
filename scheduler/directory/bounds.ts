/**
 * The directory's defaults and the checks every input passes before either implementation stores it, so both
 * hold the same bounds: ids and zones within the scheduler protocol's sizes, at most `MAX_ADDRS` addresses,
 * finite non-negative numbers. Ids and addresses may not hold whitespace or control characters: the Redis layout
 * joins addresses with newlines and builds keys from ids.
 */
import type { PeerOutcome } from '../../p2p/index.js'
import type { PeerLoad, RankingWeights } from '../types.js'
import {
  MAX_ACTIVE_UPLOADS, MAX_ADDR_BYTES, MAX_ADDRS, MAX_GROUP, MAX_HOLDERS_PER_ANSWER, MAX_OUTCOMES_PER_FRAME, MAX_PEER_ID_BYTES,
  MAX_UPLOAD_SLOTS, MAX_ZONE_BYTES
} from '../protocol.js'
import { DEFAULT_WEIGHTS } from '../ranking.js'
import { DirectoryError } from './errors.js'
import type { DirectoryPolicyInit, PeerEntry } from './index.js'

/** a RAFS blob id is 64 hex digits; room for an algorithm prefix and then some */
export const MAX_BLOB_ID_BYTES = 128

/** live peers the memory directory registers at once */
const MAX_PEERS = 100_000

export const DIRECTORY_DEFAULTS = Object.freeze({
  maxBlobsPerPeer: 10_000,
  /**
   * a blob's whole swarm: as many as the memory directory has peers (it uses its own `maxPeers`). A bound below the
   * swarm keeps, by random replacement, mostly its latest joiners, and a swarm following those becomes a chain
   */
  maxHoldersPerBlob: MAX_PEERS,
  peerTtlMs: 15_000,
  minTtlMs: 100,
  maxTtlMs: 120_000,
  banAfterBadReporters: 2,
  banMs: 3_600_000,
  timeoutMs: 1000,
  maxAnswer: 4,
  maxPeers: MAX_PEERS,
  maxEntries: 10_000_000,
  connectTimeoutMs: 5000,
  blobTtlMs: 86_400_000,
  reputationTtlMs: 3_600_000,
  lookupOversample: 3
})

/** {@link DirectoryPolicyInit} with every default filled in. */
export interface Policy {
  maxBlobsPerPeer: number
  maxHoldersPerBlob: number
  peerTtlMs: number
  minTtlMs: number
  maxTtlMs: number
  banAfterBadReporters: number
  banMs: number
  weights: RankingWeights
  timeoutMs: number
  now: () => number
  random: () => number
}

const positive = (v: number | undefined, dflt: number, what: string): number => {
  const n = v ?? dflt
  if (!(n > 0) || !Number.isFinite(n)) throw new DirectoryError('RAFSPEER_ERR_DIRECTORY_CONFIG', `${what} must be a positive number, got ${String(v)}`)
  return n
}

export function resolvePolicy (init: DirectoryPolicyInit): Policy {
  const minTtlMs = positive(init.minTtlMs, DIRECTORY_DEFAULTS.minTtlMs, 'minTtlMs')
  const maxTtlMs = Math.max(minTtlMs, positive(init.maxTtlMs, DIRECTORY_DEFAULTS.maxTtlMs, 'maxTtlMs'))
  return {
    maxBlobsPerPeer: Math.floor(positive(init.maxBlobsPerPeer, DIRECTORY_DEFAULTS.maxBlobsPerPeer, 'maxBlobsPerPeer')),
    maxHoldersPerBlob: Math.floor(positive(init.maxHoldersPerBlob, DIRECTORY_DEFAULTS.maxHoldersPerBlob, 'maxHoldersPerBlob')),
    peerTtlMs: Math.min(maxTtlMs, Math.max(minTtlMs, positive(init.peerTtlMs, DIRECTORY_DEFAULTS.peerTtlMs, 'peerTtlMs'))),
    minTtlMs,
    maxTtlMs,
    banAfterBadReporters: Math.floor(positive(init.banAfterBadReporters, DIRECTORY_DEFAULTS.banAfterBadReporters, 'banAfterBadReporters')),
    banMs: positive(init.banMs, DIRECTORY_DEFAULTS.banMs, 'banMs'),
    weights: { ...DEFAULT_WEIGHTS, ...init.ranking },
    timeoutMs: positive(init.timeoutMs, DIRECTORY_DEFAULTS.timeoutMs, 'timeoutMs'),
    now: init.now ?? Date.now,
    random: init.random ?? Math.random
  }
}

const invalid = (why: string): DirectoryError => new DirectoryError('RAFSPEER_ERR_DIRECTORY_INVALID', why)

const SPACE_OR_CONTROL = /[\s\x00-\x1f\x7f]/
const CONTROL = /[\x00-\x1f\x7f]/

const show = (s: string): string => JSON.stringify(s.length > 40 ? s.slice(0, 40) + '…' : s)

function checkString (s: unknown, maxBytes: number, what: string, forbidden: RegExp, allowEmpty = false): string {
  if (typeof s !== 'string') throw invalid(`${what} is not a string`)
  if (s.length === 0 && !allowEmpty) throw invalid(`${what} is empty`)
  if (Buffer.byteLength(s) > maxBytes) throw invalid(`${what} ${show(s)} is over ${maxBytes} bytes`)
  if (forbidden.test(s)) throw invalid(`${what} ${show(s)} holds whitespace or control characters`)
  return s
}

export const checkPeerId = (id: unknown, what = 'peer id'): string => checkString(id, MAX_PEER_ID_BYTES, what, SPACE_OR_CONTROL)

export const checkBlobId = (id: unknown): string => checkString(id, MAX_BLOB_ID_BYTES, 'blob id', SPACE_OR_CONTROL)

export function checkBlobIds (ids: readonly unknown[]): string[] {
  if (!Array.isArray(ids)) throw invalid('blob ids are not an array')
  return ids.map(checkBlobId)
}

const count = (n: unknown, max: number): number => typeof n === 'number' && n > 0 ? Math.min(max, Math.floor(n)) : 0
const rate = (n: unknown): number => typeof n === 'number' && n > 0 && Number.isFinite(n) ? n : 0

/** The entry as stored: checked ids and zone, the first `MAX_ADDRS` addresses, sane numbers. */
export function checkEntry (peer: PeerEntry): PeerEntry {
  if (typeof peer !== 'object' || peer === null) throw invalid('peer entry is not an object')
  const id = checkPeerId(peer.id)
  if (!Array.isArray(peer.addrs)) throw invalid(`addresses of ${id} are not an array`)
  const addrs = peer.addrs.slice(0, MAX_ADDRS).map((a) => checkString(a, MAX_ADDR_BYTES, `address of ${id}`, SPACE_OR_CONTROL))
  const zone = checkString(peer.zone ?? '', MAX_ZONE_BYTES, `zone of ${id}`, CONTROL, true)
  return { id, addrs, zone, uploadSlots: count(peer.uploadSlots, MAX_UPLOAD_SLOTS), uploadBps: rate(peer.uploadBps) }
}

export const checkLoad = (load: PeerLoad): PeerLoad =>
  ({ activeUploads: count(load?.activeUploads, MAX_ACTIVE_UPLOADS), recentUploadBps: rate(load?.recentUploadBps) })

export function clampTtl (ttlMs: number | undefined, policy: Policy): number | undefined {
  if (ttlMs === undefined || !(ttlMs > 0)) return undefined
  return Math.min(policy.maxTtlMs, Math.max(policy.minTtlMs, Math.floor(ttlMs)))
}

/** Holders a lookup answers: `max` as an integer in [0, MAX_HOLDERS_PER_ANSWER] (default 4). */
export function answerSize (max: number | undefined): number {
  if (max === undefined) return DIRECTORY_DEFAULTS.maxAnswer
  if (!(max > 0)) return 0
  return Math.min(MAX_HOLDERS_PER_ANSWER, Math.floor(max))
}

/** Group members a lookup names: `group` as an integer in [0, MAX_GROUP]. */
export function groupSize (group: number | undefined): number {
  if (group === undefined || !(group > 0)) return 0
  return Math.min(MAX_GROUP, Math.floor(group))
}

/** The outcomes worth applying: well-formed, about another peer, at most `MAX_OUTCOMES_PER_FRAME`. */
export function checkOutcomes (reporter: string, outcomes: readonly PeerOutcome[]): PeerOutcome[] {
  if (!Array.isArray(outcomes)) throw invalid('outcomes are not an array')
  if (outcomes.length > MAX_OUTCOMES_PER_FRAME) throw invalid(`${outcomes.length} outcomes in one report, at most ${MAX_OUTCOMES_PER_FRAME}`)
  const out: PeerOutcome[] = []
  for (const o of outcomes) {
    const peerId = checkPeerId(o?.peerId, 'reported peer id')
    if (peerId === reporter) continue
    out.push({ peerId, chunks: count(o.chunks, 0xffffffff), bytes: rate(o.bytes), ms: rate(o.ms), failed: o.failed === true, bad: o.bad === true })
  }
  return out
}

/** Groups items by a key, keeping their order within each group. */
export function groupBy<T> (items: readonly T[], key: (t: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>()
  for (const it of items) {
    const k = key(it)
    const g = out.get(k)
    if (g === undefined) out.set(k, [it])
    else g.push(it)
  }
  return out
}
