/**
 * Wire format of `/rafspeer/scheduler/1.0.0`. One long-lived stream per client session carries frames, each a
 * varint length prefix (it-length-prefixed) and a body whose first byte is the message type. Integers are
 * big-endian; digests are raw 32-byte values packed back to back (a resolve of 4096 digests is 128 KiB);
 * strings are UTF-8 behind a u8 or u16 length. Bodies:
 *
 * ```
 * ANNOUNCE  0x01  flags:u8 [info if flags&INFO] count:u32 digest[count]      flags: INFO=1, RESET=2 (drop my entries first)
 *                 info = zone:str8 uploadSlots:u16 uploadBps:f64 naddrs:u8 addr:str16[naddrs]
 * WITHDRAW  0x02  count:u32 digest[count]
 * RESOLVE   0x03  id:u32 max:u8 count:u32 digest[count]
 * REPORT    0x04  n:u16 { peerId:str8 chunks:u32 bytes:f64 ms:u32 flags:u8 }[n]   flags: FAILED=1, BAD=2
 * HEARTBEAT 0x05  intervalMs:u32 activeUploads:u16 recentUploadBps:f64
 * LEAVE     0x06  (empty: drop me now)
 * RESOLVED  0x83  id:u32 npeers:u16 { peerId:str8 naddrs:u8 addr:str16[naddrs] }[npeers]
 *                 count:u32 { k:u8 peerIndex:u16[k] }[count]        (answers in the order of the RESOLVE)
 * ```
 * Every bound below is checked on decode; a frame that breaks one is malformed and closes its stream.
 */
import type { Uint8ArrayList } from 'uint8arraylist'
import { RafspeerError } from '../base/index.js'
import type { ChunkHolder, PeerOutcome } from '../p2p/index.js'
import type { PeerInfo, PeerLoad } from './types.js'

export const DIGEST_BYTES = 32
/** largest frame body either side accepts: a full announce (2 MiB of digests) with room for its header */
export const MAX_FRAME_BYTES = 4 * 1024 * 1024
export const MAX_DIGESTS_PER_FRAME = 65536
export const MAX_ADDRS = 16
export const MAX_ADDR_BYTES = 512
export const MAX_ZONE_BYTES = 255
export const MAX_PEER_ID_BYTES = 128
export const MAX_OUTCOMES_PER_FRAME = 4096
/** holders per digest in one answer (the scheduler returns 4 by default) */
export const MAX_HOLDERS_PER_ANSWER = 16
/**
 * the largest group a resolve gets (blob level): a full key's list never replaces its first this many holders; the
 * in-memory index and the swarm directory share it, so a daemon is told the same group size by either
 */
export const MAX_GROUP = 8
export const MAX_PEERS_PER_ANSWER = 65535
export const MAX_UPLOAD_SLOTS = 65535
export const MAX_ACTIVE_UPLOADS = 65535

export const MsgType = {
  Announce: 0x01,
  Withdraw: 0x02,
  Resolve: 0x03,
  Report: 0x04,
  Heartbeat: 0x05,
  Leave: 0x06,
  Resolved: 0x83
} as const

export const AnnounceFlag = { Info: 1, Reset: 2 } as const
export const OutcomeFlag = { Failed: 1, Bad: 2 } as const

/** sizes of the fixed fields, shared by writer and reader */
const U8 = 1
const U16 = 2
const U32 = 4
const F64 = 8

export type SchedulerErrorCode =
  /** a frame broke the wire format or one of its bounds */
  | 'RAFSPEER_ERR_SCHED_MALFORMED'
  /** an argument broke a bound before anything was sent */
  | 'RAFSPEER_ERR_SCHED_BOUNDS'
  /** a bad configuration value (scheduler address, key file) */
  | 'RAFSPEER_ERR_SCHED_CONFIG'
  /** the scheduler left a resolve unanswered too long: the client gives its session up and tries the next */
  | 'RAFSPEER_ERR_SCHED_UNANSWERED'

export class SchedulerError extends RafspeerError<SchedulerErrorCode> {}

const malformed = (why: string): SchedulerError => new SchedulerError('RAFSPEER_ERR_SCHED_MALFORMED', `malformed scheduler frame: ${why}`)

/** Digests packed back to back, `DIGEST_BYTES` each. */
export type PackedDigests = Buffer

/** Packs digests into one buffer; every digest must be `DIGEST_BYTES` long. */
export function packDigests (digests: readonly Uint8Array[]): PackedDigests {
  const out = Buffer.allocUnsafe(digests.length * DIGEST_BYTES)
  for (let i = 0; i < digests.length; i++) {
    const d = digests[i]
    if (d.length !== DIGEST_BYTES) throw new SchedulerError('RAFSPEER_ERR_SCHED_BOUNDS', `digest ${i} is ${d.length} bytes, not ${DIGEST_BYTES}`)
    out.set(d, i * DIGEST_BYTES)
  }
  return out
}

export const digestCount = (p: PackedDigests): number => p.length / DIGEST_BYTES

/** The compact map key of the digest at `i`: its 32 bytes as a one-byte string. */
export const digestKey = (p: PackedDigests, i: number): string => p.toString('latin1', i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)

export type SchedulerMessage =
  | { type: 'announce', reset: boolean, info?: PeerInfo, digests: PackedDigests }
  | { type: 'withdraw', digests: PackedDigests }
  /** `group` (blob level): each key's answer starts with its first `group` holders, the same for every asker */
  | { type: 'resolve', id: number, max: number, digests: PackedDigests, group?: number }
  | { type: 'report', outcomes: PeerOutcome[] }
  | { type: 'heartbeat', intervalMs: number, load: PeerLoad }
  | { type: 'leave' }
  /**
   * `groups`: per digest, how many of its first holders are its group (present when the resolve asked for one);
   * `swarms` (only with `groups`): per digest, how many holders it has on record — a blob's swarm, the asker included
   */
  | { type: 'resolved', id: number, peers: ChunkHolder[], counts: Uint8Array, refs: Uint16Array, groups?: Uint8Array, swarms?: Uint32Array }

class Writer {
  private buf: Buffer
  private pos = 0
  constructor (size: number) { this.buf = Buffer.allocUnsafe(size) }
  private room (n: number): void {
    if (this.pos + n <= this.buf.length) return
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n))
    this.buf.copy(next, 0, 0, this.pos)
    this.buf = next
  }

  u8 (v: number): this { this.room(U8); this.buf[this.pos] = v; this.pos += U8; return this }
  u16 (v: number): this { this.room(U16); this.buf.writeUInt16BE(v, this.pos); this.pos += U16; return this }
  u32 (v: number): this { this.room(U32); this.buf.writeUInt32BE(v, this.pos); this.pos += U32; return this }
  f64 (v: number): this { this.room(F64); this.buf.writeDoubleBE(v, this.pos); this.pos += F64; return this }
  bytes (b: Uint8Array): this { this.room(b.length); this.buf.set(b, this.pos); this.pos += b.length; return this }
  str8 (s: string, max: number, what: string): this { return this.str(s, max, U8, what) }
  str16 (s: string, max: number, what: string): this { return this.str(s, max, U16, what) }
  private str (s: string, max: number, lenBytes: number, what: string): this {
    const n = Buffer.byteLength(s)
    if (n > max) throw new SchedulerError('RAFSPEER_ERR_SCHED_BOUNDS', `${what} is ${n} bytes, at most ${max}`)
    if (lenBytes === U8) this.u8(n); else this.u16(n)
    this.room(n)
    this.pos += this.buf.write(s, this.pos)
    return this
  }

  get length (): number { return this.pos }
  finish (): Buffer { return this.buf.subarray(0, this.pos) }
}

class Reader {
  private pos = 0
  constructor (private readonly buf: Buffer) {}
  private need (n: number, what: string): void {
    if (this.pos + n > this.buf.length) throw malformed(`truncated at ${what}`)
  }

  u8 (what: string): number { this.need(U8, what); return this.buf[this.pos++] }
  u16 (what: string): number { this.need(U16, what); const v = this.buf.readUInt16BE(this.pos); this.pos += U16; return v }
  u32 (what: string): number { this.need(U32, what); const v = this.buf.readUInt32BE(this.pos); this.pos += U32; return v }
  /** a finite, non-negative double */
  f64 (what: string): number {
    this.need(F64, what)
    const v = this.buf.readDoubleBE(this.pos)
    this.pos += F64
    if (!Number.isFinite(v) || v < 0) throw malformed(`${what} is ${v}`)
    return v
  }

  str8 (max: number, what: string): string { return this.str(this.u8(what), max, what) }
  str16 (max: number, what: string): string { return this.str(this.u16(what), max, what) }
  private str (n: number, max: number, what: string): string {
    if (n > max) throw malformed(`${what} is ${n} bytes, at most ${max}`)
    this.need(n, what)
    const s = this.buf.toString('utf8', this.pos, this.pos + n)
    this.pos += n
    return s
  }

  /** `count` digests as a view into the frame (no copy) */
  digests (max: number): PackedDigests {
    const count = this.u32('digest count')
    if (count > max) throw malformed(`${count} digests, at most ${max}`)
    const n = count * DIGEST_BYTES
    this.need(n, 'digests')
    const out = this.buf.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }

  get left (): number { return this.buf.length - this.pos }

  end (): void {
    if (this.pos !== this.buf.length) throw malformed(`${this.buf.length - this.pos} trailing bytes`)
  }
}

function writeDigests (w: Writer, digests: PackedDigests): void {
  if (digests.length % DIGEST_BYTES !== 0) throw new SchedulerError('RAFSPEER_ERR_SCHED_BOUNDS', 'packed digests are not a multiple of 32 bytes')
  const count = digests.length / DIGEST_BYTES
  if (count > MAX_DIGESTS_PER_FRAME) throw new SchedulerError('RAFSPEER_ERR_SCHED_BOUNDS', `${count} digests in one frame, at most ${MAX_DIGESTS_PER_FRAME}`)
  w.u32(count).bytes(digests)
}

function writeAddrs (w: Writer, addrs: readonly string[]): void {
  const n = Math.min(addrs.length, MAX_ADDRS)
  w.u8(n)
  for (let i = 0; i < n; i++) w.str16(addrs[i], MAX_ADDR_BYTES, 'address')
}

function readAddrs (r: Reader): string[] {
  const n = r.u8('address count')
  if (n > MAX_ADDRS) throw malformed(`${n} addresses, at most ${MAX_ADDRS}`)
  const addrs: string[] = []
  for (let i = 0; i < n; i++) addrs.push(r.str16(MAX_ADDR_BYTES, 'address'))
  return addrs
}

const clampInt = (v: number, max: number): number => Math.max(0, Math.min(max, Math.floor(Number.isFinite(v) ? v : 0)))
const nonNegative = (v: number): number => Number.isFinite(v) && v > 0 ? v : 0

/** Encodes one message body (without its length prefix). */
export function encodeMessage (m: SchedulerMessage): Buffer {
  switch (m.type) {
    case 'announce': {
      const w = new Writer(64 + m.digests.length)
      w.u8(MsgType.Announce).u8((m.info !== undefined ? AnnounceFlag.Info : 0) | (m.reset ? AnnounceFlag.Reset : 0))
      if (m.info !== undefined) {
        w.str8(m.info.zone, MAX_ZONE_BYTES, 'zone').u16(clampInt(m.info.uploadSlots, MAX_UPLOAD_SLOTS)).f64(nonNegative(m.info.uploadBps))
        writeAddrs(w, m.info.addrs)
      }
      writeDigests(w, m.digests)
      return w.finish()
    }
    case 'withdraw': {
      const w = new Writer(8 + m.digests.length)
      w.u8(MsgType.Withdraw)
      writeDigests(w, m.digests)
      return w.finish()
    }
    case 'resolve': {
      const w = new Writer(16 + m.digests.length)
      w.u8(MsgType.Resolve).u32(m.id >>> 0).u8(clampInt(m.max, MAX_HOLDERS_PER_ANSWER))
      writeDigests(w, m.digests)
      // optional trailer: older schedulers never see it unless asked for a group
      if (m.group !== undefined && m.group > 0) w.u8(clampInt(Math.min(m.group, m.max), MAX_HOLDERS_PER_ANSWER))
      return w.finish()
    }
    case 'report': {
      if (m.outcomes.length > MAX_OUTCOMES_PER_FRAME) throw new SchedulerError('RAFSPEER_ERR_SCHED_BOUNDS', `${m.outcomes.length} outcomes, at most ${MAX_OUTCOMES_PER_FRAME}`)
      const w = new Writer(4 + m.outcomes.length * 80)
      w.u8(MsgType.Report).u16(m.outcomes.length)
      for (const o of m.outcomes) {
        w.str8(o.peerId, MAX_PEER_ID_BYTES, 'peer id').u32(clampInt(o.chunks, 0xffffffff)).f64(nonNegative(o.bytes)).u32(clampInt(o.ms, 0xffffffff))
          .u8((o.failed ? OutcomeFlag.Failed : 0) | (o.bad ? OutcomeFlag.Bad : 0))
      }
      return w.finish()
    }
    case 'heartbeat':
      return new Writer(U8 + U32 + U16 + F64).u8(MsgType.Heartbeat).u32(clampInt(m.intervalMs, 0xffffffff))
        .u16(clampInt(m.load.activeUploads, MAX_ACTIVE_UPLOADS)).f64(nonNegative(m.load.recentUploadBps)).finish()
    case 'leave':
      return new Writer(U8).u8(MsgType.Leave).finish()
    case 'resolved':
      return encodeResolved(m.id, m.peers.map(encodePeerEntry), m.counts, m.refs, m.groups, m.swarms)
  }
}

/** One peer of a RESOLVED table; the scheduler caches it per peer, so answers are copies of ready bytes. */
export function encodePeerEntry (h: ChunkHolder): Buffer {
  const w = new Writer(64 + h.addrs.length * 48)
  w.str8(h.peerId, MAX_PEER_ID_BYTES, 'peer id')
  writeAddrs(w, h.addrs)
  return w.finish()
}

/** A RESOLVED body from pre-encoded peer entries (see {@link encodePeerEntry}). */
export function encodeResolved (id: number, peerEntries: readonly Uint8Array[], counts: Uint8Array, refs: Uint16Array, groups?: Uint8Array, swarms?: Uint32Array): Buffer {
  if (peerEntries.length > MAX_PEERS_PER_ANSWER) throw new SchedulerError('RAFSPEER_ERR_SCHED_BOUNDS', `${peerEntries.length} peers in one answer, at most ${MAX_PEERS_PER_ANSWER}`)
  const withSwarms = groups !== undefined && swarms !== undefined
  let size = U8 + U32 + U16 + U32 + counts.length * U8 + refs.length * U16 + (groups !== undefined ? counts.length : 0) + (withSwarms ? counts.length * U32 : 0)
  for (const e of peerEntries) size += e.length
  const w = new Writer(size)
  w.u8(MsgType.Resolved).u32(id >>> 0).u16(peerEntries.length)
  for (const e of peerEntries) w.bytes(e)
  w.u32(counts.length)
  let j = 0
  for (let i = 0; i < counts.length; i++) {
    w.u8(counts[i])
    for (let k = 0; k < counts[i]; k++) w.u16(refs[j++])
  }
  if (groups !== undefined) for (let i = 0; i < counts.length; i++) w.u8(Math.min(groups[i], counts[i]))
  // a second trailer, after the groups: older clients read the groups and ignore what follows
  if (withSwarms) for (let i = 0; i < counts.length; i++) w.u32(clampInt(swarms[i] ?? 0, 0xffffffff))
  return w.finish()
}

/** Decodes one frame body; throws `RAFSPEER_ERR_SCHED_MALFORMED` on anything out of shape. */
export function decodeMessage (frame: Uint8Array | Uint8ArrayList): SchedulerMessage {
  const u8 = frame instanceof Uint8Array ? frame : frame.subarray()
  if (u8.length > MAX_FRAME_BYTES) throw malformed(`${u8.length} bytes, at most ${MAX_FRAME_BYTES}`)
  const r = new Reader(Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength))
  const type = r.u8('type')
  let m: SchedulerMessage
  switch (type) {
    case MsgType.Announce: {
      const flags = r.u8('flags')
      if ((flags & ~(AnnounceFlag.Info | AnnounceFlag.Reset)) !== 0) throw malformed(`unknown announce flags ${flags}`)
      let info: PeerInfo | undefined
      if ((flags & AnnounceFlag.Info) !== 0) {
        const zone = r.str8(MAX_ZONE_BYTES, 'zone')
        const uploadSlots = r.u16('upload slots')
        const uploadBps = r.f64('upload bps')
        info = { zone, uploadSlots, uploadBps, addrs: readAddrs(r) }
      }
      m = { type: 'announce', reset: (flags & AnnounceFlag.Reset) !== 0, info, digests: r.digests(MAX_DIGESTS_PER_FRAME) }
      break
    }
    case MsgType.Withdraw:
      m = { type: 'withdraw', digests: r.digests(MAX_DIGESTS_PER_FRAME) }
      break
    case MsgType.Resolve: {
      const id = r.u32('request id')
      const max = r.u8('max holders')
      if (max > MAX_HOLDERS_PER_ANSWER) throw malformed(`max holders ${max}, at most ${MAX_HOLDERS_PER_ANSWER}`)
      const digests = r.digests(MAX_DIGESTS_PER_FRAME)
      if (r.left > 0) {
        const group = r.u8('group size')
        if (group > max) throw malformed(`group of ${group}, more than the ${max} holders asked for`)
        m = { type: 'resolve', id, max, digests, group }
      } else {
        m = { type: 'resolve', id, max, digests }
      }
      break
    }
    case MsgType.Report: {
      const n = r.u16('outcome count')
      if (n > MAX_OUTCOMES_PER_FRAME) throw malformed(`${n} outcomes, at most ${MAX_OUTCOMES_PER_FRAME}`)
      const outcomes: PeerOutcome[] = []
      for (let i = 0; i < n; i++) {
        const peerId = r.str8(MAX_PEER_ID_BYTES, 'peer id')
        const chunks = r.u32('chunks')
        const bytes = r.f64('bytes')
        const ms = r.u32('ms')
        const flags = r.u8('outcome flags')
        if ((flags & ~(OutcomeFlag.Failed | OutcomeFlag.Bad)) !== 0) throw malformed(`unknown outcome flags ${flags}`)
        outcomes.push({ peerId, chunks, bytes, ms, failed: (flags & OutcomeFlag.Failed) !== 0, bad: (flags & OutcomeFlag.Bad) !== 0 })
      }
      m = { type: 'report', outcomes }
      break
    }
    case MsgType.Heartbeat:
      m = { type: 'heartbeat', intervalMs: r.u32('interval'), load: { activeUploads: r.u16('active uploads'), recentUploadBps: r.f64('upload bps') } }
      break
    case MsgType.Leave:
      m = { type: 'leave' }
      break
    case MsgType.Resolved: {
      const id = r.u32('request id')
      const npeers = r.u16('peer count')
      const peers: ChunkHolder[] = []
      for (let i = 0; i < npeers; i++) peers.push({ peerId: r.str8(MAX_PEER_ID_BYTES, 'peer id'), addrs: readAddrs(r) })
      const count = r.u32('answer count')
      if (count > MAX_DIGESTS_PER_FRAME) throw malformed(`${count} answers, at most ${MAX_DIGESTS_PER_FRAME}`)
      const counts = new Uint8Array(count)
      const refs: number[] = []
      for (let i = 0; i < count; i++) {
        const k = r.u8('holder count')
        if (k > MAX_HOLDERS_PER_ANSWER) throw malformed(`${k} holders for one digest, at most ${MAX_HOLDERS_PER_ANSWER}`)
        counts[i] = k
        for (let j = 0; j < k; j++) {
          const ref = r.u16('peer index')
          if (ref >= npeers) throw malformed(`peer index ${ref} of ${npeers}`)
          refs.push(ref)
        }
      }
      m = { type: 'resolved', id, peers, counts, refs: Uint16Array.from(refs) }
      if (r.left > 0) {
        const groups = new Uint8Array(count)
        for (let i = 0; i < count; i++) {
          groups[i] = r.u8('group size')
          if (groups[i] > counts[i]) throw malformed(`a group of ${groups[i]} among ${counts[i]} holders`)
        }
        m.groups = groups
        if (r.left > 0) {
          const swarms = new Uint32Array(count)
          for (let i = 0; i < count; i++) swarms[i] = r.u32('swarm size')
          m.swarms = swarms
        }
      }
      break
    }
    default:
      throw malformed(`unknown message type 0x${type.toString(16)}`)
  }
  r.end()
  return m
}
