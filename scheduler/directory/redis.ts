/**
 * The swarm directory on Redis Cluster (or one plain Redis server): many stateless schedulers share it, any can
 * die. The layout and its scripts are in `redis-layout.ts`; ranking and reputation are computed here with
 * `ranking.ts`, on records read from Redis.
 *
 * Round trips: announce 2 (the peer's script, then every blob's set and join order at once), lookup 2 (see
 * `redis-lookup.ts`), heartbeat 1, report 2 (+1 per lost compare-and-set). Commands: a lookup sends
 * 2 + `max × lookupOversample` (+ up to `2 × group` more for its group), an announce 1 + one per blob.
 *
 * Failures: ioredis is told to fail rather than wait (no offline queue, bounded retries, a command timeout) and
 * every call races its own deadline (`timeoutMs`), so a call against an unreachable or failing-over cluster
 * rejects with `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE` within that deadline. A lookup degrades first: a holder whose
 * hash is on a master that does not answer within half the deadline is left out of the answer, and only a blob
 * set that cannot be read, or no readable holder at all, fails the call. When a replica has taken over, ioredis
 * follows the MOVED answers and refreshes its slot map, and calls succeed again.
 */
import { Cluster, type Redis } from 'ioredis'
import { describeError, silentLogger, type Logger } from '../../base/index.js'
import type { PeerOutcome } from '../../p2p/index.js'
import { MAX_GROUP } from '../protocol.js'
import type { PeerLoad } from '../types.js'
import { recordOutcome } from '../ranking.js'
import {
  answerSize, checkBlobId, checkBlobIds, checkEntry, checkLoad, checkOutcomes, checkPeerId, clampTtl, DIRECTORY_DEFAULTS,
  groupBy, groupSize, resolvePolicy, type Policy
} from './bounds.js'
import { DirectoryError } from './errors.js'
import { connectRedis, parseSeeds, unavailable } from './redis-connect.js'
import { redisLookup, type LookupContext } from './redis-lookup.js'
import {
  ADDR_SEPARATOR, blobKey, decodePeer, decodeReputation, encodeReputation, holdingsKey, joinKey, KIND, member, newEpoch,
  PEER_FIELDS, peerKey, REPUTATION_FIELDS, reputationKey, SCRIPTS, type Commands
} from './redis-layout.js'
import type {
  AnnounceOptions, AnnounceResult, BlobHolder, CallOptions, DirectoryComponents, DirectoryStats, GroupLookup,
  GroupLookupOptions, LookupOptions, PeerEntry, PeerView, RedisDirectoryInit, SwarmDirectory
} from './index.js'

/** compare-and-set attempts of one reputation update before it is given up (reports are best effort) */
const CAS_ATTEMPTS = 5
/** stats scan the whole keyspace: they get this long, not `timeoutMs` */
const STATS_TIMEOUT_MS = 120_000
const SCAN_COUNT = 1000

export class RedisDirectory implements SwarmDirectory {
  readonly kind = 'redis'
  private closed = false
  private readonly cmd: Commands
  private readonly policy: Policy
  private readonly prefix: string
  private readonly blobTtlMs: number
  private readonly reputationTtlMs: number
  private readonly oversample: number
  private readonly lookups: LookupContext

  private constructor (
    private readonly client: Redis | Cluster,
    private readonly log: Logger,
    init: RedisDirectoryInit,
    policy: Policy
  ) {
    this.cmd = client as unknown as Commands
    this.policy = policy
    this.prefix = init.keyPrefix ?? 'rs:'
    this.blobTtlMs = Math.max(1, init.blobTtlMs ?? DIRECTORY_DEFAULTS.blobTtlMs)
    this.reputationTtlMs = Math.max(1, init.reputationTtlMs ?? DIRECTORY_DEFAULTS.reputationTtlMs)
    this.oversample = Math.max(1, init.lookupOversample ?? DIRECTORY_DEFAULTS.lookupOversample)
    this.lookups = {
      cmd: this.cmd,
      policy,
      log,
      oversample: this.oversample,
      blobTtlMs: this.blobTtlMs,
      peerKey: (id) => this.key('p', id),
      holdingsKey: (id) => this.key('h', id),
      background: (p, what) => { this.background(p, what) }
    }
  }

  /** Connects (within `connectTimeoutMs`) and returns a ready directory. */
  static async connect (components: DirectoryComponents, init: RedisDirectoryInit): Promise<RedisDirectory> {
    const policy = resolvePolicy(init)
    const log = (components.logger ?? silentLogger).forComponent('rafspeer:directory')
    const seeds = parseSeeds(init.redis)
    const connectTimeoutMs = init.connectTimeoutMs ?? DIRECTORY_DEFAULTS.connectTimeoutMs
    const { client, cluster } = await connectRedis(seeds, { mode: init.redisMode ?? 'auto', connectTimeoutMs, timeoutMs: policy.timeoutMs, scripts: SCRIPTS }, log)
    log.info('swarm directory on Redis %s (%s)', cluster ? 'Cluster' : 'server', seeds.map((s) => `${s.host}:${s.port}`).join(','))
    return new RedisDirectory(client, log, init, policy)
  }

  /**
   * Runs one call against its deadline: it rejects with `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE` when Redis fails or
   * does not answer within `timeoutMs`, and with the signal's reason when the caller aborts.
   */
  private async run<T>(what: string, opts: CallOptions | undefined, fn: () => Promise<T>, timeoutMs = this.policy.timeoutMs): Promise<T> {
    if (this.closed) throw new DirectoryError('RAFSPEER_ERR_DIRECTORY_CLOSED', 'the swarm directory is closed')
    const signal = opts?.signal
    signal?.throwIfAborted()
    let timer: NodeJS.Timeout | undefined
    let onAbort: (() => void) | undefined
    const guard = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(unavailable(`${what}: Redis did not answer within ${timeoutMs} ms`)) }, timeoutMs)
      if (signal !== undefined) {
        onAbort = () => { reject(signal.reason) }
        signal.addEventListener('abort', onAbort, { once: true })
      }
    })
    try {
      return await Promise.race([fn(), guard])
    } catch (err) {
      if (err instanceof DirectoryError || (signal?.aborted === true && err === signal.reason)) throw err
      if (this.closed) throw new DirectoryError('RAFSPEER_ERR_DIRECTORY_CLOSED', 'the swarm directory is closed', { cause: err })
      throw unavailable(`${what}: ${describeError(err)}`, err)
    } finally {
      clearTimeout(timer)
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort)
    }
  }

  /** Sent without waiting: losing one only makes the ranking a little less informed. */
  private background (p: Promise<unknown>, what: string): void {
    p.catch((err: unknown) => { this.log.debug('%s: %s', what, describeError(err)) })
  }

  private key (kind: 'p' | 'h' | 'r' | 'b' | 'j', id: string): string {
    switch (kind) {
      case 'p': return peerKey(this.prefix, id)
      case 'h': return holdingsKey(this.prefix, id)
      case 'r': return reputationKey(this.prefix, id)
      case 'b': return blobKey(this.prefix, id)
      case 'j': return joinKey(this.prefix, id)
    }
  }

  async announce (peer: PeerEntry, blobIds: readonly string[], opts: AnnounceOptions = {}): Promise<AnnounceResult> {
    const entry = checkEntry(peer)
    const ids = checkBlobIds(blobIds)
    const ttl = clampTtl(opts.ttlMs, this.policy)
    return await this.run('announce', opts, async () => {
      const unique = [...new Set(ids)]
      // more distinct blobs than the bound can never all be accepted: the tail is not even sent
      const sent = unique.slice(0, this.policy.maxBlobsPerPeer)
      const reply = await this.cmd.dirAnnounce(
        this.key('p', entry.id), this.key('h', entry.id), this.key('r', entry.id),
        this.policy.now(), ttl ?? '', this.policy.peerTtlMs, this.policy.maxBlobsPerPeer, newEpoch(), opts.reset === true ? '1' : '0',
        entry.addrs.join(ADDR_SEPARATOR), entry.zone, entry.uploadSlots, entry.uploadBps, ...sent)
      if (Number(reply[0]) === 0) return { accepted: 0, refused: ids.length, banned: true }
      const epoch = String(reply[1])
      const old = String(reply[2])
      const nRefused = Number(reply[3])
      const refused = new Set(unique.slice(sent.length))
      for (let i = 4; i < 4 + nRefused; i++) refused.add(sent[Number(reply[i]) - 1])
      const oldBlobs = reply.slice(4 + nRefused).map(String)
      const mine = member(epoch, entry.id)
      const oldMember = old !== '' ? member(old, entry.id) : ''
      const linked = sent.filter((b) => !refused.has(b))
      const relinked = new Set(linked)
      await Promise.all([
        ...linked.map(async (b) => await this.cmd.dirLink(this.key('b', b), this.key('j', b), mine, this.policy.maxHoldersPerBlob,
          this.blobTtlMs, oldMember, this.policy.random(), MAX_GROUP)),
        // a reset: the old registration's members of blobs not announced again
        ...oldBlobs.filter((b) => !relinked.has(b)).map(async (b) => await this.unlink(b, oldMember))
      ])
      let accepted = 0
      for (const b of ids) if (!refused.has(b)) accepted++
      return { accepted, refused: ids.length - accepted, banned: false }
    })
  }

  async withdraw (peerId: string, blobIds: readonly string[], opts: CallOptions = {}): Promise<void> {
    const id = checkPeerId(peerId)
    const ids = [...new Set(checkBlobIds(blobIds))]
    await this.run('withdraw', opts, async () => {
      if (ids.length === 0) return
      const epoch = await this.cmd.dirWithdraw(this.key('p', id), this.key('h', id), ...ids)
      if (epoch === '') return
      const m = member(epoch, id)
      await Promise.all(ids.map(async (b) => await this.unlink(b, m)))
    })
  }

  async leave (peerId: string, opts: CallOptions = {}): Promise<void> {
    const id = checkPeerId(peerId)
    await this.run('leave', opts, async () => {
      const [epoch, ...blobs] = await this.cmd.dirLeave(this.key('p', id), this.key('h', id))
      if (epoch === undefined) return
      const m = member(epoch, id)
      await Promise.all(blobs.map(async (b) => await this.unlink(b, m)))
    })
  }

  async heartbeat (peerId: string, load: PeerLoad, ttlMs: number, opts: CallOptions = {}): Promise<boolean> {
    const id = checkPeerId(peerId)
    const l = checkLoad(load)
    const ttl = clampTtl(ttlMs, this.policy)
    return await this.run('heartbeat', opts, async () =>
      await this.cmd.dirHeartbeat(this.key('p', id), this.key('h', id), ttl ?? '', l.activeUploads, l.recentUploadBps) === 1)
  }

  /** `m` no longer holds blob `b`: out of its set and its join order at once */
  private async unlink (b: string, m: string): Promise<number> {
    return await this.cmd.dirUnlink(this.key('b', b), this.key('j', b), m)
  }

  async lookup (blobId: string, opts: LookupOptions = {}): Promise<BlobHolder[]> {
    return (await this.lookupGroup(blobId, { ...opts, group: 0 })).holders
  }

  async lookupGroup (blobId: string, opts: GroupLookupOptions): Promise<GroupLookup> {
    const id = checkBlobId(blobId)
    const asker = opts.asker !== undefined ? checkPeerId(opts.asker, 'asker') : undefined
    const max = answerSize(opts.max)
    const group = groupSize(opts.group)
    return await this.run('lookup', opts, async () => {
      if (max === 0 && group === 0) return { group: [], holders: [], swarm: 0 }
      return await redisLookup(this.lookups, { blobId: id, bKey: this.key('b', id), jKey: this.key('j', id), asker, askerZone: opts.askerZone, max, group })
    })
  }

  async report (reporter: string, outcomes: readonly PeerOutcome[], opts: CallOptions = {}): Promise<string[]> {
    const from = checkPeerId(reporter, 'reporter')
    const outs = checkOutcomes(from, outcomes)
    return await this.run('report', opts, async () => {
      if (outs.length === 0) return []
      const now = this.policy.now()
      const byPeer = groupBy(outs, (o) => o.peerId)
      // the reporter's standing and every target's reputation in one round trip
      const [live, own, reads] = await Promise.all([
        this.cmd.exists(this.key('p', from)),
        this.cmd.hget(this.key('r', from), 'ban'),
        Promise.all([...byPeer.keys()].map(async (id) => await Promise.all([this.cmd.exists(this.key('p', id)), this.cmd.hmget(this.key('r', id), ...REPUTATION_FIELDS)])))
      ])
      if (live === 0 || Number(own ?? 0) > now) return []
      const banned: string[] = []
      await Promise.all([...byPeer].map(async ([id, list], i) => {
        let [targetLive, fields] = reads[i]
        for (let attempt = 1; attempt <= CAS_ATTEMPTS; attempt++) {
          const { rep, ver, exists } = decodeReputation(fields, now)
          if (!exists && targetLive === 0) return
          let justBanned = false
          for (const o of list) if (recordOutcome(rep, o, from, now, this.policy)) justBanned = true
          const ttl = Math.max(0, rep.bannedUntil - now) + this.reputationTtlMs
          if (await this.cmd.dirReputation(this.key('r', id), this.key('p', id), ver, Math.ceil(ttl), ...encodeReputation(rep)) === 1) {
            if (justBanned) banned.push(id)
            return
          }
          // another scheduler wrote first: apply ours to what it wrote
          fields = await this.cmd.hmget(this.key('r', id), ...REPUTATION_FIELDS)
          targetLive = 1
        }
        this.log.debug('report on %s dropped: %d concurrent updates won', id, CAS_ATTEMPTS)
      }))
      return banned
    })
  }

  async peer (peerId: string, opts: CallOptions = {}): Promise<PeerView | undefined> {
    const id = checkPeerId(peerId)
    return await this.run('peer', opts, async () => {
      const now = this.policy.now()
      const [pv, blobs, ban] = await Promise.all([
        this.cmd.hmget(this.key('p', id), ...PEER_FIELDS),
        this.cmd.scard(this.key('h', id)),
        this.cmd.hget(this.key('r', id), 'ban')
      ])
      const p = decodePeer(pv)
      if (p === undefined) return undefined
      return {
        id,
        addrs: p.addrs,
        zone: p.zone,
        uploadSlots: p.uploadSlots,
        uploadBps: p.uploadBps,
        activeUploads: p.activeUploads,
        recentUploadBps: p.recentUploadBps,
        ttlMs: p.ttlMs,
        blobs,
        banned: Number(ban ?? 0) > now
      }
    })
  }

  async expire (opts: CallOptions = {}): Promise<number> {
    // Redis expires the peers' keys itself; lookups remove their stale members
    return await this.run('expire', opts, async () => 0)
  }

  /** The master nodes (the one server when not a cluster). */
  private masters (): Redis[] {
    return this.client instanceof Cluster ? this.client.nodes('master') : [this.client]
  }

  private async scanKeys (node: Redis, onKey: (key: string) => void): Promise<void> {
    const pattern = this.prefix.replace(/[*?[\]\\]/g, '\\$&') + '*'
    let cursor = '0'
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT)
      for (const k of keys) onKey(k)
      cursor = next
    } while (cursor !== '0')
  }

  async stats (opts: CallOptions = {}): Promise<DirectoryStats> {
    return await this.run('stats', opts, async () => {
      const now = this.policy.now()
      const blobKeys: string[] = []
      const repKeys: string[] = []
      let peers = 0
      const at = this.prefix.length
      await Promise.all(this.masters().map(async (node) => {
        await this.scanKeys(node, (k) => {
          const kind = k.slice(at, at + 2)
          if (kind === KIND.peer) peers++
          else if (kind === KIND.blob) blobKeys.push(k)
          else if (kind === KIND.reputation) repKeys.push(k)
        })
      }))
      const [sizes, bans] = await Promise.all([
        Promise.all(blobKeys.map(async (k) => await this.cmd.scard(k))),
        Promise.all(repKeys.map(async (k) => await this.cmd.hget(k, 'ban')))
      ])
      return {
        peers,
        blobs: sizes.filter((n) => n > 0).length,
        entries: sizes.reduce((a, n) => a + n, 0),
        banned: bans.filter((b) => Number(b ?? 0) > now).length
      }
    }, Math.max(STATS_TIMEOUT_MS, this.policy.timeoutMs))
  }

  /** Bytes Redis uses, summed over the masters (`INFO memory` used_memory): for benchmarks. */
  async memoryUsed (opts: CallOptions = {}): Promise<number> {
    return await this.run('memory', opts, async () => {
      const infos = await Promise.all(this.masters().map(async (n) => await n.info('memory')))
      return infos.reduce((sum, info) => sum + Number(/^used_memory:(\d+)/m.exec(info)?.[1] ?? 0), 0)
    })
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    // QUIT lets replies in flight arrive; a dead Redis gets no more than a moment before the sockets are cut
    await Promise.race([this.client.quit().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 500).unref())])
    this.client.disconnect()
  }
}
