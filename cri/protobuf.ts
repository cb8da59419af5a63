/**
 * The protobuf (proto3) wire format, as much of it as the CRI image messages need: varints, strings and embedded
 * messages to write; every wire type to read, unknown fields skipped. Written here rather than loaded from
 * protobufjs because `rafspeer rpull` is on a container's start path, where each module a cold Node process loads
 * costs; the messages themselves are declared once, in `messages.ts`.
 */
import { CriError } from './errors.js'

const WIRE_VARINT = 0
const WIRE_I64 = 1
const WIRE_LEN = 2
const WIRE_I32 = 5

/** Builds one message; fields are appended in the order written (proto3 readers accept any order). */
export class ProtoWriter {
  private readonly parts: Buffer[] = []

  /** an unsigned varint field; 0 is the default, so it is left out */
  uint (field: number, value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`field ${field}: ${value} is not an unsigned integer`)
    if (value !== 0) this.parts.push(varint(field << 3 | WIRE_VARINT), varint(value))
    return this
  }

  bool (field: number, value: boolean): this {
    return this.uint(field, value ? 1 : 0)
  }

  /** a string field; '' is the default, so it is left out */
  string (field: number, value: string): this {
    if (value !== '') this.bytes(field, Buffer.from(value, 'utf8'))
    return this
  }

  /** an embedded message, written even when empty (presence matters for messages) */
  message (field: number, body: ProtoWriter): this {
    return this.bytes(field, body.finish())
  }

  finish (): Buffer {
    return Buffer.concat(this.parts)
  }

  private bytes (field: number, value: Buffer): this {
    this.parts.push(varint(field << 3 | WIRE_LEN), varint(value.length), value)
    return this
  }
}

function varint (value: number): Buffer {
  const out: number[] = []
  // numbers past 2^31 lose their high bits under `>>>`, so divide
  while (value >= 0x80) {
    out.push((value % 0x80) | 0x80)
    value = Math.floor(value / 0x80)
  }
  out.push(value)
  return Buffer.from(out)
}

/** One field as read: a number for varints and fixed-width fields, the bytes for length-delimited ones. */
export type ProtoField = { field: number, wire: 0 | 1 | 5, value: number } | { field: number, wire: 2, value: Buffer }

/** The fields of one message in wire order (a repeated field appears once per element). */
export function readFields (buf: Buffer, what: string): ProtoField[] {
  const out: ProtoField[] = []
  let at = 0
  const readVarint = (): number => {
    let value = 0
    let scale = 1
    for (let i = 0; i < 10; i++) {
      if (at >= buf.length) throw malformed(what, 'a varint runs past the end')
      const b = buf[at++]!
      value += (b & 0x7f) * scale
      if ((b & 0x80) === 0) return value
      scale *= 0x80
    }
    throw malformed(what, 'a varint longer than 10 bytes')
  }
  while (at < buf.length) {
    const key = readVarint()
    const field = Math.floor(key / 8)
    const wire = key % 8
    if (field === 0) throw malformed(what, 'field number 0')
    switch (wire) {
      case WIRE_VARINT: out.push({ field, wire, value: readVarint() }); break
      case WIRE_I64:
        if (at + 8 > buf.length) throw malformed(what, 'a 64-bit field runs past the end')
        out.push({ field, wire, value: Number(buf.readBigUInt64LE(at)) })
        at += 8
        break
      case WIRE_LEN: {
        const n = readVarint()
        if (at + n > buf.length) throw malformed(what, `field ${field} claims ${n} bytes, ${buf.length - at} left`)
        out.push({ field, wire, value: buf.subarray(at, at + n) })
        at += n
        break
      }
      case WIRE_I32:
        if (at + 4 > buf.length) throw malformed(what, 'a 32-bit field runs past the end')
        out.push({ field, wire, value: buf.readUInt32LE(at) })
        at += 4
        break
      default: throw malformed(what, `wire type ${wire} (groups are not proto3)`)
    }
  }
  return out
}

function malformed (what: string, why: string): CriError {
  return new CriError('RAFSPEER_ERR_CRI_FAILED', `containerd's ${what} is not a valid protobuf message: ${why}`)
}
