/**
 * The mount room: images made visible as file trees. The {@link MountManager} opens an image (registry or local),
 * picks the mode (kernel EROFS when every blob is cached, FUSE otherwise), wires a fetcher per mount, prefetches
 * and reads ahead; the FUSE side (`fuse-fs.ts` operations over fuse-native in `fuse-backend.ts`) and the kernel
 * side (`kernel-mount.ts`) are its two ways to mount.
 */
export { MountManager, MountError, type MountErrorCode, type MountManagerComponents, type MountManagerInit } from './mount-manager.js'
export { openImage, isLocalSource, ImageOpenError, type OpenedImage, type OpenImageComponents, type OpenImageRequest } from './image-open.js'
export { planPrefetch, runPrefetch, referencedChunks, readPrefetchList } from './prefetch.js'
export { ReadAhead, DEFAULT_READAHEAD_BYTES, type ReadAheadInit } from './read-ahead.js'
export { rafsFuseOps, Errno, encodeRdev, inoOf, type RafsFuseOps, type RafsFuseOpsInit } from './fuse-fs.js'
export { FuseNativeBackend, FuseMountError, fuseOptionList, mountsAt, type FuseOpenMode, type FuseNativeBackendInit } from './fuse-backend.js'
export {
  kernelMount, kernelModeUnavailable, KernelMountError, type KernelMount, type KernelDevice, type KernelMountOptions
} from './kernel-mount.js'
export type {
  ImageFiles, FuseBackend, FuseMountHandle, FuseMountOptions, MountMode, MountRequest, MountInfo, MountStats, MountService,
  MountedBlob, PrefetchPolicy, PrefetchStatus
} from './types.js'
