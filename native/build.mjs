#!/usr/bin/env node
/**
 * Compiles native/rafspeer.c into dist/native/rafspeer.node, with no node-gyp and no dependencies: one C file, one
 * `cc` call. The addon is optional: without a C compiler, Node's headers or Linux's FUSE header this prints one
 * warning line and exits 0, and the daemon falls back to its other mount modes. A compile error in a complete
 * toolchain is a bug in the C file and fails the build.
 *
 * Environment: CC (default `cc`), CFLAGS (appended).
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const src = join(root, 'native', 'rafspeer.c')
const out = join(root, 'dist', 'native', 'rafspeer.node')

function skip (reason) {
  process.stderr.write(`rafspeer: native addon not built (${reason}); the daemon will use its other mount modes\n`)
  process.exit(0)
}

if (process.platform !== 'linux') skip(`${process.platform} has no /dev/fuse protocol or file-backed EROFS`)

if (existsSync(out) && statSync(out).mtimeMs > statSync(src).mtimeMs) process.exit(0)

const include = [
  join(root, 'node_modules', 'node-api-headers', 'include'),
  resolve(dirname(process.execPath), '..', 'include', 'node'),
  '/usr/include/node'
].find((dir) => existsSync(join(dir, 'node_api.h')))
if (include === undefined) skip('no Node-API headers (node_api.h) found')

const cc = process.env.CC ?? 'cc'
const probe = spawnSync(cc, ['--version'], { stdio: 'ignore' })
if (probe.error !== undefined || probe.status !== 0) skip(`no C compiler (${cc})`)

mkdirSync(dirname(out), { recursive: true })
// a half-written .node must never be loadable, so compile beside it and rename
const tmp = `${out}.${process.pid}.tmp`
const args = ['-O2', '-fPIC', '-shared', '-pthread', '-Wall', '-Wextra', '-I', include, '-o', tmp, src,
  ...(process.env.CFLAGS ?? '').split(/\s+/).filter((a) => a !== '')]
const res = spawnSync(cc, args, { encoding: 'utf8' })
if (res.status !== 0) {
  rmSync(tmp, { force: true })
  const text = `${res.stdout ?? ''}${res.stderr ?? ''}`
  // missing system headers are a toolchain gap (no linux-libc-dev), not a bug
  if (/linux\/fuse\.h|node_api\.h/.test(text) && /No such file|not found/.test(text)) skip('missing C headers: linux/fuse.h or node_api.h')
  process.stderr.write(text)
  process.stderr.write(`rafspeer: compiling ${src} failed\n`)
  process.exit(1)
}
if (res.stderr !== '') process.stderr.write(res.stderr)
renameSync(tmp, out)
