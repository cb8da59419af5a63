import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { partitionPoint } from './search.js'

describe('partitionPoint', () => {
  it('finds the first index past the prefix, at the ends too', () => {
    assert.equal(partitionPoint(0, () => true), 0)
    assert.equal(partitionPoint(5, () => true), 5)
    assert.equal(partitionPoint(5, () => false), 0)
    const ends = [10, 20, 30, 40]
    assert.equal(partitionPoint(ends.length, i => ends[i]! <= 20), 2)
    assert.equal(partitionPoint(ends.length, i => ends[i]! <= 19), 1)
  })

  it('agrees with a linear scan on any sorted array', () => {
    fc.assert(fc.property(fc.array(fc.nat(1000)), fc.nat(1000), (xs, pos) => {
      const sorted = [...xs].sort((a, b) => a - b)
      const linear = sorted.findIndex(x => x > pos)
      return partitionPoint(sorted.length, i => sorted[i]! <= pos) === (linear < 0 ? sorted.length : linear)
    }))
  })
})
