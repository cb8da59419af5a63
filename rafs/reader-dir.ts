/**
 * Directory blocks (§11): `[dirent_0 … dirent_{n−1}][name_0 … name_{n−1}]`, each block self-contained.
 * Everything is bounds-checked against the block so a hostile nameoff can only produce a RafsFormatError.
 */
import { BLOCK_SIZE, DIRENT_SIZE, MAX_NAME_LEN, RafsFormatError } from './layout.js'

export interface RawDirent {
  name: Buffer
  nid: number
  fileType: number
  nameoff: number
}

/** Parses one directory block (`block.length` is the used length: 4096, or less for the final block). */
export function parseDirBlock (block: Buffer, where: string): RawDirent[] {
  const len = block.length
  if (len < DIRENT_SIZE + 1) throw new RafsFormatError(`${where}: directory block of ${len} bytes cannot hold a dirent and a name`)
  const first = block.readUInt16LE(8)
  if (first < DIRENT_SIZE || first >= len || first % DIRENT_SIZE !== 0) {
    throw new RafsFormatError(`${where}: first dirent nameoff ${first} is not a multiple of ${DIRENT_SIZE} in [${DIRENT_SIZE}, ${len})`)
  }
  const n = first / DIRENT_SIZE
  const out: RawDirent[] = []
  let prevOff = 0
  for (let i = 0; i < n; i++) {
    const at = i * DIRENT_SIZE
    const nidBig = block.readBigUInt64LE(at)
    if (nidBig > BigInt(Number.MAX_SAFE_INTEGER)) throw new RafsFormatError(`${where}: dirent ${i} has an absurd nid ${nidBig}`)
    const nameoff = block.readUInt16LE(at + 8)
    const fileType = block.readUInt8(at + 10)
    if (nameoff < first || nameoff >= len) throw new RafsFormatError(`${where}: dirent ${i} nameoff ${nameoff} is outside the name area [${first}, ${len})`)
    if (i > 0 && nameoff <= prevOff) throw new RafsFormatError(`${where}: dirent ${i} nameoff ${nameoff} does not follow the previous one (${prevOff})`)
    if (i === 0 && nameoff !== first) throw new RafsFormatError(`${where}: dirent 0 nameoff ${nameoff} changed while reading`)
    prevOff = nameoff
    out.push({ name: Buffer.alloc(0), nid: Number(nidBig), fileType, nameoff })
  }
  for (let i = 0; i < n; i++) {
    const d = out[i]!
    let end = i + 1 < n ? out[i + 1]!.nameoff : len
    if (i + 1 === n) {
      // the final name runs to the first NUL (the block may be zero-padded) or to the end of the used bytes
      const nul = block.indexOf(0, d.nameoff)
      if (nul >= 0 && nul < end) end = nul
    }
    const name = block.subarray(d.nameoff, end)
    if (name.length === 0) throw new RafsFormatError(`${where}: dirent ${i} has an empty name`)
    if (name.length > MAX_NAME_LEN) throw new RafsFormatError(`${where}: dirent ${i} name is ${name.length} bytes, longer than ${MAX_NAME_LEN}`)
    if (name.includes(0x2f) || name.includes(0)) throw new RafsFormatError(`${where}: dirent ${i} name ${JSON.stringify(name.toString('latin1'))} contains '/' or NUL`)
    d.name = name
  }
  return out
}

/** Byte length of block `k` of a directory of `size` bytes: every block but the last is full. */
export function dirBlockLength (size: number, k: number): number {
  return Math.min(BLOCK_SIZE, size - k * BLOCK_SIZE)
}

export const isDot = (name: Buffer): boolean => name.length === 1 && name[0] === 0x2e
export const isDotDot = (name: Buffer): boolean => name.length === 2 && name[0] === 0x2e && name[1] === 0x2e
