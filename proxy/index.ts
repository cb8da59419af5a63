/**
 * @packageDocumentation
 * The registry mirror (`proxy/`): containerd, docker and skopeo pull ordinary OCI images through the node, blobs
 * come from the cache, then neighbours, then the upstream registry, and private content never leaks. Files:
 * - `mirror.ts`: the HTTP server and its assembly on a node (cache, swarm);
 * - `routes.ts`: requests validated against the distribution grammar; `errors.ts`: OCI error answers;
 * - `manifest-service.ts` + `manifest-store.ts`: manifests, resolved upstream, kept by digest;
 * - `blob-service.ts`: blobs; `blob-job.ts`: getting one blob once (neighbours' piece maps, then the upstream),
 *   hashed in order; `send.ts`: bytes to a client; `pieces.ts`: pieces through the fetch pipeline;
 * - `piece-map.ts`, `map-store.ts`, `map-exchange.ts`: piece maps, their files and `/rafspeer/piecemap/1.0.0`;
 * - `auth-gate.ts`: the upstream's say on every client's access; `upstream.ts`: upstream choice and Range source;
 * - `metrics.ts`; `containerd-hosts.ts`: hosts.toml for containerd.
 *
 * @example
 * ```ts
 * import { withMirror } from './proxy/index.js'
 * import { runDaemon, loadDaemonConfig } from './peer/index.js'
 * await runDaemon(await loadDaemonConfig(undefined, { proxy: { listen: '127.0.0.1:5002' } }), { assemble: withMirror() })
 * ```
 */
import { join } from 'node:path'
import type { ComponentLogger } from '../base/index.js'
import { startNode, type AssembleNode, type DaemonConfig, type DaemonNode, type Node } from '../peer/index.js'
import { Mirror, type MirrorInit } from './mirror.js'

export { Mirror, DEFAULT_PROXY_LISTEN, type MirrorComponents, type MirrorInit } from './mirror.js'
export { ProxyError, type ProxyErrorCode, type OciAnswer, type OciErrorCode } from './errors.js'
export { parseRoute, resolveRange, type Route, type RangeAsk } from './routes.js'
export { AuthGate, credentialKey, type AccessProbe, type AccessTarget, type Verdict } from './auth-gate.js'
export {
  DEFAULT_PIECE_BYTES, mapKey, pieceBlobId, pieceLayout, pieceBlob, pieceChunk, pieceDigest, pieceLength, encodeMap, decodeMap,
  type PieceLayout, type MapPart
} from './piece-map.js'
export { MapServer, askMap, PIECEMAP_PROTOCOL, type MapProvider } from './map-exchange.js'
export { ProxyMetrics, type ProxyMetricsJson } from './metrics.js'
export {
  writeHostsToml, removeHostsToml, criConfigHint, parseMirrorUrl, HOSTS_TOML_MARKER, ContainerdHostsError,
  type HostsWriteOptions, type HostsWriteResult, type HostsRemoveOptions, type HostsRemoveResult
} from './containerd-hosts.js'

/** The mirror's settings from a daemon's config. */
export function mirrorInit (config: DaemonConfig): MirrorInit {
  const p = config.proxy
  return {
    ...(p.listen !== undefined ? { listen: p.listen } : {}),
    dir: join(config.workDir, 'proxy'),
    ...(p.defaultUpstream !== undefined ? { defaultUpstream: p.defaultUpstream } : {}),
    upstreams: Object.fromEntries(Object.entries(p.upstreams).map(([h, u]) => [h, { ...(u.plainHttp !== undefined ? { plainHttp: u.plainHttp } : {}) }])),
    restrictUpstreams: p.restrictUpstreams,
    plainHttp: config.registry.plainHttp,
    authTtlMs: p.authTtlMs,
    pieceBytes: p.pieceBytes,
    upstreamTimeoutMs: p.upstreamTimeoutMs,
    stallMs: p.stallMs,
    mapTimeoutMs: config.p2p.requestTimeoutMs,
    fetch: { concurrency: config.fetch.concurrency, retries: config.fetch.retries }
  }
}

/**
 * A daemon assembly with the registry mirror: the node (`base`, default the composition root `startNode`), then,
 * when `proxy.listen` is set, the mirror over its cache and swarm. Stopping stops the mirror first.
 */
export function withMirror (base: (config: DaemonConfig, logger: ComponentLogger) => Promise<Node> = startNode): AssembleNode {
  return async (config: DaemonConfig, logger: ComponentLogger): Promise<DaemonNode> => {
    const node = await base(config, logger)
    if (config.proxy.listen === undefined) return node
    let mirror: Mirror
    try {
      mirror = await Mirror.start({ cache: node.cache, ...(node.swarm !== undefined ? { swarm: node.swarm } : {}), logger }, mirrorInit(config))
    } catch (err) {
      await node.stop().catch(() => {})
      throw err
    }
    return {
      ...node,
      extensions: [...(node.extensions ?? []), {
        name: 'proxy',
        registerMetrics: r => { mirror.metrics.register(r) },
        metricsJson: () => mirror.metrics.json(),
        info: () => ({ listen: mirror.address })
      }],
      stop: async () => {
        let first: unknown
        try { await mirror.stop() } catch (err) { first = err }
        try { await node.stop() } catch (err) { first ??= err }
        if (first !== undefined) throw first
      }
    }
  }
}
