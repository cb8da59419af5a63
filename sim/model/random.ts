/**
 * The model's one source of randomness: mulberry32, a 32-bit generator that is small, fast and good enough for
 * choosing failure times and scheduler jitter. Everything random in a run draws from one seeded instance, in event
 * order, so the same seed replays the same run.
 */

export { mulberry32 } from '../../base/index.js'

const BASE58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'

/**
 * A string shaped like an Ed25519 libp2p peer id (`12D3KooW` + 44 base58 characters): rendezvous hashing and the
 * scheduler's keys see ids of the real length and alphabet, not `node1`, `node2`.
 */
export function fakePeerId (random: () => number): string {
  let s = '12D3KooW'
  for (let i = 0; i < 44; i++) s += BASE58[Math.floor(random() * 58)]
  return s
}

/** 32 random bytes as lowercase hex (a blob id). */
export function fakeDigestHex (random: () => number): string {
  let s = ''
  for (let i = 0; i < 32; i++) s += Math.floor(random() * 256).toString(16).padStart(2, '0')
  return s
}
