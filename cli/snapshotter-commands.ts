/**
 * `snapshotter`: a daemon serving containerd's remote snapshotter API (`rafspeer snapshotter --address SOCK [daemon
 * flags]`); `snapshotter configure-containerd` / `unconfigure-containerd`, which declare it in containerd's
 * config.toml; and `rpull`, which pulls an image through containerd's CRI so the snapshotter gets the layer labels it
 * needs (`ctr images pull --snapshotter` cannot drive a remote snapshotter). The work lives in `snapshotter/`.
 */
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { formatBytes } from '../base/index.js'
import { addDaemonOptions, addMirrorOptions, cliLogLevel, configPath, daemonOverrides, runMirrorDaemon, type DaemonFlags } from './daemon-commands.js'

const snapshotter = async (): Promise<typeof import('../snapshotter/index.js')> => await import('../snapshotter/index.js')

/** where the snapshotter listens unless told (the grpc service's default, named here so --help stays quick) */
const DEFAULT_ADDRESS = '/run/rafspeer/snapshotter.sock'
const DEFAULT_CONTAINERD = '/run/containerd/containerd.sock'
const DEFAULT_CONTAINERD_CONFIG = '/etc/containerd/config.toml'

interface ConfigFlags { address?: string, name?: string, cri?: boolean, write?: string, dryRun?: boolean, json?: boolean }
interface RpullFlags { address?: string, user?: string, timeout?: string, json?: boolean }

const print = (text: string): void => { process.stdout.write(text + '\n') }

export function registerSnapshotterCommands (program: Command): void {
  const cmd = addDaemonOptions(addMirrorOptions(program.command('snapshotter'), '--proxy-listen')
    .description('run a daemon serving the containerd remote snapshotter (until SIGTERM/SIGINT): RAFS images start as containers before they are downloaded; `snapshotter configure-containerd` declares it to containerd')
    .option('--address <socket>', `the snapshotter's Unix socket (default ${DEFAULT_ADDRESS}; snapshots under <work-dir>/snapshotter)`)
    .option('--image-service-address <socket>', "also serve CRI's image service here (point the kubelet's --image-service-endpoint or `rafspeer rpull --address` at it): pulls pass to containerd, and their registry credentials serve the lazy reads of their images")
    .option('--containerd-address <socket>', `containerd's socket, where the image service forwards (default ${DEFAULT_CONTAINERD})`)
    .option('--daemon-socket <socket>', 'let the rafspeer daemon on this admin socket mount the images, and run no node here: this process can then restart while containers keep reading their files (the daemon flags other than --work-dir, --config and --log-level do not apply)'))
    .action(async (f: DaemonFlags & { address?: string }, c: Command) => {
      const logLevel = f.logLevel ?? cliLogLevel(c)
      const flags = { ...f, snapshotterAddress: resolve(f.address ?? DEFAULT_ADDRESS), ...(logLevel !== undefined ? { logLevel } : {}) }
      if (f.daemonSocket === undefined) {
        await runMirrorDaemon(flags)
        return
      }
      const { loadDaemonConfig } = await import('../peer/index.js')
      const config = await loadDaemonConfig(configPath(f), daemonOverrides(flags))
      await (await snapshotter()).runSnapshotter(config)
    })

  cmd.command('configure-containerd')
    .description("print containerd's config for the snapshotter ([proxy_plugins.rafspeer], CRI snapshotter, CRI snapshot labels); with --write, merge it into a config.toml (keeping a backup)")
    .option('--address <socket>', `the snapshotter's socket (default ${DEFAULT_ADDRESS})`)
    .option('--name <name>', 'the name containerd knows it by (ctr --snapshotter NAME)', 'rafspeer')
    .option('--no-cri', "only declare the plugin; leave CRI's snapshotter alone")
    .option('--write <file>', `merge into this containerd config (e.g. ${DEFAULT_CONTAINERD_CONFIG}) instead of printing`)
    .option('--dry-run', 'with --write: print what would be written, touch nothing')
    .option('--json', 'JSON output')
    .action(async (f: ConfigFlags, c: Command) => {
      const { renderSnapshotterConfig, writeSnapshotterConfig } = await snapshotter()
      // commander hands `--address` to the parent command, which declares it too
      const address = f.address ?? (c.parent?.opts() as { address?: string } | undefined)?.address
      const opts = { address: resolve(address ?? DEFAULT_ADDRESS), name: f.name ?? 'rafspeer', criSnapshotter: f.cri !== false }
      if (f.write === undefined) {
        const text = renderSnapshotterConfig(opts)
        if (f.json === true) print(JSON.stringify({ content: text }, null, 2))
        else process.stdout.write(text)
        return
      }
      const r = await writeSnapshotterConfig(resolve(f.write), { ...opts, dryRun: f.dryRun === true })
      if (f.json === true) { print(JSON.stringify(r, null, 2)); return }
      for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`)
      print(`${f.dryRun === true ? `would leave ${r.path} ${r.action}` : `${r.action} ${r.path}`}${r.backup !== undefined ? ` (previous kept as ${r.backup})` : ''}`)
      if (f.dryRun === true) print(r.content)
      else if (r.action !== 'unchanged') print('restart containerd to load it (systemctl restart containerd)')
    })

  cmd.command('unconfigure-containerd')
    .description('undo configure-containerd --write: remove the plugin and, when ours, CRI\'s snapshotter setting (keeping a backup)')
    .requiredOption('--write <file>', 'the containerd config to edit')
    .option('--name <name>', 'the plugin name', 'rafspeer')
    .option('--dry-run', 'print what would be written, touch nothing')
    .option('--json', 'JSON output')
    .action(async (f: ConfigFlags) => {
      const { unwriteSnapshotterConfig } = await snapshotter()
      const r = await unwriteSnapshotterConfig(resolve(f.write!), { name: f.name ?? 'rafspeer', dryRun: f.dryRun === true })
      if (f.json === true) { print(JSON.stringify(r, null, 2)); return }
      print(`${f.dryRun === true ? 'would leave' : ''}${r.action} ${r.path}${r.backup !== undefined ? ` (previous kept as ${r.backup})` : ''}`)
    })

  program.command('rpull')
    .description("pull an image through containerd's CRI, so the rafspeer snapshotter serves its RAFS layers lazily (containerd downloads only the manifest and config); then `ctr -n k8s.io run --snapshotter rafspeer REF ID CMD`")
    .argument('<ref>', 'image reference (host/repo:tag or host/repo@sha256:…)')
    .option('--address <socket>', `containerd's socket (default ${DEFAULT_CONTAINERD})`)
    .option('--user <user:password>', 'registry credentials for this pull (else containerd\'s own configuration)')
    .option('--timeout <seconds>', 'give up after this long (default 600)')
    .option('--json', 'JSON output')
    .action(async (ref: string, f: RpullFlags) => {
      const { CriImageClient } = await import('../cri/index.js')
      const auth = f.user === undefined ? undefined : parseUser(f.user)
      const timeoutS = f.timeout === undefined ? 600 : Number(f.timeout)
      if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new Error(`--timeout ${f.timeout}: expected a number of seconds`)
      const client = new CriImageClient({ address: resolve(f.address ?? DEFAULT_CONTAINERD), pullTimeoutMs: timeoutS * 1000 })
      try {
        const t0 = performance.now()
        const { imageRef } = await client.pull(ref, auth !== undefined ? { auth } : {})
        const ms = Math.round(performance.now() - t0)
        const image = await client.status(ref)
        if (f.json === true) { print(JSON.stringify({ ref, imageRef, ms, image }, null, 2)); return }
        print(`pulled ${ref} in ${ms} ms (namespace k8s.io)`)
        print(`  image id  ${imageRef}`)
        if (image !== undefined) {
          for (const d of image.repoDigests) print(`  digest    ${d}`)
          print(`  size      ${formatBytes(image.size)} (as containerd counts it: a RAFS image's layers stay in the registry until read)`)
        }
      } finally {
        client.close()
      }
    })
}

function parseUser (v: string): { username: string, password: string } {
  const i = v.indexOf(':')
  if (i <= 0) throw new Error('--user: expected user:password')
  return { username: v.slice(0, i), password: v.slice(i + 1) }
}
