/** `rafspeer sim --model` through the real command: one JSON report in the real mode's shape, and an SVG chart. */
import { it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli } from '../../test/helpers/cli.js'

it('sim --model --nodes 50 --json: the real mode\'s report with the model\'s extras; --chart writes an SVG; --prefetch all', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-sim-model-'))
  try {
    const chart = join(dir, 'swarm.svg')
    const r = await runCli(['sim', '--model', '--nodes', '50', '--image-size', '64MiB', '--seed', '5', '--chart', chart, '--json'])
    assert.equal(r.code, 0, r.stderr)
    const report = JSON.parse(r.stdout) as Record<string, unknown> & { nodes: Array<Record<string, unknown>>, model: Record<string, unknown> }
    for (const k of ['imageBytes', 'blobBytes', 'registryBytes', 'peerBytes', 'bandwidth', 'p50Ms', 'p95Ms', 'maxMs', 'wallMs', 'nativeReadMs']) {
      assert.equal(typeof report[k], 'number', k)
    }
    assert.equal(report.verifiedOk, true)
    assert.equal(report.mode, 'model')
    assert.equal(report.nodes.length, 50)
    for (const k of ['id', 'peerId', 'completionMs', 'startMs', 'registryBytes', 'peerBytes', 'uploadBytes', 'ok', 'messages', 'controlBytes']) {
      assert.ok(k in report.nodes[0]!, k)
    }
    assert.equal(report.model.nodes, 50)
    assert.equal(report.model.seed, 5)
    assert.equal(typeof report.runtime, 'object')
    const svg = await readFile(chart, 'utf8')
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
    assert.match(svg, /Registry egress/)

    // --prefetch all: every node prefetches the whole image as a daemon does; --caps limiters: the caps are rate limits
    const pf = await runCli(['sim', '--model', '--nodes', '8', '--image-size', '16MiB', '--bandwidth', '4MiB', '--registry-bandwidth', '4MiB', '--prefetch', 'all', '--caps', 'limiters', '--json'])
    assert.equal(pf.code, 0, pf.stderr)
    const pr = JSON.parse(pf.stdout) as { verifiedOk: boolean, model: { prefetch: string, caps: string } }
    assert.equal(pr.model.prefetch, 'all')
    assert.equal(pr.model.caps, 'limiters')
    assert.equal(report.model.caps, 'links')
    assert.equal(pr.verifiedOk, true)

    // real-mode flags are refused with --model, and --nodes past 64 without it
    const bad = await runCli(['sim', '--model', '--keep'])
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /--keep/)
    const many = await runCli(['sim', '--nodes', '65'])
    assert.equal(many.code, 1)
    assert.match(many.stderr, /--nodes/)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
