/**
 * `proxy`: a daemon that serves the registry mirror (`rafspeer proxy --listen HOST:PORT [daemon flags]`), and
 * `proxy configure-containerd` / `proxy unconfigure-containerd`, which point containerd's hosts.toml at a mirror.
 * The mirror lives in `proxy/`, the daemon in `peer/` (both loaded when a command runs).
 */
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { addDaemonOptions, addMirrorOptions, cliLogLevel, runMirrorDaemon, type DaemonFlags } from './daemon-commands.js'

const proxy = async (): Promise<typeof import('../proxy/index.js')> => await import('../proxy/index.js')

interface HostsFlags { hostsDir: string, mirror?: string, all?: boolean, dryRun?: boolean, json?: boolean }

export function registerProxyCommands (program: Command): void {
  const cmd = addDaemonOptions(addMirrorOptions(program.command('proxy'), '--listen')
    .description('run a daemon serving the registry mirror (until SIGTERM/SIGINT); `proxy configure-containerd` points containerd at it'))
    .action(async (f: DaemonFlags & { listen?: string }, c: Command) => {
      const logLevel = f.logLevel ?? cliLogLevel(c)
      await runMirrorDaemon({ ...f, proxyListen: f.listen ?? (await proxy()).DEFAULT_PROXY_LISTEN, ...(logLevel !== undefined ? { logLevel } : {}) })
    })

  cmd.command('configure-containerd')
    .description('write <hosts-dir>/<registry>/hosts.toml so containerd pulls through the mirror first (keeps a backup of what was there)')
    .argument('[registries...]', 'registries to mirror: docker.io, ghcr.io, 127.0.0.1:5000, ...')
    .requiredOption('--hosts-dir <dir>', "containerd's config_path (e.g. /etc/containerd/certs.d)")
    .option('--mirror <url>', 'the mirror URL', 'http://127.0.0.1:5002')
    .option('--all', 'also write _default: every registry without its own directory goes through the mirror')
    .option('--dry-run', 'print what would be written, touch nothing')
    .option('--json', 'JSON output')
    .action(async (registries: string[], f: HostsFlags) => {
      const { writeHostsToml, criConfigHint } = await proxy()
      if (registries.length === 0 && f.all !== true) throw new Error('name the registries to mirror, or --all')
      const hostsDir = resolve(f.hostsDir)
      const results = await writeHostsToml({ hostsDir, mirror: f.mirror ?? 'http://127.0.0.1:5002', registries, all: f.all === true, dryRun: f.dryRun === true })
      if (f.json === true) { process.stdout.write(JSON.stringify({ hostsDir, results, criConfig: criConfigHint(hostsDir) }, null, 2) + '\n'); return }
      for (const r of results) {
        process.stdout.write(`${f.dryRun === true ? 'would write' : r.action} ${r.path}${r.backup !== undefined ? ` (previous kept as ${r.backup})` : ''}\n`)
        if (f.dryRun === true) process.stdout.write(r.content.replace(/^/gm, '    ') + '\n')
      }
      process.stdout.write('\n' + criConfigHint(hostsDir))
    })

  cmd.command('unconfigure-containerd')
    .description('undo configure-containerd: restore the newest backup, or remove our hosts.toml')
    .argument('[registries...]', 'registries to restore')
    .requiredOption('--hosts-dir <dir>', "containerd's config_path")
    .option('--all', 'also _default')
    .option('--dry-run', 'print what would be done, touch nothing')
    .option('--json', 'JSON output')
    .action(async (registries: string[], f: HostsFlags) => {
      const { removeHostsToml } = await proxy()
      if (registries.length === 0 && f.all !== true) throw new Error('name the registries, or --all')
      const results = await removeHostsToml({ hostsDir: resolve(f.hostsDir), registries, all: f.all === true, dryRun: f.dryRun === true })
      if (f.json === true) { process.stdout.write(JSON.stringify(results, null, 2) + '\n'); return }
      for (const r of results) process.stdout.write(`${r.action} ${r.path}${r.backup !== undefined ? ` (from ${r.backup})` : ''}\n`)
    })
}
