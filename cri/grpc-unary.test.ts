/**
 * The unary gRPC channel against node:http2 servers that play a gRPC server well and badly: a good answer, a
 * trailers-only status, HTTP errors, compressed or mis-framed or oversized answers, a stream reset mid-answer, a
 * server that never answers (deadline, and the server sees the cancel), an abort, and a server restarted under
 * the channel (the next call reconnects).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, constants, type Http2Server, type ServerHttp2Session, type ServerHttp2Stream, type IncomingHttpHeaders } from 'node:http2'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GrpcStatus, GrpcUnaryChannel } from './grpc-unary.js'

const live = new WeakMap<Http2Server, Set<ServerHttp2Session>>()
const sessionsOf = (server: Http2Server): Set<ServerHttp2Session> => live.get(server) ?? new Set()

type Handler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, body: Buffer) => void

async function serve (t: { after: (fn: () => Promise<void>) => void }, handler: Handler, socket?: string): Promise<{ socket: string, server: Http2Server }> {
  if (socket === undefined) {
    const dir = await mkdtemp(join(tmpdir(), 'rafspeer-grpc-unary-'))
    t.after(async () => { await rm(dir, { recursive: true, force: true }) })
    socket = join(dir, 'grpc.sock')
  }
  const server = createServer()
  const sessions = new Set<ServerHttp2Session>()
  live.set(server, sessions)
  server.on('session', (s) => { sessions.add(s); s.on('close', () => sessions.delete(s)) })
  server.on('stream', (stream, headers) => {
    const parts: Buffer[] = []
    stream.on('data', (c: Buffer) => parts.push(c))
    stream.on('end', () => { handler(stream, headers, Buffer.concat(parts)) })
    stream.on('error', () => {})
  })
  await new Promise<void>(resolve => server.listen(socket, resolve))
  t.after(async () => {
    for (const s of sessions) s.destroy()
    if (server.listening) await new Promise<void>(resolve => server.close(() => resolve()))
  })
  return { socket, server }
}

const frame = (msg: Buffer, flag = 0, claimed = msg.length): Buffer => {
  const f = Buffer.alloc(5 + msg.length)
  f[0] = flag
  f.writeUInt32BE(claimed, 1)
  msg.copy(f, 5)
  return f
}

/** answers `msg` with status OK the way grpc-go does: headers, one DATA frame, trailers */
const answer = (stream: ServerHttp2Stream, msg: Buffer, flag = 0, claimed = msg.length): void => {
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
  stream.on('wantTrailers', () => { stream.sendTrailers({ 'grpc-status': '0' }) })
  stream.end(frame(msg, flag, claimed))
}

function channel (t: { after: (fn: () => Promise<void>) => void }, socket: string, maxMessageBytes?: number): GrpcUnaryChannel {
  const ch = new GrpcUnaryChannel(socket, maxMessageBytes !== undefined ? { maxMessageBytes } : {})
  t.after(async () => { ch.close() })
  return ch
}

test('a unary call: the framed message, path and gRPC headers go out, the answer\'s message comes back', async (t) => {
  let seen: IncomingHttpHeaders | undefined
  let got: Buffer | undefined
  const { socket } = await serve(t, (stream, headers, body) => {
    seen = headers
    got = body
    answer(stream, Buffer.from([...body.subarray(5)].reverse()))
  })
  const r = await channel(t, socket).call('/pkg.Svc/Method', Buffer.from('abc'), { timeoutMs: 5000 })
  assert.deepEqual(r, { ok: true, body: Buffer.from('cba') })
  assert.deepEqual(got, frame(Buffer.from('abc')))
  assert.equal(seen?.[':path'], '/pkg.Svc/Method')
  assert.equal(seen?.['content-type'], 'application/grpc')
  assert.equal(seen?.te, 'trailers')
  assert.equal(seen?.['grpc-timeout'], '5000m')
})

test('a trailers-only status and its percent-encoded message; HTTP errors without a status map as the spec says', async (t) => {
  const { socket } = await serve(t, (stream, headers) => {
    if (headers[':path'] === '/s/missing') {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'image%20%22a%22%20not%20found' }, { endStream: true })
    } else stream.respond({ ':status': Number(headers[':path']!.slice(3)) }, { endStream: true })
  })
  const ch = channel(t, socket)
  assert.deepEqual(await ch.call('/s/missing', Buffer.alloc(0), { timeoutMs: 5000 }),
    { ok: false, code: GrpcStatus.NOT_FOUND, details: 'image "a" not found', answered: true })
  for (const [http, code] of [[503, GrpcStatus.UNAVAILABLE], [404, GrpcStatus.UNIMPLEMENTED], [401, GrpcStatus.UNAUTHENTICATED], [500, GrpcStatus.UNKNOWN]] as const) {
    const r = await ch.call(`/s/${http}`, Buffer.alloc(0), { timeoutMs: 5000 })
    assert.equal(r.ok, false)
    assert.equal(!r.ok && r.code, code, `HTTP ${http}`)
    assert.equal(!r.ok && r.answered, true)
  }
})

test('compressed, mis-framed and oversized answers are INTERNAL / RESOURCE_EXHAUSTED, not data', async (t) => {
  const { socket } = await serve(t, (stream, headers) => {
    const p = headers[':path']
    if (p === '/s/compressed') answer(stream, Buffer.from('xyz'), 1)
    else if (p === '/s/short') answer(stream, Buffer.from('xyz'), 0, 10)
    else answer(stream, Buffer.alloc(5000, 7))
  })
  const ch = channel(t, socket, 1000)
  const code = async (path: string): Promise<number | undefined> => {
    const r = await ch.call(path, Buffer.alloc(0), { timeoutMs: 5000 })
    return r.ok ? undefined : r.code
  }
  assert.equal(await code('/s/compressed'), GrpcStatus.INTERNAL)
  assert.equal(await code('/s/short'), GrpcStatus.INTERNAL)
  assert.equal(await code('/s/big'), GrpcStatus.RESOURCE_EXHAUSTED)
})

test('a stream reset mid-answer is a failure, not a short message', async (t) => {
  const { socket } = await serve(t, (stream) => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' })
    stream.write(frame(Buffer.alloc(100, 1)).subarray(0, 40), () => { stream.close(constants.NGHTTP2_INTERNAL_ERROR) })
  })
  const r = await channel(t, socket).call('/s/m', Buffer.alloc(0), { timeoutMs: 5000 })
  assert.equal(r.ok, false)
})

test('a server that never answers: DEADLINE_EXCEEDED at the deadline and the server sees the cancel; an abort rejects with its reason', async (t) => {
  const cancelled: string[] = []
  const { socket } = await serve(t, (stream, headers) => {
    stream.on('close', () => { cancelled.push(`${headers[':path']} ${stream.rstCode}`) })
  })
  const ch = channel(t, socket)
  const t0 = performance.now()
  const r = await ch.call('/s/slow', Buffer.alloc(0), { timeoutMs: 300 })
  assert.equal(!r.ok && r.code, GrpcStatus.DEADLINE_EXCEEDED)
  assert.ok(performance.now() - t0 < 3000)
  const ac = new AbortController()
  setTimeout(() => ac.abort(new Error('caller gave up')), 100)
  await assert.rejects(ch.call('/s/aborted', Buffer.alloc(0), { timeoutMs: 60_000, signal: ac.signal }), /caller gave up/)
  const deadline = Date.now() + 5000
  while (cancelled.length < 2 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  assert.deepEqual(cancelled.sort(), [`/s/aborted ${constants.NGHTTP2_CANCEL}`, `/s/slow ${constants.NGHTTP2_CANCEL}`])
})

test('no server at the socket is UNAVAILABLE at once, with the cause; a server started later is reached by the next call', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-grpc-unary-'))
  t.after(async () => { await rm(dir, { recursive: true, force: true }) })
  const socket = join(dir, 'later.sock')
  const ch = channel(t, socket)
  const r = await ch.call('/s/m', Buffer.alloc(0), { timeoutMs: 10_000 })
  assert.equal(!r.ok && r.code, GrpcStatus.UNAVAILABLE)
  assert.equal(!r.ok && r.answered, false)
  assert.equal(!r.ok && (r.cause as { code?: string }).code, 'ENOENT')
  const first = await serve(t, (stream) => { answer(stream, Buffer.from('one')) }, socket)
  assert.deepEqual(await ch.call('/s/m', Buffer.alloc(0), { timeoutMs: 5000 }), { ok: true, body: Buffer.from('one') })
  // the server goes away (connections too) and another takes the socket: the channel reconnects
  await new Promise<void>(resolve => { first.server.close(() => resolve()); for (const s of sessionsOf(first.server)) s.destroy() })
  await serve(t, (stream) => { answer(stream, Buffer.from('two')) }, socket)
  assert.deepEqual(await ch.call('/s/m', Buffer.alloc(0), { timeoutMs: 5000 }), { ok: true, body: Buffer.from('two') })
})

