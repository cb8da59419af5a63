/** A node's connections: a set of the world's nodes by index, iterated in the order they were added, as a `Set`. */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { ConnSet } from './conns.js'

describe('ConnSet', () => {
  const all = Array.from({ length: 70 }, (_, idx) => ({ idx }))

  it('holds each node once, in the order added, as a Set does through adds and deletes', () => {
    const conns = new ConnSet(all, all.length)
    const set = new Set<{ idx: number }>()
    assert.equal(conns.has(all[3]!), false, 'empty')
    // a fixed walk of adds, re-adds and deletes, over more nodes than one word of bits and more than the first order buffer
    for (let step = 0; step < 400; step++) {
      const node = all[(step * 37) % all.length]!
      if (step % 7 === 3) assert.equal(conns.delete(node), set.delete(node))
      else { conns.add(node); set.add(node) }
      assert.equal(conns.size, set.size)
    }
    assert.deepEqual([...conns], [...set])
    for (const node of all) assert.equal(conns.has(node), set.has(node))
  })

  it('a node deleted and added again goes last', () => {
    const conns = new ConnSet(all, all.length)
    for (const i of [5, 40, 64, 1]) conns.add(all[i]!)
    assert.equal(conns.delete(all[40]!), true)
    assert.equal(conns.delete(all[40]!), false, 'gone already')
    conns.add(all[40]!)
    conns.add(all[5]!)
    assert.deepEqual([...conns].map(n => n.idx), [5, 64, 1, 40])
  })
})
