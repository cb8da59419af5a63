/**
 * The libp2p host: a persistent identity survives a restart (and is stored 0600), a broken key file is refused,
 * announced addresses carry no `/p2p/` and no wildcard. Its connection guard: a full host makes room for a
 * newcomer by closing an idle connection, idle connections are closed unless busy or tagged, inbound connections
 * per IP address are capped (loopback only when asked), and a connection whose peer stops reading is aborted
 * once it queued its cap.
 */
import '../polyfill.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { KEEP_TAG_VALUE, announceAddrs, createHost, loadOrCreateKey, sendWithBackpressure, tagPeer, type Host, type HostInit } from './index.js'
import { startStallingRelay } from '../test/helpers/stalling-relay.js'

const ECHO = '/rafspeer-test/echo/1.0.0'
const FLOOD = '/rafspeer-test/flood/1.0.0'
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** A host answering ECHO (one message back, then close) on loopback, with its dialable address. */
async function echoHost (init: HostInit = {}): Promise<{ host: Host, addr: Multiaddr }> {
  const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'], ...init })
  await host.handle(ECHO, (stream: Stream) => {
    stream.addEventListener('message', evt => { stream.send(evt.data); void stream.close().catch(() => {}) }, { once: true })
  })
  return { host, addr: multiaddr(`${announceAddrs(host)[0]!}/p2p/${host.peerId.toString()}`) }
}

/** One ECHO round trip from `from` to `addr`. */
async function echo (from: Host, addr: Multiaddr): Promise<string> {
  const stream = await from.dialProtocol(addr, ECHO, { signal: AbortSignal.timeout(5_000) })
  stream.send(Buffer.from('hello'))
  let got = ''
  for await (const chunk of stream) got += Buffer.from(chunk.subarray()).toString()
  return got
}

async function startHosts (n: number): Promise<Host[]> {
  const hosts: Host[] = []
  for (let i = 0; i < n; i++) hosts.push(await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] }))
  return hosts
}

describe('p2p host', () => {
  it('keeps its peer id across restarts through the key file (mode 0600)', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'rafspeer-p2p-host-'))
    t.after(async () => { await rm(dir, { recursive: true, force: true }) })
    const keyFile = join(dir, 'nested', 'peer.key')
    const first = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'], keyFile })
    let id: string
    try {
      id = first.peerId.toString()
      assert.equal(first.peerId.type, 'Ed25519')
    } finally {
      await first.stop()
    }
    assert.equal((await stat(keyFile)).mode & 0o777, 0o600)
    const second = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'], keyFile })
    try {
      assert.equal(second.peerId.toString(), id)
    } finally {
      await second.stop()
    }
    const other = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      assert.notEqual(other.peerId.toString(), id, 'without a key file every start is a new identity')
    } finally {
      await other.stop()
    }
  })

  it('refuses a key file that is not a libp2p key', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'rafspeer-p2p-host-'))
    t.after(async () => { await rm(dir, { recursive: true, force: true }) })
    const keyFile = join(dir, 'peer.key')
    await writeFile(keyFile, 'not a key')
    await assert.rejects(loadOrCreateKey(keyFile), /is not a libp2p private key/)
  })

  it('announces listen addresses without /p2p, wildcards only as loopback', async () => {
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      const addrs = announceAddrs(node)
      assert.equal(addrs.length, 1)
      assert.match(addrs[0]!, /^\/ip4\/127\.0\.0\.1\/tcp\/\d+$/)
    } finally {
      await node.stop()
    }
    const fake = (list: string[]): { getMultiaddrs: () => ReturnType<typeof multiaddr>[] } => ({ getMultiaddrs: () => list.map(a => multiaddr(a)) })
    const id = '12D3KooWMCbZRHH1hgs7LjJR3jQVJC2VjWLuFTJFaP7EMSbHKWdR'
    assert.deepEqual(announceAddrs(fake([`/ip4/0.0.0.0/tcp/4001/p2p/${id}`])), ['/ip4/127.0.0.1/tcp/4001'])
    assert.deepEqual(announceAddrs(fake([`/ip4/0.0.0.0/tcp/4001/p2p/${id}`, `/ip4/10.1.2.3/tcp/4001/p2p/${id}`])), ['/ip4/10.1.2.3/tcp/4001'])
  })

  it('connects two hosts over tcp + noise + yamux', async () => {
    const a = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const b = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      const rtt = await a.services.ping.ping(multiaddr(`${announceAddrs(b)[0]!}/p2p/${b.peerId.toString()}`))
      assert.ok(rtt >= 0)
      assert.equal(a.getConnections(b.peerId).length, 1)
    } finally {
      await a.stop()
      await b.stop()
    }
  })

  it('makes room for a newcomer when full: an idle connection is closed, not the new one', async () => {
    const { host: server, addr } = await echoHost({ maxConnections: 8 })
    const idle = await startHosts(12)
    const honest = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      // 12 neighbours connect and open no stream (before the guard, the 9th and later were refused)
      const dialled = await Promise.allSettled(idle.map(async h => await h.dial(addr)))
      assert.ok(dialled.filter(d => d.status === 'fulfilled').length >= 8)
      await sleep(300)
      assert.ok(server.getConnections().length <= 8, `${server.getConnections().length} connections kept`)
      assert.equal(await echo(honest, addr), 'hello', 'the newcomer is served')
      assert.ok(server.services.guard.counters.evicted >= 4, JSON.stringify(server.services.guard.counters))
    } finally {
      for (const h of [honest, ...idle, server]) await h.stop()
    }
  })

  it('closes connections idle past idleConnectionMs, but not busy ones nor tagged peers', async () => {
    const { host: server, addr } = await echoHost({ idleConnectionMs: 600 })
    await server.handle(FLOOD, () => { /* holds the stream open */ })
    const [idle, busy, tagged] = await startHosts(3) as [Host, Host, Host]
    try {
      for (const h of [idle, busy, tagged]) await h.dial(addr)
      await tagPeer(server, tagged.peerId, 'test-neighbour', 10)
      const open = await busy.dialProtocol(addr, FLOOD)
      await sleep(2_500)
      const peers = server.getConnections().map(c => c.remotePeer.toString())
      assert.ok(!peers.includes(idle.peerId.toString()), 'the idle connection was closed')
      assert.ok(peers.includes(busy.peerId.toString()), 'the connection with an open stream was kept')
      assert.ok(peers.includes(tagged.peerId.toString()), 'the tagged peer was kept')
      assert.equal(server.services.guard.counters.reaped, 1)
      open.abort(new Error('done'))
    } finally {
      for (const h of [idle, busy, tagged, server]) await h.stop()
    }
  })

  it('caps inbound connections per IP address, loopback only when asked; kept peers are never evicted', async () => {
    const { host: limited, addr } = await echoHost({ maxConnectionsPerIp: 3, limitLoopback: true })
    const { host: open, addr: openAddr } = await echoHost({ maxConnectionsPerIp: 3 })
    const clients = await startHosts(5)
    try {
      const toLimited = await Promise.allSettled(clients.map(async h => await h.dial(addr)))
      assert.equal(toLimited.filter(d => d.status === 'fulfilled').length, 3)
      assert.equal(limited.services.guard.counters.refusedPerIp, 2)
      const toOpen = await Promise.allSettled(clients.map(async h => await h.dial(openAddr)))
      assert.equal(toOpen.filter(d => d.status === 'fulfilled').length, 5, 'loopback is not limited by default')
    } finally {
      for (const h of [...clients, limited, open]) await h.stop()
    }
    // a full host of kept peers closes the newcomer instead
    const { host: full, addr: fullAddr } = await echoHost({ maxConnections: 8 })
    const kept = await startHosts(8)
    const late = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      for (const h of kept) {
        await tagPeer(full, h.peerId, 'test-keep', KEEP_TAG_VALUE)
        await h.dial(fullAddr)
      }
      await late.dial(fullAddr).catch(() => {})
      await sleep(500)
      const peers = full.getConnections().map(c => c.remotePeer.toString())
      assert.equal(peers.length, 8)
      assert.ok(kept.every(h => peers.includes(h.peerId.toString())), 'no kept peer was evicted')
      assert.equal(full.services.guard.counters.refusedFull, 1)
    } finally {
      for (const h of [late, ...kept, full]) await h.stop()
    }
  })

  it('aborts a connection that queued its write cap for a peer that reads only a trickle', async () => {
    const server = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'], maxConnectionWriteBufferBytes: 256 << 10 })
    const writers: Array<Promise<unknown>> = []
    await server.handle(FLOOD, (stream: Stream) => {
      // many streams writing at once (from the asker's first byte): each drain of the socket lets each of them
      // queue a frame more below the streams
      stream.addEventListener('message', () => {
        writers.push((async () => {
          for (;;) await sendWithBackpressure(stream, Buffer.alloc(256 << 10), { timeoutMs: 60_000, what: 'flood' })
        })().catch((err: Error) => err))
      }, { once: true })
    })
    const port = Number(announceAddrs(server)[0]!.split('/')[4])
    // 4 MiB at full speed (the streams' windows grow), then 16 KiB every 20 ms
    const relay = await startStallingRelay(port, { passBytes: 4 << 20, trickleBytes: 16 << 10, trickleMs: 20 })
    const client = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    try {
      const via = multiaddr(`/ip4/127.0.0.1/tcp/${relay.port}/p2p/${server.peerId.toString()}`)
      const streams: Stream[] = []
      for (let i = 0; i < 8; i++) streams.push(await client.dialProtocol(via, FLOOD))
      for (const s of streams) { s.addEventListener('message', () => {}); s.send(Buffer.from('go')) }
      const deadline = Date.now() + 10_000
      while (server.getConnections(client.peerId).length > 0 && Date.now() < deadline) await sleep(50)
      assert.equal(server.getConnections(client.peerId).length, 0, 'the connection of the trickling peer was aborted')
      const ended = await Promise.all(writers)
      assert.ok(ended.every(e => e instanceof Error), 'every writer saw its stream end')
    } finally {
      await client.stop()
      await relay.close()
      await server.stop()
    }
  })
})
