/**
 * Binary search over anything sorted, by index: the first `i` in [0, n) for which `before(i)` is false, where
 * `before` is true for a prefix and false after it (n when it is true throughout). Ranges of a blob's view kept
 * sorted by offset use it to find the first one that ends after a position.
 *
 * @example
 * ```ts
 * const first = partitionPoint(chunks.length, i => chunks[i].offset + chunks[i].size <= pos)
 * ```
 */
export function partitionPoint (n: number, before: (i: number) => boolean): number {
  let lo = 0
  let hi = n
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (before(mid)) lo = mid + 1
    else hi = mid
  }
  return lo
}
