/** `rafspeer registry`: the embedded OCI distribution server, for demos, the simulator and local work (imported when it runs). */
import type { Command } from 'commander'
import { parseHostPort } from '../base/index.js'
import { parseSize, untilSignal } from './util.js'

export function registerRegistryCommand (program: Command): void {
  program.command('registry')
    .description('run the embedded OCI registry (push, pull, HEAD, Range; content-addressed storage on disk) until SIGINT/SIGTERM')
    .requiredOption('--root <dir>', 'storage directory')
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:5000')
    .option('--bandwidth-limit <bytes>', 'cap on blob bytes served per second, whole server (decimal or 0x-hex)', parseSize)
    .option('--user <user:password>', 'require HTTP Basic credentials')
    .option('--token-auth', 'with --user: act as a Bearer token issuer at /token instead of plain Basic')
    .action(async (f: { root: string, listen: string, bandwidthLimit?: number, user?: string, tokenAuth?: boolean }) => {
      const hp = parseHostPort(f.listen)
      if (hp === undefined) throw new Error(`--listen ${f.listen}: not a host:port`)
      const { host, port } = hp
      let auth
      if (f.user !== undefined) {
        const i = f.user.indexOf(':')
        if (i <= 0) throw new Error('--user takes user:password')
        const cred = { user: f.user.slice(0, i), password: f.user.slice(i + 1) }
        auth = f.tokenAuth === true ? { bearer: cred } : { basic: cred }
      }
      const { startRegistryServer } = await import('../registry/index.js')
      const server = await startRegistryServer({ root: f.root, host, port, auth, bandwidthLimit: f.bandwidthLimit })
      process.stdout.write(`registry listening on ${server.url} (storage ${f.root})\n`)
      await untilSignal()
      await server.stop()
      const snap = server.counters.snapshot()
      for (const [repo, c] of Object.entries(snap)) {
        if (repo !== '') process.stdout.write(`${repo}: ${c.bytesServed} bytes served, ${c.bytesReceived} received, ${c.requests} requests (${c.rangeRequests} ranged)\n`)
      }
    })
}
