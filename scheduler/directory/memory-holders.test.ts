/**
 * A blob's holders in the memory directory: join order through any joins and removals, draws without replacement
 * that are uniform, and a replacement victim that is never one of the group.
 */
import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import { mulberry32 } from '../../base/index.js'
import { BlobHolders } from './memory-holders.js'

const ids = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `p${from + i}`)

function holdersOf (list: readonly string[]): BlobHolders {
  const h = new BlobHolders()
  for (const id of list) h.add(id)
  return h
}

/** Every draw of `h` until it runs out. */
function drawAll (h: BlobHolders, random: () => number): string[] {
  const out: string[] = []
  const draw = h.sampler(random)
  for (let id = draw(); id !== undefined; id = draw()) out.push(id)
  return out
}

test('joins and removals in any order keep the join order; a holder that comes back joins last', () => {
  // a join is a small id, a removal the same id negated
  const op = fc.integer({ min: -40, max: 40 })
  fc.assert(fc.property(fc.array(op, { maxLength: 300 }), fc.integer(), (ops, seed) => {
    const h = new BlobHolders()
    const model: string[] = []
    for (const n of ops) {
      const id = `p${Math.abs(n)}`
      if (n >= 0) {
        assert.equal(h.add(id), !model.includes(id))
        if (!model.includes(id)) model.push(id)
      } else {
        const at = model.indexOf(id)
        assert.equal(h.delete(id), at >= 0)
        if (at >= 0) model.splice(at, 1)
      }
    }
    assert.deepEqual([...h.joinOrder()], model)
    assert.equal(h.size, model.length)
    // draws permute the bag, never the join order
    assert.deepEqual(drawAll(h, mulberry32(seed)).sort(), model.slice().sort())
    assert.deepEqual([...h.joinOrder()], model)
    for (const id of model) assert.ok(h.has(id))
  }))
})

test('a draw runs through every holder once, whatever the randomness (even a constant)', () => {
  const all = ids(50)
  for (const random of [Math.random, () => 0, () => 0.999999999, () => 1]) {
    const h = holdersOf(all)
    for (const id of ids(10, 20)) h.delete(id)
    const got = drawAll(h, random)
    assert.equal(got.length, 40)
    assert.deepEqual(got.slice().sort(), [...h.joinOrder()].sort())
  }
})

test('draws are uniform: every holder is as likely at each draw, after removals reordered the bag', () => {
  const random = mulberry32(3)
  const h = holdersOf(ids(40))
  // removals from the middle move the last holders into the gaps
  for (const id of ids(20, 10)) h.delete(id)
  const counts = new Map<string, number>()
  const rounds = 20_000
  for (let r = 0; r < rounds; r++) {
    const draw = h.sampler(random)
    // the first three of each draw: a sample of three, as a look-up takes a few
    for (let k = 0; k < 3; k++) {
      const id = draw() as string
      counts.set(id, (counts.get(id) ?? 0) + 1)
    }
  }
  assert.equal(counts.size, 20)
  const expected = rounds * 3 / 20
  for (const [id, n] of counts) assert.ok(Math.abs(n - expected) < expected * 0.08, `${id} drawn ${n} times, ${expected} expected`)
})

test('a replacement is drawn from all but the first holders in join order, uniformly', () => {
  const random = mulberry32(5)
  const h = holdersOf(ids(30))
  // the group's places in the bag move when others leave
  for (const id of ['p1', 'p2', 'p20']) { h.delete(id); h.add(id) }
  const head = [...h.joinOrder()].slice(0, 8)
  const counts = new Map<string, number>()
  const rounds = 22_000
  for (let r = 0; r < rounds; r++) {
    const id = h.randomOutside(8, random) as string
    assert.ok(!head.includes(id), `${id} is one of the first 8`)
    counts.set(id, (counts.get(id) ?? 0) + 1)
  }
  assert.equal(counts.size, 22)
  for (const [id, n] of counts) assert.ok(Math.abs(n - 1000) < 150, `${id} drawn ${n} times, 1000 expected`)
  assert.equal(holdersOf(ids(3)).randomOutside(3, random), undefined)
  assert.equal(holdersOf(ids(3)).randomOutside(2, () => 0.999999999), 'p2')
})

test('the holder being visited may be removed while the join order is walked', () => {
  const h = holdersOf(ids(6))
  const seen: string[] = []
  for (const id of h.joinOrder()) {
    seen.push(id)
    if (id === 'p1' || id === 'p2') h.delete(id)
  }
  assert.deepEqual(seen, ids(6))
  assert.deepEqual([...h.joinOrder()], ['p0', 'p3', 'p4', 'p5'])
})
