/**
 * Keeps a machine's cores from going idle while something is measured: one busy loop per core at the lowest
 * priority there is (SCHED_IDLE, niced 19 too), so it runs only on CPU nothing else wants.
 *
 * Why: on this VM the CPU time a piece of work costs depends on how idle the machine is. One daemon alone reading 64
 * MiB at 4 MiB/s (the machine 11% busy) took 3.7–3.9 CPU-s, the same read beside two idle-priority loops 2.7 s, at
 * 16 MiB/s 2.1–2.3 against 1.85 (a vCPU that halts between wakeups pays for coming back); a swarm that loads the
 * machine pays the busy machine's price. `bench credibility` fits the model's CPU from runs of one node, so it runs
 * them on warm cores.
 *
 * The loops' CPU stays out of this process's counters (`SwarmReport.readCpuMs` reads them) while they run: a child's
 * CPU reaches its parent's only when it is reaped, which `stop` does, so stop them outside whatever is measured. A
 * loop also ends by itself within moments once this process is gone, so a killed bench leaves none spinning.
 *
 * @example
 * ```ts
 * const warm = await warmCores(availableParallelism())
 * try { await measure() } finally { await warm.stop() }
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process'

export interface WarmCores {
  /** the loops' process ids */
  readonly pids: readonly number[]
  /** how the loops run: 'idle' (SCHED_IDLE and nice 19) or 'nice' (nice 19 alone: `chrt` missing or refused) */
  readonly policy: 'idle' | 'nice'
  /** ends the loops and reaps them (their CPU then joins this process's children's: not inside a measurement) */
  stop: () => Promise<void>
}

/** a loop checks its owner this often (iterations of the shell's counter: ~0.1–0.3 s here) */
const SPIN_ITERATIONS = 20_000

/** Starts `n` idle-priority busy loops that outlive no one; see the module's comment. */
export async function warmCores (n: number): Promise<WarmCores> {
  if (!Number.isInteger(n) || n < 0 || n > 1024) throw new RangeError(`warmCores wants 0–1024 loops, got ${n}`)
  const loop = `while kill -0 ${process.pid} 2>/dev/null; do i=0; while [ $i -lt ${SPIN_ITERATIONS} ]; do i=$((i+1)); done; done`
  let policy: WarmCores['policy'] = 'idle'
  let loops = await started(n, ['nice', '-n', '19', 'chrt', '--idle', '0', 'sh', '-c', loop]).catch(() => undefined)
  if (loops === undefined) {
    policy = 'nice'
    loops = await started(n, ['nice', '-n', '19', 'sh', '-c', loop])
  }
  const children = loops
  return {
    pids: children.map(c => c.pid!),
    policy,
    stop: async () => { await Promise.all(children.map(ended)) }
  }
}

/** Kills `c` and resolves once it is reaped. */
async function ended (c: ChildProcess): Promise<void> {
  if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) return
  const exited = new Promise<void>(resolve => { c.once('exit', () => { resolve() }) })
  c.kill('SIGKILL')
  await exited
}

/** `n` processes of `argv`, each still running a moment after it started (a `chrt` missing or refused is not). */
async function started (n: number, argv: string[]): Promise<ChildProcess[]> {
  if (n === 0) return []
  const children = Array.from({ length: n }, () => spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' }))
  const failed = children.map(c => new Promise<boolean>(resolve => {
    c.once('error', () => { resolve(true) })
    c.once('exit', () => { resolve(true) })
  }))
  const early = await Promise.race([Promise.any(failed), new Promise<false>(resolve => setTimeout(() => { resolve(false) }, 100))])
  if (early || children.some(c => c.pid === undefined)) {
    await Promise.all(children.map(ended))
    throw new Error(`a loop did not start: ${argv.join(' ')}`)
  }
  return children
}
