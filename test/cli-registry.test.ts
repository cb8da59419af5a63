/** `rafspeer registry` as a user runs it: listens, answers the distribution API, stops cleanly on SIGTERM. */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { RegistryClient } from '../registry/index.js'

const fromSources = import.meta.url.endsWith('.ts')
const MAIN = fileURLToPath(new URL(fromSources ? '../cli/main.ts' : '../cli/main.js', import.meta.url))

test('rafspeer registry serves pushes and pulls, then stops on SIGTERM with its counters', async () => {
  const root = await mkdtemp(join(tmpdir(), 'rafs-cli-registry-'))
  const child = spawn(process.execPath, [...(fromSources ? ['--import', 'tsx'] : []), MAIN, 'registry', '--root', root, '--listen', '127.0.0.1:0'])
  try {
    let out = ''
    child.stdout.setEncoding('utf8')
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: string) => {
        out += d
        const m = /listening on (http:\/\/\S+)/.exec(out)
        if (m !== null) resolve(m[1]!)
      })
      child.once('exit', (code) => reject(new Error(`registry exited early (${code}): ${out}`)))
    })
    const host = new URL(url).host
    const client = new RegistryClient({ plainHttp: 'auto' })
    const data = Buffer.from('hello from the embedded registry')
    const digest = 'sha256:' + createHash('sha256').update(data).digest('hex')
    await client.pushBlob(`${host}/demo/app`, digest, data.length, async function * () { yield data })
    assert.deepEqual(await client.fetchBlobRange(`${host}/demo/app`, digest, 6, 9), data.subarray(6, 10))
    await client.close()
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    assert.equal(await exited, 0)
    assert.match(out, /demo\/app: \d+ bytes served/)
  } finally {
    child.kill('SIGKILL')
    await rm(root, { recursive: true, force: true })
  }
})
