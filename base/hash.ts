/** Content digests of files, streamed (never a whole file in memory). */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'

/** Hex sha256 of the file at `path`. */
export async function sha256File (path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const piece of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(piece as Buffer)
  return h.digest('hex')
}
