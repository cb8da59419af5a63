import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createLogger, silentLogger } from './logger.js'

function sink (): { lines: string[], stream: { write: (s: string) => boolean } } {
  const lines: string[] = []
  return { lines, stream: { write: (s: string) => { lines.push(s); return true } } }
}

const clock = (): Date => new Date('2025-01-02T03:04:05.000Z')

describe('logger', () => {
  it('writes one JSON line per event, printf-style, with the component', () => {
    const { lines, stream } = sink()
    const log = createLogger({ stream, clock }).forComponent('rafspeer:test')
    log.info('mounted %s in %d ms', '/mnt/a', 12)
    log.error('failed: %j', { code: 'X' })
    assert.equal(lines.length, 2)
    assert.ok(lines.every(l => l.endsWith('\n') && !l.slice(0, -1).includes('\n')))
    assert.deepEqual(JSON.parse(lines[0]!), { time: '2025-01-02T03:04:05.000Z', level: 'info', component: 'rafspeer:test', msg: 'mounted /mnt/a in 12 ms' })
    assert.equal(JSON.parse(lines[1]!).level, 'error')
    assert.match(JSON.parse(lines[1]!).msg, /"code":"X"/)
  })

  it('filters by level', () => {
    const { lines, stream } = sink()
    const log = createLogger({ level: 'warn', stream, clock }).forComponent('c')
    log.info('info')
    log.debug('debug')
    log.warn('warn')
    log.error('error')
    assert.deepEqual(lines.map(l => JSON.parse(l).msg), ['warn', 'error'])
    assert.equal(log.isLevelEnabled('debug'), false)
    assert.equal(log.isLevelEnabled('error'), true)
    const { lines: all, stream: s2 } = sink()
    createLogger({ level: 'debug', stream: s2, clock }).forComponent('c').debug('now')
    assert.equal(JSON.parse(all[0]!).msg, 'now')
  })

  it('writes text lines', () => {
    const { lines, stream } = sink()
    createLogger({ format: 'text', stream, clock }).forComponent('rafspeer:x').warn('a %s', 'b')
    assert.equal(lines[0], '2025-01-02T03:04:05.000Z WARN  rafspeer:x a b\n')
  })

  it('survives a broken stream', () => {
    const log = createLogger({ stream: { write: () => { throw new Error('EPIPE') } } }).forComponent('c')
    assert.doesNotThrow(() => { log.info('x') })
    assert.doesNotThrow(() => { createLogger({ format: 'text', stream: { write: () => { throw new Error('EPIPE') } } }).forComponent('c').error('x') })
  })

  it('the silent logger writes nothing and says so', () => {
    const log = silentLogger.forComponent('c')
    assert.doesNotThrow(() => { log.error('x %s', 'y') })
    assert.equal(log.isLevelEnabled('error'), false)
  })
})
