import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MAX_LABEL_BYTES, SnapshotMetadata, toInfo } from './metadata.js'

async function openTemp (t: { after: (fn: () => Promise<void>) => void }): Promise<{ md: SnapshotMetadata, location: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-snapmeta-'))
  const location = join(dir, 'metadata')
  const md = new SnapshotMetadata(location)
  await md.open()
  t.after(async () => {
    await md.close().catch(() => {})
    await rm(dir, { recursive: true, force: true })
  })
  return { md, location }
}

const code = (c: string) => ({ code: `RAFSPEER_ERR_SNAPSHOT_${c}` })

test('create, commit, remove follow containerd storage rules and ids only grow', async (t) => {
  const { md } = await openTemp(t)
  const a = md.planCreate('active', 'a', '', { l: 'v', empty: '' }, 1000)
  assert.equal(a.record.id, 1)
  assert.deepEqual(a.record.labels, { l: 'v' }, 'empty label values are not stored')
  assert.deepEqual(a.ancestors, [])
  await md.insert('a', a.record)
  assert.throws(() => md.planCreate('active', 'a', '', {}), code('ALREADY_EXISTS'))
  assert.throws(() => md.planCreate('active', 'b', 'missing', {}), code('NOT_FOUND'))
  assert.throws(() => md.planCreate('view', 'b', 'a', {}), code('INVALID_ARGUMENT'), 'parent must be committed')
  assert.throws(() => md.planCreate('active', '', '', {}), code('INVALID_ARGUMENT'))

  assert.throws(() => md.checkCommit('a', 'a', {}), code('ALREADY_EXISTS'), 'the name is checked first')
  assert.throws(() => md.checkCommit('c', 'nope', {}), code('NOT_FOUND'))
  const committed = await md.commit('c1', 'a', { n: '1' }, { size: 10, inodes: 2 }, 2000)
  assert.equal(committed.id, 1, 'a commit keeps the id')
  assert.deepEqual(committed.labels, { n: '1' }, 'commit labels replace the active ones')
  assert.equal(committed.createdAt, 2000)
  assert.equal(md.get('a'), undefined)

  const v = md.planCreate('view', 'v', 'c1', {})
  await md.insert('v', v.record)
  assert.equal(v.record.id, 2)
  assert.deepEqual(v.ancestors.map(x => x.name), ['c1'])
  assert.throws(() => md.checkCommit('c2', 'v', {}), code('FAILED_PRECONDITION'), 'a view cannot be committed')
  assert.throws(() => md.checkCommit('c2', 'c1', {}), code('FAILED_PRECONDITION'), 'nor a committed one')
  assert.throws(() => md.checkRemove('c1'), code('FAILED_PRECONDITION'), 'a parent cannot be removed')
  assert.throws(() => md.checkRemove('x'), code('NOT_FOUND'))
  await md.remove('v')
  assert.equal(md.hasChildren('c1'), false)
  await md.remove('c1')
  assert.deepEqual(md.entries(), [])
  assert.equal(md.planCreate('active', 'z', '', {}).record.id, 3, 'ids are never reused')
})

test('ancestors walk the chain nearest first', async (t) => {
  const { md } = await openTemp(t)
  let parent = ''
  for (const name of ['l1', 'l2', 'l3']) {
    const p = md.planCreate('committed', name, parent, {})
    await md.insert(name, p.record)
    parent = name
  }
  assert.deepEqual(md.ancestors('l3').map(a => a.name), ['l3', 'l2', 'l1'])
  assert.deepEqual(md.planCreate('active', 'k', 'l3', {}).ancestors.map(a => a.name), ['l3', 'l2', 'l1'])
})

test('labels: key and value at most 4096 bytes together', async (t) => {
  const { md } = await openTemp(t)
  const fits = { k: 'x'.repeat(MAX_LABEL_BYTES - 1) }
  const over = { k: 'x'.repeat(MAX_LABEL_BYTES) }
  // bytes, not characters
  const overUtf8 = { k: 'é'.repeat(MAX_LABEL_BYTES / 2) }
  await md.insert('a', md.planCreate('active', 'a', '', fits).record)
  assert.throws(() => md.planCreate('active', 'b', '', over), code('INVALID_ARGUMENT'))
  assert.throws(() => md.planCreate('active', 'b', '', overUtf8), code('INVALID_ARGUMENT'))
  assert.throws(() => md.checkCommit('c', 'a', over), code('INVALID_ARGUMENT'))
  await assert.rejects(md.update('a', over, []), code('INVALID_ARGUMENT'))
})

test('update: only labels, whole or by key; updatedAt moves, createdAt stays', async (t) => {
  const { md } = await openTemp(t)
  await md.insert('a', md.planCreate('active', 'a', '', { keep: '1', drop: '2', change: '3' }, 5000).record)
  let r = await md.update('a', { change: 'x', drop: 'ignored', add: 'y' }, ['labels.change', 'labels.add', 'labels.missing'], 5000)
  assert.deepEqual(r.labels, { keep: '1', drop: '2', change: 'x', add: 'y' })
  assert.equal(r.createdAt, 5000)
  assert.ok(r.updatedAt > 5000, 'even within the same millisecond')
  r = await md.update('a', {}, ['labels.drop'], 9000)
  assert.deepEqual(r.labels, { keep: '1', change: 'x', add: 'y' }, 'a key absent from the labels is deleted')
  r = await md.update('a', { change: '' }, ['labels.change'])
  assert.deepEqual(r.labels, { keep: '1', add: 'y' }, 'an empty value deletes too')
  r = await md.update('a', { only: 'this' }, [])
  assert.deepEqual(r.labels, { only: 'this' }, 'no mask: labels replaced')
  r = await md.update('a', { all: 'new' }, ['labels'])
  assert.deepEqual(r.labels, { all: 'new' })
  await assert.rejects(md.update('a', {}, ['parent']), code('INVALID_ARGUMENT'))
  await assert.rejects(md.update('a', {}, ['name']), code('INVALID_ARGUMENT'))
  await assert.rejects(md.update('nope', {}, []), code('NOT_FOUND'))
  assert.deepEqual(md.get('a')!.labels, { all: 'new' }, 'a refused update changes nothing')
})

test('reopening keeps records, children and the id counter; a second opener is refused', async (t) => {
  const { md, location } = await openTemp(t)
  await md.insert('base', md.planCreate('committed', 'base', '', { a: 'b' }, 1234).record)
  await md.insert('k', md.planCreate('active', 'k', 'base', {}).record)
  const removed = md.planCreate('active', 'gone', '', {})
  await md.insert('gone', removed.record)
  await md.remove('gone')

  const second = new SnapshotMetadata(location)
  await assert.rejects(second.open(), code('UNAVAILABLE'))

  await md.close()
  await assert.rejects(async () => { md.get('base') }, code('UNAVAILABLE'))
  const md2 = new SnapshotMetadata(location)
  await md2.open()
  t.after(async () => { await md2.close() })
  verify(md2)
})

function verify (md: SnapshotMetadata): void {
  assert.deepEqual(toInfo('base', md.get('base')!), {
    name: 'base', parent: '', kind: 'committed', createdAt: new Date(1234), updatedAt: new Date(1234), labels: { a: 'b' }
  })
  assert.equal(md.get('k')!.parent, 'base')
  assert.equal(md.hasChildren('base'), true)
  assert.equal(md.planCreate('active', 'next', '', {}).record.id, 4, 'the id of a removed snapshot is not reused after a restart')
  md.reserveIdsBelow(10)
  assert.equal(md.planCreate('active', 'next', '', {}).record.id, 10)
}
