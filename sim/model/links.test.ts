/**
 * The modelled links share each endpoint fairly, and a hub (processor sharing with a virtual clock) finishes every
 * flow at exactly the time plain per-flow rescheduling does.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { EventQueue } from './events.js'
import { Links, type Flow } from './links.js'
import { mulberry32 } from './random.js'

describe('modelled links', () => {
  it('two flows from one sender split its upload, then the survivor takes it all', () => {
    const q = new EventQueue()
    const links = new Links(q, 3)
    // 1000 bytes/s = 1 byte per ms
    for (let e = 0; e < 3; e++) links.setCapacity(e, 1000, 1e9)
    const done: Array<[string, number]> = []
    links.open(0, 1, 100, { pieceDone: (f) => { done.push(['a', q.now]); links.pause(f) } })
    links.open(0, 2, 300, { pieceDone: (f) => { done.push(['b', q.now]); links.pause(f) } })
    q.run()
    // a: 100 bytes at 0.5/ms = 200 ms; b: 100 sent by then, 200 left at 1/ms = 400 ms
    assert.deepEqual(done, [['a', 200], ['b', 400]])
  })

  it('a flow is limited by the busier of its two ends', () => {
    const q = new EventQueue()
    const links = new Links(q, 4)
    links.setCapacity(0, 1000, 1000)
    links.setCapacity(1, 1000, 1000)
    links.setCapacity(2, 1000, 1000)
    links.setCapacity(3, 1000, 1000)
    let t = 0
    // node 3 downloads from 0, 1 and 2 at once: a third of its download each
    for (const src of [0, 1, 2]) links.open(src, 3, 100, { pieceDone: (f) => { t = q.now; links.pause(f) } })
    q.run()
    assert.equal(t, 300)
  })

  for (const hub of [false, true]) {
    it(`an idle side's bucket sends its burst at once, and refills at its rate while idle${hub ? ' (hubs)' : ''}`, () => {
      const q = new EventQueue()
      const links = new Links(q, 2)
      // 1 byte per ms both ways; the sender's bucket holds 50 bytes, the receiver's 30
      links.setCapacity(0, 1000, 1000)
      links.setCapacity(1, 1000, 1000)
      if (hub) { links.setHub(0); links.setHub(1) }
      links.setBurst(0, 50, 0)
      links.setBurst(1, 0, 30)
      const done: number[] = []
      const owner = { pieceDone: (f: Flow) => { done.push(q.now); links.pause(f) } }
      const f = links.open(0, 1, 100, owner)
      q.run()
      // 30 bytes at once (the smaller bucket), 70 at 1 byte per ms
      assert.deepEqual(done, [70])
      // idle 20 ms: the receiver's bucket refilled 20 bytes, the sender's had 20 left and gained 20
      q.after(20, { fire: () => links.resume(f, 100) }, 0)
      q.run()
      assert.deepEqual(done, [70, 70 + 20 + 80])
      // a piece that follows at once (the flow never left its ends) gets nothing more: both buckets are empty
      const g = links.open(0, 1, 10, { pieceDone: (fl: Flow) => { done.push(q.now); if (done.length < 5) links.next(fl, 10); else links.pause(fl) } })
      assert.ok(g.active)
      q.run()
      assert.deepEqual(done, [70, 170, 180, 190, 200])
    })
  }

  it('hubs (the registry, or every endpoint) finish every piece when plain rescheduling does', () => {
    const run = (hub: 'none' | 'registry' | 'all'): Array<[number, number]> => {
      const random = mulberry32(42)
      const q = new EventQueue()
      const nodes = 40
      const links = new Links(q, nodes + 1)
      for (let e = 0; e < nodes; e++) links.setCapacity(e, 1e6 * (1 + (e % 3)), 2e6 * (1 + (e % 2)))
      links.setCapacity(nodes, 8e6, Infinity)
      if (hub !== 'none') links.setHub(nodes)
      if (hub === 'all') for (let e = 0; e < nodes; e++) links.setHub(e)
      const out: Array<[number, number]> = []
      let id = 0
      // 1000 transfers of 1–3 pieces at random times, a third of them from the hub
      for (let i = 0; i < 1000; i++) {
        const me = id++
        const fromHub = random() < 0.4
        const src = fromHub ? nodes : Math.floor(random() * nodes)
        const dst = (src + 1 + Math.floor(random() * (nodes - 1))) % nodes
        let pieces = 1 + Math.floor(random() * 3)
        const size = 1000 + Math.floor(random() * 50_000)
        q.at(random() * 2000, {
          fire: () => {
            links.open(src, dst, size, {
              pieceDone: (f: Flow) => {
                out.push([me, q.now])
                if (--pieces > 0) links.next(f, size)
                else links.pause(f)
              }
            })
          }
        })
      }
      q.run()
      return out.sort((a, b) => a[0] - b[0] || a[1] - b[1])
    }
    const plain = run('none')
    for (const mode of ['registry', 'all'] as const) {
      const hubbed = run(mode)
      assert.equal(hubbed.length, plain.length)
      for (let i = 0; i < plain.length; i++) {
        assert.equal(hubbed[i]![0], plain[i]![0])
        assert.ok(Math.abs(hubbed[i]![1] - plain[i]![1]) <= 1e-6 * Math.max(1, plain[i]![1]), `${mode}: piece ${i}: ${hubbed[i]![1]} vs ${plain[i]![1]}`)
      }
    }
  })
})
