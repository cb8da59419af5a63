/**
 * A peer that stops reading its TCP socket, for tests of what a server holds for it: a TCP relay on loopback to a
 * target port that forwards everything the client sends, but passes the target's bytes back only up to
 * `passBytes` (per connection) and then stops reading them, so the target's socket fills and stays full; with
 * `trickleBytes`, it then reads that many every `trickleMs` (a reader slow enough to starve, fast enough to look
 * alive). A libp2p host dials the relay's address with the target's `/p2p/<id>` and talks to the target through it.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'

export interface StallingRelay {
  port: number
  /** target bytes passed back to clients so far, over all connections */
  readonly passed: number
  /** stop reading the target on every connection now */
  stall: () => void
  close: () => Promise<void>
}

export interface StallingRelayInit {
  /** target bytes passed back per connection before the relay stops reading (all) */
  passBytes?: number
  /** then read this many every `trickleMs` (100 ms) instead of none */
  trickleBytes?: number
  trickleMs?: number
}

export async function startStallingRelay (targetPort: number, opts: StallingRelayInit = {}): Promise<StallingRelay> {
  const limit = opts.passBytes ?? Infinity
  const timers: NodeJS.Timeout[] = []
  const sockets = new Set<Socket>()
  const ups: Socket[] = []
  let passed = 0
  let stalled = false
  const server: Server = createServer(client => {
    const up = connect(targetPort, '127.0.0.1')
    sockets.add(client)
    sockets.add(up)
    ups.push(up)
    client.on('error', () => {})
    up.on('error', () => {})
    client.on('close', () => { up.destroy() })
    up.on('close', () => { client.destroy() })
    client.pipe(up)
    let mine = 0
    let trickling = false
    const forward = (b: Buffer): void => { client.write(b); mine += b.length; passed += b.length }
    up.on('data', (b: Buffer) => {
      // the trickle's own reads
      if (trickling) { forward(b); return }
      const room = stalled ? 0 : Math.max(0, limit - mine)
      const pass = b.subarray(0, Math.min(room, b.length))
      if (pass.length > 0) forward(pass)
      if (pass.length === b.length) return
      // the rest waits in the relay (the client's stream stays intact for a trickle)
      up.pause()
      up.unshift(b.subarray(pass.length))
      if (opts.trickleBytes !== undefined && !trickling) {
        trickling = true
        const timer = setInterval(() => {
          const n = Math.min(opts.trickleBytes!, up.readableLength)
          if (n > 0) up.read(n)
        }, opts.trickleMs ?? 100)
        timers.push(timer)
        up.on('close', () => { clearInterval(timer) })
      }
    })
    if (stalled) up.pause()
  })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve) })
  return {
    port: (server.address() as AddressInfo).port,
    get passed () { return passed },
    stall: () => { stalled = true; for (const u of ups) u.pause() },
    close: async () => {
      for (const t of timers) clearInterval(t)
      for (const s of sockets) s.destroy()
      await new Promise<void>(resolve => { server.close(() => { resolve() }) })
    }
  }
}
