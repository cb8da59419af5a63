#!/usr/bin/env node
/**
 * Bundles the compiled CLI (dist/cli/main.js, tsc's output) into dist/cli/main.js plus a few dist/cli/chunk-*.js,
 * with esbuild; run by `npm run build` after tsc.
 *
 * Why: a new `rafspeer` process with a cold page cache spent most of its start reading and resolving ~700 small
 * files (our dist tree, undici, zod, prom-client, libp2p's helpers). The bundle is a handful of files; commands keep
 * loading their implementation when they run (`import()` becomes a chunk), so `--help` still loads neither the node
 * nor libp2p. Everything else in dist/ stays as tsc wrote it: tests, benchmarks and workers use it, and the CLI's
 * modules still find their files (native addon, protos, chunk worker) where tsc put them, since each module's
 * `import.meta.url` is rewritten to the URL of its own compiled file.
 *
 * Kept out of the bundle (loaded from node_modules at run time): packages with native addons or that find files
 * next to themselves (node-gyp-build, protobufjs' dynamic requires). A package our code loads on demand with
 * `createRequire(import.meta.url)('name')` (pino, by the logger) is bundled and still loaded on demand: the call
 * becomes a `require('name')`, which esbuild bundles as a module that runs when called. pino's worker transports
 * would not survive bundling; the logger uses none.
 *
 * Without esbuild (a devDependency of a devDependency: `tsx`) this warns and leaves tsc's dist/cli/main.js, which
 * works, only starts slower. Run it twice and the second run sees the bundle's marker and does nothing.
 */
import { readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const outdir = join(root, 'dist', 'cli')
const entry = join(outdir, 'main.js')
const MARKER = '// rafspeer: bundled by cli/bundle.mjs'

export const EXTERNAL = [
  'classic-level', 'fuse-native', 'zstd-napi', '@napi-rs/xattr', 'blake3', '@c4312/*', 'node-gyp-build',
  '@grpc/grpc-js', '@grpc/proto-loader', 'ioredis'
]

function skip (reason) {
  process.stderr.write(`rafspeer: CLI not bundled (${reason}); dist/cli/main.js is tsc's output and starts slower\n`)
  process.exit(0)
}

const source = await readFile(entry, 'utf8').catch(() => undefined)
if (source === undefined) skip(`${relative(root, entry)} is missing: run tsc first`)
if (source.includes(MARKER)) process.exit(0)

let esbuild
try {
  esbuild = await import('esbuild')
} catch (err) {
  skip(`esbuild cannot be loaded: ${err.message}`)
}

/**
 * Gives every compiled module of ours its own file's URL as `import.meta.url`, whichever chunk it ends up in, and
 * turns its on-demand `createRequire(import.meta.url)('name')` into a `require('name')` esbuild can bundle.
 */
const ownUrl = {
  name: 'own-import-meta-url',
  setup (build) {
    const dist = join(root, 'dist') + '/'
    build.onLoad({ filter: /\.js$/ }, async (args) => {
      if (!args.path.startsWith(dist)) return undefined
      let text = (await readFile(args.path, 'utf8'))
        .replace(/createRequire\(import\.meta\.url\)\((['"])([^'"]+)\1\)/g, (_, q, name) => `require(${q}${name}${q})`)
      // every chunk sits in outdir, so one relative path serves all of them
      if (text.includes('import.meta.url')) {
        text = text.replaceAll('import.meta.url', `new URL(${JSON.stringify(relative(outdir, args.path))}, import.meta.url).href`)
      }
      return { contents: text, loader: 'js', resolveDir: dirname(args.path) }
    })
  }
}

const result = await esbuild.build({
  entryPoints: { main: entry },
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outdir,
  chunkNames: 'chunk-[hash]',
  external: EXTERNAL,
  // the CommonJS packages inside call require() for Node's built-ins and the external packages
  banner: { js: `${MARKER}\nimport { createRequire as __rafspeerRequire } from 'node:module'; const require = __rafspeerRequire(import.meta.url);` },
  sourcemap: 'linked',
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [ownUrl],
  write: false
})
// written only now that every input was read (the entry is overwritten); an earlier bundle's chunks go first
for (const f of await readdir(outdir)) if (/^chunk-.*\.js(\.map)?$/.test(f)) await rm(join(outdir, f))
for (const f of result.outputFiles) await writeFile(f.path, f.contents)
