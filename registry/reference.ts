/**
 * Image references as users type them (`host[:port]/repo/path[:tag][@sha256:hex]`), with Docker's short forms
 * (`alpine` = `docker.io/library/alpine:latest`), validated against the OCI distribution grammar so that a bad
 * name fails here with a reason instead of as a puzzling 404 or 400 from a registry.
 */
import { InvalidReferenceError } from './errors.js'

/** A parsed reference. `tag` defaults to `latest` only when neither tag nor digest was given. */
export interface ImageReference {
  /** `docker.io` for Docker Hub, else `host[:port]` as written (lower-cased) */
  registry: string
  /** e.g. `library/alpine`, `team/app/api` */
  repository: string
  tag?: string
  digest?: string
}

export const DOCKER_HUB = 'docker.io'
/** Where Docker Hub's API really lives. */
export const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io'
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io'])
export const DEFAULT_TAG = 'latest'
/** distribution caps the full name (domain + path) at 255 characters */
export const NAME_TOTAL_MAX = 255

const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*'
const REPOSITORY_RE = new RegExp(`^${PATH_COMPONENT}(?:/${PATH_COMPONENT})*$`)
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/
const DIGEST_RE = /^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::([0-9]{1,5}))?$`)
/** Encoded lengths of the algorithms the OCI image spec registers; both are hex. */
const DIGEST_HEX_LENGTH: Record<string, number> = { sha256: 64, sha512: 128 }

export function validateRepository (name: string, input = name): void {
  if (name.length === 0) throw new InvalidReferenceError(input, 'empty repository name')
  if (!REPOSITORY_RE.test(name)) {
    throw new InvalidReferenceError(input, `repository "${name}" must be lower-case path components ` +
      '([a-z0-9] separated by ".", "_", "__" or "-") joined by "/"')
  }
}

export function validateTag (tag: string, input = tag): void {
  if (!TAG_RE.test(tag)) {
    throw new InvalidReferenceError(input, `tag "${tag}" must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`)
  }
}

/**
 * Checks `algorithm:encoded`. Only sha256 and sha512 are accepted: those are the ones this client can verify, and
 * a digest we cannot verify is worth nothing to us.
 */
export function validateDigest (digest: string, input = digest): void {
  const m = DIGEST_RE.exec(digest)
  if (m === null) throw new InvalidReferenceError(input, `digest "${digest}" is not of the form algorithm:hex`)
  const [, algorithm = '', encoded = ''] = m
  const len = DIGEST_HEX_LENGTH[algorithm]
  if (len === undefined) throw new InvalidReferenceError(input, `digest algorithm "${algorithm}" is not supported (sha256, sha512)`)
  if (encoded.length !== len || !/^[a-f0-9]+$/.test(encoded)) {
    throw new InvalidReferenceError(input, `${algorithm} digest must be ${len} lower-case hex characters`)
  }
}

/** The algorithm part of a validated digest, usable with `node:crypto`'s `createHash`. */
export function digestAlgorithm (digest: string): 'sha256' | 'sha512' {
  return digest.startsWith('sha512:') ? 'sha512' : 'sha256'
}

export function validateHost (host: string, input = host): void {
  const m = HOST_RE.exec(host)
  if (m === null) throw new InvalidReferenceError(input, `registry host "${host}" is not a valid host[:port]`)
  if (m[1] !== undefined && (Number(m[1]) < 1 || Number(m[1]) > 65535)) {
    throw new InvalidReferenceError(input, `port ${m[1]} out of range`)
  }
}

/** Docker's rule: the first path component is a registry only if it looks like one. */
function looksLikeHost (first: string): boolean {
  return first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()
}

/**
 * Parses `[host[:port]/]repo/path[:tag][@algo:hex]`.
 * @throws InvalidReferenceError with the reason
 */
export function parseReference (input: string): ImageReference {
  const s = input.trim()
  if (s.length === 0) throw new InvalidReferenceError(input, 'empty reference')
  if (s.includes('://')) throw new InvalidReferenceError(input, 'a reference has no scheme (drop "http://" or "https://")')
  let rest = s
  let digest: string | undefined
  const at = rest.lastIndexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    validateDigest(digest, input)
  }
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/') && !rest.slice(colon).includes(']')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    validateTag(tag, input)
  }
  let registry = DOCKER_HUB
  let repository = rest
  const slash = rest.indexOf('/')
  if (slash >= 0 && looksLikeHost(rest.slice(0, slash))) {
    registry = rest.slice(0, slash).toLowerCase()
    repository = rest.slice(slash + 1)
    validateHost(registry, input)
  }
  if (DOCKER_HUB_ALIASES.has(registry)) {
    registry = DOCKER_HUB
    if (!repository.includes('/')) repository = `library/${repository}`
  }
  validateRepository(repository, input)
  if (registry.length + 1 + repository.length > NAME_TOTAL_MAX) {
    throw new InvalidReferenceError(input, `name longer than ${NAME_TOTAL_MAX} characters`)
  }
  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) }
}

/** The canonical text form; `parseReference(formatReference(r))` gives `r` back. */
export function formatReference (ref: ImageReference): string {
  let s = `${ref.registry}/${ref.repository}`
  if (ref.tag !== undefined) s += `:${ref.tag}`
  if (ref.digest !== undefined) s += `@${ref.digest}`
  return s
}

/** Accepts a reference as text or already parsed; parsed ones are re-validated since callers build them by hand. */
export function toReference (ref: string | ImageReference): ImageReference {
  if (typeof ref === 'string') return parseReference(ref)
  const text = formatReference(ref)
  if (!DOCKER_HUB_ALIASES.has(ref.registry)) validateHost(ref.registry, text)
  validateRepository(ref.repository, text)
  if (ref.tag !== undefined) validateTag(ref.tag, text)
  if (ref.digest !== undefined) validateDigest(ref.digest, text)
  return ref
}

/** The `host[:port]` the HTTP API of a registry answers on. */
export function registryEndpoint (registry: string): string {
  return DOCKER_HUB_ALIASES.has(registry) ? DOCKER_HUB_ENDPOINT : registry
}

/** 127.0.0.0/8, localhost and ::1, with or without a port. */
export function isLoopbackHost (host: string): boolean {
  let name = host
  if (name.startsWith('[')) name = name.slice(1, name.indexOf(']'))
  else if (name.split(':').length === 2) name = name.slice(0, name.indexOf(':'))
  name = name.toLowerCase()
  return name === 'localhost' || name.endsWith('.localhost') || name === '::1' || /^127(?:\.\d{1,3}){3}$/.test(name)
}
