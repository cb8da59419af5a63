/**
 * A streaming POSIX (pax) tar writer for `rafspeer unpack --output FILE.tar`.
 *
 * Written here rather than taken from tar-stream because unpack must round-trip raw bytes: pax records carry
 * binary xattr values (security.capability, ACLs) and non-UTF-8 names, and nanosecond mtimes; tar-stream's pax
 * encoder handles values as JS strings.
 */
import type { Writable } from 'node:stream'
import { once } from 'node:events'
import { finished } from 'node:stream/promises'

const BLOCK = 512

export type TarEntryType = 'file' | 'link' | 'symlink' | 'chr' | 'blk' | 'dir' | 'fifo'

export interface TarEntry {
  /** path bytes relative to the archive root, no leading '/'; directories without trailing '/' */
  path: Buffer
  type: TarEntryType
  /** permission bits incl. setuid/setgid/sticky */
  mode: number
  uid: number
  gid: number
  size?: number
  mtime: number
  mtimeNsec?: number
  /** symlink target or hard-link target path */
  linkPath?: Buffer
  devMajor?: number
  devMinor?: number
  xattrs?: Map<string, Buffer>
}

const TYPEFLAG: Record<TarEntryType, string> = { file: '0', link: '1', symlink: '2', chr: '3', blk: '4', dir: '5', fifo: '6' }

function paxRecord (key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')])
  // the length prefix counts its own digits
  let len = body.length + 1
  while (String(len).length + body.length !== len) len = String(len).length + body.length
  return Buffer.concat([Buffer.from(String(len)), body])
}

function octal (buf: Buffer, value: number, off: number, width: number): boolean {
  const s = value.toString(8)
  if (s.length > width - 1) return false
  buf.write(s.padStart(width - 1, '0') + '\0', off, width, 'latin1')
  return true
}

function header (name: Buffer, e: TarEntry, typeflag: string, size: number, linkName: Buffer | undefined): Buffer {
  const h = Buffer.alloc(BLOCK)
  name.copy(h, 0, 0, Math.min(100, name.length))
  octal(h, e.mode & 0o7777, 100, 8)
  octal(h, Math.min(e.uid, 0o7777777), 108, 8)
  octal(h, Math.min(e.gid, 0o7777777), 116, 8)
  octal(h, Math.min(size, 0o77777777777), 124, 12)
  octal(h, Math.max(0, Math.min(e.mtime, 0o77777777777)), 136, 12)
  h.write(typeflag, 156, 1, 'latin1')
  if (linkName !== undefined) linkName.copy(h, 157, 0, Math.min(100, linkName.length))
  h.write('ustar\0', 257, 6, 'latin1')
  h.write('00', 263, 2, 'latin1')
  octal(h, e.devMajor ?? 0, 329, 8)
  octal(h, e.devMinor ?? 0, 337, 8)
  h.fill(0x20, 148, 156)
  let sum = 0
  for (const b of h) sum += b
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1')
  return h
}

const isAscii = (b: Buffer): boolean => b.every((c) => c > 0 && c < 0x80)

export class TarWriter {
  private readonly out: Writable
  private paxSeq = 0

  constructor (out: Writable) {
    this.out = out
  }

  private async write (buf: Uint8Array): Promise<void> {
    if (!this.out.write(buf)) await once(this.out, 'drain')
  }

  /** Writes an entry's header(s); a 'file' entry must then receive exactly `size` bytes via writeData(). */
  async entry (e: TarEntry): Promise<void> {
    const size = e.type === 'file' ? (e.size ?? 0) : 0
    const name = e.type === 'dir' ? Buffer.concat([e.path, Buffer.from('/')]) : e.path
    const records: Buffer[] = []
    if (name.length > 100 || !isAscii(name)) records.push(paxRecord('path', name))
    if (e.linkPath !== undefined && (e.linkPath.length > 100 || !isAscii(e.linkPath))) records.push(paxRecord('linkpath', e.linkPath))
    if (size > 0o77777777777) records.push(paxRecord('size', Buffer.from(String(size))))
    if (e.uid > 0o7777777) records.push(paxRecord('uid', Buffer.from(String(e.uid))))
    if (e.gid > 0o7777777) records.push(paxRecord('gid', Buffer.from(String(e.gid))))
    if ((e.mtimeNsec ?? 0) !== 0 || e.mtime < 0 || e.mtime > 0o77777777777) {
      const frac = (e.mtimeNsec ?? 0) === 0 ? '' : '.' + String(e.mtimeNsec).padStart(9, '0')
      records.push(paxRecord('mtime', Buffer.from(String(e.mtime) + frac)))
    }
    for (const [k, v] of [...(e.xattrs ?? new Map<string, Buffer>())].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)) {
      records.push(paxRecord('SCHILY.xattr.' + k, v))
    }
    if (records.length > 0) {
      const body = Buffer.concat(records)
      const paxName = Buffer.from(`PaxHeaders.${++this.paxSeq}/${name.subarray(Math.max(0, name.length - 60)).toString('latin1').replace(/[^\x20-\x7e]/g, '_')}`, 'latin1')
      await this.write(header(paxName, { ...e, mode: 0o644, mtime: 0 }, 'x', body.length, undefined))
      await this.write(body)
      await this.pad(body.length)
    }
    await this.write(header(name, e, TYPEFLAG[e.type], size, e.linkPath))
  }

  async writeData (chunk: Uint8Array): Promise<void> {
    await this.write(chunk)
  }

  /** Pads the data of the entry just written (of `size` bytes) to a block boundary. */
  async pad (size: number): Promise<void> {
    const rem = size % BLOCK
    if (rem !== 0) await this.write(Buffer.alloc(BLOCK - rem))
  }

  async finish (): Promise<void> {
    await this.write(Buffer.alloc(BLOCK * 2))
    this.out.end()
    await finished(this.out)
  }
}
