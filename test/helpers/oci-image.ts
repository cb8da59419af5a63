/**
 * Source OCI images for convert tests, built from real directories with `umoci` (the reference implementation of
 * OCI layer diffs and unpacking) and pushed with `skopeo`. Four layers:
 *
 * 1. (umoci repack) files, a 3 MiB binary, hard links, symlinks, user.* and trusted.* xattrs, owners, setuid, a
 *    fifo, an empty file, a non-ASCII name, zero-filled data;
 * 2. (umoci repack) deletions → `.wh.` whiteouts (a file, a dir, a file in a kept dir), a changed file, a changed
 *    xattr, new hard links and an absolute symlink;
 * 3. (our tar + `umoci raw add-layer`, because umoci never emits opaque markers) an opaque directory
 *    (`.wh..wh..opq`), a whiteout, a symlink replaced by a file, a pax xattr;
 * 4. (ours) a layer without file data: a whiteout, an empty dir, a symlink — it must become no data blob.
 *
 * @example
 * const img = await buildSourceImage(dir)            // dir/layout is the OCI layout, tag 'src'
 * await pushOciImage(img, `${host}/demo/src:1`)
 * const rootfs = await umociUnpack(img, join(dir, 'bundle'))
 */
import { execFile } from 'node:child_process'
import { createWriteStream, existsSync } from 'node:fs'
import { chmod, chown, link, mkdir, rm, symlink, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { setAttributeSync } from '@napi-rs/xattr'
import { TarWriter, type TarEntry } from '../../rafs/tar-writer.js'

const run = promisify(execFile)

export interface OciImage {
  /** the OCI layout directory */
  layout: string
  tag: string
}

/** Why these tests cannot run here, or undefined. */
export function ociToolsSkipReason (): string | undefined {
  for (const bin of ['/usr/bin/umoci', '/usr/bin/skopeo']) if (!existsSync(bin)) return `${bin} missing (apt-get install umoci skopeo)`
  if (process.getuid?.() !== 0) return 'umoci unpack needs root to keep owners, devices and trusted.* xattrs'
  return undefined
}

async function umoci (...args: string[]): Promise<void> {
  await run('umoci', args, { timeout: 120_000, maxBuffer: 16 << 20 })
}

/** Deterministic pseudo-random bytes (xorshift), so blob ids repeat from run to run. */
export function pseudoRandom (size: number, seed: number): Buffer {
  const out = Buffer.alloc(size)
  let x = seed >>> 0 || 1
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    out.writeUInt32LE(x, i <= size - 4 ? i : size - 4)
  }
  return out
}

const xattr = (path: string, name: string, value: string): void => { setAttributeSync(path, name, Buffer.from(value)) }

async function layer1 (r: string): Promise<void> {
  for (const d of ['etc/conf.d', 'bin', 'data', 'opaque/sub', 'gone']) await mkdir(join(r, d), { recursive: true })
  await writeFile(join(r, 'etc/hostname'), 'base\n')
  await writeFile(join(r, 'etc/conf.d/a'), 'a=1\n')
  await writeFile(join(r, 'etc/conf.d/b'), 'b=2\n')
  await writeFile(join(r, 'bin/tool'), pseudoRandom(3 * 1024 * 1024 + 123, 1), { mode: 0o755 })
  await chmod(join(r, 'bin/tool'), 0o755)
  await writeFile(join(r, 'data/hard1'), 'one inode, two names\n')
  await link(join(r, 'data/hard1'), join(r, 'data/hard2'))
  await symlink('../etc/hostname', join(r, 'data/link'))
  await writeFile(join(r, 'data/x'), 'with xattrs\n')
  xattr(join(r, 'data/x'), 'user.color', 'blue')
  xattr(join(r, 'data/x'), 'trusted.secret', 's3cr3t')
  xattr(join(r, 'data'), 'user.dir', 'tagged')
  await writeFile(join(r, 'data/owned'), 'owned by 1000:2000\n')
  await chown(join(r, 'data/owned'), 1000, 2000)
  await chmod(join(r, 'data/owned'), 0o640)
  await writeFile(join(r, 'data/suid'), '#!/bin/sh\n')
  await chmod(join(r, 'data/suid'), 0o4755)
  await writeFile(join(r, 'data/empty'), '')
  await run('mkfifo', [join(r, 'data/fifo')])
  await writeFile(join(r, 'data/café ünïcode.txt'), 'utf-8 name\n')
  await writeFile(join(r, 'data/zeros'), Buffer.alloc(1536 * 1024))
  await writeFile(join(r, 'opaque/old1'), 'hidden by the opaque marker\n')
  await writeFile(join(r, 'opaque/sub/old2'), 'also hidden\n')
  await writeFile(join(r, 'gone/file'), 'deleted in layer 2\n')
  await writeFile(join(r, 'gone.txt'), 'deleted in layer 2\n')
}

async function layer2 (r: string): Promise<void> {
  await rm(join(r, 'gone'), { recursive: true })
  await unlink(join(r, 'gone.txt'))
  await unlink(join(r, 'etc/conf.d/b'))
  await writeFile(join(r, 'etc/hostname'), 'changed\n')
  xattr(join(r, 'data/x'), 'user.color', 'green')
  await mkdir(join(r, 'new'))
  await writeFile(join(r, 'new/big'), Buffer.concat([pseudoRandom(2 * 1024 * 1024, 2), Buffer.alloc(300_000)]))
  await writeFile(join(r, 'new/hl1'), 'new hard link pair\n')
  await link(join(r, 'new/hl1'), join(r, 'new/hl2'))
  await symlink('/etc/hostname', join(r, 'new/abs'))
}

const RAW_MTIME = 1_700_000_000

/** A raw layer tar: opaque dir, whiteout, a symlink replaced by a file, a pax xattr. */
async function rawLayer (path: string, entries: Array<TarEntry & { data?: Buffer }>): Promise<void> {
  const out = createWriteStream(path)
  const w = new TarWriter(out)
  for (const e of entries) {
    await w.entry(e)
    if (e.data !== undefined) { await w.writeData(e.data); await w.pad(e.data.length) }
  }
  await w.finish()
}

const tdir = (p: string, mode = 0o755): TarEntry => ({ path: Buffer.from(p), type: 'dir', mode, uid: 0, gid: 0, mtime: RAW_MTIME })
const tfile = (p: string, data: string | Buffer, extra: Partial<TarEntry> = {}): TarEntry & { data: Buffer } => {
  const b = Buffer.isBuffer(data) ? data : Buffer.from(data)
  return { path: Buffer.from(p), type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: RAW_MTIME, size: b.length, data: b, ...extra }
}

/** Builds the four-layer image in `dir/layout` (tag `src`); bundles are made and removed under `dir`. */
export async function buildSourceImage (dir: string): Promise<OciImage> {
  const layout = join(dir, 'layout')
  const tag = 'src'
  const image = `${layout}:${tag}`
  await umoci('init', '--layout', layout)
  await umoci('new', '--image', image)
  for (const [i, fill] of [layer1, layer2].entries()) {
    const bundle = join(dir, `bundle-${i}`)
    await umoci('unpack', '--image', image, bundle)
    await fill(join(bundle, 'rootfs'))
    await umoci('repack', '--image', image, bundle)
    await rm(bundle, { recursive: true, force: true })
  }
  const l3 = join(dir, 'layer3.tar')
  await rawLayer(l3, [
    tdir('.'), tdir('opaque'),
    tfile('opaque/.wh..wh..opq', ''),
    tfile('opaque/new1', 'only child after the opaque marker\n', { xattrs: new Map([['user.layer', Buffer.from('3')]]) }),
    tdir('etc'), tdir('etc/conf.d'), tfile('etc/conf.d/.wh.a', ''),
    tdir('data'), tfile('data/link', 'a symlink in layer 1, a file now\n')
  ])
  await umoci('raw', 'add-layer', '--image', image, l3)
  const l4 = join(dir, 'layer4.tar')
  await rawLayer(l4, [
    tdir('.'), tdir('new'), tfile('new/.wh.big', ''), tdir('new/dir2', 0o700),
    { path: Buffer.from('new/s2'), type: 'symlink', mode: 0o777, uid: 0, gid: 0, mtime: RAW_MTIME, linkPath: Buffer.from('hl1') }
  ])
  await umoci('raw', 'add-layer', '--image', image, l4)
  await rm(l3, { force: true })
  await rm(l4, { force: true })
  return { layout, tag }
}

/** Adds a layer to the image: `fill` writes into an unpacked rootfs, which umoci repacks as a new layer. */
export async function addLayer (img: OciImage, dir: string, fill: (rootfs: string) => Promise<void>): Promise<void> {
  const bundle = join(dir, `bundle-extra-${Date.now()}`)
  const image = `${img.layout}:${img.tag}`
  await umoci('unpack', '--image', image, bundle)
  try {
    await fill(join(bundle, 'rootfs'))
    await umoci('repack', '--image', image, bundle)
  } finally {
    await rm(bundle, { recursive: true, force: true })
  }
}

/** `skopeo copy` of the layout to `dest` (`host:port/repo:tag`) over plain HTTP. */
export async function pushOciImage (img: OciImage, dest: string): Promise<void> {
  await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${img.layout}:${img.tag}`, `docker://${dest}`],
    { timeout: 120_000, maxBuffer: 16 << 20 })
}

/** The reference tree: `umoci unpack` of the image into `bundle`; returns its rootfs. */
export async function umociUnpack (img: OciImage, bundle: string): Promise<string> {
  await umoci('unpack', '--image', `${img.layout}:${img.tag}`, bundle)
  return join(bundle, 'rootfs')
}

/** `skopeo inspect --raw` of a remote manifest. */
export async function skopeoInspectRaw (ref: string): Promise<unknown> {
  const { stdout } = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], { timeout: 60_000 })
  return JSON.parse(stdout)
}

