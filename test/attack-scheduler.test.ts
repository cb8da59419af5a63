/**
 * Attack: fake identities flood the scheduler. The real `rafspeer scheduler` (child process, a small index so the
 * flood fills it in seconds) and real libp2p clients with fresh Ed25519 keys: three fakes announce hundreds of
 * thousands of random digests, round after round, while two honest peers keep working: one announces its chunks
 * after the index is full, the other resolves them, fetches (reports a verified delivery) and resolves again.
 * Before admission by weight, the full index refused every honest announce from then on (resolves found nobody).
 * The scheduler's RSS must stay within a bound set by its `--max-entries`.
 */
import '../polyfill.js'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes, createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { announceAddrs, createHost, type Host } from '../p2p/index.js'
import { SchedulerClient } from '../scheduler/index.js'
import { cliArgv } from './helpers/daemon.js'

const MAX_ENTRIES = 300_000
const FAKE_DIGESTS_PER_ROUND = 200_000
const ROUNDS = 3
const HONEST_CHUNKS = 2000
const MiB = 1 << 20
/** 1.5 × MAX_ENTRIES (live + stale) at well under 200 bytes each, plus the flood's frames in flight */
const RSS_GROWTH_BOUND = 160 * MiB

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const digest = (n: number): Buffer => createHash('sha256').update(`honest-${n}`).digest()
const rssOf = (pid: number): number => {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? 0 : Number(m[1]) * 1024
}

interface Sched { address: string, proc: ChildProcess, out: () => string, stop: () => Promise<Record<string, number>> }

async function startScheduler (): Promise<Sched> {
  const proc = spawn(process.execPath, cliArgv(['scheduler', '--listen', '/ip4/127.0.0.1/tcp/0', '--max-entries', String(MAX_ENTRIES), '--json']),
    { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  proc.stderr?.on('data', (b: Buffer) => { err += b.toString() })
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const address = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => { reject(new Error(`scheduler did not start:\n${out}${err}`)) }, 30_000)
    proc.stdout?.on('data', (b: Buffer) => {
      out += b.toString()
      const m = /"scheduler":"([^"]+)"/.exec(out)
      if (m !== null) { clearTimeout(t); resolve(m[1]) }
    })
    proc.once('exit', code => { clearTimeout(t); reject(new Error(`scheduler exited with ${code}:\n${out}${err}`)) })
  })
  return {
    address,
    proc,
    out: () => out + err,
    stop: async () => {
      if (proc.exitCode === null) proc.kill('SIGTERM')
      await exited
      const last = out.trim().split('\n').at(-1) ?? '{}'
      return JSON.parse(last) as Record<string, number>
    }
  }
}

describe('attack: fake identities flood the scheduler', { skip: process.platform !== 'linux' ? 'reads /proc' : undefined }, () => {
  let sched: Sched
  const hosts: Host[] = []
  const clients: SchedulerClient[] = []

  async function client (heartbeatMs: number): Promise<{ host: Host, client: SchedulerClient }> {
    const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    hosts.push(host)
    const c = new SchedulerClient({ libp2p: host }, { scheduler: sched.address, selfAddrs: () => announceAddrs(host), heartbeatMs, resolveTimeoutMs: 5000 })
    clients.push(c)
    await c.start()
    assert.equal(await c.waitConnected(10_000), true)
    return { host, client: c }
  }

  before(async () => { sched = await startScheduler() })
  after(async () => {
    for (const c of clients) await c.stop().catch(() => {})
    for (const h of hosts) await Promise.resolve(h.stop()).catch(() => {})
    if (sched.proc.exitCode === null) await sched.stop()
  })

  it('honest peers keep announcing and resolving during the flood; scheduler memory stays bounded', async () => {
    const fakes = await Promise.all([0, 1, 2].map(async () => (await client(60_000)).client))
    const a = await client(1000)
    const b = await client(1000)
    await sleep(500)
    const rssBefore = rssOf(sched.proc.pid as number)
    let rssPeak = rssBefore
    const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, rssOf(sched.proc.pid as number)) }, 100)

    const honest: Buffer[] = []
    const latencies: number[] = []
    /** how many of `ds` B is told A holds (one resolve, timed) */
    const resolvedToA = async (ds: Buffer[]): Promise<number> => {
      const t0 = performance.now()
      const m = await b.client.resolve(ds)
      latencies.push(performance.now() - t0)
      const id = a.host.peerId.toString()
      return ds.filter((d) => m.get(d.toString('hex'))?.some((h) => h.peerId === id) === true).length
    }
    const waitAllResolved = async (ds: Buffer[], what: string): Promise<void> => {
      const deadline = Date.now() + 15_000
      let got = 0
      while ((got = await resolvedToA(ds)) < ds.length) {
        if (Date.now() > deadline) assert.fail(`${what}: only ${got} of ${ds.length} honest chunks resolve to their holder\n${sched.out().slice(-2000)}`)
        await sleep(100)
      }
    }
    try {
      for (let round = 0; round < ROUNDS; round++) {
        // the fakes announce digests nobody holds, each round more; the honest announce after the flood arrived
        for (const f of fakes) f.announce(Array.from({ length: FAKE_DIGESTS_PER_ROUND / 1000 }, () => randomBytes(32 * 1000)).flatMap(split))
        await sleep(2500)
        const fresh = Array.from({ length: HONEST_CHUNKS }, (_, i) => digest(round * HONEST_CHUNKS + i))
        honest.push(...fresh)
        a.client.announce(fresh)
        await waitAllResolved(fresh, `round ${round}`)
        // B fetched them from A: a verified delivery, which vouches for A
        b.client.report([{ peerId: a.host.peerId.toString(), chunks: fresh.length, bytes: fresh.length * MiB, ms: 500, failed: false, bad: false }])
        // everything A announced so far still resolves
        assert.equal(await resolvedToA(honest), honest.length, `round ${round}: earlier honest chunks were lost`)
      }
    } finally {
      clearInterval(sampler)
    }
    const stats = await sched.stop()
    latencies.sort((x, y) => x - y)
    const report = {
      rssBeforeMiB: Math.round(rssBefore / MiB),
      rssPeakMiB: Math.round(rssPeak / MiB),
      honestResolveP50Ms: Math.round(latencies[latencies.length >> 1]),
      honestResolveMaxMs: Math.round(latencies[latencies.length - 1]),
      ...stats
    }
    console.log(`# scheduler flood: ${JSON.stringify(report)}`)
    // past half full each identity is held to its share, so the fakes' flood is mostly refused
    assert.ok(stats.refused >= FAKE_DIGESTS_PER_ROUND, `the flood hit the bounds: ${JSON.stringify(stats)}`)
    assert.ok(stats.entries <= MAX_ENTRIES, `entries within --max-entries: ${JSON.stringify(stats)}`)
    assert.ok(rssPeak - rssBefore < RSS_GROWTH_BOUND, `scheduler RSS grew by ${Math.round((rssPeak - rssBefore) / MiB)} MiB (bound ${RSS_GROWTH_BOUND / MiB} MiB)`)
  })
})

/** 32-byte digests out of a packed buffer */
function split (packed: Buffer): Buffer[] {
  const out: Buffer[] = []
  for (let i = 0; i < packed.length; i += 32) out.push(packed.subarray(i, i + 32))
  return out
}
