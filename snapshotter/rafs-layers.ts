/**
 * The layers of RAFS (Nydus-layout) images, served by the node instead of unpacked by containerd. A CRI pull with
 * this snapshotter announces each layer's Prepare with the image's reference, its manifest digest and, from the
 * layer's annotations, `nydus-blob` / `nydus-bootstrap`: such a layer is claimed (committed without content, so
 * containerd downloads nothing but the manifest and config). A container's snapshot on top of the image then gets,
 * as its lowest lowerdir, one lazy mount of the whole image (its bootstrap merges every layer) through the node's
 * mount manager: the node's cache, neighbours and the registry, in the best mode the kernel allows. One mount per
 * image (by manifest digest), shared by every container on it, unmounted when the last one is removed.
 *
 * @example
 * ```ts
 * const layers = new RafsLayers({ mounts: node.mounts, logger }, { dir: '/var/lib/rafspeer/snapshotter/images' })
 * const snapshots = await Snapshots.open({ remote: layers, logger }, { root: '/var/lib/rafspeer/snapshotter' })
 * ```
 */
import { lstat, mkdir, rmdir } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { describeError, type ComponentLogger, type Logger } from '../base/index.js'
import { parseReference, type Credentials } from '../registry/index.js'
import type { AdminClient, MountInfo, MountMode, MountService, PrefetchPolicy } from '../peer/index.js'
import { SnapshotterError } from './errors.js'
import {
  CRI_IMAGE_REF_LABEL, CRI_MANIFEST_DIGEST_LABEL, NYDUS_BLOB_LABEL, NYDUS_BOOTSTRAP_LABEL,
  type RemoteLayers, type SnapshotInfo
} from './types.js'

const run = promisify(execFile)
const DIGEST = /^sha256:[0-9a-f]{64}$/

/**
 * What of a mount service the layers use: the node's own (`MountService`, in the daemon) or a running daemon's
 * through its admin API (`daemonMounter`, a snapshotter in its own process).
 */
export interface ImageMounter {
  mount: MountService['mount']
  unmount: MountService['unmount']
  list: () => MountInfo[] | Promise<MountInfo[]>
}

/** A running daemon's mounts, through its admin API: the daemon keeps serving them when the snapshotter stops. */
export function daemonMounter (client: AdminClient): ImageMounter {
  return {
    mount: async (req, opts = {}) => await client.mount(req, opts.signal !== undefined ? { signal: opts.signal } : {}),
    unmount: async (mountpoint) => { await client.unmount(mountpoint) },
    list: async () => await client.mounts()
  }
}

export interface RafsLayersComponents {
  mounts: ImageMounter
  logger?: ComponentLogger
  /** registry credentials for an image (`host/repo@digest`), e.g. those its CRI pull carried; else the daemon's */
  credentials?: (source: string) => Credentials | undefined
}

export interface RafsLayersInit {
  /** where images are mounted, one directory per manifest digest */
  dir: string
  /** default `auto`: kernel EROFS when the cache holds the image, FUSE otherwise */
  mode?: MountMode
  /** default the bootstrap's prefetch table */
  prefetch?: PrefetchPolicy
  plainHttp?: boolean | 'auto'
  /** how long an image nobody holds stays mounted for its next container (default 30 s; 0: unmount at once) */
  idleUnmountMs?: number
}

export const DEFAULT_IDLE_UNMOUNT_MS = 30_000

/** The image a claimed layer belongs to: enough to mount it again after a restart. */
export interface LayerImage {
  /** `registry/repository@sha256:…` */
  source: string
  manifestDigest: string
}

interface Held {
  mountpoint: string
  source: string
  holders: Set<string>
  /** settles when the mount is up (rejects when it failed) */
  ready: Promise<void>
  /** the mount is up */
  mounted: boolean
  /** nobody holds it: unmounted when this fires */
  idle?: NodeJS.Timeout
}

export class RafsLayers implements RemoteLayers {
  private readonly mounts: ImageMounter
  private readonly credentials: RafsLayersComponents['credentials']
  private readonly log: Logger | undefined
  private readonly init: RafsLayersInit
  /** manifest digest → its mount */
  private readonly images = new Map<string, Held>()
  /** holder (snapshot key) → manifest digest */
  private readonly holders = new Map<string, string>()
  /** unmounts in progress, by manifest digest: the image (still listed), and the unmount (a new hold waits for it) */
  private readonly leaving = new Map<string, { held: Held, done: Promise<void> }>()
  private stopping = false

  constructor (components: RafsLayersComponents, init: RafsLayersInit) {
    this.mounts = components.mounts
    this.credentials = components.credentials
    this.log = components.logger?.forComponent('rafspeer:snapshotter')
    this.init = init
  }

  claims (labels: Readonly<Record<string, string>>): boolean {
    return this.isRemote(labels)
  }

  isRemote (labels: Readonly<Record<string, string>>): boolean {
    const nydus = labels[NYDUS_BLOB_LABEL] === 'true' || labels[NYDUS_BOOTSTRAP_LABEL] === 'true'
    return nydus && imageOf(labels) !== undefined
  }

  /**
   * Images mounted, being mounted or being unmounted now, and who holds them (for the daemon's info): an image stays
   * listed, `unmounting`, until its mount is gone from the system.
   */
  list (): Array<{ manifestDigest: string, mountpoint: string, source: string, holders: string[], mounted: boolean, unmounting?: true }> {
    const out: ReturnType<RafsLayers['list']> = [...this.images].map(([manifestDigest, h]) => ({ manifestDigest, mountpoint: h.mountpoint, source: h.source, holders: [...h.holders], mounted: h.mounted }))
    for (const [manifestDigest, { held: h }] of this.leaving) out.push({ manifestDigest, mountpoint: h.mountpoint, source: h.source, holders: [], mounted: h.mounted, unmounting: true as const })
    return out
  }

  /**
   * Mounts the image of a layer a pull claimed, held by nobody, so it stays for `idleUnmountMs` (not at all when that
   * is 0): its first container finds it mounted, with the prefetch table already on its way — the time between the
   * pull and the container's Prepare is no longer lost. An image mounted or being mounted already is left alone.
   */
  pulled (labels: Readonly<Record<string, string>>): void {
    if (this.stopping || (this.init.idleUnmountMs ?? DEFAULT_IDLE_UNMOUNT_MS) <= 0) return
    const image = imageOf(labels)
    if (image === undefined || this.images.has(image.manifestDigest) || this.leaving.has(image.manifestDigest)) return
    const holder = `pull:${image.manifestDigest}`
    const now = new Date()
    const layer: SnapshotInfo = { name: holder, parent: '', kind: 'committed', createdAt: now, updatedAt: now, labels: { ...labels } }
    this.attach(holder, layer).then(
      async () => { await this.release(holder) },
      (err: unknown) => { this.log?.warn('mounting %s after its pull: %s (its first container tries again)', image.source, describeError(err)) })
  }

  async attach (holder: string, layer: SnapshotInfo, opts: { signal?: AbortSignal } = {}): Promise<string> {
    const image = imageOf(layer.labels)
    if (image === undefined) {
      throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_MOUNT', `snapshot ${layer.name} has no image reference and manifest digest labels (pulled without CRI snapshot annotations?)`)
    }
    const already = this.holders.get(holder)
    if (already !== undefined && already !== image.manifestDigest) await this.release(holder)
    const d = image.manifestDigest
    let held: Held | undefined
    for (;;) {
      await this.leaving.get(d)?.done
      held = this.images.get(d)
      // an idle image is taken again: before any wait, so that its unmount cannot start under this hold
      if (held?.idle !== undefined) { clearTimeout(held.idle); held.idle = undefined }
      if (held?.mounted === true && !(await this.present(held.mountpoint)) && this.images.get(d) === held && held.mounted) {
        // the daemon serving the mount restarted (and lost it): new containers get it mounted again
        this.log?.warn('%s is no longer mounted at %s (its daemon restarted?): mounting it again', held.source, held.mountpoint)
        this.track(d, held, this.mountImage(image, held.mountpoint, opts.signal))
      }
      // dropped or replaced while we looked: look again
      if (this.images.get(d) === held && !this.leaving.has(d)) break
    }
    if (held === undefined) {
      const mountpoint = join(resolve(this.init.dir), image.manifestDigest.slice('sha256:'.length))
      held = { mountpoint, source: image.source, holders: new Set(), ready: Promise.resolve(), mounted: false }
      this.images.set(d, held)
      this.track(d, held, this.mountImage(image, mountpoint, opts.signal))
    }
    held.holders.add(holder)
    this.holders.set(holder, image.manifestDigest)
    try {
      await held.ready
    } catch (err) {
      held.holders.delete(holder)
      if (this.holders.get(holder) === image.manifestDigest) this.holders.delete(holder)
      throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_MOUNT', `mounting ${image.source} for ${holder}: ${describeError(err)}`, { cause: err })
    }
    return held.mountpoint
  }

  /** `ready` becomes `mounting`; a failed mount forgets the image (its holders get the error) */
  private track (digest: string, h: Held, mounting: Promise<void>): void {
    h.mounted = false
    h.ready = mounting
    mounting.then(() => { if (h.ready === mounting) h.mounted = true }, () => { if (this.images.get(digest) === h && h.ready === mounting) this.images.delete(digest) })
  }

  private async present (mountpoint: string): Promise<boolean> {
    try {
      return (await this.mounts.list()).some(m => m.mountpoint === mountpoint)
    } catch {
      return true // the daemon does not answer now: the mount itself will tell
    }
  }

  async release (holder: string): Promise<void> {
    const digest = this.holders.get(holder)
    if (digest === undefined) return
    this.holders.delete(holder)
    const held = this.images.get(digest)
    if (held === undefined) return
    held.holders.delete(holder)
    if (held.holders.size > 0) return
    const idleMs = this.init.idleUnmountMs ?? DEFAULT_IDLE_UNMOUNT_MS
    if (idleMs > 0 && !this.stopping) {
      // kept a while for the next container of the image (a restart, the next pod): no remount, warm page cache
      held.idle = setTimeout(() => { void this.drop(digest, held, 'idle') }, idleMs)
      held.idle.unref()
      return
    }
    await this.drop(digest, held, 'released')
  }

  /** Unmounts `held` unless a holder came back meanwhile; a new hold of the image waits for it. */
  private async drop (digest: string, held: Held, why: 'idle' | 'released' | 'stop'): Promise<void> {
    if (held.idle !== undefined) { clearTimeout(held.idle); held.idle = undefined }
    if (held.holders.size > 0 || this.images.get(digest) !== held) return
    this.images.delete(digest)
    const leaving = (async () => {
      try {
        await held.ready
      } catch {
        return
      }
      try {
        await this.mounts.unmount(held.mountpoint)
        await rmdir(held.mountpoint).catch(() => {})
        this.log?.info('unmounted %s from %s: %s', held.source, held.mountpoint,
          why === 'idle' ? 'no container used it for a while' : why === 'stop' ? 'the snapshotter stops' : 'no container uses it')
      } catch (err) {
        this.log?.warn('unmounting %s: %s', held.mountpoint, describeError(err))
      }
    })()
    const entry = { held, done: leaving }
    this.leaving.set(digest, entry)
    try { await leaving } finally { if (this.leaving.get(digest) === entry) this.leaving.delete(digest) }
  }

  /**
   * Unmounts every image (the daemon stops: its FUSE mounts end with it anyway). With `keepMounts` (a snapshotter
   * in its own process, the mounts served by a daemon that goes on) only forgets them: running containers keep
   * their files, and the next start takes the holds up again from the snapshots' metadata (an idle image, held
   * by nobody, is swept then).
   */
  async stop (opts: { keepMounts?: boolean } = {}): Promise<void> {
    this.stopping = true
    for (const h of this.images.values()) if (h.idle !== undefined) { clearTimeout(h.idle); h.idle = undefined }
    if (opts.keepMounts === true) {
      await Promise.allSettled([...this.images.values()].map(async h => await h.ready))
      this.images.clear()
      this.holders.clear()
      return
    }
    await Promise.allSettled([...this.holders.keys()].map(async h => { await this.release(h) }))
    await Promise.allSettled([...this.images].map(async ([digest, h]) => { await this.drop(digest, h, 'stop') }))
  }

  /**
   * Unmounts the images under this directory that nobody holds: left by a snapshotter that stopped while
   * containerd removed their last snapshots. Run after the snapshots re-attached what they hold.
   */
  async sweep (): Promise<string[]> {
    const dir = resolve(this.init.dir)
    const held = new Set([...this.images.values()].map(h => h.mountpoint))
    const swept: string[] = []
    for (const m of await this.mounts.list()) {
      if (dirname(m.mountpoint) !== dir || held.has(m.mountpoint) || this.images.has(`sha256:${basename(m.mountpoint)}`)) continue
      try {
        await this.mounts.unmount(m.mountpoint)
        await rmdir(m.mountpoint).catch(() => {})
        swept.push(m.mountpoint)
        this.log?.info('unmounted %s from %s: no snapshot holds it any more', m.source, m.mountpoint)
      } catch (err) {
        this.log?.warn('unmounting the unheld %s: %s', m.mountpoint, describeError(err))
      }
    }
    return swept
  }

  private async mountImage (image: LayerImage, mountpoint: string, signal: AbortSignal | undefined): Promise<void> {
    await mkdir(this.init.dir, { recursive: true })
    // still mounted from a hold whose unmount failed, or by the daemon serving a snapshotter that restarted: use it
    if ((await this.mounts.list()).some(m => m.mountpoint === mountpoint)) return
    await clearStaleMount(mountpoint, this.log)
    const credentials = this.credentials?.(image.source)
    const t0 = performance.now()
    const info = await this.mounts.mount({
      source: image.source,
      mountpoint,
      mode: this.init.mode ?? 'auto',
      ...(this.init.prefetch !== undefined ? { prefetch: this.init.prefetch } : {}),
      ...(this.init.plainHttp !== undefined ? { plainHttp: this.init.plainHttp } : {}),
      ...(credentials !== undefined ? { credentials } : {})
    }, signal !== undefined ? { signal } : {})
    this.log?.info('mounted %s at %s (%s) in %d ms', image.source, mountpoint, info.mode, Math.round(performance.now() - t0))
  }
}

/** The image a layer's labels name, or undefined when they do not name one fully. */
export function imageOf (labels: Readonly<Record<string, string>>): LayerImage | undefined {
  const ref = labels[CRI_IMAGE_REF_LABEL]
  const manifestDigest = labels[CRI_MANIFEST_DIGEST_LABEL]
  if (ref === undefined || manifestDigest === undefined || !DIGEST.test(manifestDigest)) return undefined
  try {
    const r = parseReference(ref)
    return { source: `${r.registry}/${r.repository}@${manifestDigest}`, manifestDigest }
  } catch {
    return undefined
  }
}

/**
 * A mountpoint left by a daemon that died (its FUSE mount answers ENOTCONN) or a mount this process does not know:
 * detached, so the image can be mounted there again. Containers still running on the old mount lost their lower
 * layer with the process that served it.
 */
async function clearStaleMount (mountpoint: string, log: Logger | undefined): Promise<void> {
  let stale = false
  try {
    await lstat(mountpoint)
    const { mountsAt } = await import('../peer/index.js')
    stale = (await mountsAt(resolve(mountpoint))).length > 0
  } catch (err) {
    stale = (err as NodeJS.ErrnoException).code === 'ENOTCONN'
  }
  if (!stale) return
  log?.warn('%s is still mounted from before (a daemon that stopped?): detaching it', mountpoint)
  await run('umount', ['-l', mountpoint]).catch(() => {})
}
