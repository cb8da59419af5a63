/**
 * Contracts between the parts of a node that serve mounted images: the FUSE layer (`fuse-*.ts`), the mount
 * manager (`mount-manager.ts`), the daemon shell (`daemon/`) and the CLI.
 */
import type { RafsReader } from '../../rafs/index.js'
import type { Credentials } from '../../registry/index.js'
import type { FetchCounters, FetchSample } from '../fetch/index.js'
import type { BlobFsStats } from './blob-fs.js'

// ---------------------------------------------------------------- FUSE

/** File data of one mounted image, as the FUSE layer needs it. */
export interface ImageFiles {
  reader: RafsReader
  /**
   * Reads bytes [offset, offset + length) of regular file `nid` into `buf` at 0 and resolves how many it
   * wrote (short only at EOF). Rejects with a coded error (`RAFSPEER_ERR_READ_TIMEOUT`, `RAFSPEER_ERR_ABORTED`
   * when `signal` fires, ...) when the bytes cannot be had in time or at all. It owns the read's deadline: it
   * settles by then, and once it has settled it writes nothing more into `buf`.
   */
  read: (nid: number, offset: number, length: number, buf: Buffer, signal?: AbortSignal) => Promise<number>
}

/** Knobs of a FUSE mount; the image is immutable, so everything may be cached for long. */
export interface FuseMountOptions {
  /** shown as the mount's source in /proc/mounts (`rafspeer`) */
  fsName?: string
  /** keep page cache across opens (`kernel_cache`, default true) */
  kernelCache?: boolean
  /** seconds the kernel trusts a name lookup / attributes (default 86400: immutable image) */
  entryTimeoutS?: number
  attrTimeoutS?: number
  /** let users other than root see the mount (default true; the daemon runs as root) */
  allowOther?: boolean
  /**
   * fuse-native's own guard against a handler that never answers (ETIMEDOUT; default 60 s). Reads are bounded by
   * the fetcher's deadline, which must be shorter: this only catches a bug.
   */
  opTimeoutMs?: number
  debug?: boolean
}

/** A live FUSE mount. */
export interface FuseMountHandle {
  readonly mountpoint: string
  /** Unmounts (lazily if busy) and stops serving; idempotent. */
  unmount: () => Promise<void>
}

/**
 * Mounts a read-only RAFS tree with FUSE. Implemented over fuse-native (`FuseNativeBackend`); behind an
 * interface so that another binding (a low-level libfuse3 one, say) can replace it.
 */
export interface FuseBackend {
  readonly name: string
  mount: (mountpoint: string, files: ImageFiles, opts?: FuseMountOptions) => Promise<FuseMountHandle>
}

// ---------------------------------------------------------------- mounts

/**
 * `kernel`: the kernel's EROFS over the cache files (every chunk fetched first); `erofs-lazy`: the kernel's EROFS
 * from the first read, over blob files a small FUSE server fills lazily; `fuse`: a per-file FUSE tree; `auto`:
 * kernel when the cache is complete, else erofs-lazy where the host can, else fuse.
 */
export type MountMode = 'fuse' | 'kernel' | 'erofs-lazy' | 'auto'

/** `all`, `none`, a path list file (one path per line), or the bootstrap's prefetch table (`table`, default). */
export type PrefetchPolicy = 'all' | 'none' | 'table' | { file: string } | { paths: string[] }

export interface MountRequest {
  /** a registry reference (`host:port/repo:tag`, `...@sha256:…`) or a local bootstrap path (with `blobDir`) */
  source: string
  mountpoint: string
  mode?: MountMode
  prefetch?: PrefetchPolicy
  /** for a local bootstrap: the directory holding `<blob-id>` (or `<blob-id>.blob.data`) files */
  blobDir?: string
  /** registry over http: `true`, `false`, or `'auto'` (loopback and localhost speak http) */
  plainHttp?: boolean | 'auto'
  /**
   * credentials for the image's registry, used by this mount only (its own registry client and tokens), e.g. those
   * a CRI pull carried; absent: the daemon's (Docker config.json)
   */
  credentials?: Credentials
}

export interface PrefetchStatus {
  state: 'none' | 'running' | 'done' | 'failed' | 'cancelled'
  chunksTotal: number
  chunksDone: number
  /** plaintext bytes of the chunks prefetch asked for */
  bytesTotal: number
  /** of those, the bytes of the chunks now present (fetched by prefetch, or already there) */
  bytesDone: number
  error?: string
}

export interface MountedBlob {
  blobId: string
  /** chunks in the blob */
  chunkCount: number
  /** chunks the image's files use (a merged image may not use every chunk of a layer's blob) */
  chunksReferenced: number
  /** of the referenced chunks, how many the cache holds */
  chunksPresent: number
  /** every referenced chunk is cached: the image can be mounted with the kernel */
  complete: boolean
  /**
   * the kernel reads the blob straight from its cache file, pinned there while mounted (kernel mode: every blob;
   * erofs-lazy: a blob complete and verified when mounted); otherwise FUSE serves it (the per-file server, or the
   * blob file system's file the EROFS mount reads)
   */
  readFromCache: boolean
}

export interface MountInfo {
  mountpoint: string
  source: string
  /** what was asked and what was used */
  requestedMode: MountMode
  mode: Exclude<MountMode, 'auto'>
  /** manifest digest for a registry image */
  manifestDigest?: string
  /** sha256 of the bootstrap file */
  bootstrapDigest: string
  bootstrapPath: string
  blobs: MountedBlob[]
  prefetch: PrefetchStatus
  mountedAt: string
  /** the kernel's EROFS reads the blob files with direct I/O (kernel and erofs-lazy modes: `directRead`) */
  directRead?: boolean
}

/** Per-mount counters for `/api/v1/metrics` and Prometheus. */
export interface MountStats {
  mountpoint: string
  source: string
  mode: Exclude<MountMode, 'auto'>
  /** FUSE reads served and their bytes (kernel mode: 0, the kernel serves them) */
  reads: number
  readBytes: number
  readErrors: number
  fetch: FetchCounters
  prefetch: PrefetchStatus
}

/**
 * The files of a mount whose data was read, in first-read order (`GET /api/v1/mounts/access`, `rafspeer
 * access-list`): the input of `rafspeer convert --prefetch-files`.
 */
export interface AccessList {
  mountpoint: string
  source: string
  mode: Exclude<MountMode, 'auto'>
  /**
   * false in kernel mode (the kernel serves every read, none reaches the daemon): `files` is then empty. In erofs-lazy
   * mode reads are seen as blob ranges: files sharing a chunk with a read file, and blob readahead's neighbours,
   * may appear too.
   */
  tracked: boolean
  /** absolute paths in the image, in the order their data was first read */
  files: string[]
}

/** What the daemon shell needs from the mount manager. */
export interface MountService {
  mount: (req: MountRequest, opts?: { signal?: AbortSignal }) => Promise<MountInfo>
  /** rejects with code `RAFSPEER_ERR_NOT_MOUNTED` when nothing of ours is mounted there */
  unmount: (mountpoint: string) => Promise<void>
  list: () => MountInfo[]
  stats: () => MountStats[]
  /** fetch-latency samples since the last call, for a histogram */
  drainFetchSamples: () => Array<FetchSample & { mountpoint: string }>
  /** the files read through a mount so far; rejects with `RAFSPEER_ERR_NOT_MOUNTED` */
  accessList?: (mountpoint: string) => AccessList
  /** the erofs-lazy mode's blob file system, once started */
  lazyKernelStats?: () => BlobFsStats | undefined
}
