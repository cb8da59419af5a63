/**
 * Control bytes, as the daemon would put them on the wire: frame bodies measured with the protocols' own encoders
 * or their declared layouts, plus each frame's varint length prefix. Transport overhead (TCP/IP, noise, yamux
 * headers) is not counted.
 */
import { EntryLayout, ReplyLayout, RequestLayout, encodeHave, encodeMessage, type HaveMessage } from './policy.js'

/** bytes of an unsigned varint of `n` (the frame length prefix of every rafspeer protocol) */
export function varintBytes (n: number): number {
  let b = 1
  while (n >= 0x80) { n = Math.floor(n / 0x80); b++ }
  return b
}

const framed = (body: number): number => body + varintBytes(body)

/** one have-protocol frame */
export const haveFrameBytes = (m: HaveMessage): number => framed(encodeHave(m).length)

/** one scheduler-protocol frame */
export const schedulerFrameBytes = (m: Parameters<typeof encodeMessage>[0]): number => framed(encodeMessage(m).length)

/** a chunk request naming `n` chunks */
export const chunkRequestBytes = (n: number): number => framed(RequestLayout.HEADER_BYTES + n * EntryLayout.BYTES)

/** the frame prefix and status bytes of a reply carrying `payload` bytes (0 for NOT_FOUND, BUSY, PENDING) */
export const replyHeaderBytes = (payload: number): number => varintBytes(ReplyLayout.PAYLOAD + payload) + ReplyLayout.PAYLOAD

/** a whole REDIRECT reply naming a peer and its addresses (as `redirectReply` lays it out) */
export const redirectReplyBytes = (peerId: string, addrs: readonly string[]): number => {
  const body = Buffer.byteLength([peerId, ...addrs].join('\n'))
  return replyHeaderBytes(body) + body
}
