/**
 * A look-up on Redis: the ranked holders of a blob (a random sample of its set, ranked with `ranking.ts`) and its
 * group (the head of its join order), read concurrently, each peer's hash read once for both. Members whose
 * registration is gone are removed from the blob's set and join order as they are met.
 *
 * A member of another registration of a live peer is not always stale: a reset announce moves the peer to a new
 * epoch first, then renames its members blob by blob, each keeping its place in the join order. A look-up in
 * between must not remove the old member (the peer would lose its place in the group), so such a member is
 * looked up in the peer's holdings: still held, it stands for the peer (the rename is on its way); not held, it
 * is stale and removed.
 *
 * Round trips: 2 (a sample and the head of the join order, then every peer's hash at once); one more per round
 * that met dead members (which it removes), at most {@link LOOKUP_ROUNDS} of the sample and {@link GROUP_ROUNDS}
 * of the join order.
 */
import { describeError, type Logger } from '../../base/index.js'
import { addPending, isBanned } from '../ranking.js'
import type { Policy } from './bounds.js'
import { unavailable, within } from './redis-connect.js'
import { rankHolders, type Candidate } from './rank.js'
import { decodePeer, parseMember, PEER_FIELDS, type Commands, type StoredPeer } from './redis-layout.js'
import type { GroupLookup, GroupMember } from './index.js'

/** a lookup samples again (once) when its first sample met dead members and answered short */
const LOOKUP_ROUNDS = 2
/** windows of the join order read when the first ones held too many dead members to fill the group */
const GROUP_ROUNDS = 3
/** members of the join order read per group member asked for: room for a few dead ones in the first window */
const GROUP_WINDOW_FACTOR = 2
/** the least time a lookup gives one holder's read before leaving that holder out */
const MIN_READ_MS = 50
/** share of answered lookups that refresh their blob's TTL */
const BLOB_TTL_REFRESH = 1 / 16

export interface LookupContext {
  cmd: Commands
  policy: Policy
  log: Logger
  oversample: number
  blobTtlMs: number
  peerKey: (id: string) => string
  holdingsKey: (id: string) => string
  /** sends a write without waiting for it: losing one only makes the ranking a little less informed */
  background: (p: Promise<unknown>, what: string) => void
}

export interface LookupQuery {
  blobId: string
  bKey: string
  jKey: string
  asker: string | undefined
  askerZone: string | undefined
  max: number
  group: number
}

/** A member's peer as read: its record, or why there is none. */
type Read = { peer: StoredPeer } | 'gone' | 'unread'

export async function redisLookup (ctx: LookupContext, q: LookupQuery): Promise<GroupLookup> {
  const { cmd, policy } = ctx
  const now = policy.now()
  // a holder whose hash cannot be read in time (its master is failing over) is left out, not waited for: the
  // answer names the holders on the masters that do answer
  const budget = Math.max(MIN_READ_MS, policy.timeoutMs / 2)
  const askerZone = q.askerZone !== undefined || q.asker === undefined
    ? Promise.resolve(q.askerZone ?? '')
    : within(cmd.hget(ctx.peerKey(q.asker), 'zone'), budget).then((z) => z ?? '', () => '')
  const reads = new Map<string, Promise<Read>>()
  let unread = 0
  let readError: unknown
  /** the peer of a member, once per look-up: the group and the sample often name the same peers */
  const read = async (peerId: string): Promise<Read> => {
    let r = reads.get(peerId)
    if (r === undefined) {
      r = within(cmd.hmget(ctx.peerKey(peerId), ...PEER_FIELDS), budget).then((fields) => {
        const peer = decodePeer(fields)
        return peer === undefined ? 'gone' : { peer }
      }, (err: unknown) => { unread++; readError = err; return 'unread' })
      reads.set(peerId, r)
    }
    return await r
  }
  /** the member's peer if this registration of it is live; undefined when dead (`dead` gets it) or unreadable */
  const liveMember = async (m: string, dead: string[]): Promise<{ peerId: string, peer: StoredPeer } | undefined> => {
    const parsed = parseMember(m)
    if (parsed === undefined) { dead.push(m); return undefined }
    const r = await read(parsed.peerId)
    if (r === 'unread') return undefined
    if (r === 'gone') { dead.push(m); return undefined }
    if (r.peer.epoch !== parsed.epoch) {
      const held = await within(cmd.sismember(ctx.holdingsKey(parsed.peerId), q.blobId), budget).catch(() => undefined)
      if (held === 0) dead.push(m)
      if (held !== 1) return undefined
    }
    return { peerId: parsed.peerId, peer: r.peer }
  }
  const unlink = async (dead: string[]): Promise<number> => {
    if (dead.length === 0) return 0
    return await cmd.dirUnlink(q.bKey, q.jKey, ...dead).catch((err: unknown) => {
      ctx.log.debug('dropping dead holders of %s: %s', q.blobId, describeError(err))
      return 0
    })
  }

  const readGroup = async (): Promise<GroupMember[]> => {
    const out: GroupMember[] = []
    if (q.group === 0) return out
    // a peer named twice (a moving member beside its renamed one) keeps its first place
    const named = new Set<string>()
    const window = q.group * GROUP_WINDOW_FACTOR
    let start = 0
    for (let round = 1; round <= GROUP_ROUNDS; round++) {
      const members = await cmd.zrange(q.jKey, start, start + window - 1)
      const dead: string[] = []
      const live = await Promise.all(members.map(async (m) => await liveMember(m, dead)))
      // in join order; the asker is one of the group like any holder
      for (const l of live) {
        if (l === undefined || out.length >= q.group || named.has(l.peerId)) continue
        if (isBanned(l.peer.rep, now) || l.peer.addrs.length === 0) continue
        named.add(l.peerId)
        out.push({ peerId: l.peerId, addrs: l.peer.addrs, zone: l.peer.zone })
      }
      const removed = await unlink(dead)
      if (out.length >= q.group || members.length < window) break
      // the members after those removed moved up by as many places
      start += window - removed
    }
    return out
  }

  const readCandidates = async (): Promise<{ candidates: Candidate[], epochs: Map<string, string> }> => {
    const candidates: Candidate[] = []
    const epochs = new Map<string, string>()
    if (q.max === 0) return { candidates, epochs }
    const sample = Math.min(policy.maxHoldersPerBlob, q.max * ctx.oversample)
    const seen = new Set<string>()
    for (let round = 1; ; round++) {
      const members = await cmd.srandmember(q.bKey, sample)
      const dead: string[] = []
      await Promise.all(members.map(async (m) => {
        if (seen.has(m)) return
        seen.add(m)
        if (q.asker !== undefined && parseMember(m)?.peerId === q.asker) return
        const l = await liveMember(m, dead)
        if (l === undefined) return
        const p = l.peer
        if (isBanned(p.rep, now) || p.addrs.length === 0 || epochs.has(l.peerId)) return
        epochs.set(l.peerId, p.epoch)
        // a copy: the pending load charged below is this answer's, not the shared read's
        candidates.push({ peerId: l.peerId, addrs: p.addrs, zone: p.zone, load: { ...p }, rep: p.rep })
      }))
      await unlink(dead)
      if (candidates.length >= q.max || dead.length === 0 || members.length < sample || round >= LOOKUP_ROUNDS) break
    }
    return { candidates, epochs }
  }

  // the swarm's size beside the group (a count unread in time is 0: not known)
  const swarm = q.group === 0 ? Promise.resolve(0) : within(cmd.scard(q.bKey), budget).then((n) => n, () => 0)
  const [group, { candidates, epochs }] = await Promise.all([readGroup(), readCandidates()])
  if (group.length === 0 && candidates.length === 0 && unread > 0) {
    throw unavailable(`lookup: none of the holders of ${q.blobId} could be read: ${describeError(readError)}`, readError)
  }
  const ranked = rankHolders(candidates, await askerZone, q.max, now, policy.weights, policy.random)
  if (ranked.length > 0) {
    const first = ranked[0].candidate
    addPending(first.load, 1, now)
    ctx.background(cmd.dirPending(ctx.peerKey(first.peerId), epochs.get(first.peerId) ?? '', first.load.pending, first.load.pendingAt), 'pending load')
  }
  if (ranked.length > 0 || group.length > 0) {
    // a blob in use keeps its records; a sixteenth of the answers is enough to say so
    if (policy.random() < BLOB_TTL_REFRESH) {
      ctx.background(Promise.all([cmd.pexpire(q.bKey, ctx.blobTtlMs), cmd.pexpire(q.jKey, ctx.blobTtlMs)]), 'blob ttl')
    }
  }
  return { group, holders: ranked.map(({ holder }) => holder), swarm: await swarm }
}
