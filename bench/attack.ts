/**
 * The fake-identity flood of issue 14 at the scheduler's default settings: the real `rafspeer scheduler` in a child
 * process, three libp2p clients with fresh keys each announcing `fakeDigests` random digests (4M: what filled the
 * 10M-entry index before admission by weight), heartbeating with a 60 s interval, and two honest peers: one
 * announces 1,000 real chunks after the flood, the other resolves them. Reports the scheduler's RSS before and at
 * its peak, how many honest chunks resolve, the honest resolve latency during the flood, and the index's counters.
 *
 * Run: `node dist/bench/run.js attack` (about a minute and 2–3 GB of memory in this process for the fakes' sets).
 */
import '../polyfill.js'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { announceAddrs, createHost, type Host } from '../p2p/index.js'
import { SchedulerClient } from '../scheduler/index.js'

export interface AttackBenchOptions {
  fakes?: number
  fakeDigests?: number
  honestChunks?: number
}

export interface AttackBenchResult {
  fakes: number
  fakeDigests: number
  honestChunks: number
  rssBeforeMiB: number
  rssPeakMiB: number
  rssGrowthMiB: number
  /** honest chunks that resolve to their holder after the flood */
  honestResolved: number
  honestResolveP50Ms: number
  honestResolveMaxMs: number
  /** the scheduler's counters at the end */
  index: Record<string, number>
  seconds: number
}

const MiB = 1 << 20
const MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url))
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const rssOf = (pid: number): number => {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? 0 : Number(m[1]) * 1024
}

export async function benchAttack (opts: AttackBenchOptions = {}): Promise<AttackBenchResult> {
  const fakes = opts.fakes ?? 3
  const fakeDigests = opts.fakeDigests ?? 4_000_000
  const honestChunks = opts.honestChunks ?? 1000
  const t0 = performance.now()
  const proc = spawn(process.execPath, [MAIN, 'scheduler', '--listen', '/ip4/127.0.0.1/tcp/0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stderr?.resume()
  const address = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => { reject(new Error(`scheduler did not start: ${out}`)) }, 30_000)
    proc.stdout?.on('data', (b: Buffer) => {
      out += b.toString()
      const m = /"scheduler":"([^"]+)"/.exec(out)
      if (m !== null) { clearTimeout(t); resolve(m[1]!) }
    })
  })
  const hosts: Host[] = []
  const clients: SchedulerClient[] = []
  const client = async (heartbeatMs: number): Promise<{ host: Host, client: SchedulerClient }> => {
    const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const c = new SchedulerClient({ libp2p: host }, { scheduler: address, selfAddrs: () => announceAddrs(host), heartbeatMs, resolveTimeoutMs: 5000 })
    hosts.push(host)
    clients.push(c)
    await c.start()
    await c.waitConnected(10_000)
    return { host, client: c }
  }
  try {
    const honestA = await client(1000)
    const honestB = await client(1000)
    const fakeClients = await Promise.all(Array.from({ length: fakes }, async () => (await client(60_000)).client))
    await sleep(500)
    const pid = proc.pid as number
    const rssBefore = rssOf(pid)
    let rssPeak = rssBefore
    const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, rssOf(pid)) }, 200)
    const latencies: number[] = []
    const honest = Array.from({ length: honestChunks }, (_, i) => createHash('sha256').update(`honest-${i}`).digest())
    const aId = honestA.host.peerId.toString()
    const resolved = async (): Promise<number> => {
      const t = performance.now()
      const m = await honestB.client.resolve(honest)
      latencies.push(performance.now() - t)
      return honest.filter(d => m.get(d.toString('hex'))?.some(h => h.peerId === aId) === true).length
    }
    try {
      // the flood, in slices so this process never holds more than one slice of fresh digests at once
      const slice = 200_000
      for (let sent = 0; sent < fakeDigests; sent += slice) {
        for (const f of fakeClients) {
          const packed = randomBytes(32 * Math.min(slice, fakeDigests - sent))
          const ds: Buffer[] = []
          for (let i = 0; i < packed.length; i += 32) ds.push(packed.subarray(i, i + 32))
          f.announce(ds)
        }
        await resolved()
        await sleep(200)
      }
      await sleep(3000)
      // the honest peer announces after the flood; its neighbour resolves, fetches (vouches) and resolves again
      honestA.client.announce(honest)
      let got = 0
      const deadline = Date.now() + 15_000
      while ((got = await resolved()) < honest.length && Date.now() < deadline) await sleep(200)
      honestB.client.report([{ peerId: aId, chunks: honest.length, bytes: honest.length * MiB, ms: 1000, failed: false, bad: false }])
      await sleep(1000)
      got = await resolved()
      latencies.sort((a, b) => a - b)
      clearInterval(sampler)
      for (const c of clients) await c.stop().catch(() => {})
      const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
      proc.kill('SIGTERM')
      await exited
      const index = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as Record<string, number>
      return {
        fakes,
        fakeDigests,
        honestChunks,
        rssBeforeMiB: Math.round(rssBefore / MiB),
        rssPeakMiB: Math.round(rssPeak / MiB),
        rssGrowthMiB: Math.round((rssPeak - rssBefore) / MiB),
        honestResolved: got,
        honestResolveP50Ms: Math.round(latencies[latencies.length >> 1] ?? 0),
        honestResolveMaxMs: Math.round(latencies.at(-1) ?? 0),
        index,
        seconds: Math.round((performance.now() - t0) / 1000)
      }
    } finally {
      clearInterval(sampler)
    }
  } finally {
    for (const c of clients) await c.stop().catch(() => {})
    for (const h of hosts) await Promise.resolve(h.stop()).catch(() => {})
    if (proc.exitCode === null) proc.kill('SIGKILL')
  }
}

export function formatAttackBench (r: AttackBenchResult): string {
  return [
    `scheduler flood (${r.fakes} fresh identities × ${r.fakeDigests.toLocaleString('en')} random digests, default bounds), ${r.seconds} s:`,
    `  scheduler RSS ${r.rssBeforeMiB} MiB → peak ${r.rssPeakMiB} MiB (+${r.rssGrowthMiB} MiB)`,
    `  honest chunks announced after the flood that resolve: ${r.honestResolved} of ${r.honestChunks}`,
    `  honest resolve latency during the flood: p50 ${r.honestResolveP50Ms} ms, max ${r.honestResolveMaxMs} ms`,
    `  index: ${JSON.stringify(r.index)}`
  ].join('\n')
}
