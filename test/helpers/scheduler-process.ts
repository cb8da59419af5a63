/**
 * The real `rafspeer scheduler` in a child process, for tests that kill, stop (SIGSTOP) or restart one. With a key
 * file and a fixed listen address a restart is the same scheduler to its clients (same peer id, same multiaddr).
 *
 * @example
 * const s = await startSchedulerProcess({ keyFile: join(dir, 's1.key'), redis: cluster.seeds })
 * await s.kill()                                  // SIGKILL
 * const again = await startSchedulerProcess({ keyFile: join(dir, 's1.key'), listen: s.listen, redis: cluster.seeds })
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { cliArgv } from './daemon.js'
import { stopChild } from './process.js'

const START_TIMEOUT_MS = 30_000

export interface SchedulerProcess {
  /** the full multiaddr it printed, with `/p2p/<id>` */
  address: string
  /** `address` without `/p2p/<id>`: what to pass as `listen` to restart it in place */
  listen: string
  proc: ChildProcess
  /** what it wrote so far (stdout and stderr) */
  output: () => string
  /** sends `signal` (default SIGKILL) and waits for the exit; SIGSTOP and SIGCONT return at once */
  kill: (signal?: NodeJS.Signals) => Promise<void>
  /** SIGTERM (SIGKILL after a grace period), resumed first if it was stopped */
  stop: () => Promise<void>
}

// every scheduler this process starts, so a test that crashes before its finally leaves no orphan behind
const live = new Set<ChildProcess>()
process.once('exit', () => { for (const c of live) c.kill('SIGKILL') })

export async function startSchedulerProcess (opts: { listen?: string, keyFile?: string, redis?: string[] } = {}): Promise<SchedulerProcess> {
  const args = ['scheduler', '--listen', opts.listen ?? '/ip4/127.0.0.1/tcp/0']
  if (opts.keyFile !== undefined) args.push('--key-file', opts.keyFile)
  for (const r of opts.redis ?? []) args.push('--redis', r)
  const proc = spawn(process.execPath, cliArgv(args), { stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(proc)
  proc.once('exit', () => live.delete(proc))
  let out = ''
  proc.stdout?.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-64_000) })
  proc.stderr?.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-64_000) })
  const address = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`the scheduler did not start within ${START_TIMEOUT_MS} ms:\n${out}`)) }, START_TIMEOUT_MS)
    const onData = (): void => {
      const m = /^scheduler: (\S+)$/m.exec(out)
      if (m !== null) { clearTimeout(timer); proc.stdout?.off('data', onData); resolve(m[1]!) }
    }
    proc.stdout?.on('data', onData)
    proc.once('exit', code => { clearTimeout(timer); reject(new Error(`the scheduler exited with ${code}:\n${out}`)) })
  }).catch(async (err: unknown) => { proc.kill('SIGKILL'); throw err })
  return {
    address,
    listen: address.replace(/\/p2p\/.*$/, ''),
    proc,
    output: () => out,
    kill: async (signal = 'SIGKILL') => {
      if (proc.exitCode !== null || proc.signalCode !== null) return
      if (signal === 'SIGSTOP' || signal === 'SIGCONT') { proc.kill(signal); return }
      const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
      proc.kill(signal)
      await exited
    },
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGCONT')
      await stopChild(proc, 5_000)
    }
  }
}
