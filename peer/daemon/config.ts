/**
 * The daemon's configuration: one JSON file, validated once at the edge against a schema with documented
 * defaults; command-line flags override it; every problem is reported at once; the result is frozen.
 *
 * Nydus users: `fetch.amplifyBytes` is `amplify_io` / `rafs.batch_size`, `prefetch.bandwidthBytesPerSecond` is
 * `fs_prefetch.bandwidth_rate`, `prefetch.policy: 'all'` is `prefetch_all`, `cache.dir` is the blobcache `work_dir`.
 *
 * @example
 * ```json
 * { "version": 1, "socket": "/run/rafspeer/rafspeer.sock", "cache": { "capBytes": "20GiB" },
 *   "prefetch": { "policy": "table", "bandwidthBytesPerSecond": "50MiB" }, "metrics": { "listen": "127.0.0.1:9110" } }
 * ```
 */
import { readFile } from 'node:fs/promises'
import { isAbsolute, join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import { DEFAULT_HEAP_GROWING_PERCENT, RafspeerError, describeError, parseByteSize, parseHostPort } from '../../base/index.js'
import { parseRedisSeed } from '../../scheduler/index.js'

import { DEFAULT_SOCKET } from './admin-client.js'

export { DEFAULT_SOCKET }
export const DEFAULT_WORK_DIR = '/var/lib/rafspeer'
export const DEFAULT_P2P_LISTEN = '/ip4/0.0.0.0/tcp/0'

export class ConfigError extends RafspeerError<'RAFSPEER_ERR_CONFIG'> {
  /** one `path: problem` per issue */
  readonly problems: string[]
  constructor (message: string, problems: string[] = [], options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_CONFIG', message, options)
    this.problems = problems
  }
}

const byteSize = z.union([z.number(), z.string()], { error: 'expected a byte count or a size such as "20GiB"' })
  .transform((v, ctx) => {
    const n = typeof v === 'number' ? v : parseByteSize(v)
    if (n === undefined || !Number.isSafeInteger(n) || n < 0) {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a byte size (a whole number ≥ 0, or like "512KiB", "20GiB", "1GB")` })
      return z.NEVER
    }
    return n
  })

/** What is wrong with `s` as a multiaddr (with `p2p`: one naming its peer), or undefined. */
function multiaddrProblem (s: string, p2p: boolean): string | undefined {
  let ok: boolean
  try {
    const ma = multiaddr(s)
    ok = !p2p || ma.getComponents().some(c => c.name === 'p2p')
  } catch {
    ok = false
  }
  if (ok) return undefined
  return p2p ? `${JSON.stringify(s)} is not a multiaddr naming its peer (like /ip4/10.0.0.5/tcp/8002/p2p/12D3KooW…)` : `${JSON.stringify(s)} is not a multiaddr (like /ip4/0.0.0.0/tcp/8003)`
}

/** A multiaddr; with `p2p` it must name the peer (`/p2p/<id>`), which the noise handshake then checks. */
const multiaddrString = (p2p: boolean): z.ZodType<string> => z.string().superRefine((s, ctx) => {
  const problem = multiaddrProblem(s, p2p)
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem })
})

/** One scheduler multiaddr or a list of them, as a list (a problem with one of a list names its index). */
const schedulerAddresses = z.union([z.string(), z.array(z.string()).min(1, { error: 'an empty list names no scheduler' })],
  { error: 'expected a scheduler multiaddr or a list of them' })
  .superRefine((v, ctx) => {
    for (const [i, s] of (typeof v === 'string' ? [v] : v).entries()) {
      const problem = multiaddrProblem(s, true)
      if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem, path: typeof v === 'string' ? [] : [i] })
    }
  })
  .transform(v => typeof v === 'string' ? [v] : v)

/** A Redis Cluster seed (`host:port`, `[v6]:port`) or a `redis[s]://` URL, as the directory parses it. */
const redisSeed = z.string().superRefine((s, ctx) => {
  try {
    parseRedisSeed(s)
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: describeError(err) })
  }
})

const absPath = z.string().refine(p => isAbsolute(p), { error: 'must be an absolute path' })
const int = (min: number, max: number): z.ZodInt => z.int({ error: 'expected a whole number' })
  .min(min, { error: `must be at least ${min}` }).max(max, { error: `must be at most ${max}` })

/** The schema; every key is optional in the file and gets the default documented beside it. */
export const daemonConfigSchema = z.strictObject({
  /** format of this file; only 1 exists */
  version: z.literal(1, { error: 'only version 1 is known' }).default(1),
  /** the admin API's Unix socket */
  socket: absPath.default(DEFAULT_SOCKET),
  /** state of the daemon: bootstraps, the cache (by default) */
  workDir: absPath.default(DEFAULT_WORK_DIR),
  cache: z.strictObject({
    /** default `${workDir}/cache` */
    dir: absPath.optional(),
    /** total disk bytes of cached chunks; 0 = unlimited (default) */
    capBytes: byteSize.default(0)
  }).prefault({}),
  fetch: z.strictObject({
    /** adjacent missing chunks are fetched together up to this many bytes (nydus `amplify_io`, 1 MiB) */
    amplifyBytes: byteSize.default(1 << 20),
    /** batches in flight (8) */
    concurrency: int(1, 1024).default(8),
    /** an attempt of a batch at a source that delivers no chunk for this long is given up (10 s) */
    timeoutMs: int(1, 3_600_000).default(10_000),
    /** extra rounds over all sources after a transient failure (2) */
    retries: int(0, 100).default(2),
    /** a read not served by then fails with EIO (30 s) */
    deadlineMs: int(1, 3_600_000).default(30_000),
    /**
     * a chunk a read has waited this long for on the neighbours is asked of the registry too, whichever answers
     * first serving the read (default: two thirds of `deadlineMs`; a quarter more while more neighbours get the chunk)
     */
    readHandOffMs: int(1, 3_600_000).optional(),
    /** a file read sequentially has this many bytes fetched ahead of the reader (4 MiB; 0 = off) */
    readaheadBytes: byteSize.default(4 << 20),
    /** chunk bytes per second this node takes in from all sources together; 0 = unlimited (default) */
    downloadBytesPerSecond: byteSize.default(0)
  }).prefault({}),
  p2p: z.strictObject({
    /** take part in the swarm: serve cached chunks, fetch from neighbours (default: on when a scheduler is set) */
    enabled: z.boolean().optional(),
    /** libp2p listen multiaddrs (`/ip4/0.0.0.0/tcp/0`: any port, announced to the scheduler) */
    listen: z.array(multiaddrString(false)).min(1).default([DEFAULT_P2P_LISTEN]),
    /** the node's persistent identity (default `${workDir}/peer.key`, created mode 0600) */
    keyFile: absPath.optional(),
    /** chunk requests served at once; more are answered busy (16) */
    maxConcurrentUploads: int(0, 4096).default(16),
    /**
     * chunk requests a neighbour's read waits for, answered past maxConcurrentUploads while uploads no read waits for
     * (prefetch) hold every slot (a quarter of maxConcurrentUploads)
     */
    maxUrgentUploads: int(0, 4096).optional(),
    /** upload bytes per second to neighbours; 0 = unlimited (default) */
    uploadBytesPerSecond: byteSize.default(0),
    /** distinct neighbours one fetch spreads over (3) */
    maxHolders: int(1, 16).default(3),
    /** a neighbour silent this long has its chunks asked of the next one too (300 ms) */
    hedgeAfterMs: int(1, 60_000).default(300),
    /** deadline of a dial and of every read from a neighbour (3 s) */
    requestTimeoutMs: int(1, 600_000).default(3_000),
    /** bad chunks after which a neighbour is never asked again by this daemon (3) */
    banThreshold: int(1, 1000).default(3),
    /** how long a chunk request waits for a chunk this node is fetching itself (the scheduler sent the asker here) */
    claimWaitMs: int(0, 600_000).default(20_000),
    /**
     * what the scheduler indexes: `blobs` (default: who works on which blob; neighbours tell each other their chunks
     * over /rafspeer/have/1.0.0 — the design that scales to thousands of nodes, and the only one Redis keeps) or
     * `chunks` (each chunk's holders, the scheduler's index growing with every chunk of every image)
     */
    directory: z.enum(['chunks', 'blobs']).default('blobs'),
    /** upload slots one neighbour is sure of; it borrows more only while as many stay free (a quarter of maxConcurrentUploads) */
    maxUploadsPerPeer: int(1, 4096).optional(),
    /** libp2p connections kept; each new one past it closes an idle one (256) */
    maxConnections: int(8, 100_000).default(256),
    /** inbound connections from one IP address, loopback excepted (an eighth of maxConnections, at least 32) */
    maxConnectionsPerIp: int(1, 100_000).optional(),
    /** a connection with no stream for this long is closed, unless it is the scheduler's or a recent exchange's; 0 = never (30 s) */
    idleConnectionMs: int(0, 3_600_000).default(30_000)
  }).prefault({}),
  scheduler: z.strictObject({
    /**
     * the scheduler's multiaddr with its peer id (`rafspeer scheduler` prints it), or a list of schedulers sharing one
     * swarm (in front of one Redis Cluster): one is used at a time, the next when it fails; absent: no scheduler
     */
    address: schedulerAddresses.optional(),
    /** run a scheduler inside this daemon, on its P2P listen addresses (others point `address` here) */
    embedded: z.boolean().default(false),
    /**
     * the embedded scheduler keeps its directory on this Redis Cluster (seeds `host:port` or a `redis://` URL), shared
     * with every scheduler using it; needs `embedded` and `p2p.directory: "blobs"` (absent: in this process's memory)
     */
    redis: z.array(redisSeed).min(1, { error: 'an empty list names no Redis' }).optional(),
    /** locality label, `|`-separated from wide to narrow (`country|region|zone|rack`); neighbours in it are preferred */
    zone: z.string().max(256).default(''),
    /** a resolve not answered by then goes on without the scheduler (200 ms) */
    resolveTimeoutMs: int(1, 5_000).default(200),
    /** heartbeat interval; the scheduler drops a peer silent for 3 of them (5 s) */
    heartbeatMs: int(50, 60_000).default(5_000)
  }).prefault({}),
  prefetch: z.strictObject({
    /** what a mount prefetches unless the request says: the bootstrap's prefetch table, everything, or nothing */
    policy: z.enum(['table', 'all', 'none']).default('table'),
    /** prefetch bytes per second, whole daemon; 0 = unlimited (default) */
    bandwidthBytesPerSecond: byteSize.default(0)
  }).prefault({}),
  mount: z.strictObject({
    /**
     * `auto`: the kernel's EROFS over the cache files when every blob is complete; else the kernel's EROFS over
     * lazily filled blob files (`erofs-lazy`) where the host can (native addon, /dev/fuse); per-file FUSE otherwise
     */
    defaultMode: z.enum(['auto', 'erofs-lazy', 'fuse', 'kernel']).default('auto'),
    /**
     * the kernel's EROFS reads the cache files with direct I/O where it reads them itself (kernel mode, erofs-lazy
     * over complete blobs; Linux 6.14+): `auto` for images whose file bytes are mostly (80%) in files of 1 MiB or
     * more — large files then read at native speed, but small files lose the readahead of their neighbours
     */
    directRead: z.enum(['auto', 'on', 'off']).default('auto')
  }).prefault({}),
  lazyKernel: z.strictObject({
    /** threads answering the blob files' FUSE requests from the cache (4) */
    threads: int(1, 64).default(4),
    /** the largest READ asked of the blob files (1 MiB; 4 KiB to 1 MiB) */
    maxReadBytes: byteSize.default(1 << 20).refine(n => n >= 4096 && n <= 1 << 20 && n % 4096 === 0, { error: 'must be a multiple of 4KiB between 4KiB and 1MiB' }),
    /**
     * open the blob files with direct I/O: no second page cache under EROFS's, but no readahead of neighbouring
     * files either (default false: bench/RESULTS.md measured it slower for sequential reads and tar)
     */
    directIo: z.boolean().default(false)
  }).prefault({}),
  fuse: z.strictObject({
    kernelCache: z.boolean().default(true),
    entryTimeoutS: int(0, 31_536_000).default(86_400),
    attrTimeoutS: int(0, 31_536_000).default(86_400),
    allowOther: z.boolean().default(true)
  }).prefault({}),
  registry: z.strictObject({
    /** `auto`: loopback and localhost registries speak http, the rest https */
    plainHttp: z.union([z.boolean(), z.literal('auto')], { error: 'expected true, false or "auto"' }).default('auto')
  }).prefault({}),
  proxy: z.strictObject({
    /** `host:port` of the registry mirror containerd, docker and skopeo pull through (absent: no mirror) */
    listen: z.string().refine(s => parseHostPort(s) !== undefined, { error: 'expected host:port' }).optional(),
    /** the registry of requests without containerd's `?ns=` (docker, skopeo): `docker.io`, `ghcr.io`, `10.0.0.5:5000` */
    defaultUpstream: z.string().regex(/^[a-zA-Z0-9.-]+(?::\d{1,5})?$|^\[[0-9a-fA-F:]+\](?::\d{1,5})?$/, { error: 'expected host[:port]' }).optional(),
    /** per upstream `host[:port]`: `plainHttp` overrides `registry.plainHttp` for it */
    upstreams: z.record(z.string(), z.strictObject({ plainHttp: z.boolean().optional() })).default({}),
    /** refuse `?ns=` upstreams that are neither `defaultUpstream` nor listed in `upstreams` (default false) */
    restrictUpstreams: z.boolean().default(false),
    /** how long the upstream's yes to a client's credentials for a repository or blob is trusted (60 s) */
    authTtlMs: int(0, 3_600_000).default(60_000),
    /** opaque layers move between nodes in pieces of this size (4 MiB; 64 KiB to 16 MiB, a multiple of 4 KiB) */
    pieceBytes: byteSize.default(4 << 20).refine(n => n >= 65536 && n <= 16 << 20 && n % 4096 === 0, { error: 'must be a multiple of 4KiB between 64KiB and 16MiB' }),
    /** deadline of upstream calls, and how long an upstream body may be silent (10 s) */
    upstreamTimeoutMs: int(100, 600_000).default(10_000),
    /** a client that received no new byte for this long is cut off, so it resumes elsewhere (30 s) */
    stallMs: int(100, 600_000).default(30_000)
  }).prefault({}),
  snapshotter: z.strictObject({
    /** Unix socket of the containerd remote snapshotter (`[proxy_plugins.rafspeer] address`; absent: none) */
    address: z.string().min(1).max(100, { error: 'a Unix socket path is at most 100 bytes' }).optional(),
    /** snapshots, their metadata and the image mounts (default `<workDir>/snapshotter`) */
    root: z.string().min(1).optional(),
    /** how a container's image is mounted: `auto` (kernel EROFS once the cache holds it all, erofs-lazy or FUSE before), `erofs-lazy`, `fuse`, `kernel` */
    mode: z.enum(['auto', 'erofs-lazy', 'fuse', 'kernel']).default('auto'),
    /** how long an image no container uses stays mounted for the next one (30 s; 0: unmounted with its last container) */
    idleUnmountMs: int(0, 86_400_000).default(30_000),
    /**
     * the admin socket of a running rafspeer daemon that mounts the images (`rafspeer snapshotter --daemon-socket`):
     * the snapshotter then runs without a node of its own and can restart while containers keep their files
     * (absent: the snapshotter's own node mounts them)
     */
    daemonSocket: z.string().min(1).optional(),
    /**
     * serve CRI's image service on this Unix socket, forwarding to containerd (`containerdAddress`) and keeping each
     * pull's registry credentials for the lazy reads of its image: point the kubelet's `--image-service-endpoint`
     * (or `rafspeer rpull --address`) here (absent: not served; lazy reads use the daemon's credentials)
     */
    imageServiceAddress: z.string().min(1).max(100, { error: 'a Unix socket path is at most 100 bytes' }).optional(),
    /** containerd's grpc socket, where the image service forwards */
    containerdAddress: z.string().min(1).default('/run/containerd/containerd.sock')
  }).prefault({}),
  metrics: z.strictObject({
    /** `host:port` of an optional TCP endpoint serving only GET /metrics (absent: Unix socket only) */
    listen: z.string().refine(s => parseHostPort(s) !== undefined, { error: 'expected host:port' }).optional()
  }).prefault({}),
  log: z.strictObject({
    level: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
    format: z.enum(['json', 'text']).default('json')
  }).prefault({}),
  /** the Node.js process the daemon runs in */
  runtime: z.strictObject({
    /**
     * V8's old generation grows to `1 + heapGrowingPercent / 100` times what a full collection left alive before the
     * next one (0: V8's own choice, which for a daemon moving chunks means a full collection every half second;
     * see base/heap.ts); a `--heap-growing-percent` given to node itself wins
     */
    heapGrowingPercent: int(0, 1000).default(DEFAULT_HEAP_GROWING_PERCENT)
  }).prefault({})
}).superRefine((c, ctx) => {
  if (c.scheduler.redis === undefined) return
  if (!c.scheduler.embedded) ctx.addIssue({ code: 'custom', path: ['scheduler', 'redis'], message: 'only an embedded scheduler keeps its directory on Redis: set scheduler.embedded (or run `rafspeer scheduler --redis`)' })
  // the directory on Redis is blob-level: a chunk-level node would announce every chunk as a blob
  if (c.p2p.directory !== 'blobs') ctx.addIssue({ code: 'custom', path: ['scheduler', 'redis'], message: 'the directory on Redis is blob-level: needs p2p.directory "blobs"' })
}).transform(c => ({
  ...c,
  cache: { ...c.cache, dir: c.cache.dir ?? join(c.workDir, 'cache') },
  snapshotter: { ...c.snapshotter, root: c.snapshotter.root ?? join(c.workDir, 'snapshotter') },
  p2p: {
    ...c.p2p,
    enabled: c.p2p.enabled ?? (c.scheduler.address !== undefined || c.scheduler.embedded),
    keyFile: c.p2p.keyFile ?? join(c.workDir, 'peer.key')
  }
}))

type DeepReadonly<T> = T extends Array<infer U> ? ReadonlyArray<DeepReadonly<U>>
  : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T

/** A validated, complete, frozen configuration. */
export type DaemonConfig = DeepReadonly<z.output<typeof daemonConfigSchema>>

type DeepPartial<T> = T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T
/** What a file or flags may give: any subset of the keys. */
export type DaemonConfigInput = DeepPartial<z.input<typeof daemonConfigSchema>>

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** `over` onto `base`, recursively through objects; undefined values in `over` leave `base` alone. */
function merge (base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) {
    if (v !== undefined) out[k] = merge(base[k], v)
  }
  return out
}

function deepFreeze<T> (v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    for (const x of Object.values(v)) deepFreeze(x)
    Object.freeze(v)
  }
  return v
}

function describeIssues (issues: z.core.$ZodIssue[]): string[] {
  const out: string[] = []
  for (const issue of issues) {
    const at = issue.path.map(String).join('.')
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) out.push(`${at === '' ? k : `${at}.${k}`}: unknown key`)
    } else {
      out.push(`${at === '' ? '(root)' : at}: ${issue.message}`)
    }
  }
  return out
}

/**
 * Validates `raw` (a parsed file, or `{}`) with `overrides` laid over it. Throws one `ConfigError` naming every
 * problem; `source` names the file in its message.
 */
export function parseDaemonConfig (raw: unknown, overrides: DaemonConfigInput = {}, source = 'config'): DaemonConfig {
  if (!isPlainObject(raw)) throw new ConfigError(`${source}: expected a JSON object at the top`, ['(root): expected an object'])
  const r = daemonConfigSchema.safeParse(merge(raw, overrides))
  if (!r.success) {
    const problems = describeIssues(r.error.issues)
    throw new ConfigError(`${source}: ${problems.length} problem${problems.length === 1 ? '' : 's'}: ${problems.join('; ')}`, problems)
  }
  return deepFreeze(r.data)
}

/** Reads and validates the JSON file at `path` (none: the defaults), with `overrides` (flags) laid over it. */
export async function loadDaemonConfig (path: string | undefined, overrides: DaemonConfigInput = {}): Promise<DaemonConfig> {
  if (path === undefined) return parseDaemonConfig({}, overrides, 'defaults')
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`, [], { cause: err })
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid JSON: ${(err as Error).message}`, [], { cause: err })
  }
  return parseDaemonConfig(raw, overrides, `config file ${path}`)
}

/** The configuration with every default, frozen: what an empty file means. */
export const DEFAULT_DAEMON_CONFIG: DaemonConfig = parseDaemonConfig({})
