/**
 * The machine's CPU for the model, fitted from runs of one node alone (`fitMachineCpu`), and the mapping handing it
 * to the model (`modelInitFor`).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { cpuSampleOf, fitMachineCpu, modelInitFor, type CpuSample } from './credibility.js'
import type { SwarmReport } from './swarm.js'

const MiB = 1 << 20

test('calibration runs separate the cost per MiB from the registry, from a neighbour, and a node\'s background share', () => {
  // 40 ms a MiB from the registry, 70 from a neighbour, 15% of a core per running node
  const run = (reg: number, peer: number, nodeMs: number): CpuSample => ({ registryBytes: reg * MiB, peerBytes: peer * MiB, nodeMs, cpuMs: reg * 40 + peer * 70 + nodeMs * 0.15 })
  const cpu = fitMachineCpu(2, [run(64, 0, 17_000), run(64, 0, 4_500), run(64, 64, 2 * 11_000)])
  assert.equal(cpu.cores, 2)
  assert.ok(Math.abs(cpu.msPerMiB - 40) < 1e-6, String(cpu.msPerMiB))
  assert.ok(Math.abs(cpu.peerMsPerMiB! - 70) < 1e-6, String(cpu.peerMsPerMiB))
  assert.ok(Math.abs(cpu.busyPerNode! - 0.15) < 1e-9, String(cpu.busyPerNode))
  // runs alone only: nothing says what a neighbour's MiB costs, it is taken as the registry's
  const alone = fitMachineCpu(2, [run(64, 0, 17_000), run(64, 0, 4_500)])
  assert.ok(Math.abs(alone.msPerMiB - 40) < 1e-6 && alone.peerMsPerMiB === alone.msPerMiB && Math.abs(alone.busyPerNode! - 0.15) < 1e-9, JSON.stringify(alone))
})

test('a request\'s cost, measured apart, comes off the samples before the fit and goes to the model', () => {
  // 30 ms a MiB from the registry, 45 from a neighbour, 5% of a core per reading node, 0.5 ms per request
  const run = (reg: number, peer: number, nodeMs: number, requests: number): CpuSample => ({ registryBytes: reg * MiB, peerBytes: peer * MiB, nodeMs, requests, cpuMs: reg * 30 + peer * 45 + nodeMs * 0.05 + requests * 0.5 })
  const samples = [run(64, 0, 17_000, 0), run(64, 0, 4_500, 0), run(64, 64, 2 * 17_000, 350), run(64, 64, 2 * 4_500, 3000)]
  const cpu = fitMachineCpu(2, samples, 0.5)
  assert.ok(Math.abs(cpu.msPerMiB - 30) < 1e-6 && Math.abs(cpu.peerMsPerMiB! - 45) < 1e-6 && Math.abs(cpu.busyPerNode! - 0.05) < 1e-9, JSON.stringify(cpu))
  assert.equal(cpu.msPerRequest, 0.5)
  // without it, the requests' work lands on the neighbour's MiB and the fit no longer matches
  const blind = fitMachineCpu(2, samples)
  assert.equal(blind.msPerRequest, undefined)
  assert.ok(Math.abs(blind.peerMsPerMiB! - 45) > 1, JSON.stringify(blind))
  assert.throws(() => fitMachineCpu(2, samples, -1), RangeError)
})

test('a calibration sample counts each node\'s own reading time, not its wait for its turn', () => {
  // the relay: the second node starts 6 s into a 10-s reading phase and reads for 4 s
  const node = (completionMs: number, registryBytes: number, peerBytes: number, sent: number): unknown => ({ completionMs, registryBytes, peerBytes, peerRequests: { sent } })
  const real = { readMs: 10_000, readCpuMs: 4_000, nodes: [node(4_100, 64 * MiB, 0, 0), node(3_900, 0, 64 * MiB, 70)] } as unknown as SwarmReport
  assert.deepEqual(cpuSampleOf(real), { registryBytes: 64 * MiB, peerBytes: 64 * MiB, nodeMs: 8_000, requests: 70, cpuMs: 4_000 })
  assert.equal(cpuSampleOf({ ...real, readCpuMs: undefined }), undefined)
})

test('too few runs to separate the parts, or a fit with a negative part: fewer parts', () => {
  assert.deepEqual(fitMachineCpu(2, [{ registryBytes: 64 * MiB, peerBytes: 0, nodeMs: 10_000, cpuMs: 3_200 }]), { cores: 2, msPerMiB: 50, peerMsPerMiB: 50, busyPerNode: 0 })
  // the slower run cheaper: a negative background share is no machine's
  const odd = fitMachineCpu(2, [{ registryBytes: 64 * MiB, peerBytes: 0, nodeMs: 17_000, cpuMs: 2_000 }, { registryBytes: 64 * MiB, peerBytes: 0, nodeMs: 4_500, cpuMs: 3_000 }])
  assert.equal(odd.busyPerNode, 0)
  assert.ok(odd.msPerMiB > 0)
  assert.throws(() => fitMachineCpu(2, []), /calibration run/)
})

test('the mapping hands the machine\'s CPU to the model only when asked, and a real run\'s whole-image prefetch', () => {
  const real = { bandwidth: 4 * MiB, imageBytes: 64 * MiB, blobBytes: 54 * MiB, chunkSizes: [] } as unknown as SwarmReport
  const init = { nodes: 8, imageBytes: 64 * MiB, bandwidth: 4 * MiB }
  assert.equal(modelInitFor(init, real).cpu, undefined)
  assert.deepEqual(modelInitFor(init, real, { cpu: { cores: 2, msPerMiB: 40, busyPerNode: 0.1 } }).cpu, { cores: 2, msPerMiB: 40, busyPerNode: 0.1 })
  assert.equal(modelInitFor(init, real).prefetch, undefined)
  assert.equal(modelInitFor({ ...init, prefetch: 'all' }, real).prefetch, 'all')
})
