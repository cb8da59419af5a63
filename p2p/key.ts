/**
 * The persistent identity of a libp2p host (daemon or scheduler): a protobuf-encoded Ed25519 private key, as
 * libp2p writes them, created on first use with mode 0600. A restarted process keeps its peer id, so the
 * addresses others hold for it stay valid.
 */
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { PrivateKey } from '@libp2p/interface'
import { RafspeerError } from '../base/index.js'

/** The key file holds something that is not a libp2p private key. */
export class PeerKeyError extends RafspeerError<'RAFSPEER_ERR_PEER_KEY'> {}

/**
 * The identity in `keyFile`, created when the file does not exist. Written to a temporary file and renamed, so a
 * crash never leaves a truncated key behind.
 */
export async function loadOrCreateKey (keyFile: string): Promise<PrivateKey> {
  // loaded on first use (as the host is): commands that never start P2P do not pay for the crypto
  const { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } = await import('@libp2p/crypto/keys')
  let bytes: Buffer | undefined
  try {
    bytes = await readFile(keyFile)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new PeerKeyError('RAFSPEER_ERR_PEER_KEY',
        `peer key ${keyFile} is not a libp2p private key (${(err as Error).message}); move it away to create a new identity`, { cause: err })
    }
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(keyFile), { recursive: true })
  const tmp = `${keyFile}.${process.pid}.tmp`
  try {
    await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
    // mode at creation is masked by the umask, and 0600 is what we promise
    await chmod(tmp, 0o600)
    await rename(tmp, keyFile)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
  return key
}
