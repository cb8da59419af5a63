/**
 * The house rules of docs/ARCHITECTURE.md, checked against the import lines of the sources: a room imports another
 * room only through its face (`index.ts`) and only a room below it; inside `peer/`, rooms import each other's faces,
 * downwards only. A new import that breaks a rule fails here with the file and the line.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, normalize, relative, sep } from 'node:path'
import { REPO_ROOT } from './helpers/fixtures.js'

/** room → the rooms it may import (its own files are always free) */
const MAY_IMPORT: Record<string, string[]> = {
  base: [],
  rafs: ['base'],
  registry: ['base'],
  p2p: ['base'],
  image: ['base', 'rafs', 'registry'],
  cache: ['base', 'rafs'],
  scheduler: ['base', 'p2p'],
  convert: ['base', 'rafs', 'registry', 'image'],
  peer: ['base', 'rafs', 'registry', 'p2p', 'image', 'cache', 'scheduler'],
  proxy: ['base', 'rafs', 'registry', 'p2p', 'image', 'cache', 'peer'],
  cri: ['base'],
  snapshotter: ['base', 'rafs', 'registry', 'image', 'cache', 'peer', 'cri'],
  sim: ['base', 'peer', 'scheduler', 'registry', 'convert'],
  cli: ['base', 'rafs', 'registry', 'p2p', 'image', 'cache', 'scheduler', 'convert', 'peer', 'proxy', 'cri', 'snapshotter', 'sim'],
  // benchmarks build their source images with the tests' OCI helper
  bench: ['base', 'rafs', 'registry', 'p2p', 'image', 'cache', 'scheduler', 'convert', 'peer', 'proxy', 'cri', 'snapshotter', 'sim', 'test']
}

/** rooms with a second, light face beside index.ts, for processes that only talk to the room's running daemon */
const CLIENT_FACES: Record<string, string> = { peer: join('peer', 'client.js') }

/** the rooms of the node daemon, each above the ones it may import */
const PEER_MAY_IMPORT: Record<string, string[]> = {
  fetch: [],
  exchange: ['fetch'],
  mount: ['fetch'],
  daemon: ['fetch', 'exchange', 'mount']
}

const TEST_FILE = /(\.test\.ts|\.fixture\.ts|test-support\.ts|testkit\.ts)$/

async function sources (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...await sources(p))
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') && !TEST_FILE.test(e.name)) out.push(p)
  }
  return out
}

/** Relative module specifiers of a file's static and dynamic imports and re-exports, with their line numbers. */
function imports (text: string): Array<{ spec: string, line: number }> {
  const out: Array<{ spec: string, line: number }> = []
  const re = /(?:\bfrom\s+|\bimport\s*\(\s*|^import\s+)'(\.{1,2}\/[^']+)'/gm
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    out.push({ spec: m[1]!, line: text.slice(0, m.index).split('\n').length })
  }
  return out
}

const roomOf = (rel: string): string => rel.split(sep)[0]!

test('rooms import only lower rooms, through their faces', async () => {
  const problems: string[] = []
  for (const room of Object.keys(MAY_IMPORT)) {
    for (const file of await sources(join(REPO_ROOT, room))) {
      const from = relative(REPO_ROOT, file)
      for (const { spec, line } of imports(await readFile(file, 'utf8'))) {
        const target = relative(REPO_ROOT, normalize(join(dirname(file), spec)))
        const to = roomOf(target)
        const where = `${from}:${line} imports ${spec}`
        if (to === 'polyfill.js') continue
        if (to === room) {
          if (room === 'peer') checkPeerRooms(from, target, where, problems)
          continue
        }
        if (!MAY_IMPORT[room]!.includes(to)) { problems.push(`${where}: ${room}/ may not import ${to}/`); continue }
        const face = to === 'test' ? target.startsWith(join('test', 'helpers') + sep) : target === join(to, 'index.js') || target === CLIENT_FACES[to]
        if (!face) problems.push(`${where}: import ${to}/ through its face, ${to}/index.js`)
      }
    }
  }
  assert.deepEqual(problems, [])
})

function checkPeerRooms (from: string, target: string, where: string, problems: string[]): void {
  const a = from.split(sep)[1]!
  const b = target.split(sep)[1]!
  // peer/index.ts is the face of the four rooms; peer/client.ts the light face of the daemon's admin client
  if (a === 'index.ts' || a === 'client.ts' || a === b) return
  if (PEER_MAY_IMPORT[a] === undefined || !PEER_MAY_IMPORT[a].includes(b)) { problems.push(`${where}: peer/${a}/ may not import peer/${b}/`); return }
  if (target !== join('peer', b, 'index.js')) problems.push(`${where}: import peer/${b}/ through its face, peer/${b}/index.js`)
}

test('the rules see the imports they check (the parser is not blind)', async () => {
  const text = await readFile(join(REPO_ROOT, 'peer', 'daemon', 'node.ts'), 'utf8')
  const specs = imports(text).map(i => i.spec)
  assert.ok(specs.includes('../../cache/index.js') && specs.includes('../exchange/index.js'), specs.join(' '))
  const dynamic = imports("const x = await import('../peer/index.js')\nexport { y } from './y.js'").map(i => i.spec)
  assert.deepEqual(dynamic, ['../peer/index.js', './y.js'])
})

test('every error class extends RafspeerError (directly or through another of ours), under a unique name', async () => {
  const classes = new Map<string, { base: string, at: string }>()
  const problems: string[] = []
  for (const room of Object.keys(MAY_IMPORT)) {
    for (const file of await sources(join(REPO_ROOT, room))) {
      // comments hold examples, not declarations
      const text = (await readFile(file, 'utf8')).split('\n').map(l => /^\s*(\*|\/\/)/.test(l) ? '' : l).join('\n')
      const re = /\bclass (\w+)(?:<[^{]*?>)?\s+extends (\w+)/g
      for (let m = re.exec(text); m !== null; m = re.exec(text)) {
        if (!m[1]!.endsWith('Error') && !/Error$/.test(m[2]!)) continue
        const at = `${relative(REPO_ROOT, file)}:${text.slice(0, m.index).split('\n').length}`
        const seen = classes.get(m[1]!)
        if (seen !== undefined) problems.push(`${m[1]} is declared twice: ${seen.at} and ${at}`)
        classes.set(m[1]!, { base: m[2]!, at })
      }
    }
  }
  const rooted = (name: string, depth = 0): boolean => {
    if (name === 'RafspeerError') return true
    const c = classes.get(name)
    return c !== undefined && depth < 10 && rooted(c.base, depth + 1)
  }
  for (const [name, c] of classes) {
    if (name !== 'RafspeerError' && !rooted(c.base)) problems.push(`${name} (${c.at}) extends ${c.base}, not RafspeerError`)
  }
  assert.ok(classes.size > 20, `found ${classes.size} error classes`)
  assert.deepEqual(problems, [])
})
