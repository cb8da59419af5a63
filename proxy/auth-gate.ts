/**
 * Private content never leaks through the mirror: before any byte of a repository is served (from the cache, from
 * neighbours or from upstream), the upstream registry must have accepted this client's credentials for that
 * content. The check is the upstream's own answer to a `HEAD` of the blob or manifest with the client's
 * `Authorization` (or none): 200 lets the client through; 401 is relayed with its `WWW-Authenticate` unchanged
 * (the client fetches a token from the realm and comes back); 403 is DENIED; 404 is the OCI "unknown" error. A
 * blob is checked in its repository, so access to one repository never opens a digest of another.
 *
 * Verdicts are cached per (hash of the credentials, registry, repository, digest) for `ttlMs`; refusals for a
 * moment only. A manifest fetched upstream with a client's credentials also vouches for the digests it names, in
 * that repository, for that client, so a pull checks its manifest once, not every layer.
 *
 * When the upstream cannot be reached, digest-addressed content of repositories last seen readable without any
 * credentials may still be served (from cache and neighbours); anything else is refused.
 *
 * @example
 * ```ts
 * const gate = new AuthGate({ probe }, { ttlMs: 60_000, stateFile: '/var/lib/rafspeer/proxy/public-repos.json' })
 * const v = await gate.check({ host: 'ghcr.io', repository: 'team/app', kind: 'blob', target: digest, authorization })
 * if (!v.ok) answer(v.answer)
 * ```
 */
import { createHash, randomBytes } from 'node:crypto'
import { readFile, rename, writeFile } from 'node:fs/promises'
import { LRUCache } from 'lru-cache'
import { describeError, errorCode, type ComponentLogger, type Logger } from '../base/index.js'
import { ociAnswer, type OciAnswer } from './errors.js'

export const DEFAULT_AUTH_TTL_MS = 60_000
export const DEFAULT_DENIED_TTL_MS = 2_000
/** verdicts and vouched digests kept */
const MAX_ENTRIES = 100_000

/** Asks the upstream whether this client may read this content; implemented with the registry client. */
export interface AccessProbe {
  /** 'ok' on 200, 'missing' on 404; throws the registry's error (401 with its challenge, 403, network, 5xx) */
  probe: (t: AccessTarget) => Promise<'ok' | 'missing'>
}

export interface AccessTarget {
  /** the upstream registry (`docker.io`, `127.0.0.1:5000`) */
  host: string
  repository: string
  kind: 'blob' | 'manifest'
  /** a digest, or a manifest's tag */
  target: string
  /** the client's `Authorization`, null when it sent none */
  authorization: string | null
}

export type Verdict = { ok: true, how: 'checked' | 'cached' | 'vouched' | 'offline' } | { ok: false, answer: OciAnswer }

export interface AuthGateCounters {
  checks: number
  probes: number
  allowed: number
  denied: number
  /** served although the upstream could not be asked (public repository, digest-addressed) */
  offline: number
  probeFailures: number
}

export interface AuthGateInit {
  ttlMs?: number
  deniedTtlMs?: number
  /** where the repositories seen readable without credentials are remembered across restarts */
  stateFile?: string
}

export class AuthGate {
  readonly counters: AuthGateCounters = { checks: 0, probes: 0, allowed: 0, denied: 0, offline: 0, probeFailures: 0 }
  private readonly probe: AccessProbe
  private readonly log: Logger | undefined
  private readonly ttlMs: number
  private readonly deniedTtlMs: number
  private readonly stateFile: string | undefined
  private readonly verdicts = new LRUCache<string, Verdict>({ max: MAX_ENTRIES, ttlAutopurge: false })
  private readonly inflight = new Map<string, Promise<Verdict>>()
  /** `cred|host/repo@digest` → vouched by a manifest this client fetched from that repository */
  private readonly vouched = new LRUCache<string, true>({ max: MAX_ENTRIES })
  private readonly publicRepos = new Set<string>()
  private loaded: Promise<void> | undefined
  private saving: Promise<void> = Promise.resolve()

  constructor (components: { probe: AccessProbe, logger?: ComponentLogger }, init: AuthGateInit = {}) {
    this.probe = components.probe
    this.log = components.logger?.forComponent('rafspeer:auth-gate')
    this.ttlMs = init.ttlMs ?? DEFAULT_AUTH_TTL_MS
    this.deniedTtlMs = init.deniedTtlMs ?? DEFAULT_DENIED_TTL_MS
    this.stateFile = init.stateFile
  }

  /** May this client read this content? See the file comment. Never throws. */
  async check (t: AccessTarget): Promise<Verdict> {
    await this.load()
    this.counters.checks++
    const cred = credentialKey(t.authorization)
    const key = `${cred}|${t.host}/${t.repository}|${t.kind}|${t.target}`
    const cached = this.verdicts.get(key)
    if (cached !== undefined) return this.count(cached.ok ? { ok: true, how: 'cached' } : cached)
    if (t.target.includes(':') && this.vouched.has(`${cred}|${t.host}/${t.repository}@${t.target}`)) return this.count({ ok: true, how: 'vouched' })
    let p = this.inflight.get(key)
    if (p === undefined) {
      p = this.ask(t).finally(() => this.inflight.delete(key))
      this.inflight.set(key, p)
    }
    const v = await p
    // a TTL of 0 means: ask every time (lru-cache would take 0 as "forever")
    if (v.ok && v.how !== 'offline' && this.ttlMs > 0) this.verdicts.set(key, v, { ttl: this.ttlMs })
    else if (!v.ok && this.deniedTtlMs > 0) this.verdicts.set(key, v, { ttl: this.deniedTtlMs })
    return this.count(v)
  }

  /**
   * A client's credentials fetched a manifest of this repository from upstream just now: the digests it names are
   * readable by that client there (for the verdict TTL).
   */
  vouch (host: string, repository: string, authorization: string | null, digests: string[]): void {
    if (authorization === null) this.markPublic(host, repository)
    if (this.ttlMs <= 0) return
    const cred = credentialKey(authorization)
    for (const d of digests) this.vouched.set(`${cred}|${host}/${repository}@${d}`, true, { ttl: this.ttlMs })
  }

  isPublic (host: string, repository: string): boolean { return this.publicRepos.has(`${host}/${repository}`) }

  private count (v: Verdict): Verdict {
    if (v.ok) {
      this.counters.allowed++
      if (v.how === 'offline') this.counters.offline++
    } else {
      this.counters.denied++
    }
    return v
  }

  private async ask (t: AccessTarget): Promise<Verdict> {
    this.counters.probes++
    const unknown = t.kind === 'blob'
      ? ociAnswer(404, 'BLOB_UNKNOWN', `blob ${t.target} is unknown to repository ${t.repository} at ${t.host}`)
      : ociAnswer(404, 'MANIFEST_UNKNOWN', `manifest ${t.target} is unknown to repository ${t.repository} at ${t.host}`)
    try {
      const r = await this.probe.probe(t)
      if (r === 'missing') return { ok: false, answer: unknown }
      if (t.authorization === null) this.markPublic(t.host, t.repository)
      return { ok: true, how: 'checked' }
    } catch (err) {
      const status = (err as { status?: number } | null | undefined)?.status
      // a repository that refuses anonymous clients now is not public any more (offline serving stops too)
      if (t.authorization === null && errorCode(err) === 'RAFSPEER_ERR_REGISTRY_AUTH') this.unmarkPublic(t.host, t.repository)
      if (errorCode(err) === 'RAFSPEER_ERR_REGISTRY_AUTH' && status === 401) {
        const challenge = (err as { challenge?: string } | null | undefined)?.challenge
        return { ok: false, answer: ociAnswer(401, 'UNAUTHORIZED', `${t.host} asks for credentials for ${t.repository}`, challenge !== undefined ? { 'www-authenticate': challenge } : undefined) }
      }
      if (errorCode(err) === 'RAFSPEER_ERR_REGISTRY_AUTH') {
        return { ok: false, answer: ociAnswer(403, 'DENIED', `${t.host} denies access to ${t.repository}`) }
      }
      if (errorCode(err) === 'RAFSPEER_ERR_REGISTRY_NOT_FOUND') return { ok: false, answer: unknown }
      this.counters.probeFailures++
      this.log?.warn('cannot ask %s about %s %s of %s: %s', t.host, t.kind, t.target, t.repository, describeError(err))
      if (t.target.includes(':') && this.isPublic(t.host, t.repository)) return { ok: true, how: 'offline' }
      return {
        ok: false,
        answer: {
          ...unknown,
          message: `${t.host} cannot be reached to check access to ${t.repository} (${describeError(err)}); only digest-addressed content of repositories seen public is served offline`
        }
      }
    }
  }

  private unmarkPublic (host: string, repository: string): void {
    if (this.publicRepos.delete(`${host}/${repository}`)) this.save()
  }

  private markPublic (host: string, repository: string): void {
    const k = `${host}/${repository}`
    if (this.publicRepos.has(k)) return
    this.publicRepos.add(k)
    this.save()
  }

  private save (): void {
    if (this.stateFile === undefined) return
    const file = this.stateFile
    const repos = [...this.publicRepos].sort()
    this.saving = this.saving.then(async () => {
      const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
      await writeFile(tmp, JSON.stringify({ version: 1, public: repos }) + '\n')
      await rename(tmp, file)
    }).catch(err => { this.log?.warn('cannot save %s: %s', file, describeError(err)) })
  }

  private async load (): Promise<void> {
    this.loaded ??= (async () => {
      if (this.stateFile === undefined) return
      try {
        const j = JSON.parse(await readFile(this.stateFile, 'utf8')) as { public?: unknown }
        if (Array.isArray(j.public)) for (const r of j.public) if (typeof r === 'string') this.publicRepos.add(r)
      } catch (err) {
        if (errorCode(err) !== 'ENOENT') this.log?.warn('ignoring %s: %s', this.stateFile, describeError(err))
      }
    })()
    await this.loaded
  }

  /** Waits for pending state writes (tests, shutdown). */
  async flush (): Promise<void> { await this.saving }
}

/** A credential is never kept, only its hash; no credentials is its own key. */
export function credentialKey (authorization: string | null): string {
  return authorization === null ? 'anonymous' : createHash('sha256').update(authorization).digest('hex').slice(0, 32)
}
