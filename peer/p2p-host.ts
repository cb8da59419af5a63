/**
 * The libp2p host of a peer: TCP + noise + yamux, identify and ping, with a persistent Ed25519 identity so a
 * restarted daemon keeps its peer id (the scheduler and its neighbours know it by that id).
 *
 * @example
 * ```ts
 * import '../polyfill.js'
 * const node = await createPeerHost({ listen: ['/ip4/0.0.0.0/tcp/4001'], keyFile: '/var/lib/rafspeer/peer.key' })
 * console.log(node.peerId.toString(), announceAddrs(node))
 * await node.stop()
 * ```
 */
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify, type Identify } from '@libp2p/identify'
import type { Libp2p, PrivateKey } from '@libp2p/interface'
import { ping, type Ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'

export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/0']
/** A daemon talks to its scheduler and a few dozen neighbours; hundreds leave room for a busy seed. */
export const DEFAULT_MAX_CONNECTIONS = 256
export const DEFAULT_DIAL_TIMEOUT_MS = 5_000
/** Many peers behind one address (a node with several daemons, a NAT, the simulator on loopback). */
export const DEFAULT_INBOUND_CONNECTIONS_PER_SECOND = 100
/**
 * Yamux splits sends into frames of at most this size. Its 64 KiB default costs a third of the throughput of a
 * loopback connection (per-frame overhead in yamux and noise); 256 KiB still interleaves streams finely.
 */
export const YAMUX_MAX_MESSAGE_BYTES = 256 << 10
/** multicodec of `/p2p/<peer id>` */
const P2P_CODE = 421

export type PeerHost = Libp2p<{ identify: Identify, ping: Ping }>

export interface PeerHostInit {
  /** multiaddrs to listen on (`['/ip4/0.0.0.0/tcp/0']`) */
  listen?: string[]
  /** where the Ed25519 identity lives (created, mode 0600, when absent); a fresh identity per start without it */
  keyFile?: string
  maxConnections?: number
  dialTimeoutMs?: number
}

/** Starts a libp2p node; stop it with `node.stop()`. */
export async function createPeerHost (init: PeerHostInit = {}): Promise<PeerHost> {
  const privateKey = init.keyFile !== undefined ? await loadOrCreateKey(init.keyFile) : await generateKeyPair('Ed25519')
  const dialTimeout = init.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS
  return await createLibp2p({
    privateKey,
    addresses: { listen: init.listen ?? DEFAULT_LISTEN },
    transports: [tcp({ dialOpts: { noDelay: true }, listenOpts: { noDelay: true } })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ maxMessageSize: YAMUX_MAX_MESSAGE_BYTES })],
    services: { identify: identify(), ping: ping() },
    connectionManager: {
      maxConnections: init.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      maxParallelDials: 64,
      maxIncomingPendingConnections: 32,
      inboundConnectionThreshold: DEFAULT_INBOUND_CONNECTIONS_PER_SECOND,
      dialTimeout,
      addressDialTimeout: Math.min(dialTimeout, 3_000),
      inboundUpgradeTimeout: dialTimeout
    }
  })
}

/**
 * The identity in `keyFile` (protobuf-encoded private key, as libp2p writes them), created on first use. Written
 * to a temporary file and renamed, so a crash never leaves a truncated key behind.
 */
export async function loadOrCreateKey (keyFile: string): Promise<PrivateKey> {
  let bytes: Buffer | undefined
  try {
    bytes = await readFile(keyFile)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw Object.assign(new Error(`peer key ${keyFile} is not a libp2p private key (${(err as Error).message}); move it away to create a new identity`, { cause: err }),
        { code: 'RAFSPEER_ERR_PEER_KEY' })
    }
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(keyFile), { recursive: true })
  const tmp = `${keyFile}.${process.pid}.tmp`
  try {
    await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
    // mode at creation is masked by the umask, and 0600 is what we promise
    await chmod(tmp, 0o600)
    await rename(tmp, keyFile)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
  return key
}

/**
 * The node's listen addresses as multiaddr strings without `/p2p/<id>`, for the scheduler to hand to others.
 * Wildcard addresses are dropped when real interface addresses exist; `0.0.0.0` alone becomes `127.0.0.1`.
 */
export function announceAddrs (node: Pick<Libp2p, 'getMultiaddrs'>): string[] {
  const addrs = [...new Set(node.getMultiaddrs().map(ma => ma.decapsulateCode(P2P_CODE).toString()))]
  const isWildcard = (a: string): boolean => a.startsWith('/ip4/0.0.0.0/') || a.startsWith('/ip6/::/')
  const real = addrs.filter(a => !isWildcard(a))
  if (real.length > 0) return real
  return addrs.map(a => a.replace(/^\/ip4\/0\.0\.0\.0\//, '/ip4/127.0.0.1/').replace(/^\/ip6\/::\//, '/ip6/::1/'))
}
