/**
 * The Redis addresses a directory accepts, parsed without loading the Redis client: the daemon's config checks
 * `scheduler.redis` with this at the edge.
 */
import { describeError } from '../../base/index.js'
import { DirectoryError } from './errors.js'

const config = (why: string): DirectoryError => new DirectoryError('RAFSPEER_ERR_DIRECTORY_CONFIG', why)

export interface Seed {
  host: string
  port: number
  username?: string
  password?: string
  tls: boolean
}

/** `host:port`, `[v6]:port`, `host` or `redis[s]://[user:pass@]host[:port]`. */
export function parseSeed (s: string): Seed {
  const text = s.trim()
  let url: URL
  try {
    url = new URL(text.includes('://') ? text : `redis://${text}`)
  } catch (err) {
    throw config(`Redis address ${JSON.stringify(s)} does not parse: ${describeError(err)}`)
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw config(`Redis address ${JSON.stringify(s)}: not redis:// or rediss://`)
  if (url.hostname === '') throw config(`Redis address ${JSON.stringify(s)} names no host`)
  if (url.pathname !== '' && url.pathname !== '/' && url.pathname !== '/0') throw config(`Redis address ${JSON.stringify(s)}: a directory uses database 0 only`)
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 6379 : Number(url.port),
    ...(url.username !== '' ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password !== '' ? { password: decodeURIComponent(url.password) } : {}),
    tls: url.protocol === 'rediss:'
  }
}

export function parseSeeds (redis: string | string[]): Seed[] {
  const list = (Array.isArray(redis) ? redis : redis.split(',')).map((s) => s.trim()).filter((s) => s !== '')
  if (list.length === 0) throw config('no Redis address given')
  return list.map(parseSeed)
}
