/**
 * A real Redis Cluster for tests (Debian's `redis-server` package): N masters, optionally one replica each, as
 * child processes on free loopback ports, each with its own temporary directory and no persistence, joined with
 * `redis-cli --cluster create`. Resolves once every node reports `cluster_state:ok` (and every replica has synced
 * with its master, so a failover can happen at once).
 *
 * @example
 * const skip = redisClusterSkipReason()
 * const cluster = await startRedisCluster({ masters: 3, replicas: 1 })
 * try { ... cluster.seeds ... await cluster.kill(cluster.masters()[0]) } finally { await cluster.stop() }
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { stopChild } from './process.js'

const run = promisify(execFile)

export const REDIS_SERVER_BIN = process.env.RAFSPEER_REDIS_SERVER_BIN ?? '/usr/bin/redis-server'
export const REDIS_CLI_BIN = process.env.RAFSPEER_REDIS_CLI_BIN ?? '/usr/bin/redis-cli'
const START_TIMEOUT_MS = 30_000
const STOP_GRACE_MS = 3_000
/** a cluster node also listens on its port + 10000 (the cluster bus) */
const BUS_OFFSET = 10_000

export interface RedisNode {
  port: number
  /** `127.0.0.1:PORT` */
  address: string
  /** the role the node had when the cluster was formed; a failover changes it, {@link RedisCluster.roles} tells */
  role: 'master' | 'replica'
  /** for a replica, the port of its master when the cluster was formed */
  masterPort?: number
  child: ChildProcess
}

export interface RedisCluster {
  /** `127.0.0.1:PORT` of every node: seeds for a cluster client */
  seeds: string[]
  nodes: RedisNode[]
  /** the nodes that were masters when the cluster was formed */
  masters: () => RedisNode[]
  /** ports of current masters and replicas, as a live node sees them now */
  roles: () => Promise<{ masters: number[], replicas: number[] }>
  /** `redis-cli -p PORT ...args`, its standard output */
  cli: (port: number, ...args: string[]) => Promise<string>
  /** kills one node with `signal` (default SIGKILL) and waits for it to exit */
  kill: (node: RedisNode, signal?: NodeJS.Signals) => Promise<void>
  /** kills every node and removes the temporary directories */
  stop: () => Promise<void>
}

export interface RedisClusterOptions {
  /** default 3 (the fewest Redis Cluster accepts) */
  masters?: number
  /** replicas per master (default 0) */
  replicas?: number
  /** `cluster-node-timeout` in ms: how long a silent master takes to be failed over (default 2000) */
  nodeTimeoutMs?: number
}

/** Why a real Redis Cluster cannot run here, or undefined when it can. */
export function redisClusterSkipReason (): string | undefined {
  for (const bin of [REDIS_SERVER_BIN, REDIS_CLI_BIN]) {
    if (!existsSync(bin)) return `${bin} missing (apt-get install redis-server)`
  }
  return undefined
}

// Every node this process starts, so a test that crashes before its finally still leaves no orphan behind.
const live = new Set<ChildProcess>()
process.once('exit', () => { for (const c of live) c.kill('SIGKILL') })

async function portFree (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const srv = createServer()
    srv.unref()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

/** A free port whose cluster bus port (+10000) is free too. */
async function freeNodePort (taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * (55_535 - 20_000))
    if (taken.has(port) || taken.has(port + BUS_OFFSET) || taken.has(port - BUS_OFFSET)) continue
    if (await portFree(port) && await portFree(port + BUS_OFFSET)) return port
  }
  throw new Error('no free port pair for a Redis Cluster node')
}

const cli = async (port: number, ...args: string[]): Promise<string> =>
  (await run(REDIS_CLI_BIN, ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 10_000 })).stdout

/** Polls `check` (its failures count as "not yet") until it holds; stops at once when `died` says why it never will. */
async function waitFor (what: string, check: () => Promise<boolean>, died: () => string | undefined = () => undefined, timeoutMs = START_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const why = died()
    if (why !== undefined) throw new Error(`Redis Cluster: ${what}: ${why}`)
    if (await check().catch(() => false)) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`Redis Cluster: ${what} within ${timeoutMs} ms`)
}

function startNode (root: string, port: number, nodeTimeoutMs: number): { child: ChildProcess, stderr: () => string } {
  const dir = join(root, String(port))
  const child = spawn(REDIS_SERVER_BIN, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'),
    '--cluster-node-timeout', String(nodeTimeoutMs),
    // a replica may always be promoted, however long since it last heard its master (on a loaded 2-core machine the
    // data-age check has kept a freshly synced replica from failing over)
    '--cluster-replica-validity-factor', '0',
    '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning', '--logfile', ''
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(child)
  child.once('exit', () => live.delete(child))
  let out = ''
  const keep = (s: string): void => { out = (out + s).slice(-4000) }
  child.stdout?.setEncoding('utf8').on('data', keep)
  child.stderr?.setEncoding('utf8').on('data', keep)
  return { child, stderr: () => out }
}

/** Starts a fresh cluster; `stop()` kills it and removes its directories. */
export async function startRedisCluster (opts: RedisClusterOptions = {}): Promise<RedisCluster> {
  const skip = redisClusterSkipReason()
  if (skip !== undefined) throw new Error(skip)
  const masters = opts.masters ?? 3
  const replicas = opts.replicas ?? 0
  const nodeTimeoutMs = opts.nodeTimeoutMs ?? 2000
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-redis-cluster-'))
  const started: Array<{ port: number, child: ChildProcess }> = []
  const stop = async (): Promise<void> => {
    await Promise.all(started.map(async n => { await stopChild(n.child, STOP_GRACE_MS) }))
    await rm(root, { recursive: true, force: true })
  }
  try {
    const taken = new Set<number>()
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const port = await freeNodePort(taken)
      taken.add(port)
      await mkdir(join(root, String(port)))
      const { child, stderr } = startNode(root, port, nodeTimeoutMs)
      started.push({ port, child })
      await waitFor(`node ${port} did not answer PING`, async () => (await cli(port, 'ping')).trim() === 'PONG',
        () => child.exitCode !== null ? `redis-server exited: ${stderr().trim()}` : undefined)
    }
    const seeds = started.map(n => `127.0.0.1:${n.port}`)
    // redis-cli makes the first `masters` addresses the masters and spreads the rest over them as replicas
    await run(REDIS_CLI_BIN, ['--cluster', 'create', ...seeds, '--cluster-replicas', String(replicas), '--cluster-yes'], { timeout: START_TIMEOUT_MS })
    for (const n of started) {
      await waitFor(`node ${n.port} did not reach cluster_state:ok`, async () => (await cli(n.port, 'cluster', 'info')).includes('cluster_state:ok'))
    }
    const layout = await clusterNodes(started[0].port)
    const nodes: RedisNode[] = started.map(n => {
      const l = layout.get(n.port)
      if (l === undefined) throw new Error(`node ${n.port} is not in CLUSTER NODES`)
      return {
        port: n.port,
        address: `127.0.0.1:${n.port}`,
        role: l.master ? 'master' : 'replica',
        ...(l.masterPort !== undefined ? { masterPort: l.masterPort } : {}),
        child: n.child
      }
    })
    for (const r of nodes.filter(n => n.role === 'replica')) {
      await waitFor(`replica ${r.port} did not sync with its master`, async () => (await cli(r.port, 'info', 'replication')).includes('master_link_status:up'))
    }
    return {
      seeds,
      nodes,
      masters: () => nodes.filter(n => n.role === 'master'),
      roles: async () => {
        const alive = nodes.find(n => n.child.exitCode === null && n.child.signalCode === null)
        if (alive === undefined) throw new Error('no Redis node is alive')
        const now = await clusterNodes(alive.port)
        const out = { masters: [] as number[], replicas: [] as number[] }
        for (const [port, l] of now) if (!l.failed) (l.master ? out.masters : out.replicas).push(port)
        return out
      },
      cli,
      kill: async (node, signal = 'SIGKILL') => {
        if (node.child.exitCode !== null || node.child.signalCode !== null) return
        const exited = new Promise<void>(resolve => node.child.once('exit', () => resolve()))
        node.child.kill(signal)
        await exited
      },
      stop
    }
  } catch (err) {
    await stop()
    throw err
  }
}

export interface RedisServer {
  port: number
  /** `redis://127.0.0.1:PORT` */
  url: string
  child: ChildProcess
  stop: () => Promise<void>
}

/** One plain (non-cluster) server, for the directory's single-server mode; on `port` to stand in for one that died. */
export async function startRedisServer (opts: { port?: number } = {}): Promise<RedisServer> {
  const skip = redisClusterSkipReason()
  if (skip !== undefined) throw new Error(skip)
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-redis-'))
  const port = opts.port ?? await freeNodePort(new Set())
  const child = spawn(REDIS_SERVER_BIN, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', root, '--save', '', '--appendonly', 'no',
    '--daemonize', 'no', '--loglevel', 'warning', '--logfile', ''
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(child)
  child.once('exit', () => live.delete(child))
  let err = ''
  const keep = (s: string): void => { err = (err + s).slice(-4000) }
  child.stdout?.setEncoding('utf8').on('data', keep)
  child.stderr?.setEncoding('utf8').on('data', keep)
  const stop = async (): Promise<void> => {
    await stopChild(child, STOP_GRACE_MS)
    await rm(root, { recursive: true, force: true })
  }
  try {
    await waitFor(`server ${port} did not answer PING`, async () => (await cli(port, 'ping')).trim() === 'PONG',
      () => child.exitCode !== null ? `redis-server exited: ${err.trim()}` : undefined)
  } catch (e) {
    await stop()
    throw e
  }
  return { port, url: `redis://127.0.0.1:${port}`, child, stop }
}

/** CLUSTER NODES as seen by the node on `port`: each node's port, role, master's port and whether it failed. */
async function clusterNodes (port: number): Promise<Map<number, { master: boolean, masterPort?: number, failed: boolean }>> {
  const lines = (await cli(port, 'cluster', 'nodes')).trim().split('\n')
  const byId = new Map<string, number>()
  const rows = lines.map(l => l.split(' '))
  for (const r of rows) byId.set(r[0], Number(r[1].split('@')[0].split(':').pop()))
  const out = new Map<number, { master: boolean, masterPort?: number, failed: boolean }>()
  for (const r of rows) {
    const flags = r[2].split(',')
    const masterPort = r[3] !== '-' ? byId.get(r[3]) : undefined
    out.set(byId.get(r[0]) as number, {
      master: flags.includes('master'),
      ...(masterPort !== undefined ? { masterPort } : {}),
      failed: flags.includes('fail') || flags.includes('fail?')
    })
  }
  return out
}
