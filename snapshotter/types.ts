/**
 * Contracts inside `snapshotter/`: what a snapshot is (containerd's `snapshots.Info`), what containerd gets back as
 * mounts, and the one seam between the generic snapshot store (overlay semantics, like containerd's overlayfs
 * snapshotter) and rafspeer's lazily served images (`RemoteLayers`).
 */

/** containerd's snapshot kinds (`containerd.services.snapshots.v1.Kind`). */
export type SnapshotKind = 'view' | 'active' | 'committed'

/** containerd's `snapshots.Info`. */
export interface SnapshotInfo {
  /** the key (active, view) or name (committed) */
  name: string
  /** the committed snapshot below this one, '' for none */
  parent: string
  kind: SnapshotKind
  createdAt: Date
  updatedAt: Date
  labels: Record<string, string>
}

/** containerd's `types.Mount`: what containerd (or the shim) passes to mount(2). */
export interface SnapshotMount {
  type: string
  source: string
  options: string[]
}

/** containerd's `snapshots.Usage`. */
export interface SnapshotUsage {
  size: number
  inodes: number
}

/** label the unpacker puts on a layer's Prepare: the chain id it will commit the layer under */
export const TARGET_REF_LABEL = 'containerd.io/snapshot.ref'
/** CRI's labels on a layer's Prepare (with `disable_snapshot_annotations = false`) */
export const CRI_IMAGE_REF_LABEL = 'containerd.io/snapshot/cri.image-ref'
export const CRI_MANIFEST_DIGEST_LABEL = 'containerd.io/snapshot/cri.manifest-digest'
export const CRI_LAYER_DIGEST_LABEL = 'containerd.io/snapshot/cri.layer-digest'
/** a Nydus image's layer annotations, passed on as labels by the unpacker */
export const NYDUS_BLOB_LABEL = 'containerd.io/snapshot/nydus-blob'
export const NYDUS_BOOTSTRAP_LABEL = 'containerd.io/snapshot/nydus-bootstrap'

/**
 * Layers rafspeer serves lazily instead of containerd unpacking them. The snapshot store asks `claims` on every
 * Prepare that carries a `containerd.io/snapshot.ref` label: a claimed layer is committed at once under that name
 * (with the Prepare's parent and labels, no content) and containerd is answered ALREADY_EXISTS, so it never
 * downloads the blob. When an active snapshot or a view sits on a chain holding such a layer, the store asks
 * `attach` for the directory that holds the file tree of that layer and everything below it, and uses it as the
 * lowest lowerdir (ordinary layers above it stay ordinary).
 */
export interface RemoteLayers {
  /** whether a layer being unpacked (the labels of its Prepare) is one rafspeer serves */
  claims: (labels: Readonly<Record<string, string>>) => boolean
  /** whether a committed snapshot (by its labels) is such a layer */
  isRemote: (labels: Readonly<Record<string, string>>) => boolean
  /**
   * The directory holding the tree of `layer` (a committed remote layer) and everything below it, mounted if it
   * is not, held for `holder` (the key of an active snapshot or a view) until `release(holder)`. Idempotent per
   * holder. Rejects with a clear error when the image cannot be mounted (registry gone, corrupt bootstrap).
   */
  attach: (holder: string, layer: SnapshotInfo, opts?: { signal?: AbortSignal }) => Promise<string>
  /** `holder` was removed or committed: its hold ends; the last hold's end unmounts (awaited, so EBUSY cannot follow) */
  release: (holder: string) => Promise<void>
  /**
   * A pull just claimed a layer of this image (its Prepare's labels): the image may be mounted now, ahead of its
   * first container, so its bootstrap and prefetch table are on their way while containerd finishes the pull.
   * Never throws and never waits.
   */
  pulled?: (labels: Readonly<Record<string, string>>) => void
}
