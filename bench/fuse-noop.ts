/**
 * An upper bound for any filesystem served through fuse-native on one Node event loop: the same tree as a native
 * directory (names, modes, sizes), answered from a `Map` in memory, with reads that copy nothing (the reply
 * carries whatever libfuse's buffer held). Mounted with the very `-o` options of `FuseNativeBackend` and its
 * default OPEN answer (ENOSYS), so the kernel sends the same requests; what remains is the cost of the binding
 * and the kernel round trips.
 */
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import Fuse from 'fuse-native'
import { fuseOptionList } from '../peer/index.js'
import { mountsUnder, run, waitFor } from './measure.js'

interface Entry { stat: Fuse.Stat, children?: string[] }

async function snapshot (root: string): Promise<Map<string, Entry>> {
  const entries = new Map<string, Entry>()
  const visit = async (path: string, real: string): Promise<void> => {
    const st = await lstat(real)
    const ms = st.mtimeMs
    const e: Entry = {
      stat: { mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, nlink: st.nlink, ino: entries.size + 1, blksize: 4096, blocks: Math.ceil(st.size / 512), atime: ms, mtime: ms, ctime: ms }
    }
    entries.set(path, e)
    if (st.isDirectory()) {
      e.children = (await readdir(real)).sort()
      for (const name of e.children) await visit(path === '/' ? '/' + name : path + '/' + name, join(real, name))
    }
  }
  await visit('/', root)
  return entries
}

class NoopFuse extends Fuse {
  constructor (mnt: string, ops: Fuse.Operations, private readonly options: string) {
    super(mnt, ops, { timeout: 60_000 })
  }

  protected override _fuseOptions (): string { return this.options }
}

export interface NoopMount { mountpoint: string, entries: number, unmount: () => Promise<void> }

/** Mounts the in-memory copy of `root`'s metadata at `mountpoint` (an empty directory). */
export async function mountNoopFuse (root: string, mountpoint: string): Promise<NoopMount> {
  const entries = await snapshot(root)
  const ENOENT = -2
  const ops: Fuse.Operations = {
    getattr: (path, cb) => {
      const e = entries.get(path)
      if (e === undefined) cb(ENOENT)
      else cb(0, e.stat)
    },
    readdir: (path, cb) => {
      const e = entries.get(path)
      if (e?.children === undefined) return cb(ENOENT)
      const prefix = path === '/' ? '/' : path + '/'
      // with use_ino a dirent's d_ino is ours, and readdir(3) skips a d_ino of 0
      cb(0, e.children, e.children.map(n => { const st = entries.get(prefix + n)!.stat; return { mode: st.mode, ino: st.ino } }))
    },
    read: (path, _fd, _buf, len, pos, cb) => {
      const size = entries.get(path)?.stat.size ?? 0
      cb(Math.max(0, Math.min(len, size - pos)))
    },
    // as FuseNativeBackend does by default: ENOSYS turns OPEN (and RELEASE) off for the mount ("no_open")
    open: (_path, _flags, cb) => { cb(-38) },
    getxattr: (_path, _name, _position, cb) => { cb(-61) },
    listxattr: (_path, cb) => { cb(0, []) }
  }
  const fuse = new NoopFuse(mountpoint, ops, '-o' + fuseOptionList({ fsName: 'rafspeer-noop' }).join(','))
  await new Promise<void>((resolve, reject) => { fuse.mount(err => { if (err === null) resolve(); else reject(err) }) })
  return {
    mountpoint,
    entries: entries.size,
    unmount: async () => {
      await new Promise<void>(resolve => { fuse.unmount(() => { resolve() }) })
      if ((await mountsUnder(mountpoint)).length > 0) await run('umount', ['-l', mountpoint]).catch(() => {})
      await waitFor(async () => (await mountsUnder(mountpoint)).length === 0, 5000)
    }
  }
}
