/**
 * Taking a Unix socket path for a server (the admin API, the containerd snapshotter): its directory is made, a socket
 * file nobody answers on (left by a process that died) is removed, and a live one or a file that is not a socket is
 * refused. Each server words the refusal itself (its own error code, the flag that picks another path).
 */
import { lstat, mkdir, unlink } from 'node:fs/promises'
import { connect } from 'node:net'
import { dirname } from 'node:path'
import { describeError } from './errors.js'

/** why a socket path cannot be taken */
export interface SocketClaimProblem {
  /** `mkdir`: its directory cannot be made; `inspect`/`unlink`: the stale file cannot be looked at or removed;
   * `not-socket`: a file of another kind is there; `live`: a server answers on it; `unknown`: the probe got `detail` */
  kind: 'mkdir' | 'inspect' | 'not-socket' | 'live' | 'unknown' | 'unlink'
  detail: string
  cause?: unknown
}

const PROBE_TIMEOUT_MS = 1_000

/** 'live' when something accepts connections on `path`, 'stale' when nothing does, else the errno seen. */
export async function probeUnixSocket (path: string): Promise<'live' | 'stale' | string> {
  return await new Promise(resolve => {
    const s = connect(path)
    s.setTimeout(PROBE_TIMEOUT_MS, () => { s.destroy(); resolve('live') })
    s.once('connect', () => { s.destroy(); resolve('live') })
    s.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? 'stale' : err.code ?? err.message) })
  })
}

/** Makes `path` free for a server to listen on, or throws what `fail` makes of the problem. */
export async function claimUnixSocket (path: string, fail: (p: SocketClaimProblem) => Error): Promise<void> {
  await mkdir(dirname(path), { recursive: true }).catch((err: Error) => {
    throw fail({ kind: 'mkdir', detail: err.message, cause: err })
  })
  let st
  try { st = await lstat(path) } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw fail({ kind: 'inspect', detail: describeError(err), cause: err })
  }
  if (!st.isSocket()) throw fail({ kind: 'not-socket', detail: `${path} exists and is not a socket: refusing to replace it` })
  const probe = await probeUnixSocket(path)
  if (probe === 'live') throw fail({ kind: 'live', detail: path })
  if (probe !== 'stale') throw fail({ kind: 'unknown', detail: probe })
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw fail({ kind: 'unlink', detail: err.message, cause: err })
  })
}
