/**
 * The real CNCF distribution registry (Debian's `docker-registry` package) for tests: one throwaway instance on
 * 127.0.0.1 with a random port and a temporary filesystem storage, optionally behind htpasswd Basic auth.
 *
 * @example
 * const skip = distributionSkipReason()
 * const reg = await startDistribution({ htpasswd: { user: 'u', password: 'p' } })
 * try { ... http://${reg.host}/v2/ ... } finally { await reg.stop() }
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { stopChild } from './process.js'

const run = promisify(execFile)

export const DISTRIBUTION_BIN = process.env.RAFSPEER_DISTRIBUTION_BIN ?? '/usr/bin/docker-registry'
const START_TIMEOUT_MS = 20_000
const STOP_GRACE_MS = 5_000

export interface Distribution {
  /** `127.0.0.1:PORT` */
  host: string
  /** `http://127.0.0.1:PORT` */
  url: string
  /** the temporary directory holding config, htpasswd and storage */
  root: string
  stop: () => Promise<void>
}

export interface DistributionOptions {
  htpasswd?: { user: string, password: string }
}

/** Why the real registry cannot run here, or undefined when it can. */
export function distributionSkipReason (): string | undefined {
  if (!existsSync(DISTRIBUTION_BIN)) return `${DISTRIBUTION_BIN} missing (apt-get install docker-registry)`
  return undefined
}

/** Same as {@link distributionSkipReason}; the name the test files use with `{ skip: distributionAvailable() }`. */
export const distributionAvailable = distributionSkipReason

// Every registry this process starts, so a test that crashes before its finally still leaves no orphan behind.
const live = new Set<ChildProcess>()
process.once('exit', () => { for (const c of live) c.kill('SIGKILL') })

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => { typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port')) })
    })
  })
}

/**
 * A bcrypt htpasswd line, the only hash distribution accepts. Tried in order: apache2-utils' `htpasswd`, then
 * Python's `crypt` module with METHOD_BLOWFISH (glibc/libxcrypt provide `$2b$`; the module is gone in Python 3.13),
 * then the `bcrypt` Python package.
 */
export async function bcryptLine (user: string, password: string): Promise<string> {
  const attempts: Array<[string, string[]]> = [
    ['htpasswd', ['-nbB', user, password]],
    ['python3', ['-W', 'ignore', '-c',
      'import crypt,sys; h=crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH)); ' +
      'assert h and h.startswith("$2"); print(sys.argv[1] + ":" + h)', user, password]],
    ['python3', ['-c', 'import bcrypt,sys; print(sys.argv[1] + ":" + bcrypt.hashpw(sys.argv[2].encode(), ' +
      'bcrypt.gensalt()).decode())', user, password]]
  ]
  const failures: string[] = []
  for (const [cmd, args] of attempts) {
    try {
      const { stdout } = await run(cmd, args, { timeout: 30_000 })
      const line = stdout.trim().split('\n')[0] ?? ''
      if (line.startsWith(`${user}:$2`)) return line
      failures.push(`${cmd}: unexpected output`)
    } catch (err) {
      failures.push(`${cmd}: ${(err as Error).message.split('\n')[0] ?? ''}`)
    }
  }
  throw new Error(`cannot make a bcrypt htpasswd line (install apache2-utils): ${failures.join('; ')}`)
}

function configYaml (root: string, port: number, withAuth: boolean): string {
  return [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(root, 'data')}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    ...(withAuth ? ['auth:', '  htpasswd:', '    realm: rafspeer-test', `    path: ${join(root, 'htpasswd')}`] : []),
    ''
  ].join('\n')
}

async function waitReady (url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`docker-registry exited (${child.exitCode ?? child.signalCode}): ${stderr().trim()}`)
    }
    try {
      // any HTTP answer (200 or 401) means the API is up
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      return
    } catch {}
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`docker-registry did not answer ${url}/v2/ within ${START_TIMEOUT_MS} ms: ${stderr().trim()}`)
}

const kill = async (child: ChildProcess): Promise<void> => { await stopChild(child, STOP_GRACE_MS) }

async function startOnce (root: string, opts: DistributionOptions): Promise<Distribution> {
  const port = await freePort()
  const config = join(root, 'config.yml')
  await writeFile(config, configYaml(root, port, opts.htpasswd !== undefined))
  const child = spawn(DISTRIBUTION_BIN, ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] })
  live.add(child)
  child.once('exit', () => live.delete(child))
  let err = ''
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { err = (err + s).slice(-4000) })
  const url = `http://127.0.0.1:${port}`
  try {
    await waitReady(url, child, () => err)
  } catch (e) {
    await kill(child)
    throw e
  }
  return { host: `127.0.0.1:${port}`, url, root, stop: async () => { await kill(child) } }
}

/** Starts a fresh registry; `stop()` kills it and removes its directory. */
export async function startDistribution (opts: DistributionOptions = {}): Promise<Distribution> {
  const skip = distributionSkipReason()
  if (skip !== undefined) throw new Error(skip)
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-distribution-'))
  try {
    if (opts.htpasswd !== undefined) {
      await writeFile(join(root, 'htpasswd'), await bcryptLine(opts.htpasswd.user, opts.htpasswd.password) + '\n')
    }
    // the free port can be taken between probe and bind: try a few ports before giving up
    let last: unknown
    for (let i = 0; i < 3; i++) {
      try {
        const reg = await startOnce(root, opts)
        return { ...reg, stop: async () => { await reg.stop(); await rm(root, { recursive: true, force: true }) } }
      } catch (e) {
        last = e
      }
    }
    throw last
  } catch (e) {
    await rm(root, { recursive: true, force: true })
    throw e
  }
}
