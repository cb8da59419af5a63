/** What a real `rafspeer sim` swarm needs on this host (root for lazy mounts, /dev/fuse); undefined when it can run. */
import { existsSync } from 'node:fs'

export function swarmSkipReason (): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (lazy mounts)'
  if (!existsSync('/dev/fuse')) return 'needs /dev/fuse'
  return undefined
}
