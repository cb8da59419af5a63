/**
 * The directory's layout in Redis, declared once: keys, fields, the Lua scripts that change more than one field
 * atomically, and how records are read back.
 *
 * ```
 * <prefix>p:{<peer id>}   hash   the live peer: epoch, addrs (newline-joined), zone, slots, bps, active, rbps,
 *                                ttl, pend, pendAt, and a copy of r's ranking fields (ok … ban), so a lookup
 *                                reads one key per candidate              PEXPIRE ttl, refreshed by heartbeats
 * <prefix>h:{<peer id>}   set    blob ids the peer holds (its bound, leave, reset)      expires with p
 * <prefix>r:{<peer id>}   hash   reputation: ok, failed, bad, at, lat, ban, badBy, vouch, ver; the record of
 *                                truth, outliving p (a ban survives a re-join)
 *                                                                  PEXPIRE reputationTtl (+ what is left of a ban)
 * <prefix>b:{<blob id>}   set    "<epoch>:<peer id>" of holders: the whole swarm (maxHoldersPerBlob, default 100 000)
 *                                                                  PEXPIRE blobTtl, refreshed by announces, lookups
 * <prefix>j:{<blob id>}   zset   the same members scored by join order (1, 2, …: one past the last joiner present;
 *                                a reset keeps a member's score): its head is the blob's group   expires with b
 * ```
 *
 * Redis Cluster places a key by the text between its braces, so a peer's three keys share one slot and one script
 * updates them together (a report writes r and its copy in p at once; a new registration copies r into p), while
 * blob keys spread over the cluster. No command or script ever names keys of two
 * slots: blob sets are changed by their own calls, sent concurrently (ioredis's auto-pipelining batches them per
 * node).
 *
 * A blob's set and its join order share a slot and are only changed together, by `dirLink` and `dirUnlink`: the
 * set is what lookups sample at random (SRANDMEMBER), the sorted set what names the group (ZRANGE from its head).
 * Every command on them is O(1) or O(log n) in the swarm's size (the sample's and the group window's sizes aside),
 * so a swarm of 10k+ holders costs a look-up, a join or a removal no more than a small one. The exception is a
 * blob's keys expiring whole (unused for `blobTtlMs`, still naming holders that expired without leaving): freeing
 * them blocks the master in proportion (10k members ~3 ms; `lazyfree-lazy-expire yes` frees them in the background).
 * A set written before join order was kept (an older scheduler) has no sorted set: its blob names no group until
 * its holders announce again, and ranking is unaffected.
 *
 * A registration has an epoch (random, made when the peer appears or resets). Blob sets name holders by
 * `<epoch>:<peer id>`, so a peer that expired or left, or reset its holdings, stops being a holder of everything it
 * held at once, whatever its stale members in blob sets: a lookup that meets a member whose peer is gone, or whose
 * epoch is not the peer's current one and whose blob the peer's holdings no longer name, removes it (one whose
 * blob they name is being renamed by a reset, in place: see `redis-lookup.ts`). This is the chunk index's
 * generation trick, in Redis.
 */
import { randomBytes } from 'node:crypto'
import { newReputation, type Reputation } from '../ranking.js'

export const peerKey = (prefix: string, id: string): string => `${prefix}p:{${id}}`
export const holdingsKey = (prefix: string, id: string): string => `${prefix}h:{${id}}`
export const reputationKey = (prefix: string, id: string): string => `${prefix}r:{${id}}`
export const blobKey = (prefix: string, id: string): string => `${prefix}b:{${id}}`
export const joinKey = (prefix: string, id: string): string => `${prefix}j:{${id}}`

/** what follows the prefix, naming each kind of key (for scans) */
export const KIND = { peer: 'p:', holdings: 'h:', reputation: 'r:', blob: 'b:', join: 'j:' } as const

/** 48 random bits: a stale member's epoch matching a new registration of the same peer is a 1-in-2^48 event */
export const newEpoch = (): string => randomBytes(6).toString('base64url')

export const member = (epoch: string, peerId: string): string => `${epoch}:${peerId}`

/** A blob set member's epoch and peer id (epochs are base64url: the first ':' ends one). */
export function parseMember (m: string): { epoch: string, peerId: string } | undefined {
  const i = m.indexOf(':')
  return i > 0 ? { epoch: m.slice(0, i), peerId: m.slice(i + 1) } : undefined
}

/** the reputation fields the ranking needs, kept in `r:{id}` and copied into `p:{id}`, in this order */
export const RANK_FIELDS = ['ok', 'failed', 'bad', 'at', 'lat', 'ban'] as const
/** fields of `p:{id}` a lookup reads, in this order */
export const PEER_FIELDS = ['epoch', 'addrs', 'zone', 'slots', 'bps', 'active', 'rbps', 'pend', 'pendAt', 'ttl', ...RANK_FIELDS] as const
/** where the ranking fields start in a read of {@link PEER_FIELDS} */
const PEER_RANK_AT = 10
/** fields of `r:{id}`, in this order */
export const REPUTATION_FIELDS = [...RANK_FIELDS, 'badBy', 'vouch', 'ver'] as const

export const ADDR_SEPARATOR = '\n'

export interface StoredPeer {
  epoch: string
  addrs: string[]
  zone: string
  uploadSlots: number
  uploadBps: number
  activeUploads: number
  recentUploadBps: number
  pending: number
  pendingAt: number
  ttlMs: number
  /** the copy of its reputation (without the reporters' ids, which only reports need) */
  rep: Reputation
}

const num = (s: string | null | undefined): number => {
  const n = s === null || s === undefined || s === '' ? 0 : Number(s)
  return Number.isFinite(n) ? n : 0
}

/** The peer hash as {@link PEER_FIELDS} read it; undefined when the peer is gone. */
export function decodePeer (v: Array<string | null>): StoredPeer | undefined {
  const epoch = v[0]
  if (epoch === null || epoch === undefined) return undefined
  const addrs = v[1] ?? ''
  return {
    epoch,
    addrs: addrs === '' ? [] : addrs.split(ADDR_SEPARATOR),
    zone: v[2] ?? '',
    uploadSlots: num(v[3]),
    uploadBps: num(v[4]),
    activeUploads: num(v[5]),
    recentUploadBps: num(v[6]),
    pending: num(v[7]),
    pendingAt: num(v[8]),
    ttlMs: num(v[9]),
    rep: rankFields(v, PEER_RANK_AT, 0)
  }
}

/** A reputation from the {@link RANK_FIELDS} found at `at` in a read; a fresh one when there are none. */
function rankFields (v: Array<string | null>, at: number, now: number): Reputation {
  if (v[at + 3] === null || v[at + 3] === undefined) return newReputation(now)
  const lat = v[at + 4]
  return {
    ok: num(v[at]),
    failed: num(v[at + 1]),
    bad: num(v[at + 2]),
    at: num(v[at + 3]),
    latencyMs: lat === null || lat === '' ? NaN : num(lat),
    bannedUntil: num(v[at + 5]),
    badReporters: undefined,
    vouchers: undefined,
    cap: Infinity
  }
}

function idSet (s: string | null | undefined): Set<string> | undefined {
  if (s === null || s === undefined || s === '') return undefined
  try {
    const a: unknown = JSON.parse(s)
    return Array.isArray(a) ? new Set(a.filter((x): x is string => typeof x === 'string')) : undefined
  } catch { return undefined }
}

/** A reputation as {@link REPUTATION_FIELDS} read it (a fresh one when there is none), and its version. */
export function decodeReputation (v: Array<string | null>, now: number): { rep: Reputation, ver: string, exists: boolean } {
  const ver = v[8]
  if (ver === null || ver === undefined) return { rep: newReputation(now), ver: '', exists: false }
  return { rep: { ...rankFields(v, 0, now), badReporters: idSet(v[6]), vouchers: idSet(v[7]) }, ver, exists: true }
}

/**
 * Field/value pairs of a reputation for `HSET` (without `ver`, which the script moves on): the {@link RANK_FIELDS}
 * first (the script copies those 12 values into the peer's hash), then the reporters.
 */
export function encodeReputation (rep: Reputation): string[] {
  return [
    'ok', String(rep.ok),
    'failed', String(rep.failed),
    'bad', String(rep.bad),
    'at', String(rep.at),
    'lat', Number.isNaN(rep.latencyMs) ? '' : String(rep.latencyMs),
    'ban', String(rep.bannedUntil),
    'badBy', rep.badReporters !== undefined && rep.badReporters.size > 0 ? JSON.stringify([...rep.badReporters]) : '',
    'vouch', rep.vouchers !== undefined && rep.vouchers.size > 0 ? JSON.stringify([...rep.vouchers]) : ''
  ]
}

/** The Lua scripts, each on the keys of one slot. ioredis sends EVALSHA and falls back to EVAL once per node. */
export const SCRIPTS = {
  /**
   * KEYS p h r · ARGV now ttl|'' defaultTtl maxBlobs newEpoch reset(0|1) addrs zone slots bps blob...
   * → {0} banned, or {1, epoch, oldEpoch|'', nRefused, refused index..., old blob...} (old blobs only on a reset
   * of a live registration, so their stale members can be removed)
   */
  dirAnnounce: {
    numberOfKeys: 3,
    lua: `
local now = tonumber(ARGV[1])
if (tonumber(redis.call('HGET', KEYS[3], 'ban') or '0') or 0) > now then return {0} end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local old = ''
local oldBlobs = {}
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'active', 0, 'rbps', 0, 'pend', 0, 'pendAt', now)
  local rank = redis.call('HMGET', KEYS[3], 'ok', 'failed', 'bad', 'at', 'lat', 'ban')
  if rank[4] then
    redis.call('HSET', KEYS[1], 'ok', rank[1], 'failed', rank[2], 'bad', rank[3], 'at', rank[4], 'lat', rank[5] or '', 'ban', rank[6] or 0)
  end
elseif ARGV[6] == '1' then
  old = epoch
  epoch = ARGV[5]
  oldBlobs = redis.call('SMEMBERS', KEYS[2])
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local ttl = tonumber(ARGV[2]) or tonumber(redis.call('HGET', KEYS[1], 'ttl')) or tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'addrs', ARGV[7], 'zone', ARGV[8], 'slots', ARGV[9], 'bps', ARGV[10], 'ttl', ttl)
local n = redis.call('SCARD', KEYS[2])
local max = tonumber(ARGV[4])
local refused = {}
for i = 11, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    if n < max then
      redis.call('SADD', KEYS[2], ARGV[i])
      n = n + 1
    else
      refused[#refused + 1] = i - 10
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
if n > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
local out = {1, epoch, old, #refused}
for _, i in ipairs(refused) do out[#out + 1] = i end
for _, b in ipairs(oldBlobs) do out[#out + 1] = b end
return out
`
  },
  /**
   * KEYS b j · ARGV member max blobTtl oldMember|'' random(0..1) groupSize → 1. The member joins last, unless it
   * replaces `oldMember` (the same peer after a reset), whose place it takes. A full set drops a random member
   * first, so a popular blob keeps a fresh random sample of its holders, but never one of the first `groupSize` in
   * join order (the random draw comes from the caller: a script's own randomness is not the scheduler's policy).
   * A full set without join order (written by an older scheduler) drops any member.
   */
  dirLink: {
    numberOfKeys: 2,
    lua: `
local score = false
if ARGV[4] ~= '' then
  redis.call('SREM', KEYS[1], ARGV[4])
  score = redis.call('ZSCORE', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[4])
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    local n = redis.call('ZCARD', KEYS[2])
    local kept = math.min(tonumber(ARGV[6]), n - 1)
    local victim = nil
    if n > 0 then
      local at = kept + math.floor(tonumber(ARGV[5]) * (n - kept))
      victim = redis.call('ZRANGE', KEYS[2], at, at)[1]
    end
    if victim and redis.call('SREM', KEYS[1], victim) == 1 then
      redis.call('ZREM', KEYS[2], victim)
    else
      victim = redis.call('SPOP', KEYS[1])
      if victim then redis.call('ZREM', KEYS[2], victim) end
    end
  end
  redis.call('SADD', KEYS[1], ARGV[1])
end
if not score then
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  score = 1
  if last[2] then score = tonumber(last[2]) + 1 end
end
redis.call('ZADD', KEYS[2], 'NX', score, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
`
  },
  /** KEYS b j · ARGV member... → how many left the join order; the members are no longer holders of the blob */
  dirUnlink: {
    numberOfKeys: 2,
    lua: `
redis.call('SREM', KEYS[1], unpack(ARGV))
return redis.call('ZREM', KEYS[2], unpack(ARGV))
`
  },
  /** KEYS p h · ARGV blob... → the peer's epoch, or '' when it is not live (nothing to withdraw) */
  dirWithdraw: {
    numberOfKeys: 2,
    lua: `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return '' end
for i = 1, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
return epoch
`
  },
  /** KEYS p h · → {} when unknown, else {epoch, blob...}; the peer's keys are gone */
  dirLeave: {
    numberOfKeys: 2,
    lua: `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local blobs = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
if not epoch then return {} end
table.insert(blobs, 1, epoch)
return blobs
`
  },
  /** KEYS p h · ARGV ttl|'' active rbps → 0 when the peer is not live (it must announce again), else 1 */
  dirHeartbeat: {
    numberOfKeys: 2,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ttl = tonumber(ARGV[1]) or tonumber(redis.call('HGET', KEYS[1], 'ttl'))
redis.call('HSET', KEYS[1], 'active', ARGV[2], 'rbps', ARGV[3], 'ttl', ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
`
  },
  /** KEYS p · ARGV epoch pend pendAt → 1, or 0 when that registration is gone (never recreates the key) */
  dirPending: {
    numberOfKeys: 1,
    lua: `
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'pend', ARGV[2], 'pendAt', ARGV[3])
return 1
`
  },
  /**
   * KEYS r p · ARGV expectedVer|'' ttl field value... (the ranking fields' 12 first) → 1 written, 0 when another
   * scheduler wrote first (read again). Reputations are computed by `ranking.ts` in the scheduler and written back
   * under this compare-and-set, with their ranking fields copied into the live peer's hash.
   */
  dirReputation: {
    numberOfKeys: 2,
    lua: `
local v = redis.call('HGET', KEYS[1], 'ver') or ''
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ver', (tonumber(v) or 0) + 1, unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], unpack(ARGV, 3, 14)) end
return 1
`
  }
} as const

export type ScriptName = keyof typeof SCRIPTS

type Reply = Array<string | number>

/** The commands the directory sends, on a `Redis` or a `Cluster` (the scripts are defined on both). */
export interface Commands {
  srandmember: (key: string, count: number) => Promise<string[]>
  zrange: (key: string, start: number, stop: number) => Promise<string[]>
  sismember: (key: string, member: string) => Promise<number>
  hmget: (key: string, ...fields: string[]) => Promise<Array<string | null>>
  hget: (key: string, field: string) => Promise<string | null>
  exists: (key: string) => Promise<number>
  scard: (key: string) => Promise<number>
  pexpire: (key: string, ms: number) => Promise<number>
  dirAnnounce: (...args: Array<string | number>) => Promise<Reply>
  dirLink: (...args: Array<string | number>) => Promise<number>
  dirUnlink: (...args: string[]) => Promise<number>
  dirWithdraw: (...args: string[]) => Promise<string>
  dirLeave: (...args: string[]) => Promise<string[]>
  dirHeartbeat: (...args: Array<string | number>) => Promise<number>
  dirPending: (...args: Array<string | number>) => Promise<number>
  dirReputation: (...args: Array<string | number>) => Promise<number>
}
