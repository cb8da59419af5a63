/**
 * The one libp2p host of rafspeer, for daemons and the scheduler alike: TCP (no Nagle) + noise + yamux (large
 * frames), identify and ping, a persistent Ed25519 identity when given a key file, and connection limits sized by
 * the caller (a daemon talks to a scheduler and a few dozen neighbours; a scheduler to every peer of the swarm),
 * kept by a {@link ConnectionGuard} (`host.services.guard`): idle connections make room for new ones, a few per
 * IP address, and a peer that stops reading cannot make a connection queue more than a bounded amount.
 *
 * @example
 * ```ts
 * import '../polyfill.js'
 * const host = await createHost({ listen: ['/ip4/0.0.0.0/tcp/4001'], keyFile: '/var/lib/rafspeer/peer.key' })
 * console.log(host.peerId.toString(), announceAddrs(host))
 * await host.stop()
 * ```
 */
// the libp2p stack is loaded by the first createHost, not with this module: a daemon without P2P and every CLI
// command that only talks to a daemon start without it (about half a second of imports)
import type { Identify } from '@libp2p/identify'
import type { Libp2p, PrivateKey } from '@libp2p/interface'
import type { Ping } from '@libp2p/ping'
import { ConnectionGuard, DEFAULT_IDLE_CONNECTION_MS, type ConnectionGuardComponents } from './connection-guard.js'
import { loadOrCreateKey } from './key.js'

export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/0']
/** A daemon talks to its scheduler and a few dozen neighbours; hundreds leave room for a busy seed. */
export const DEFAULT_MAX_CONNECTIONS = 256
export const DEFAULT_DIAL_TIMEOUT_MS = 5_000
/** Many peers behind one address (a node with several daemons, a NAT, the simulator on loopback). */
export const DEFAULT_INBOUND_CONNECTIONS_PER_SECOND = 100
export const DEFAULT_MAX_INCOMING_PENDING = 32
/** inbound connections from one IP address: at least this many, and an eighth of `maxConnections` */
export const MIN_CONNECTIONS_PER_IP = 32
/**
 * Connections libp2p accepts past `maxConnections`: libp2p refuses every inbound connection at its own limit, so
 * it is set this much higher and the guard closes an idle connection for each one past ours.
 */
export const EVICTION_HEADROOM = 32
/**
 * Yamux splits sends into frames of at most this size. Its 64 KiB default costs a third of the throughput of a
 * loopback connection (per-frame overhead in yamux and noise); 256 KiB still interleaves streams finely.
 */
export const YAMUX_MAX_MESSAGE_BYTES = 256 << 10
/** multicodec of `/p2p/<peer id>` */
export const P2P_CODE = 421

export type Host = Libp2p<{ identify: Identify, ping: Ping, guard: ConnectionGuard }>

export interface HostInit {
  /** multiaddrs to listen on (`['/ip4/0.0.0.0/tcp/0']`) */
  listen?: string[]
  /** the identity; else loaded from (or created in) `keyFile`; else a fresh one per start */
  privateKey?: PrivateKey
  /** where the Ed25519 identity lives (created, mode 0600, when absent) */
  keyFile?: string
  /** connections kept open (256); each new one past it closes an idle one, or is closed when none is idle */
  maxConnections?: number
  /**
   * inbound connections from one IP address at once (an eighth of `maxConnections`, at least 32); loopback is not
   * limited unless `limitLoopback`
   */
  maxConnectionsPerIp?: number
  limitLoopback?: boolean
  /** a connection with no stream for this long is closed unless its peer is tagged; 0: never (30 s) */
  idleConnectionMs?: number
  /** bytes a connection may queue for a peer that does not read, in each buffer below its streams, before it is aborted (32 MiB) */
  maxConnectionWriteBufferBytes?: number
  /** new inbound connections accepted per second from one address */
  inboundConnectionThreshold?: number
  /** inbound connections being upgraded at once */
  maxIncomingPendingConnections?: number
  dialTimeoutMs?: number
}

/** Starts a libp2p host; stop it with `host.stop()`. */
export async function createHost (init: HostInit = {}): Promise<Host> {
  const [{ noise }, { yamux }, { generateKeyPair }, { identify }, { ping }, { tcp }, { createLibp2p }] = await Promise.all([
    import('@chainsafe/libp2p-noise'), import('@chainsafe/libp2p-yamux'), import('@libp2p/crypto/keys'),
    import('@libp2p/identify'), import('@libp2p/ping'), import('@libp2p/tcp'), import('libp2p')
  ])
  const privateKey = init.privateKey ??
    (init.keyFile !== undefined ? await loadOrCreateKey(init.keyFile) : await generateKeyPair('Ed25519'))
  const dialTimeout = init.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS
  const maxConnections = init.maxConnections ?? DEFAULT_MAX_CONNECTIONS
  const guard = new ConnectionGuard({
    maxConnections,
    // a scheduler sized for thousands of peers takes many behind one NAT; a daemon's few dozen neighbours do not
    maxInboundPerIp: init.maxConnectionsPerIp ?? Math.max(MIN_CONNECTIONS_PER_IP, Math.ceil(maxConnections / 8)),
    limitLoopback: init.limitLoopback ?? false,
    idleMs: init.idleConnectionMs ?? DEFAULT_IDLE_CONNECTION_MS,
    ...(init.maxConnectionWriteBufferBytes !== undefined ? { maxWriteBufferBytes: init.maxConnectionWriteBufferBytes } : {})
  })
  return await createLibp2p({
    privateKey,
    addresses: { listen: init.listen ?? DEFAULT_LISTEN },
    transports: [tcp({ dialOpts: { noDelay: true }, listenOpts: { noDelay: true } })],
    connectionEncrypters: [noise()],
    streamMuxers: [() => guard.capMuxer(yamux({ maxMessageSize: YAMUX_MAX_MESSAGE_BYTES })())],
    services: { identify: identify(), ping: ping(), guard: (components: ConnectionGuardComponents) => guard.attach(components) },
    connectionGater: guard.gater,
    connectionManager: {
      maxConnections: maxConnections + EVICTION_HEADROOM,
      maxParallelDials: 64,
      maxIncomingPendingConnections: init.maxIncomingPendingConnections ?? DEFAULT_MAX_INCOMING_PENDING,
      inboundConnectionThreshold: init.inboundConnectionThreshold ?? DEFAULT_INBOUND_CONNECTIONS_PER_SECOND,
      dialTimeout,
      addressDialTimeout: Math.min(dialTimeout, 3_000),
      inboundUpgradeTimeout: dialTimeout
    }
  })
}

/**
 * The host's listen addresses as multiaddr strings without `/p2p/<id>`, for the scheduler to hand to others.
 * Wildcard addresses are dropped when real interface addresses exist; `0.0.0.0` alone becomes `127.0.0.1`.
 */
export function announceAddrs (host: Pick<Libp2p, 'getMultiaddrs'>): string[] {
  const addrs = [...new Set(host.getMultiaddrs().map(ma => ma.decapsulateCode(P2P_CODE).toString()))]
  const isWildcard = (a: string): boolean => a.startsWith('/ip4/0.0.0.0/') || a.startsWith('/ip6/::/')
  const real = addrs.filter(a => !isWildcard(a))
  if (real.length > 0) return real
  return addrs.map(a => a.replace(/^\/ip4\/0\.0\.0\.0\//, '/ip4/127.0.0.1/').replace(/^\/ip6\/::\//, '/ip6/::1/'))
}
