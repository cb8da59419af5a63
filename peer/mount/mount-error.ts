import { RafspeerError } from '../../base/index.js'

export type MountErrorCode = 'RAFSPEER_ERR_ALREADY_MOUNTED' | 'RAFSPEER_ERR_NOT_MOUNTED' | 'RAFSPEER_ERR_MOUNT_BUSY' | 'RAFSPEER_ERR_MOUNT' |
  'RAFSPEER_ERR_KERNEL_MODE'

/** A mount request that cannot be done; the admin API answers it with the status of its code. */
export class MountError extends RafspeerError<MountErrorCode> {}
