import '../polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Command } from 'commander'
import { registerSchedulerCommand } from '../cli/scheduler-command.js'

async function run (args: string[]): Promise<string[]> {
  const lines: string[] = []
  let stop!: () => void
  const stopped = new Promise<void>((resolve) => { stop = resolve })
  const program = new Command('rafspeer').exitOverride()
  registerSchedulerCommand(program, {
    print: (line) => { lines.push(line); if (lines.length === 1) stop() },
    untilStopped: async () => { await stopped }
  })
  await program.parseAsync(['node', 'rafspeer', 'scheduler', ...args])
  return lines
}

test('rafspeer scheduler prints its full multiaddr, keeps its peer id across runs with --key-file, and --json', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-sched-cli-'))
  try {
    const key = join(dir, 'id.key')
    const first = await run(['--listen', '/ip4/127.0.0.1/tcp/0', '--key-file', key])
    assert.match(first[0], /^scheduler: \/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/12D3Koo\w+$/)
    assert.match(first[1], /^scheduler stopped: 0 peers/)
    const second = await run(['--listen', '/ip4/127.0.0.1/tcp/0', '--key-file', key, '--json'])
    const started = JSON.parse(second[0]) as { scheduler: string, peerId: string, multiaddrs: string[] }
    assert.equal(started.scheduler.split('/p2p/')[1], first[0].split('/p2p/')[1])
    assert.equal(started.peerId, first[0].split('/p2p/')[1])
    assert.equal((JSON.parse(second[1]) as { stopped: boolean }).stopped, true)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
