/** The event engine runs events in time order, ties in the order they were scheduled, and stops when told. */
import { it } from 'node:test'
import assert from 'node:assert/strict'
import { EventQueue, Slot } from './events.js'

it('events run by time, ties in scheduling order, none before now', () => {
  const q = new EventQueue()
  const seen: string[] = []
  const t = (name: string) => ({ fire: (arg: number) => { seen.push(`${name}@${q.now}:${arg}`) } })
  // many entries, scheduled out of order, some at the same time
  for (let i = 0; i < 200; i++) q.at((i * 37) % 50, t(`e${i}`), i)
  q.run()
  const times = seen.map(s => Number(s.split('@')[1]!.split(':')[0]))
  assert.deepEqual(times, [...times].sort((a, b) => a - b))
  const at7 = seen.filter(s => s.includes('@7:')).map(s => Number(s.split(':')[1]))
  assert.deepEqual(at7, [...at7].sort((a, b) => a - b))
  assert.equal(q.processed, 200)
  // scheduling in the past runs now; stop ends after the current event
  q.at(q.now - 10, { fire: () => { seen.push('late'); q.stop() } })
  q.at(q.now + 1, t('after'))
  q.run()
  assert.equal(seen[seen.length - 1], 'late')
  assert.equal(q.size, 1)
})

it('a cleared slot still comes due, and lets its target go', () => {
  const q = new EventQueue()
  const fired: number[] = []
  const target = { fire: (arg: number) => { fired.push(arg) } }
  const live = new Slot(target)
  const gone = new Slot(target)
  q.at(5, live, 1)
  q.at(5, gone, 2)
  gone.clear()
  q.run()
  assert.deepEqual(fired, [1])
  assert.equal(q.processed, 2)
})
