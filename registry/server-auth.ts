/**
 * Access control of the embedded registry: either HTTP Basic, or the distribution token flow with the server as
 * its own token issuer (`GET /token` trades Basic credentials for a short-lived bearer token bound to the
 * requested repositories and actions). Tokens are opaque `payload.hmac` strings signed with a key that lives
 * only as long as the server, so a restart revokes every token.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { DistributionError, isName, sendJson } from './server-http.js'
import type { Clock } from '../base/index.js'

export interface Credentials { user: string, password: string }

export interface AuthOptions {
  basic?: Credentials
  /** `tokenTtl`: seconds a bearer token stays valid (default 300). */
  bearer?: Credentials & { tokenTtl?: number }
}

export type Action = 'pull' | 'push' | 'delete'

/** What a request needs: an action on a repository, or (name undefined) just any valid identity. */
export interface Need { name?: string, action: Action }

interface Grant { name: string, actions: Action[] }
interface TokenPayload { sub: string, access: Grant[], exp: number }

export const DEFAULT_TOKEN_TTL = 300
export const TOKEN_SERVICE = 'rafspeer-registry'
const BASIC_CHALLENGE = 'Basic realm="rafspeer"'
const MAX_FORM_BYTES = 16 * 1024

function sameSecret (a: string, b: string): boolean {
  // Hashing first gives equal lengths, so the comparison time says nothing about either value.
  const ha = createHash('sha256').update(a).digest()
  const hb = createHash('sha256').update(b).digest()
  return timingSafeEqual(ha, hb)
}

function checkCredentials (expected: Credentials, user: string, password: string): boolean {
  const u = sameSecret(expected.user, user)
  const p = sameSecret(expected.password, password)
  return u && p
}

function basicCredentials (req: IncomingMessage): Credentials | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(req.headers.authorization ?? '')
  if (m === null) return undefined
  const decoded = Buffer.from(m[1], 'base64').toString('utf8')
  const i = decoded.indexOf(':')
  if (i < 0) return undefined
  return { user: decoded.slice(0, i), password: decoded.slice(i + 1) }
}

/** Parses `repository:NAME:a,b` scopes; anything else (other types, bad names) is ignored, as issuers do. */
export function parseScopes (values: string[]): Grant[] {
  const grants: Grant[] = []
  for (const value of values) {
    for (const scope of value.split(' ')) {
      const first = scope.indexOf(':')
      const last = scope.lastIndexOf(':')
      if (first < 0 || last === first || scope.slice(0, first) !== 'repository') continue
      const name = scope.slice(first + 1, last)
      if (!isName(name)) continue
      const actions = new Set<Action>()
      for (const a of scope.slice(last + 1).split(',')) {
        if (a === 'pull' || a === 'push' || a === 'delete') actions.add(a)
        if (a === '*') { actions.add('pull'); actions.add('push'); actions.add('delete') }
      }
      if (actions.size > 0) grants.push({ name, actions: [...actions] })
    }
  }
  return grants
}

export class AuthGate {
  private readonly opts: AuthOptions
  private readonly now: Clock
  private readonly key = randomBytes(32)
  private readonly realmHost: (req: IncomingMessage) => string

  constructor (opts: AuthOptions | undefined, init: { now: Clock, realmHost: (req: IncomingMessage) => string }) {
    this.opts = opts ?? {}
    this.now = init.now
    this.realmHost = init.realmHost
  }

  get tokenIssuer (): boolean { return this.opts.bearer !== undefined }

  /** Throws a 401 carrying the right challenge unless the request may do `need`. */
  check (req: IncomingMessage, need: Need): void {
    if (this.opts.bearer !== undefined) {
      const problem = this.bearerProblem(req, need)
      if (problem !== undefined) {
        const header = this.bearerChallenge(req, need, problem === 'missing' ? undefined : problem)
        throw new DistributionError('UNAUTHORIZED', 'authentication required', { headers: { 'WWW-Authenticate': header }, detail: need.name === undefined ? null : [{ Type: 'repository', Name: need.name, Action: need.action }] })
      }
    } else if (this.opts.basic !== undefined) {
      const c = basicCredentials(req)
      if (c === undefined || !checkCredentials(this.opts.basic, c.user, c.password)) {
        throw new DistributionError('UNAUTHORIZED', 'authentication required', { headers: { 'WWW-Authenticate': BASIC_CHALLENGE } })
      }
    }
  }

  /** Like `check`, as a boolean: a cross-repository mount quietly becomes an upload when `from` is not readable. */
  allows (req: IncomingMessage, need: Need): boolean {
    try { this.check(req, need); return true } catch { return false }
  }

  private bearerChallenge (req: IncomingMessage, need: Need, error?: string): string {
    let h = `Bearer realm="http://${this.realmHost(req)}/token",service="${TOKEN_SERVICE}"`
    if (need.name !== undefined) {
      const actions = need.action === 'pull' ? 'pull' : `pull,${need.action}`
      h += `,scope="repository:${need.name}:${actions}"`
    }
    if (error !== undefined) h += `,error="${error}"`
    return h
  }

  private bearerProblem (req: IncomingMessage, need: Need): 'missing' | 'invalid_token' | 'insufficient_scope' | undefined {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')
    if (m === null) return 'missing'
    const payload = this.verify(m[1])
    if (payload === undefined) return 'invalid_token'
    if (need.name === undefined) return undefined
    const ok = payload.access.some(g => g.name === need.name && g.actions.includes(need.action))
    return ok ? undefined : 'insufficient_scope'
  }

  private sign (payload: TokenPayload): string {
    const body = Buffer.from(JSON.stringify(payload)).toString('base64url')
    const mac = createHmac('sha256', this.key).update(body).digest('base64url')
    return `${body}.${mac}`
  }

  private verify (token: string): TokenPayload | undefined {
    const dot = token.indexOf('.')
    if (dot < 0) return undefined
    const body = token.slice(0, dot)
    const mac = Buffer.from(token.slice(dot + 1), 'base64url')
    const expected = createHmac('sha256', this.key).update(body).digest()
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return undefined
    try {
      const payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as TokenPayload
      if (typeof payload.exp !== 'number' || payload.exp * 1000 <= this.now() || !Array.isArray(payload.access)) return undefined
      return payload
    } catch { return undefined }
  }

  /** `GET /token?service=&scope=` with Basic credentials, or the OAuth2 `POST` password grant containerd tries first. */
  async handleToken (req: IncomingMessage, res: ServerResponse, query: URLSearchParams): Promise<void> {
    const bearer = this.opts.bearer
    if (bearer === undefined) throw new DistributionError('NOT_FOUND', 'this registry issues no tokens')
    let creds: Credentials | undefined
    let params = query
    if (req.method === 'POST') {
      params = new URLSearchParams(await readForm(req))
      if (params.get('grant_type') !== 'password') {
        throw new DistributionError('UNSUPPORTED', 'only the password grant is supported', { status: 400 })
      }
      creds = { user: params.get('username') ?? '', password: params.get('password') ?? '' }
    } else if (req.method === 'GET') {
      creds = basicCredentials(req)
    } else {
      throw new DistributionError('UNSUPPORTED', 'method not allowed', { headers: { Allow: 'GET, POST' } })
    }
    // Anonymous pulls are never allowed here, so an anonymous token would grant nothing: refuse it outright.
    if (creds === undefined || !checkCredentials(bearer, creds.user, creds.password)) {
      throw new DistributionError('UNAUTHORIZED', 'invalid credentials', { headers: { 'WWW-Authenticate': BASIC_CHALLENGE } })
    }
    const service = params.get('service')
    if (service !== null && service !== TOKEN_SERVICE) {
      throw new DistributionError('DENIED', 'unknown service', { detail: { service } })
    }
    const ttl = bearer.tokenTtl ?? DEFAULT_TOKEN_TTL
    const nowMs = this.now()
    const token = this.sign({ sub: creds.user, access: parseScopes(params.getAll('scope')), exp: Math.floor(nowMs / 1000) + ttl })
    sendJson(req, res, 200, { token, access_token: token, expires_in: ttl, issued_at: new Date(nowMs).toISOString() }, { 'Cache-Control': 'no-store' })
  }
}

async function readForm (req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of req) {
    n += (chunk as Buffer).length
    if (n > MAX_FORM_BYTES) throw new DistributionError('SIZE_INVALID', 'token request body too large', { status: 413 })
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}
