/**
 * The mount room: images made visible as file trees. The {@link MountManager} opens an image (registry or local),
 * picks the mode (kernel EROFS when every blob is cached; else the kernel's EROFS over lazily filled blob files,
 * erofs-lazy, where the host can; per-file FUSE otherwise), wires a fetcher per mount, prefetches and reads ahead.
 * Its ways to mount: `kernel-mount.ts` (EROFS, file-backed or over loop devices), `blob-fs.ts` (the blob files,
 * served by the native addon's FUSE server, `native.ts`) and `fuse-fs.ts` over fuse-native (`fuse-backend.ts`).
 * Each mount keeps an access log (`access-log.ts`): the files read, in first-read order, for `rafspeer access-list`
 * and `convert --prefetch-files`.
 */
export { MountManager, MountError, erofsLazyUnavailable, type MountErrorCode, type MountManagerComponents, type MountManagerInit } from './mount-manager.js'
export { openImage, isLocalSource, ImageOpenError, type OpenedImage, type OpenImageComponents, type OpenImageRequest } from './image-open.js'
export { planPrefetch, runPrefetch, referencedChunks, readPrefetchList, orderedSlices, type PrefetchPlan, type PrefetchSlice } from './prefetch.js'
export { AccessLog } from './access-log.js'
export { ReadAhead, DEFAULT_READAHEAD_BYTES, type ReadAheadInit } from './read-ahead.js'
export { rafsFuseOps, Errno, encodeRdev, inoOf, type RafsFuseOps, type RafsFuseOpsInit } from './fuse-fs.js'
export { FuseNativeBackend, FuseMountError, fuseOptionList, mountsAt, type FuseOpenMode, type FuseNativeBackendInit } from './fuse-backend.js'
export { BlobFs, BlobFsError, type BlobFile, type BlobFileReader, type BlobFsInit, type BlobFsStats } from './blob-fs.js'
export { BlobViews } from './blob-view.js'
export { loadNative, nativeUnavailable, type NativeAddon, type BlobServer, type BlobServerOptions } from './native.js'
export {
  kernelMount, kernelModeUnavailable, fileBackedUnavailable, KernelMountError, type KernelMount, type KernelDevice, type KernelMountOptions
} from './kernel-mount.js'
export type {
  AccessList, ImageFiles, FuseBackend, FuseMountHandle, FuseMountOptions, MountMode, MountRequest, MountInfo, MountStats, MountService,
  MountedBlob, PrefetchPolicy, PrefetchStatus
} from './types.js'
