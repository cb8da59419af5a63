#!/usr/bin/env node
/**
 * The `rafspeer` command. Parses arguments and wires modules together; the work itself lives in the modules.
 * Vocabulary follows nydus-image (build/create, merge, check, inspect, unpack; -B/-D/-J) so Nydus users feel at home.
 */
import '../polyfill.js'
import { Command, Option } from 'commander'
import { registerRafsCommands } from './rafs-commands.js'
import { registerDemoCommand } from './demo.js'
import { registerRegistryCommand } from './registry-command.js'
import { registerConvertCommands } from './convert-commands.js'
import { registerDaemonCommands } from './daemon-commands.js'
import { registerProxyCommands } from './proxy-commands.js'
import { registerSnapshotterCommands } from './snapshotter-commands.js'
import { registerSchedulerCommand } from './scheduler-command.js'
import { registerSimCommand } from './sim-command.js'
import { reportError } from './util.js'
import { packageVersion } from '../base/index.js'

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
  registerDaemonCommands(program)
  registerProxyCommands(program)
  registerSnapshotterCommands(program)
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
