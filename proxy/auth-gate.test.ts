import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { AuthGate, credentialKey, type AccessProbe, type AccessTarget, type Verdict } from './auth-gate.js'

const HOST = 'registry.example'
const D1 = `sha256:${'1'.repeat(64)}`
const D2 = `sha256:${'2'.repeat(64)}`
const CHALLENGE = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull"'

type Outcome = 'ok' | 'missing' | Error | (() => Promise<'ok' | 'missing'>)

/** A probe answering from a script (the last outcome repeats), recording every target it was asked about. */
function fakeProbe (...outcomes: Outcome[]): AccessProbe & { calls: AccessTarget[] } {
  const calls: AccessTarget[] = []
  return {
    calls,
    probe: async (t) => {
      calls.push(t)
      const o = outcomes[Math.min(calls.length - 1, outcomes.length - 1)]!
      if (o instanceof Error) throw o
      return typeof o === 'function' ? await o() : o
    }
  }
}

function registryError (code: string, fields: { status?: number, challenge?: string } = {}): Error {
  return Object.assign(new Error(`${code} from the fake registry`), { code }, fields)
}
const unauthorized = (): Error => registryError('RAFSPEER_ERR_REGISTRY_AUTH', { status: 401, challenge: CHALLENGE })
const forbidden = (): Error => registryError('RAFSPEER_ERR_REGISTRY_AUTH', { status: 403 })
const notFound = (): Error => registryError('RAFSPEER_ERR_REGISTRY_NOT_FOUND', { status: 404 })
const offline = (): Error => registryError('RAFSPEER_ERR_REGISTRY_NETWORK')

function blob (repository: string, authorization: string | null, target = D1): AccessTarget {
  return { host: HOST, repository, kind: 'blob', target, authorization }
}

function refusal (v: Verdict): { status: number, code: string, headers?: Record<string, string> } {
  assert.ok(!v.ok, `expected a refusal, got ${JSON.stringify(v)}`)
  const { status, code, headers } = v.answer
  return headers === undefined ? { status, code } : { status, code, headers }
}

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-gate-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

test('an allowed verdict is cached per credentials, host, repository, kind and target', async () => {
  const probe = fakeProbe('ok')
  const gate = new AuthGate({ probe })
  assert.deepEqual(await gate.check(blob('team/app', 'Bearer a')), { ok: true, how: 'checked' })
  assert.deepEqual(await gate.check(blob('team/app', 'Bearer a')), { ok: true, how: 'cached' })
  assert.equal(probe.calls.length, 1)
  assert.deepEqual(probe.calls[0], blob('team/app', 'Bearer a'))

  await gate.check(blob('team/app', 'Bearer b'))
  await gate.check(blob('team/app', null))
  await gate.check(blob('team/other', 'Bearer a'))
  await gate.check({ ...blob('team/app', 'Bearer a'), host: 'other.example' })
  await gate.check(blob('team/app', 'Bearer a', D2))
  await gate.check({ ...blob('team/app', 'Bearer a'), kind: 'manifest' })
  assert.equal(probe.calls.length, 7)
  assert.deepEqual(gate.counters, { checks: 8, probes: 7, allowed: 8, denied: 0, offline: 0, probeFailures: 0 })
})

test('a 401 is relayed with the upstream challenge unchanged', async () => {
  const gate = new AuthGate({ probe: fakeProbe(unauthorized()) })
  assert.deepEqual(refusal(await gate.check(blob('team/app', null))),
    { status: 401, code: 'UNAUTHORIZED', headers: { 'www-authenticate': CHALLENGE } })
  const bare = new AuthGate({ probe: fakeProbe(registryError('RAFSPEER_ERR_REGISTRY_AUTH', { status: 401 })) })
  assert.deepEqual(refusal(await bare.check(blob('team/app', null))), { status: 401, code: 'UNAUTHORIZED' })
})

test('a 403, or any other auth failure, is DENIED', async () => {
  const gate = new AuthGate({ probe: fakeProbe(forbidden()) })
  assert.deepEqual(refusal(await gate.check(blob('team/app', 'Bearer a'))), { status: 403, code: 'DENIED' })
  const token = new AuthGate({ probe: fakeProbe(registryError('RAFSPEER_ERR_REGISTRY_AUTH')) })
  assert.deepEqual(refusal(await token.check(blob('team/app', 'Basic eDp5'))), { status: 403, code: 'DENIED' })
  assert.equal(gate.counters.denied, 1)
  assert.equal(gate.counters.probeFailures, 0)
})

test('content the upstream does not have is BLOB_UNKNOWN or MANIFEST_UNKNOWN', async () => {
  for (const probe of [fakeProbe('missing'), fakeProbe(notFound())]) {
    const gate = new AuthGate({ probe })
    assert.deepEqual(refusal(await gate.check(blob('team/app', null))), { status: 404, code: 'BLOB_UNKNOWN' })
    assert.deepEqual(refusal(await gate.check({ ...blob('team/app', null), kind: 'manifest', target: 'latest' })),
      { status: 404, code: 'MANIFEST_UNKNOWN' })
    assert.equal(gate.isPublic(HOST, 'team/app'), false)
  }
})

test('concurrent checks of the same content and credentials share one probe', async () => {
  let release!: () => void
  const held = new Promise<void>(resolve => { release = resolve })
  const probe = fakeProbe(async () => { await held; return 'ok' })
  const gate = new AuthGate({ probe })
  const all = Promise.all([1, 2, 3].map(async () => await gate.check(blob('team/app', 'Bearer a'))))
  const other = gate.check(blob('team/app', 'Bearer b'))
  await sleep(10)
  release()
  assert.deepEqual(await all, [1, 2, 3].map(() => ({ ok: true, how: 'checked' })))
  assert.deepEqual(await other, { ok: true, how: 'checked' })
  assert.equal(probe.calls.length, 2)
})

test('vouched digests pass without a probe, for that credential in that repository only', async () => {
  const probe = fakeProbe(forbidden())
  const gate = new AuthGate({ probe })
  gate.vouch(HOST, 'team/app', 'Bearer a', [D1, D2])
  assert.deepEqual(await gate.check(blob('team/app', 'Bearer a')), { ok: true, how: 'vouched' })
  assert.deepEqual(await gate.check(blob('team/app', 'Bearer a', D2)), { ok: true, how: 'vouched' })
  assert.equal(probe.calls.length, 0)
  assert.equal(refusal(await gate.check(blob('team/app', 'Bearer b'))).code, 'DENIED')
  assert.equal(refusal(await gate.check(blob('team/app', null))).code, 'DENIED')
  assert.equal(refusal(await gate.check(blob('team/other', 'Bearer a'))).code, 'DENIED')
  assert.equal(probe.calls.length, 3)
  assert.equal(gate.isPublic(HOST, 'team/app'), false, 'a credentialed vouch says nothing about anonymous access')
})

test('an anonymous success marks the repository public and a new gate over the state file knows it', async () => {
  await withDir(async (dir) => {
    const stateFile = join(dir, 'public-repos.json')
    const gate = new AuthGate({ probe: fakeProbe('ok') }, { stateFile })
    await gate.check(blob('team/private', 'Bearer a'))
    assert.equal(gate.isPublic(HOST, 'team/private'), false)
    await gate.check(blob('library/alpine', null))
    gate.vouch(HOST, 'library/busybox', null, [D2])
    assert.equal(gate.isPublic(HOST, 'library/alpine'), true)
    await gate.flush()
    assert.deepEqual(JSON.parse(await readFile(stateFile, 'utf8')),
      { version: 1, public: [`${HOST}/library/alpine`, `${HOST}/library/busybox`] })

    const probe = fakeProbe(offline())
    const again = new AuthGate({ probe }, { stateFile })
    assert.deepEqual(await again.check(blob('library/alpine', 'Bearer z')), { ok: true, how: 'offline' })
    assert.equal(again.isPublic(HOST, 'library/busybox'), true)
    assert.equal(refusal(await again.check(blob('team/private', 'Bearer a'))).status, 404)
  })
})

test('an unreadable state file is ignored', async () => {
  await withDir(async (dir) => {
    const stateFile = join(dir, 'public-repos.json')
    await writeFile(stateFile, '{not json')
    const gate = new AuthGate({ probe: fakeProbe('ok') }, { stateFile })
    assert.deepEqual(await gate.check(blob('library/alpine', null)), { ok: true, how: 'checked' })
  })
})

test('with the upstream unreachable only digests of public repositories are served, and not cached', async () => {
  const probe = fakeProbe('ok', offline())
  const gate = new AuthGate({ probe })
  await gate.check({ ...blob('library/alpine', null), target: D2 })
  assert.ok(gate.isPublic(HOST, 'library/alpine'))
  assert.deepEqual(await gate.check(blob('library/alpine', null)), { ok: true, how: 'offline' })
  assert.deepEqual(await gate.check(blob('library/alpine', 'Bearer a')), { ok: true, how: 'offline' })
  assert.deepEqual(await gate.check(blob('library/alpine', null)), { ok: true, how: 'offline' }, 'offline verdicts are asked again')
  assert.deepEqual(refusal(await gate.check({ ...blob('library/alpine', null), kind: 'manifest', target: 'latest' })),
    { status: 404, code: 'MANIFEST_UNKNOWN' }, 'a tag needs the upstream')
  assert.deepEqual(refusal(await gate.check(blob('team/private', 'Bearer a'))), { status: 404, code: 'BLOB_UNKNOWN' })
  assert.equal(probe.calls.length, 6)
  assert.equal(gate.counters.offline, 3)
  assert.equal(gate.counters.probeFailures, 5)
})

test('5xx and unexpected errors count as an unreachable upstream', async () => {
  for (const err of [registryError('RAFSPEER_ERR_REGISTRY_HTTP', { status: 503 }), new Error('boom')]) {
    const gate = new AuthGate({ probe: fakeProbe(err) })
    gate.vouch(HOST, 'library/alpine', null, [])
    assert.deepEqual(await gate.check(blob('library/alpine', 'Bearer a')), { ok: true, how: 'offline' })
    assert.equal(refusal(await gate.check(blob('team/app', 'Bearer a'))).status, 404)
  }
})

test('refusals are cached for deniedTtlMs only, allowed verdicts for ttlMs', async () => {
  const probe = fakeProbe(forbidden(), forbidden(), 'ok', 'ok')
  const gate = new AuthGate({ probe }, { ttlMs: 300, deniedTtlMs: 50 })
  const t = blob('team/app', 'Bearer a')
  assert.equal(refusal(await gate.check(t)).code, 'DENIED')
  assert.equal(refusal(await gate.check(t)).code, 'DENIED')
  assert.equal(probe.calls.length, 1)
  await sleep(100)
  assert.equal(refusal(await gate.check(t)).code, 'DENIED')
  assert.equal(probe.calls.length, 2)
  await sleep(100)
  assert.deepEqual(await gate.check(t), { ok: true, how: 'checked' })
  await sleep(100)
  assert.deepEqual(await gate.check(t), { ok: true, how: 'cached' }, 'an allowed verdict outlives deniedTtlMs')
  assert.equal(probe.calls.length, 3)
  await sleep(300)
  assert.deepEqual(await gate.check(t), { ok: true, how: 'checked' })
  assert.equal(probe.calls.length, 4)
})

test('a TTL of 0 caches no verdict and no vouch: every check asks', async () => {
  const probe = fakeProbe('ok', forbidden(), forbidden(), 'ok')
  const gate = new AuthGate({ probe }, { ttlMs: 0, deniedTtlMs: 0 })
  const t = blob('team/app', 'Bearer a')
  gate.vouch(HOST, 'team/app', 'Bearer a', [D1])
  assert.deepEqual(await gate.check(t), { ok: true, how: 'checked' })
  assert.equal(refusal(await gate.check(t)).code, 'DENIED')
  assert.equal(refusal(await gate.check(t)).code, 'DENIED')
  await sleep(5)
  assert.deepEqual(await gate.check(t), { ok: true, how: 'checked' })
  assert.equal(probe.calls.length, 4)
})

test('a repository no longer readable without credentials is no longer served offline', async () => {
  const probe = fakeProbe('ok', unauthorized(), offline())
  const gate = new AuthGate({ probe })
  await gate.check(blob('team/app', null, D2))
  assert.equal(refusal(await gate.check(blob('team/app', null))).status, 401)
  assert.equal(gate.isPublic(HOST, 'team/app'), false)
  assert.equal(refusal(await gate.check(blob('team/app', null, `sha256:${'3'.repeat(64)}`))).status, 404)
})

test('check never throws, even when the probe rejects with no error', async () => {
  const gate = new AuthGate({ probe: { probe: async () => await Promise.reject(undefined) } })
  assert.equal(refusal(await gate.check(blob('team/app', null))).status, 404)
})

test('credentialKey hashes credentials and never contains them', () => {
  assert.equal(credentialKey(null), 'anonymous')
  const secret = 'Basic dXNlcjpwYXNzd29yZA=='
  const k = credentialKey(secret)
  assert.match(k, /^[0-9a-f]{32}$/)
  assert.ok(!k.includes('dXNlcjpwYXNzd29yZA') && !k.includes(secret))
  assert.equal(credentialKey(secret), k)
  assert.notEqual(credentialKey('Bearer token-a'), credentialKey('Bearer token-b'))
  assert.notEqual(credentialKey('anonymous'), 'anonymous')
  assert.notEqual(credentialKey(''), 'anonymous')
})
