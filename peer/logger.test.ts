import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createLogger } from './logger.js'

function sink (): { lines: string[], stream: { write: (s: string) => boolean } } {
  const lines: string[] = []
  return { lines, stream: { write: (s: string) => { lines.push(s); return true } } }
}

const clock = (): Date => new Date('2025-01-02T03:04:05.000Z')

describe('daemon logger', () => {
  it('writes one JSON line per event, printf-style', () => {
    const { lines, stream } = sink()
    const log = createLogger({ stream, clock }).forComponent('rafspeer:test')
    log('mounted %s in %d ms', '/mnt/a', 12)
    log.error('failed: %o', { code: 'X' })
    assert.equal(lines.length, 2)
    assert.ok(lines.every(l => l.endsWith('\n') && !l.slice(0, -1).includes('\n')))
    assert.deepEqual(JSON.parse(lines[0]!), { time: '2025-01-02T03:04:05.000Z', level: 'info', component: 'rafspeer:test', msg: 'mounted /mnt/a in 12 ms' })
    assert.equal(JSON.parse(lines[1]!).level, 'error')
    assert.match(JSON.parse(lines[1]!).msg, /code: 'X'/)
  })

  it('filters by level, and the level can change', () => {
    const { lines, stream } = sink()
    const logger = createLogger({ level: 'warn', stream, clock })
    const log = logger.forComponent('c')
    log('info')
    log.debug('debug')
    log.warn('warn')
    log.error('error')
    assert.deepEqual(lines.map(l => JSON.parse(l).msg), ['warn', 'error'])
    assert.equal(log.enabled('debug'), false)
    logger.setLevel('debug')
    log.debug('now')
    assert.equal(JSON.parse(lines[2]!).msg, 'now')
  })

  it('writes text lines', () => {
    const { lines, stream } = sink()
    createLogger({ format: 'text', stream, clock }).forComponent('rafspeer:x').warn('a %s', 'b')
    assert.equal(lines[0], '2025-01-02T03:04:05.000Z WARN  rafspeer:x a b\n')
  })

  it('survives a broken stream', () => {
    const log = createLogger({ stream: { write: () => { throw new Error('EPIPE') } } }).forComponent('c')
    assert.doesNotThrow(() => log('x'))
  })
})
