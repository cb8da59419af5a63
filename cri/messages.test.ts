/**
 * The hand-written CRI messages against protobufjs reading the project's CRI proto (snapshotter/proto/cri, upstream's
 * field numbers): what we encode decodes there to the same values, what protobufjs encodes (with fields we skip)
 * decodes here, and broken bytes are a clear CriError, never a crash.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { fileURLToPath } from 'node:url'
import fc from 'fast-check'
import protobuf from 'protobufjs'
import {
  decodeImageStatusResponse, decodeListImagesResponse, decodePullImageResponse, encodeImageStatusRequest,
  encodeListImagesRequest, encodePullImageRequest, encodeRemoveImageRequest, type CriAuth
} from './messages.js'
import { CriError } from './errors.js'

const PROTO = fileURLToPath(new URL('../../snapshotter/proto/cri/runtime/v1/api.proto', import.meta.url))
const root = protobuf.loadSync(PROTO)
const type = (name: string): protobuf.Type => root.lookupType(`runtime.v1.${name}`)
const plain = (t: protobuf.Type, buf: Buffer): Record<string, unknown> =>
  t.toObject(t.decode(buf), { longs: Number, defaults: false, arrays: true }) as Record<string, unknown>

const text = fc.string({ unit: 'grapheme', maxLength: 40 })
const auth: fc.Arbitrary<CriAuth> = fc.oneof(
  fc.record({ username: text, password: text }),
  fc.record({ auth: text }),
  fc.record({ identityToken: text }),
  fc.record({ registryToken: text })
).chain(a => fc.option(text, { nil: undefined }).map(server => server === undefined ? a : { ...a, serverAddress: server }))

test('a PullImageRequest we encode is what protobufjs reads: the image and each kind of credentials', () => {
  fc.assert(fc.property(text, fc.option(auth, { nil: undefined }), (image, a) => {
    const got = plain(type('PullImageRequest'), encodePullImageRequest(image, a))
    const want: Record<string, unknown> = { image: image === '' ? {} : { image } }
    if (a !== undefined) {
      const w: Record<string, string> = {}
      for (const [k, v] of Object.entries(a) as Array<[string, string]>) if (v !== '') w[k] = v
      want.auth = w
    }
    assert.deepEqual(got, want)
  }))
})

test('status, remove and list requests are what protobufjs reads', () => {
  assert.deepEqual(plain(type('ImageStatusRequest'), encodeImageStatusRequest('reg:5000/a:1')), { image: { image: 'reg:5000/a:1' } })
  assert.deepEqual(plain(type('RemoveImageRequest'), encodeRemoveImageRequest('sha256:ab')), { image: { image: 'sha256:ab' } })
  assert.deepEqual(plain(type('ListImagesRequest'), encodeListImagesRequest()), {})
})

const image = fc.record({
  id: text,
  repoTags: fc.array(text, { maxLength: 4 }),
  repoDigests: fc.array(text, { maxLength: 4 }),
  size: fc.maxSafeNat(),
  // fields the client does not read: they must be skipped, whatever their wire type
  username: text,
  pinned: fc.boolean(),
  uid: fc.option(fc.record({ value: fc.integer({ min: -(2 ** 40), max: 2 ** 40 }) }), { nil: undefined }),
  spec: fc.option(fc.record({ image: text, annotations: fc.dictionary(fc.string({ maxLength: 8 }), text, { maxKeys: 3 }) }), { nil: undefined })
})
const seen = (i: { id: string, repoTags: string[], repoDigests: string[], size: number }): unknown =>
  ({ id: i.id, repoTags: i.repoTags, repoDigests: i.repoDigests, size: i.size })

test('images protobufjs encodes, with fields the client skips, decode here (status, list, pull answers)', () => {
  fc.assert(fc.property(fc.array(image, { maxLength: 3 }), text, (images, ref) => {
    const list = Buffer.from(type('ListImagesResponse').encode(type('ListImagesResponse').fromObject({ images })).finish())
    assert.deepEqual(decodeListImagesResponse(list).map(seen), images.map(seen))
    const first = images[0]
    const status = Buffer.from(type('ImageStatusResponse').encode(type('ImageStatusResponse').fromObject({
      ...(first !== undefined ? { image: first } : {}), info: { topic: '{"x":1}' }
    })).finish())
    const got = decodeImageStatusResponse(status)
    assert.deepEqual(got === undefined ? undefined : seen(got), first === undefined ? undefined : seen(first))
    const pulled = Buffer.from(type('PullImageResponse').encode({ imageRef: ref }).finish())
    assert.deepEqual(decodePullImageResponse(pulled), { imageRef: ref })
  }))
})

test('broken answers are RAFSPEER_ERR_CRI_FAILED naming the message, never a crash or a wrong image', () => {
  const good = Buffer.from(type('ImageStatusResponse').encode({ image: { id: 'sha256:aa', repoTags: ['r:1'], size: 300 } }).finish())
  for (let cut = 1; cut < good.length; cut++) {
    assert.throws(() => decodeImageStatusResponse(good.subarray(0, cut)), (err: unknown) => {
      assert.ok(err instanceof CriError, String(err))
      assert.equal(err.code, 'RAFSPEER_ERR_CRI_FAILED')
      assert.match(err.message, /(ImageStatusResponse|Image) is not a valid protobuf message/)
      return true
    }, `cut at ${cut}`)
  }
  assert.throws(() => decodeListImagesResponse(Buffer.from([0x0b])), /wire type 3/)
  assert.throws(() => decodePullImageResponse(Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])), /longer than 10 bytes/)
  assert.throws(() => decodePullImageResponse(Buffer.from([0x00, 0x01])), /field number 0/)
})
