/**
 * Registry authentication: `WWW-Authenticate` parsing, credentials (explicit, then Docker's `config.json`), Basic,
 * and the Docker token flow for Bearer (anonymous when no credentials are known). Tokens are cached per
 * (host, scope) until shortly before they expire, and concurrent requests for the same token share one fetch.
 */
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { RegistryAuthError, type RegistryErrorContext } from './errors.js'
import { isLoopbackHost } from './reference.js'

export interface Credentials { username: string, password: string }

export interface Challenge {
  /** lower-cased: `basic`, `bearer`, … */
  scheme: string
  /** parameter names lower-cased, values unquoted */
  params: Record<string, string>
}

/** The Docker token spec's default lifetime, used when a token response has no `expires_in`. */
export const DEFAULT_TOKEN_LIFETIME_S = 60
/** Renew this long before expiry, so a token does not lapse between the cache check and the request. */
export const TOKEN_EXPIRY_MARGIN_MS = 10_000

const TOKEN_CHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/

/**
 * Parses one or more challenges (`Bearer realm="https://a/token",service="r",scope="repository:x:pull,push"`).
 * Quoted values may hold commas and backslash escapes; unknown schemes are returned too.
 */
export function parseWwwAuthenticate (header: string | string[] | undefined): Challenge[] {
  if (header === undefined) return []
  const h = Array.isArray(header) ? header.join(', ') : header
  const out: Challenge[] = []
  let cur: Challenge | undefined
  let i = 0
  const ws = (): void => { while (h[i] === ' ' || h[i] === '\t') i++ }
  const token = (): string => { const s = i; while (i < h.length && TOKEN_CHAR.test(h[i]!)) i++; return h.slice(s, i) }
  while (i < h.length) {
    while (h[i] === ' ' || h[i] === '\t' || h[i] === ',') i++
    const name = token()
    if (name === '') { i++; continue }
    ws()
    if (h[i] === '=' && cur !== undefined) {
      i++
      ws()
      let value = ''
      if (h[i] === '"') {
        i++
        while (i < h.length && h[i] !== '"') {
          if (h[i] === '\\' && i + 1 < h.length) i++
          value += h[i++]
        }
        i++
      } else {
        const s = i
        while (i < h.length && h[i] !== ',' && h[i] !== ' ' && h[i] !== '\t') i++
        value = h.slice(s, i)
      }
      cur.params[name.toLowerCase()] = value
    } else {
      cur = { scheme: name.toLowerCase(), params: {} }
      out.push(cur)
    }
  }
  return out
}

/** `repository:NAME:pull` or `…:pull,push`, the scope strings of the Docker token spec. */
export function repositoryScope (repository: string, actions: 'pull' | 'push' | 'pull,push'): string {
  return `repository:${repository}:${actions === 'push' ? 'pull,push' : actions}`
}

/** Docker config keys come as `host`, `https://host`, `https://index.docker.io/v1/`: reduce them to a host. */
export function normalizeConfigKey (key: string): string {
  let k = key.trim().toLowerCase().replace(/^[a-z]+:\/\//, '')
  const slash = k.indexOf('/')
  if (slash >= 0) k = k.slice(0, slash)
  return k === 'index.docker.io' || k === 'registry-1.docker.io' ? 'docker.io' : k
}

/** Where Docker looks: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function defaultDockerConfigPath (env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.DOCKER_CONFIG !== undefined && env.DOCKER_CONFIG !== '' ? env.DOCKER_CONFIG : join(homedir(), '.docker')
  return join(dir, 'config.json')
}

/**
 * Reads the `auths` of a Docker config: base64 `auth` ("user:password") or `username`/`password`. A missing file
 * is no credentials; a broken one is an error (silently going anonymous would hide the cause of a later 401).
 * Credential helpers (`credsStore`, `credHelpers`) and `identitytoken` are not supported.
 */
export async function loadDockerConfigCredentials (path: string): Promise<Map<string, Credentials>> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map()
    throw new Error(`cannot read Docker config ${path}: ${(err as Error).message}`, { cause: err })
  }
  let json: unknown
  try { json = JSON.parse(text) } catch (err) {
    throw new Error(`Docker config ${path} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
  const out = new Map<string, Credentials>()
  const auths = (json as { auths?: unknown }).auths
  if (auths === null || typeof auths !== 'object') return out
  for (const [key, entry] of Object.entries(auths as Record<string, unknown>)) {
    if (entry === null || typeof entry !== 'object') continue
    const e = entry as { auth?: unknown, username?: unknown, password?: unknown }
    if (typeof e.auth === 'string' && e.auth !== '') {
      const plain = Buffer.from(e.auth, 'base64').toString('utf8')
      const colon = plain.indexOf(':')
      if (colon > 0) out.set(normalizeConfigKey(key), { username: plain.slice(0, colon), password: plain.slice(colon + 1) })
    } else if (typeof e.username === 'string' && typeof e.password === 'string') {
      out.set(normalizeConfigKey(key), { username: e.username, password: e.password })
    }
  }
  return out
}

/** How the token endpoint is called; the client supplies it so tokens go through the same dispatcher and CA. */
export type TokenFetch = (url: URL, headers: Record<string, string>, signal?: AbortSignal) =>
Promise<{ status: number, body: string }>

type HostScheme = { kind: 'basic' } | { kind: 'bearer', realm: string, service?: string }

export interface AuthenticatorInit {
  credentials?: Record<string, Credentials>
  /** a Docker `config.json` (or a directory holding one); default `$DOCKER_CONFIG` or `~/.docker` */
  dockerConfig?: string
  fetchToken: TokenFetch
  now?: () => number
}

export class Authenticator {
  private readonly explicit = new Map<string, Credentials>()
  private readonly configPath: string
  private config: Promise<Map<string, Credentials>> | undefined
  private readonly schemes = new Map<string, HostScheme>()
  private readonly tokens = new Map<string, { token: string, expiresAt: number }>()
  private readonly pending = new Map<string, Promise<string>>()
  private readonly fetchToken: TokenFetch
  private readonly now: () => number
  /** token requests sent, for metrics and tests */
  tokenRequests = 0

  constructor (init: AuthenticatorInit) {
    for (const [host, c] of Object.entries(init.credentials ?? {})) this.explicit.set(normalizeConfigKey(host), c)
    const cfg = init.dockerConfig
    this.configPath = cfg === undefined ? defaultDockerConfigPath() : cfg.endsWith('.json') ? cfg : join(cfg, 'config.json')
    this.fetchToken = init.fetchToken
    this.now = init.now ?? Date.now
  }

  async credentialsFor (host: string): Promise<Credentials | undefined> {
    const key = normalizeConfigKey(host)
    const explicit = this.explicit.get(key)
    if (explicit !== undefined) return explicit
    this.config ??= loadDockerConfigCredentials(this.configPath)
    return (await this.config).get(key)
  }

  /** The scheme a host asked for last time, so later requests authenticate up front instead of eating a 401. */
  knownScheme (host: string): 'basic' | 'bearer' | undefined {
    return this.schemes.get(host)?.kind
  }

  /** The `Authorization` value for a request needing `scopes`, or undefined when the host has not asked for any. */
  async authorization (host: string, scopes: string[], ctx: RegistryErrorContext, signal?: AbortSignal): Promise<string | undefined> {
    const scheme = this.schemes.get(host)
    if (scheme === undefined) return undefined
    if (scheme.kind === 'basic') {
      const c = await this.creds(host, ctx)
      return c === undefined ? undefined : basicHeader(c)
    }
    return `Bearer ${await this.token(host, scheme, scopes, [], ctx, signal)}`
  }

  /**
   * Handles a 401: remembers the host's scheme and, for Bearer, fetches a fresh token covering both the scopes we
   * need and those the challenge names. Throws when the challenge cannot be met (e.g. Basic without credentials).
   */
  async challenge (host: string, header: string | string[] | undefined, scopes: string[], ctx: RegistryErrorContext,
    signal?: AbortSignal): Promise<void> {
    const challenges = parseWwwAuthenticate(header)
    const bearer = challenges.find(c => c.scheme === 'bearer')
    const basic = challenges.find(c => c.scheme === 'basic')
    if (bearer !== undefined) {
      const realm = bearer.params.realm
      if (realm === undefined || !/^https?:\/\//i.test(realm)) {
        throw new RegistryAuthError(`Bearer challenge without a usable realm (${String(header)})`, ctx)
      }
      const scheme: HostScheme = { kind: 'bearer', realm, ...(bearer.params.service !== undefined ? { service: bearer.params.service } : {}) }
      this.schemes.set(host, scheme)
      const extra = (bearer.params.scope ?? '').split(' ').filter(s => s !== '')
      this.tokens.delete(tokenKey(host, scopes))
      await this.token(host, scheme, scopes, extra, ctx, signal)
      return
    }
    if (basic !== undefined) {
      this.schemes.set(host, { kind: 'basic' })
      if (await this.creds(host, ctx) === undefined) {
        throw new RegistryAuthError(`authentication required but no credentials for ${host} (explicit credentials or ${this.configPath})`, ctx)
      }
      return
    }
    throw new RegistryAuthError(`401 without a supported WWW-Authenticate challenge (${String(header ?? 'none')})`, ctx)
  }

  private async creds (host: string, ctx: RegistryErrorContext): Promise<Credentials | undefined> {
    try {
      return await this.credentialsFor(host)
    } catch (err) {
      throw new RegistryAuthError((err as Error).message, ctx, { cause: err })
    }
  }

  private async token (host: string, scheme: Extract<HostScheme, { kind: 'bearer' }>, scopes: string[], extra: string[],
    ctx: RegistryErrorContext, signal?: AbortSignal): Promise<string> {
    const key = tokenKey(host, scopes)
    const cached = this.tokens.get(key)
    if (cached !== undefined && cached.expiresAt > this.now()) return cached.token
    let p = this.pending.get(key)
    if (p === undefined) {
      p = this.requestToken(host, scheme, [...new Set([...scopes, ...extra])], ctx, signal).then(({ token, lifetimeMs }) => {
        this.tokens.set(key, { token, expiresAt: this.now() + lifetimeMs - Math.min(TOKEN_EXPIRY_MARGIN_MS, lifetimeMs / 2) })
        return token
      }).finally(() => this.pending.delete(key))
      this.pending.set(key, p)
    }
    return await p
  }

  private async requestToken (host: string, scheme: Extract<HostScheme, { kind: 'bearer' }>, scopes: string[],
    ctx: RegistryErrorContext, signal?: AbortSignal): Promise<{ token: string, lifetimeMs: number }> {
    const url = new URL(scheme.realm)
    if (scheme.service !== undefined) url.searchParams.set('service', scheme.service)
    for (const s of scopes) url.searchParams.append('scope', s)
    const creds = await this.creds(host, ctx)
    const headers: Record<string, string> = { accept: 'application/json' }
    if (creds !== undefined) {
      // Basic credentials in clear text only to a realm on the registry itself or on loopback
      if (url.protocol === 'http:' && url.host !== host && !isLoopbackHost(url.host)) {
        throw new RegistryAuthError(`refusing to send credentials to plain-HTTP token realm ${scheme.realm}`, ctx)
      }
      headers.authorization = basicHeader(creds)
    }
    this.tokenRequests++
    let res: { status: number, body: string }
    try {
      res = await this.fetchToken(url, headers, signal)
    } catch (err) {
      if (err instanceof RegistryAuthError) throw err
      throw new RegistryAuthError(`token request to ${url.origin}${url.pathname} failed: ${(err as Error).message}`, ctx, { cause: err })
    }
    const who = creds === undefined ? 'anonymous access' : `credentials of user "${creds.username}"`
    if (res.status !== 200) {
      throw new RegistryAuthError(`token service ${url.origin}${url.pathname} refused ${who} for scope "${scopes.join(' ')}"`,
        { ...ctx, status: res.status })
    }
    let json: { token?: unknown, access_token?: unknown, expires_in?: unknown }
    try { json = JSON.parse(res.body) } catch (err) {
      throw new RegistryAuthError(`token service ${url.origin}${url.pathname} answered invalid JSON`, ctx, { cause: err })
    }
    const token = typeof json.token === 'string' && json.token !== '' ? json.token : json.access_token
    if (typeof token !== 'string' || token === '') {
      throw new RegistryAuthError(`token service ${url.origin}${url.pathname} answered without a token`, ctx)
    }
    const lifetime = typeof json.expires_in === 'number' && json.expires_in > 0 ? json.expires_in : DEFAULT_TOKEN_LIFETIME_S
    return { token, lifetimeMs: lifetime * 1000 }
  }
}

function tokenKey (host: string, scopes: string[]): string {
  return `${host} ${[...scopes].sort().join(' ')}`
}

function basicHeader (c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
}
