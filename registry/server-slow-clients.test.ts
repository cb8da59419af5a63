/**
 * The embedded registry against slow clients: sockets that trickle their request head (slowloris) are answered 408
 * and closed within the headers timeout while honest requests are served; a blob body that keeps moving is never
 * cut, however long it takes; a body that stops moving is cut after the idle timeout, and its session stays usable.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { request } from 'node:http'
import { slowloris, timed } from '../test/helpers/slowloris.js'
import { raw, sha256, withRegistry } from './server-testkit.js'

const HEADERS_TIMEOUT_MS = 1_000
const IDLE_TIMEOUT_MS = 1_000
/** what the server's deadline check may add: a quarter of the deadline, plus a loaded machine's scheduling */
const MARGIN_MS = 2_000

test('slowloris sockets are answered 408 and closed within the headers timeout; honest requests are served meanwhile', async t => {
  await withRegistry({ headersTimeoutMs: HEADERS_TIMEOUT_MS, idleTimeoutMs: 30_000 }, async ({ reg, errors }) => {
    const attack = slowloris({ port: reg.port }, { sockets: 50, dripMs: 200, giveUpMs: HEADERS_TIMEOUT_MS + 10_000, head: 'GET /v2/ HTTP/1.1\r\nHost: x\r\n' })
    await attack.connected
    const honest = await timed(async () => await raw(reg, 'GET', '/v2/'))
    assert.equal(honest.value.status, 200)
    const r = await attack.done
    t.diagnostic(`50 slowloris sockets: closed after ${Math.round(r.closedAfterMs[0]!)}..${Math.round(r.closedAfterMs.at(-1)!)} ms ` +
      `(headers timeout ${HEADERS_TIMEOUT_MS} ms); honest GET /v2/ during the attack: ${honest.ms.toFixed(1)} ms`)
    assert.equal(r.stillOpen, 0)
    assert.equal(r.closedAfterMs.length, 50)
    assert.ok(r.closedAfterMs[0]! >= HEADERS_TIMEOUT_MS * 0.9, `closed before the deadline: ${r.closedAfterMs[0]} ms`)
    assert.ok(r.closedAfterMs.at(-1)! <= HEADERS_TIMEOUT_MS + MARGIN_MS, `closed late: ${r.closedAfterMs.at(-1)} ms`)
    assert.deepEqual(Object.keys(r.answers), ['HTTP/1.1 408 Request Timeout'])
    assert.deepEqual(errors, [])
  })
})

/** A PUT of `body` into a new upload session, sent in `pieces` writes `gapMs` apart. */
async function dripUpload (port: number, location: string, body: Buffer, pieces: number, gapMs: number): Promise<number> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: 'PUT', path: `${location}?digest=${sha256(body)}`, agent: false, headers: { 'Content-Length': body.length } }, res => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    const size = Math.ceil(body.length / pieces)
    let i = 0
    const next = (): void => {
      req.write(body.subarray(i * size, (i + 1) * size))
      if (++i < pieces) setTimeout(next, gapMs)
      else req.end()
    }
    next()
  })
}

test('a blob body that keeps moving outlives the headers and idle timeouts; one that stops is cut after the idle timeout', async () => {
  await withRegistry({ headersTimeoutMs: HEADERS_TIMEOUT_MS, idleTimeoutMs: IDLE_TIMEOUT_MS }, async ({ reg }) => {
    const body = Buffer.alloc(64 << 10, 7)
    const open = await raw(reg, 'POST', '/v2/slow/app/blobs/uploads/')
    assert.equal(open.status, 202)
    // 8 pieces 400 ms apart: 2.8 s in all, well past both timeouts, never idle for one of them
    const status = await dripUpload(reg.port, String(open.headers.location), body, 8, 400)
    assert.equal(status, 201)
    assert.equal((await raw(reg, 'HEAD', `/v2/slow/app/blobs/${sha256(body)}`)).status, 200)

    const second = await raw(reg, 'POST', '/v2/slow/app/blobs/uploads/')
    const location = String(second.headers.location)
    const closed = await new Promise<number>((resolve) => {
      const req = request({ host: '127.0.0.1', port: reg.port, method: 'PATCH', path: location, agent: false, headers: { 'Content-Length': 1000 } })
      let t0 = 0
      req.on('error', () => resolve(performance.now() - t0))
      req.on('response', res => { res.resume(); res.on('close', () => resolve(performance.now() - t0)) })
      req.write(Buffer.alloc(10), () => { t0 = performance.now() })
    })
    assert.ok(closed >= IDLE_TIMEOUT_MS * 0.9 && closed <= IDLE_TIMEOUT_MS + MARGIN_MS, `stalled body cut after ${closed} ms`)
    // all or nothing: the session is still there, at its previous offset
    const state = await raw(reg, 'GET', location)
    assert.equal(state.status, 204)
    assert.equal(state.headers.range, '0-0')
  })
})
