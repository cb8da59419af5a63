/** Runs the real `rafspeer` command in a child process, from dist/ or (under tsx) from the sources. */
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const fromSources = import.meta.url.endsWith('.ts')
const MAIN = fileURLToPath(new URL(fromSources ? '../../cli/main.ts' : '../../cli/main.js', import.meta.url))

export interface CliResult { code: number, stdout: string, stderr: string }

export async function runCli (args: string[], opts: { input?: Buffer | string, timeoutMs?: number } = {}): Promise<CliResult> {
  const argv = fromSources ? ['--import', 'tsx', MAIN, ...args] : [MAIN, ...args]
  return await new Promise((resolve) => {
    const child = execFile(process.execPath, argv, { timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1
      resolve({ code, stdout, stderr })
    })
    if (opts.input !== undefined) child.stdin?.end(opts.input)
    else child.stdin?.end()
  })
}
