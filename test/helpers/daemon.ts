/**
 * Runs the real `rafspeer daemon` in a child process for end-to-end tests, and talks to it through its admin
 * socket. Reads of its mounts from the test process are fine (the FUSE server lives in the child).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { AdminClient } from '../../peer/index.js'

const fromSources = import.meta.url.endsWith('.ts')
export const CLI_MAIN = fileURLToPath(new URL(fromSources ? '../../cli/main.ts' : '../../cli/main.js', import.meta.url))
export const cliArgv = (args: string[]): string[] => fromSources ? ['--import', 'tsx', CLI_MAIN, ...args] : [CLI_MAIN, ...args]

export interface TestDaemon {
  socket: string
  client: AdminClient
  proc: ChildProcess
  /** everything the daemon wrote to stderr so far */
  log: () => string
  /** SIGTERM (unmounts and flushes) and waits for the exit code */
  stop: () => Promise<number | null>
  /** SIGKILL: no cleanup at all */
  kill: () => Promise<void>
}

export interface StartDaemonOptions {
  /**
   * `--exit-with-parent` (default true): stdin a pipe from this process, so a test process killed by the runner (a
   * timeout) leaves no daemon serving mounts behind it; `proc.stdin.end()` is this process dying
   */
  exitWithParent?: boolean
}

export async function startDaemon (dir: string, config: Record<string, unknown>, opts: StartDaemonOptions = {}): Promise<TestDaemon> {
  const socket = join(dir, 'rafspeer.sock')
  const cfgPath = join(dir, 'daemon.json')
  await writeFile(cfgPath, JSON.stringify({ version: 1, socket, workDir: join(dir, 'work'), cache: { dir: join(dir, 'cache') }, ...config }, null, 2))
  const parent = opts.exitWithParent ?? true
  const proc = spawn(process.execPath, cliArgv(['daemon', '--config', cfgPath, ...(parent ? ['--exit-with-parent'] : [])]), { stdio: [parent ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout?.on('data', (b: Buffer) => { out += b.toString() })
  proc.stderr?.on('data', (b: Buffer) => { out += b.toString() })
  const exited = new Promise<number | null>(resolve => proc.once('exit', code => resolve(code)))
  const client = new AdminClient(socket)
  const deadline = Date.now() + 30_000
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`daemon exited with ${proc.exitCode}:\n${out}`)
    try {
      await client.daemon({ timeoutMs: 1000 })
      break
    } catch {
      if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`daemon did not answer on ${socket} within 30 s:\n${out}`) }
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
  return {
    socket,
    client,
    proc,
    log: () => out,
    stop: async () => {
      if (proc.exitCode === null) proc.kill('SIGTERM')
      return await exited
    },
    kill: async () => {
      if (proc.exitCode === null) proc.kill('SIGKILL')
      await exited
    }
  }
}

/** Mountpoints of `/proc/mounts` under `prefix` (FUSE, EROFS or anything else). */
export async function mountsUnder (prefix: string): Promise<string[]> {
  const text = await readFile('/proc/mounts', 'utf8')
  return text.split('\n').map(l => l.split(' ')[1] ?? '').map(p => p.replace(/\\040/g, ' ')).filter(p => p.startsWith(prefix))
}
