/**
 * Access control of the embedded registry: Basic credentials, and the bearer-token flow with the server as its
 * own issuer (challenge, token issuance per scope, scope enforcement, expiry, tampering).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { errorCode, pushBlob, sha256, withRegistry } from './server-testkit.js'
import { parseScopes } from './server-auth.js'

const USER = { user: 'alice', password: 's3cret:with:colons' }

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

/** Parses `Bearer k="v",k2="v2"`. */
function challenge (header: string | null): Record<string, string> {
  assert.ok(header !== null && header.startsWith('Bearer '), `expected a Bearer challenge, got ${header}`)
  const out: Record<string, string> = {}
  for (const m of header.slice(7).matchAll(/(\w+)="([^"]*)"/g)) out[m[1]] = m[2]
  return out
}

test('basic auth: 401 with a Basic challenge, wrong credentials refused, right ones accepted', async () => {
  await withRegistry({ auth: { basic: USER } }, async ({ reg }) => {
    const attempts: Array<Record<string, string>> = [{}, { Authorization: basic('alice', 'nope') }, { Authorization: basic('bob', USER.password) }, { Authorization: 'Basic !!!' }]
    for (const headers of attempts) {
      const res = await fetch(`${reg.url}/v2/`, { headers })
      assert.equal(res.status, 401)
      assert.equal(res.headers.get('www-authenticate'), 'Basic realm="rafspeer"')
      assert.equal(await errorCode(res), 'UNAUTHORIZED')
    }
    const auth = { Authorization: basic(USER.user, USER.password) }
    assert.equal((await fetch(`${reg.url}/v2/`, { headers: auth })).status, 200)
    const digest = await pushBlob(reg, 'private/app', 'secret layer', auth)
    assert.equal((await fetch(`${reg.url}/v2/private/app/blobs/${digest}`)).status, 401)
    assert.equal(await (await fetch(`${reg.url}/v2/private/app/blobs/${digest}`, { headers: auth })).text(), 'secret layer')
    // The token endpoint exists only in bearer mode.
    assert.equal((await fetch(`${reg.url}/token`, { headers: auth })).status, 404)
  })
})

test('bearer auth: challenges name the realm, service and the scope the request needs', async () => {
  await withRegistry({ auth: { bearer: USER } }, async ({ reg }) => {
    const base = challenge((await fetch(`${reg.url}/v2/`)).headers.get('www-authenticate'))
    assert.deepEqual(base, { realm: `${reg.url}/token`, service: 'rafspeer-registry' })
    const pull = await fetch(`${reg.url}/v2/team/app/manifests/latest`)
    assert.equal(pull.status, 401)
    assert.equal(challenge(pull.headers.get('www-authenticate')).scope, 'repository:team/app:pull')
    const push = await fetch(`${reg.url}/v2/team/app/blobs/uploads/`, { method: 'POST' })
    assert.equal(challenge(push.headers.get('www-authenticate')).scope, 'repository:team/app:pull,push')
  })
})

test('bearer auth: /token issues scoped tokens for valid credentials only', async () => {
  await withRegistry({ auth: { bearer: USER } }, async ({ reg }) => {
    const tokenUrl = `${reg.url}/token?service=rafspeer-registry&scope=repository:team/app:pull`
    const anon = await fetch(tokenUrl)
    assert.equal(anon.status, 401)
    assert.equal(anon.headers.get('www-authenticate'), 'Basic realm="rafspeer"')
    assert.equal((await fetch(tokenUrl, { headers: { Authorization: basic('alice', 'wrong') } })).status, 401)
    assert.equal((await fetch(`${reg.url}/token?service=other`, { headers: { Authorization: basic(USER.user, USER.password) } })).status, 403)

    const res = await fetch(tokenUrl, { headers: { Authorization: basic(USER.user, USER.password) } })
    assert.equal(res.status, 200)
    const body = await res.json() as { token: string, access_token: string, expires_in: number, issued_at: string }
    assert.equal(body.token, body.access_token)
    assert.equal(body.expires_in, 300)
    assert.ok(!Number.isNaN(Date.parse(body.issued_at)))
    const bearer = { Authorization: `Bearer ${body.token}` }

    assert.equal((await fetch(`${reg.url}/v2/`, { headers: bearer })).status, 200)
    // Pull on team/app is granted: an unknown manifest is a 404, not a 401.
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/team/app/manifests/latest`, { headers: bearer })), 'NAME_UNKNOWN')
    // Push was not asked for, and other repositories were not either.
    const push = await fetch(`${reg.url}/v2/team/app/blobs/uploads/`, { method: 'POST', headers: bearer })
    assert.equal(push.status, 401)
    assert.equal(challenge(push.headers.get('www-authenticate')).error, 'insufficient_scope')
    const other = await fetch(`${reg.url}/v2/team/other/manifests/latest`, { headers: bearer })
    assert.equal(other.status, 401)
    assert.equal(challenge(other.headers.get('www-authenticate')).scope, 'repository:team/other:pull')
  })
})

test('bearer auth: push with a pull,push token; the OAuth2 password grant works too', async () => {
  await withRegistry({ auth: { bearer: USER } }, async ({ reg }) => {
    const form = new URLSearchParams({ grant_type: 'password', username: USER.user, password: USER.password, service: 'rafspeer-registry', scope: 'repository:team/app:pull,push' })
    const res = await fetch(`${reg.url}/token`, { method: 'POST', body: form })
    assert.equal(res.status, 200)
    const { token } = await res.json() as { token: string }
    const digest = await pushBlob(reg, 'team/app', 'pushed with a token', { Authorization: `Bearer ${token}` })
    assert.equal((await fetch(`${reg.url}/v2/team/app/blobs/${digest}`, { headers: { Authorization: `Bearer ${token}` } })).status, 200)
    const refresh = await fetch(`${reg.url}/token`, { method: 'POST', body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: 'x' }) })
    assert.equal(refresh.status, 400)
    const badForm = await fetch(`${reg.url}/token`, { method: 'POST', body: new URLSearchParams({ grant_type: 'password', username: USER.user, password: 'x' }) })
    assert.equal(badForm.status, 401)
  })
})

test('bearer auth: tokens expire, and tampered tokens are refused', async () => {
  let now = Date.parse('2030-01-01T00:00:00Z')
  await withRegistry({ auth: { bearer: { ...USER, tokenTtl: 60 } }, now: () => now }, async ({ reg }) => {
    const res = await fetch(`${reg.url}/token?scope=repository:app:pull`, { headers: { Authorization: basic(USER.user, USER.password) } })
    const { token, expires_in: ttl } = await res.json() as { token: string, expires_in: number }
    assert.equal(ttl, 60)
    const get = async (t: string): Promise<Response> => await fetch(`${reg.url}/v2/app/tags/list`, { headers: { Authorization: `Bearer ${t}` } })
    assert.equal((await get(token)).status, 404)
    now += 59_000
    assert.equal((await get(token)).status, 404)
    now += 2_000
    const expired = await get(token)
    assert.equal(expired.status, 401)
    assert.equal(challenge(expired.headers.get('www-authenticate')).error, 'invalid_token')

    // Rewrite the payload to grant push on everything: the HMAC no longer matches.
    const [payload, mac] = token.split('.')
    const forged = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { access: unknown, exp: number }
    forged.access = [{ name: 'app', actions: ['pull', 'push'] }]
    forged.exp += 3600
    const forgedToken = `${Buffer.from(JSON.stringify(forged)).toString('base64url')}.${mac}`
    for (const t of [forgedToken, 'garbage', `${payload}.`, '.']) assert.equal((await get(t)).status, 401, t)
  })
})

test('bearer auth: a mount from a repository the token cannot pull becomes an upload', async () => {
  await withRegistry({ auth: { bearer: USER } }, async ({ reg }) => {
    const tokenFor = async (...scopes: string[]): Promise<Record<string, string>> => {
      const q = scopes.map(s => `scope=${encodeURIComponent(s)}`).join('&')
      const res = await fetch(`${reg.url}/token?${q}`, { headers: { Authorization: basic(USER.user, USER.password) } })
      return { Authorization: `Bearer ${(await res.json() as { token: string }).token}` }
    }
    const digest = await pushBlob(reg, 'secret', 'hidden', await tokenFor('repository:secret:push,pull'))
    const onlyDst = await tokenFor('repository:dst:pull,push')
    const denied = await fetch(`${reg.url}/v2/dst/blobs/uploads/?mount=${digest}&from=secret`, { method: 'POST', headers: onlyDst })
    assert.equal(denied.status, 202)
    const both = await tokenFor('repository:dst:pull,push', 'repository:secret:pull')
    const mounted = await fetch(`${reg.url}/v2/dst/blobs/uploads/?mount=${digest}&from=secret`, { method: 'POST', headers: both })
    assert.equal(mounted.status, 201)
    assert.equal(await (await fetch(`${reg.url}/v2/dst/blobs/${digest}`, { headers: both })).text(), 'hidden')
    assert.equal(sha256('hidden'), digest)
  })
})

test('scope parsing ignores other resource types, bad names and unknown actions', () => {
  assert.deepEqual(parseScopes(['repository:a/b:pull,push registry:catalog:* repository:UPPER:pull', 'repository:c:*', 'repository:d:fly', 'junk']), [
    { name: 'a/b', actions: ['pull', 'push'] },
    { name: 'c', actions: ['pull', 'push', 'delete'] }
  ])
})
