import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import {
  decodeMessage, encodeMessage, encodeResolved, packDigests, SchedulerError, MsgType, MAX_DIGESTS_PER_FRAME,
  MAX_FRAME_BYTES, type SchedulerMessage
} from './protocol.js'
import { HolderIndex } from './index-store.js'
import { answerBody } from './server.js'

const digest = (n: number): Buffer => createHash('sha256').update(String(n)).digest()
const ds = (n: number): Buffer => packDigests(Array.from({ length: n }, (_, i) => digest(i)))

const roundTrip = (m: SchedulerMessage): SchedulerMessage => decodeMessage(encodeMessage(m))

const isMalformed = (err: unknown): boolean => err instanceof SchedulerError && err.code === 'RAFSPEER_ERR_SCHED_MALFORMED'

test('every message survives encode → decode', () => {
  const info = { addrs: ['/ip4/10.0.0.1/tcp/4001', '/ip6/::1/tcp/4001'], zone: 'eu|fra|r1', uploadSlots: 16, uploadBps: 125e6 }
  const msgs: SchedulerMessage[] = [
    { type: 'announce', reset: true, info, digests: ds(3) },
    { type: 'announce', reset: false, info: undefined, digests: ds(0) },
    { type: 'withdraw', digests: ds(2) },
    { type: 'resolve', id: 0xfffffffe, max: 4, digests: ds(1000) },
    { type: 'resolve', id: 9, max: 4, digests: ds(1), group: 4 },
    { type: 'report', outcomes: [{ peerId: '12D3KooWabc', chunks: 3, bytes: 3 * 2 ** 20, ms: 17, failed: false, bad: true }, { peerId: 'x', chunks: 0, bytes: 0, ms: 0, failed: true, bad: false }] },
    { type: 'heartbeat', intervalMs: 5000, load: { activeUploads: 3, recentUploadBps: 12.5e6 } },
    { type: 'leave' },
    { type: 'resolved', id: 7, peers: [{ peerId: 'A', addrs: ['/ip4/1.2.3.4/tcp/1'] }, { peerId: 'B', addrs: [] }], counts: Uint8Array.from([2, 0, 1]), refs: Uint16Array.from([1, 0, 0]) },
    { type: 'resolved', id: 8, peers: [{ peerId: 'A', addrs: [] }, { peerId: 'B', addrs: [] }], counts: Uint8Array.from([3, 1]), refs: Uint16Array.from([0, 1, 0, 1]), groups: Uint8Array.from([2, 0]) },
    { type: 'resolved', id: 9, peers: [{ peerId: 'A', addrs: [] }], counts: Uint8Array.from([1, 0]), refs: Uint16Array.from([0]), groups: Uint8Array.from([1, 0]), swarms: Uint32Array.from([70_000, 0]) }
  ]
  for (const m of msgs) {
    const back = roundTrip(m)
    if ('digests' in m && 'digests' in back) {
      assert.ok(Buffer.compare(m.digests, back.digests) === 0)
      assert.deepEqual({ ...back, digests: null }, { ...m, digests: null })
    } else {
      assert.deepEqual(back, m)
    }
  }
})

test('a resolve of 1000 digests is compact: 32 bytes a digest and 10 bytes of header', () => {
  assert.equal(encodeMessage({ type: 'resolve', id: 1, max: 4, digests: ds(1000) }).length, 32_000 + 10)
  // an answer: 1 byte per digest + 2 per holder + the peer table once
  const body = encodeResolved(1, [Buffer.from('\x01A\x00', 'latin1')], new Uint8Array(1000).fill(1), new Uint16Array(1000))
  assert.equal(body.length, 1 + 4 + 2 + 3 + 4 + 1000 * 3)
})

test('encode refuses what breaks a bound instead of sending it', () => {
  assert.throws(() => encodeMessage({ type: 'withdraw', digests: Buffer.alloc((MAX_DIGESTS_PER_FRAME + 1) * 32) }), (e: unknown) => (e as SchedulerError).code === 'RAFSPEER_ERR_SCHED_BOUNDS')
  assert.throws(() => encodeMessage({ type: 'withdraw', digests: Buffer.alloc(33) }), /multiple of 32/)
  assert.throws(() => packDigests([Buffer.alloc(20)]), /20 bytes/)
  assert.throws(() => encodeMessage({ type: 'announce', reset: false, info: { addrs: [], zone: 'z'.repeat(300), uploadSlots: 0, uploadBps: 0 }, digests: ds(0) }), /zone/)
})

test('malformed frames are refused with RAFSPEER_ERR_SCHED_MALFORMED', () => {
  const good = encodeMessage({ type: 'withdraw', digests: ds(2) })
  const countTooBig = Buffer.from(good)
  countTooBig.writeUInt32BE(MAX_DIGESTS_PER_FRAME + 1, 1)
  const nanBps = encodeMessage({ type: 'heartbeat', intervalMs: 1, load: { activeUploads: 0, recentUploadBps: 0 } })
  nanBps.writeDoubleBE(NaN, 7)
  const badRef = encodeMessage({ type: 'resolved', id: 1, peers: [{ peerId: 'A', addrs: [] }], counts: Uint8Array.from([1]), refs: Uint16Array.from([0]) })
  badRef.writeUInt16BE(1, badRef.length - 2)
  const cases: Array<[string, Uint8Array]> = [
    ['empty', new Uint8Array(0)],
    ['unknown type', Uint8Array.from([0x7f])],
    ['truncated digests', good.subarray(0, good.length - 1)],
    ['trailing bytes', Buffer.concat([good, Buffer.from([0])])],
    ['count past the bound', countTooBig],
    ['unknown announce flags', Uint8Array.from([MsgType.Announce, 0x80, 0, 0, 0, 0])],
    ['NaN in a double', nanBps],
    ['peer index outside the table', badRef],
    ['too many holders', Uint8Array.from([MsgType.Resolve, 0, 0, 0, 1, 200, 0, 0, 0, 0])],
    ['string longer than its frame', Uint8Array.from([MsgType.Report, 0, 1, 50, 65])]
  ]
  for (const [name, bytes] of cases) assert.throws(() => decodeMessage(bytes), isMalformed, name)
})

test('random bytes never crash the decoder: a message or a malformed error', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom(...Object.values(MsgType)), (bytes, type) => {
    for (const input of [bytes, Uint8Array.from([type, ...bytes])]) {
      try {
        decodeMessage(input)
      } catch (err) {
        assert.ok(isMalformed(err), String(err))
      }
    }
  }), { numRuns: 3000 })
})

test('an answer that would outgrow a frame drops its tail digests, never its consistency', () => {
  const idx = new HolderIndex({ maxPeers: 1000 })
  const addrs = Array.from({ length: 16 }, (_, i) => `/dns4/${'h'.repeat(480)}${i}.example/tcp/4001`)
  const n = 700 // 700 peers × ~8 KiB of addresses > 4 MiB
  for (let p = 0; p < n; p++) idx.announce(`peer-${p}`, packDigests([digest(p)]), { info: { addrs, zone: '', uploadSlots: 0, uploadBps: 0 } })
  const body = answerBody(9, idx.resolveRaw('asker', packDigests(Array.from({ length: n }, (_, p) => digest(p)))))
  assert.ok(body.length <= MAX_FRAME_BYTES)
  const m = decodeMessage(body)
  assert.equal(m.type, 'resolved')
  if (m.type !== 'resolved') return
  assert.equal(m.counts.length, n)
  const answered = m.counts.reduce((a, k) => a + k, 0)
  assert.ok(answered > 400 && answered < n, `${answered} answered`)
  assert.deepEqual([...m.counts.subarray(0, answered)], new Array(answered).fill(1))
  assert.equal(m.peers.length, answered)
  assert.equal(m.peers[0].addrs.length, 16)
  // with groups and swarm sizes (a trailer for every digest, answered or not)
  const grouped = answerBody(10, idx.resolveRaw('asker', packDigests(Array.from({ length: n }, (_, p) => digest(p))), 4, 2))
  assert.ok(grouped.length <= MAX_FRAME_BYTES)
  const g = decodeMessage(grouped)
  assert.ok(g.type === 'resolved' && g.groups !== undefined && g.swarms !== undefined)
  assert.equal(g.swarms.length, n)
  assert.deepEqual([...g.swarms.subarray(0, 3)], [1, 1, 1])
  assert.ok(g.counts[n - 1] === 0, 'the tail dropped')
})

test('swarm sizes ride only with groups, after them: a 1.1 client reads an answer without them as before', () => {
  const base = { type: 'resolved' as const, id: 1, peers: [{ peerId: 'A', addrs: [] }], counts: Uint8Array.from([1]), refs: Uint16Array.from([0]) }
  const noGroups = decodeMessage(encodeMessage({ ...base, swarms: Uint32Array.from([5]) }))
  assert.ok(noGroups.type === 'resolved' && noGroups.groups === undefined && noGroups.swarms === undefined)
  const groupsOnly = encodeMessage({ ...base, groups: Uint8Array.from([1]) })
  const both = encodeMessage({ ...base, groups: Uint8Array.from([1]), swarms: Uint32Array.from([5]) })
  assert.equal(both.length, groupsOnly.length + 4)
  const m = decodeMessage(groupsOnly)
  assert.ok(m.type === 'resolved' && m.swarms === undefined)
  assert.deepEqual(m.groups, Uint8Array.from([1]))
  // a swarm trailer cut short is malformed, not misread
  assert.throws(() => decodeMessage(both.subarray(0, both.length - 1)), isMalformed)
})

test('a group larger than the holders it names is malformed', () => {
  const body = Buffer.from(encodeMessage({ type: 'resolved', id: 1, peers: [{ peerId: 'A', addrs: [] }], counts: Uint8Array.from([1]), refs: Uint16Array.from([0]), groups: Uint8Array.from([1]) }))
  assert.equal(decodeMessage(body).type, 'resolved')
  body[body.length - 1] = 2
  assert.throws(() => decodeMessage(body), /group of 2 among 1/)
  const ask = Buffer.from(encodeMessage({ type: 'resolve', id: 1, max: 2, digests: ds(1), group: 2 }))
  ask[ask.length - 1] = 3
  assert.throws(() => decodeMessage(ask), /group of 3/)
})
