/**
 * The libp2p host: a persistent identity survives a restart (and is stored 0600), a broken key file is refused,
 * announced addresses carry no `/p2p/` and no wildcard.
 */
import '../polyfill.js'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { announceAddrs, createHost, loadOrCreateKey } from './index.js'

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
})
