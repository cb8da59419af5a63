#!/usr/bin/env node
/**
 * The `rafspeer` command. Parses arguments and wires modules together; the work itself lives in the modules.
 * Vocabulary follows nydus-image (build/create, merge, check, inspect, unpack; -B/-D/-J) so Nydus users feel at home.
 */
import '../polyfill.js'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Command, Option } from 'commander'
import { registerRafsCommands } from './rafs-commands.js'
import { registerDemoCommand } from './demo.js'
import { registerRegistryCommand } from './registry-command.js'
import { registerConvertCommands } from './convert-commands.js'
import { registerDaemonCommands } from './daemon-commands.js'
import { registerSchedulerCommand } from './scheduler-command.js'
import { registerSimCommand } from './sim-command.js'
import { reportError } from './util.js'

/** The package version, from the package.json above this file (the same code runs from dist/ and from sources). */
function packageVersion (): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dir !== dirname(dir); dir = dirname(dir)) {
    const p = join(dir, 'package.json')
    if (existsSync(p)) return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version
  }
  return '0.0.0'
}

export function createProgram (): Command {
  const program = new Command('rafspeer')
    .description('Peer-to-peer distribution of read-only RAFS v6 images (Nydus-compatible, kernel-mountable)')
    .version(packageVersion(), '-V, --version')
    .addOption(new Option('-l, --log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error']).default('info'))
    .showHelpAfterError()
    .exitOverride()
  registerRafsCommands(program)
  registerDemoCommand(program)
  registerRegistryCommand(program)
  registerConvertCommands(program)
  // the mount service (FUSE binding, fetcher, cache) loads only when a daemon starts
  registerDaemonCommands(program, { createMounts: async (cache, config, logger) => (await import('./node-wiring.js')).createMounts(cache, config, logger) })
  registerSchedulerCommand(program)
  registerSimCommand(program)
  return program
}

export async function main (argv: string[]): Promise<number> {
  const program = createProgram()
  try {
    await program.parseAsync(argv)
    return process.exitCode === undefined ? 0 : Number(process.exitCode)
  } catch (err) {
    const e = err as { code?: string, exitCode?: number }
    // commander already printed usage problems, help and version
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return e.exitCode ?? 1
    return reportError(err)
  }
}

process.on('unhandledRejection', (err) => { process.exitCode = reportError(err) })
main(process.argv).then((code) => { process.exitCode = code }, (err) => { process.exitCode = reportError(err) })
