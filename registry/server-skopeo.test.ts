/**
 * Real clients against the embedded registry: an image built with `umoci` is pushed, inspected, pulled back
 * and copied across repositories with `skopeo`, anonymously and through the bearer-token flow. Skipped, with
 * the reason, when either tool is missing.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import type { AuthOptions } from './server.js'
import { withRegistry } from './server-testkit.js'

const run = promisify(execFile)
const TOOL_TIMEOUT_MS = 60_000

function onPath (tool: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some(dir => dir !== '' && existsSync(join(dir, tool)))
}

const missing = ['skopeo', 'umoci'].filter(t => !onPath(t))
const skip = missing.length > 0 ? `${missing.join(' and ')} not installed` : false

async function tool (cmd: string, args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { cwd, timeout: TOOL_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 << 20 })
    return stdout
  } catch (err) {
    const e = err as { stderr?: string, message: string }
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr ?? e.message}`)
  }
}

interface IndexJson { manifests: Array<{ digest: string }> }

/** Two-layer OCI layout `dir/img:t`, built from real directories; returns its manifest digest. */
async function buildImage (dir: string): Promise<string> {
  const rootless = process.getuid?.() === 0 ? [] : ['--rootless']
  const layout = join(dir, 'img')
  await tool('umoci', ['init', '--layout', layout])
  await tool('umoci', ['new', '--image', `${layout}:t`])
  await mkdir(join(dir, 'l1', 'etc'), { recursive: true })
  await writeFile(join(dir, 'l1', 'etc', 'hello'), 'hello from layer one\n')
  await symlink('etc/hello', join(dir, 'l1', 'greeting'))
  await mkdir(join(dir, 'l2'), { recursive: true })
  await writeFile(join(dir, 'l2', 'data.bin'), Buffer.alloc(300 * 1024, 0x5a))
  await tool('umoci', ['insert', ...rootless, '--image', `${layout}:t`, join(dir, 'l1'), '/one'])
  await tool('umoci', ['insert', ...rootless, '--image', `${layout}:t`, join(dir, 'l2'), '/two'])
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as IndexJson
  return index.manifests[0].digest
}

async function roundTrip (auth: AuthOptions | undefined): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-skopeo-'))
  try {
    const manifestDigest = await buildImage(dir)
    await withRegistry({ auth }, async ({ reg, errors }) => {
      const creds = auth?.bearer === undefined ? [] : [`${auth.bearer.user}:${auth.bearer.password}`]
      const src = creds.length === 0 ? [] : ['--src-creds', creds[0]]
      const dst = creds.length === 0 ? [] : ['--dest-creds', creds[0]]
      const ref = `docker://${reg.host}/demo/app:v1`
      await tool('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', ...dst, `oci:${join(dir, 'img')}:t`, ref])

      const inspected = JSON.parse(await tool('skopeo', ['inspect', '--tls-verify=false', ...(creds.length === 0 ? [] : ['--creds', creds[0]]), ref])) as { Digest: string, Layers: string[], RepoTags: string[] }
      assert.equal(inspected.Digest, manifestDigest, 'the registry kept the manifest byte for byte')
      assert.equal(inspected.Layers.length, 2)
      assert.deepEqual(inspected.RepoTags, ['v1'])

      const out = join(dir, 'out')
      await tool('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', ...src, ref, `oci:${out}:t`])
      const pulled = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as IndexJson
      assert.equal(pulled.manifests[0].digest, manifestDigest)
      for (const layer of inspected.Layers) assert.ok(existsSync(join(out, 'blobs', 'sha256', layer.slice(7))), layer)

      // Same registry, another repository: skopeo may mount instead of uploading; either way it must work.
      await tool('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', '--dest-tls-verify=false', ...src, ...dst, ref, `docker://${reg.host}/other/app:v2`])
      const tags = await tool('skopeo', ['list-tags', '--tls-verify=false', ...(creds.length === 0 ? [] : ['--creds', creds[0]]), `docker://${reg.host}/other/app`])
      assert.deepEqual((JSON.parse(tags) as { Tags: string[] }).Tags, ['v2'])

      const snap = reg.counters.snapshot()
      assert.ok(snap['demo/app'].bytesReceived > 0, 'layers were received')
      assert.ok(snap['demo/app'].bytesServed > 0, 'layers were served back')
      assert.deepEqual(errors, [])
    })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

test('skopeo pushes, inspects, pulls and copies an umoci image (anonymous)', { skip, timeout: 5 * TOOL_TIMEOUT_MS }, async () => {
  await roundTrip(undefined)
})

test('skopeo does the same through the bearer-token flow', { skip, timeout: 5 * TOOL_TIMEOUT_MS }, async () => {
  await roundTrip({ bearer: { user: 'pusher', password: 'hunter2' } })
})
