/**
 * Group commit: callers that arrive while a batch is being written share the next batch, so N concurrent chunk
 * puts cost about one index write, and each caller still learns whether its own record was committed.
 */

interface Waiter { resolve: () => void, reject: (err: unknown) => void }

export class GroupCommit<T> {
  #items: T[] = []
  #waiters: Waiter[] = []
  #running: Promise<void> | undefined

  constructor (private readonly commit: (items: T[]) => Promise<void>) {}

  add (item: T): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#items.push(item)
      this.#waiters.push({ resolve, reject })
      this.#running ??= this.#loop()
    })
  }

  /** Resolves once everything added so far is committed (or failed). */
  async drain (): Promise<void> {
    while (this.#running !== undefined) await this.#running
  }

  async #loop (): Promise<void> {
    // one turn of the event loop lets the puts that finished their data write together join the first batch
    await new Promise(resolve => setImmediate(resolve))
    while (this.#items.length > 0) {
      const items = this.#items
      const waiters = this.#waiters
      this.#items = []
      this.#waiters = []
      try {
        await this.commit(items)
        for (const w of waiters) w.resolve()
      } catch (err) {
        for (const w of waiters) w.reject(err)
      }
    }
    this.#running = undefined
  }
}
