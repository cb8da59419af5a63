/**
 * What the tar source reads from pax headers: records decoded byte for byte, integer fields, fractional mtimes and
 * extended attributes of both dialects (SCHILY and LIBARCHIVE).
 */
import type tar from 'tar-stream'
import { splitXattrName } from './layout.js'

/**
 * tar-stream decodes pax records as UTF-8, which mangles non-UTF-8 paths and binary xattr values
 * (`SCHILY.xattr.security.capability`). Decoding them as latin1 keeps every byte, and latin1 is also how the
 * model keys names, so a pax path is then a ready-made key.
 */
function decodePaxLatin1 (buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {}
  let off = 0
  while (off < buf.length) {
    if (buf[off] === 0) break // NUL padding after the last record
    const sp = buf.indexOf(0x20, off)
    const len = sp < 0 ? NaN : Number(buf.toString('latin1', off, sp))
    if (!Number.isInteger(len) || len <= sp - off || off + len > buf.length || buf[off + len - 1] !== 0x0a) {
      throw new Error('malformed pax header record')
    }
    const rec = buf.toString('latin1', sp + 1, off + len - 1)
    const eq = rec.indexOf('=')
    if (eq < 0) throw new Error('malformed pax header record')
    out[rec.slice(0, eq)] = rec.slice(eq + 1)
    off += len
  }
  return out
}

interface ExtractInternals {
  _header: { type: string } | null
  _pax: Record<string, string> | null
  _paxGlobal: Record<string, string> | null
  _decodeLongHeader: (buf: Buffer) => void
}

export function patchPaxDecoding (ex: tar.Extract): void {
  const inner = ex as unknown as ExtractInternals
  const original = inner._decodeLongHeader
  // If tar-stream's internals change, fall back to its own (lossy) decoding rather than break.
  if (typeof original !== 'function' || !('_paxGlobal' in inner)) return
  inner._decodeLongHeader = function (this: ExtractInternals, buf: Buffer) {
    const type = this._header?.type
    if (type === 'pax-global-header') {
      this._paxGlobal = decodePaxLatin1(buf)
    } else if (type === 'pax-header') {
      this._pax = { ...this._paxGlobal, ...decodePaxLatin1(buf) }
    } else {
      original.call(this, buf)
    }
  }
}

export function paxInt (v: string | undefined): number | undefined {
  if (v === undefined || !/^\d+$/.test(v)) return undefined
  return Number(v)
}

/** pax mtime carries fractional seconds ("1700000000.5"); the ustar field has whole seconds only. */
export function parseMtime (h: { mtime?: Date | undefined }, pax: Record<string, string>): { mtime: number, mtimeNsec: number } {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(pax.mtime ?? '')
  if (m !== null) {
    let sec = Number(m[2])
    let nsec = Number((m[3] ?? '').slice(0, 9).padEnd(9, '0'))
    if (m[1] === '-') {
      sec = -sec
      if (nsec > 0) { sec -= 1; nsec = 1e9 - nsec }
    }
    // The inode stores an unsigned time: pre-1970 clamps to the epoch.
    return sec < 0 ? { mtime: 0, mtimeNsec: 0 } : { mtime: sec, mtimeNsec: nsec }
  }
  const ms = h.mtime?.getTime() ?? 0
  return { mtime: Math.max(0, Math.floor(ms / 1000)), mtimeNsec: 0 }
}

/** SCHILY.xattr values are raw bytes; LIBARCHIVE.xattr names are %-encoded and values base64. */
export function paxXattrs (pax: Record<string, string>): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const [key, value] of Object.entries(pax)) {
    let name: string
    let data: Buffer
    if (key.startsWith('SCHILY.xattr.')) {
      name = Buffer.from(key.slice(13), 'latin1').toString('utf8')
      data = Buffer.from(value, 'latin1')
    } else if (key.startsWith('LIBARCHIVE.xattr.')) {
      name = Buffer.from(percentDecode(key.slice(17)), 'latin1').toString('utf8')
      data = Buffer.from(value, 'base64')
    } else {
      continue
    }
    // Only the five EROFS prefixes can be stored; anything else would make the writer fail.
    if (splitXattrName(name) !== undefined) out.set(name, data)
  }
  return out
}

function percentDecode (s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)))
}
