/**
 * An HTTP reverse proxy in front of a registry for end-to-end tests: counts what the registry really sent
 * (blob bytes and requests, by kind), and can be switched to `stall` (accept, never answer) or `down` (refuse
 * with 503) to test deadlines and offline reads. It is the test's own witness, independent of the daemon's
 * metrics.
 */
import { request, createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export type ProxyMode = 'pass' | 'stall' | 'down'

export interface RegistryProxy {
  /** `127.0.0.1:port`: use it as the registry host of references */
  host: string
  mode: ProxyMode
  /** pause this long after each piece of a blob body (slows transfers so a test can act mid-read) */
  delayMs: number
  /** body bytes of /blobs/ responses sent to clients, and their count */
  blobBytes: number
  blobRequests: number
  rangeRequests: number
  manifestRequests: number
  reset: () => void
  close: () => Promise<void>
}

export async function startRegistryProxy (upstream: string): Promise<RegistryProxy> {
  const [uhost, uport] = upstream.split(':') as [string, string]
  const stalled = new Set<ServerResponse>()
  const state: RegistryProxy = {
    host: '',
    mode: 'pass',
    delayMs: 0,
    blobBytes: 0,
    blobRequests: 0,
    rangeRequests: 0,
    manifestRequests: 0,
    reset: () => { state.blobBytes = 0; state.blobRequests = 0; state.rangeRequests = 0; state.manifestRequests = 0 },
    close: async () => {}
  }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (state.mode === 'stall') { stalled.add(res); res.on('close', () => stalled.delete(res)); return }
    if (state.mode === 'down') { res.writeHead(503, { 'content-type': 'text/plain' }).end('registry down (test)'); return }
    const isBlob = /\/blobs\/sha256:/.test(req.url ?? '')
    if (isBlob) {
      state.blobRequests++
      if (req.headers.range !== undefined) state.rangeRequests++
    }
    if (/\/manifests\//.test(req.url ?? '')) state.manifestRequests++
    const up = request({ host: uhost, port: Number(uport), method: req.method, path: req.url, headers: { ...req.headers, host: upstream } }, upRes => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers)
      upRes.on('data', (piece: Buffer) => {
        if (isBlob && req.method === 'GET') state.blobBytes += piece.length
        if (isBlob && state.delayMs > 0) { upRes.pause(); setTimeout(() => upRes.resume(), state.delayMs) }
      })
      upRes.pipe(res)
    })
    up.on('error', err => { if (!res.headersSent) res.writeHead(502).end(err.message); else res.destroy(err) })
    req.pipe(up)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  state.host = `127.0.0.1:${(server.address() as AddressInfo).port}`
  state.close = async () => {
    for (const r of stalled) r.destroy()
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }
  return state
}
