/**
 * mulberry32: a small, fast, seeded 32-bit generator of floats in [0, 1), for what must replay the same from a seed
 * (the swarm model, benchmarks that feed two implementations the very same input). Not for anything secret.
 */
export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
