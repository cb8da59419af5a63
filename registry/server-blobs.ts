/**
 * Blob endpoints of the embedded registry: GET/HEAD/DELETE `/v2/<name>/blobs/<digest>` and the upload session
 * protocol under `/v2/<name>/blobs/uploads/`. Bodies stream between socket and disk in bounded pieces.
 */
import { createReadStream } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AuthGate } from './server-auth.js'
import {
  API_VERSION_HEADER, DistributionError, isDigest, isName, parseContentRange, parseRange, sendEmpty, uploadRange, hasBody
} from './server-http.js'
import { delay, type TokenBucket } from '../base/index.js'
import type { Counters } from './server-counters.js'
import type { ReceiveOptions, RegistryStorage, UploadSession } from './server-storage.js'

/** Everything a handler needs; one per server. */
export interface ServerContext {
  storage: RegistryStorage
  counters: Counters
  auth: AuthGate
  limiter: TokenBucket | undefined
  maxManifestSize: number
}

const READ_PIECE = 64 * 1024

export async function handleBlob (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, digest: string, signal: AbortSignal): Promise<void> {
  if (req.method === 'DELETE') {
    if (!await ctx.storage.unlinkBlob(name, digest)) throw new DistributionError('BLOB_UNKNOWN', 'blob unknown to registry', { detail: { digest } })
    sendEmpty(res, 202)
    return
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') throw notAllowed('GET, HEAD, DELETE')
  const size = await ctx.storage.blobSize(name, digest)
  if (size === undefined) throw new DistributionError('BLOB_UNKNOWN', 'blob unknown to registry', { detail: { digest } })
  const headers: Record<string, string | number> = {
    ...API_VERSION_HEADER,
    'Content-Type': 'application/octet-stream',
    'Docker-Content-Digest': digest,
    'Accept-Ranges': 'bytes',
    ETag: `"${digest}"`
  }
  const range = parseRange(req.headers.range, size)
  if (range === 'unsatisfiable') {
    throw new DistributionError('RANGE_INVALID', 'requested range not satisfiable', { detail: { range: req.headers.range, size }, headers: { 'Content-Range': `bytes */${size}` } })
  }
  const start = range?.start ?? 0
  const end = range?.end ?? size - 1
  headers['Content-Length'] = end - start + 1
  if (range !== undefined) headers['Content-Range'] = `bytes ${start}-${end}/${size}`
  res.writeHead(range === undefined ? 200 : 206, headers)
  if (req.method === 'HEAD' || end < start) { res.end(); return }
  await streamFile(ctx, res, ctx.storage.blobPath(digest), start, end, n => ctx.counters.served(name, n), signal)
}

/**
 * Streams `[start, end]` of a file to `res`, shaped by the shared bucket and honouring backpressure. Leaving
 * the loop early (client gone, server stopping) destroys the read stream, so no descriptor outlives the reply.
 */
async function streamFile (ctx: ServerContext, res: ServerResponse, path: string, start: number, end: number, onBytes: (n: number) => void, signal: AbortSignal): Promise<void> {
  const limiter = ctx.limiter
  const piece = limiter === undefined ? READ_PIECE : Math.max(1, Math.min(READ_PIECE, limiter.maxPiece))
  const stream = createReadStream(path, { start, end, highWaterMark: piece })
  try {
    for await (const chunk of stream) {
      const buf = chunk as Buffer
      for (let off = 0; off < buf.length; off += piece) {
        const part = buf.subarray(off, off + piece)
        // an abort ends the wait early; the check below sees it
        if (limiter !== undefined) await delay(limiter.reserve(part.length), signal).catch(() => {})
        if (signal.aborted || res.destroyed) {
          // the bytes were reserved, never sent: the clients still waiting get them back
          limiter?.refund(part.length)
          return
        }
        onBytes(part.length)
        if (!res.write(part)) await drained(res, signal)
      }
    }
    res.end()
  } finally {
    stream.destroy()
  }
}

async function drained (res: ServerResponse, signal: AbortSignal): Promise<void> {
  if (signal.aborted || res.destroyed) return
  await new Promise<void>(resolve => {
    const done = (): void => {
      res.off('drain', done); res.off('close', done); signal.removeEventListener('abort', done)
      resolve()
    }
    res.on('drain', done); res.on('close', done); signal.addEventListener('abort', done)
  })
}

function notAllowed (allow: string): DistributionError {
  return new DistributionError('UNSUPPORTED', 'method not allowed', { headers: { Allow: allow } })
}

function uploadLocation (name: string, id: string): string { return `/v2/${name}/blobs/uploads/${id}` }

function sessionHeaders (s: UploadSession): Record<string, string> {
  return { Location: uploadLocation(s.name, s.id), Range: uploadRange(s.size), 'Docker-Upload-UUID': s.id }
}

/** Body length the client announced, if any; a chunk's Content-Range and Content-Length must agree. */
function announcedLength (req: IncomingMessage, rangeLength: number | undefined): number | undefined {
  const cl = req.headers['content-length']
  const length = cl === undefined ? undefined : Number(cl)
  if (length !== undefined && rangeLength !== undefined && length !== rangeLength) {
    throw new DistributionError('SIZE_INVALID', 'Content-Length does not match Content-Range', { detail: { contentLength: length, range: rangeLength } })
  }
  return rangeLength ?? length
}

function receiveOptions (ctx: ServerContext, req: IncomingMessage, name: string, rangeLength?: number): ReceiveOptions {
  return { expected: announcedLength(req, rangeLength), onBytes: n => ctx.counters.received(name, n) }
}

/** Appends the request body to the session, checking that it starts where the upload stands. */
async function appendBody (ctx: ServerContext, req: IncomingMessage, s: UploadSession): Promise<void> {
  const range = parseContentRange(req.headers['content-range'] as string | undefined)
  if (range !== undefined && range.start !== s.size) {
    throw new DistributionError('RANGE_INVALID', 'chunk does not start at the end of the upload', { detail: { offset: s.size, start: range.start }, headers: sessionHeaders(s) })
  }
  const rangeLength = range === undefined ? undefined : range.end - range.start + 1
  await ctx.storage.append(s, req, receiveOptions(ctx, req, s.name, rangeLength))
}

export async function handleUpload (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, id: string | undefined, query: URLSearchParams): Promise<void> {
  if (id === undefined) {
    if (req.method !== 'POST') throw notAllowed('POST')
    await startUpload(ctx, req, res, name, query)
    return
  }
  const s = ctx.storage.getUpload(name, id)
  switch (req.method) {
    case 'GET':
    case 'HEAD':
      sendEmpty(res, 204, sessionHeaders(s))
      return
    case 'PATCH':
      await appendBody(ctx, req, s)
      sendEmpty(res, 202, sessionHeaders(s))
      return
    case 'PUT': {
      const digest = query.get('digest')
      if (digest === null || !isDigest(digest)) throw new DistributionError('DIGEST_INVALID', 'digest parameter missing or invalid', { detail: { digest } })
      if (hasBody(req)) await appendBody(ctx, req, s)
      await ctx.storage.commit(s, digest)
      sendEmpty(res, 201, { Location: `/v2/${name}/blobs/${digest}`, 'Docker-Content-Digest': digest })
      return
    }
    case 'DELETE':
      await ctx.storage.deleteUpload(s)
      sendEmpty(res, 204)
      return
    default:
      throw notAllowed('GET, HEAD, PATCH, PUT, DELETE')
  }
}

async function startUpload (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, name: string, query: URLSearchParams): Promise<void> {
  const mount = query.get('mount')
  const from = query.get('from')
  if (mount !== null && isDigest(mount) && from !== null && isName(from) &&
      ctx.auth.allows(req, { name: from, action: 'pull' }) && await ctx.storage.blobSize(from, mount) !== undefined) {
    await ctx.storage.linkBlob(name, mount)
    sendEmpty(res, 201, { Location: `/v2/${name}/blobs/${mount}`, 'Docker-Content-Digest': mount })
    return
  }
  // A mount that cannot be honoured falls back to an ordinary session, as the spec asks.
  const digest = mount === null ? query.get('digest') : null
  if (digest !== null) {
    if (!isDigest(digest)) throw new DistributionError('DIGEST_INVALID', 'invalid digest parameter', { detail: { digest } })
    await ctx.storage.putBlob(name, digest, req, receiveOptions(ctx, req, name))
    sendEmpty(res, 201, { Location: `/v2/${name}/blobs/${digest}`, 'Docker-Content-Digest': digest })
    return
  }
  const s = await ctx.storage.newUpload(name)
  sendEmpty(res, 202, sessionHeaders(s))
}
