import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { formatBytes, parseByteSize, parseHostPort } from './units.js'

describe('units', () => {
  it('parses sizes: plain, hex, IEC and SI units; refuses anything else', () => {
    assert.equal(parseByteSize('1GB'), 1e9)
    assert.equal(parseByteSize('512k'), 512 * 1024)
    assert.equal(parseByteSize('1.5 MiB'), 1.5 * 2 ** 20)
    assert.equal(parseByteSize('0x100000'), 1 << 20)
    assert.equal(parseByteSize('12'), 12)
    assert.equal(parseByteSize('12 parsecs'), undefined)
    assert.equal(parseByteSize('-1'), undefined)
    assert.equal(parseByteSize('9'.repeat(30)), undefined)
  })

  it('splits host:port', () => {
    assert.deepEqual(parseHostPort('127.0.0.1:9110'), { host: '127.0.0.1', port: 9110 })
    assert.deepEqual(parseHostPort('[::1]:0'), { host: '::1', port: 0 })
    assert.deepEqual(parseHostPort(':9110'), { host: '::', port: 9110 })
    assert.equal(parseHostPort('host'), undefined)
    assert.equal(parseHostPort('host:99999'), undefined)
  })

  it('prints byte counts', () => {
    assert.equal(formatBytes(512), '512 B')
    assert.equal(formatBytes(1536), '1.5 KiB')
    assert.equal(formatBytes(3 * 2 ** 30), '3.0 GiB')
  })
})
