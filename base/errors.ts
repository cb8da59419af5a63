/**
 * The one error base of rafspeer. Every failure a caller may branch on is a `RafspeerError` subclass with a stable
 * `code` (the README's table of error codes is the contract), a message that names what went wrong and where, and
 * the underlying `cause` when there was one. Subclasses add only what is theirs (a status, a digest, a problem
 * list); they never re-declare `code` or `name`.
 *
 * @example
 * ```ts
 * // a class with several codes: the code is the first argument
 * export class MountError extends RafspeerError<'RAFSPEER_ERR_MOUNT' | 'RAFSPEER_ERR_NOT_MOUNTED'> {}
 * throw new MountError('RAFSPEER_ERR_NOT_MOUNTED', `${mp} is not mounted`)
 * // a class with one code: only the message
 * export class UnpackError extends RafspeerError.coded('RAFSPEER_ERR_UNPACK') {}
 * throw new UnpackError('the output directory is not empty')
 * if (errorCode(err) === 'RAFSPEER_ERR_NOT_MOUNTED') ...
 * ```
 */

export class RafspeerError<C extends string = string> extends Error {
  readonly code: C

  constructor (code: C, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }

  /** A base for an error class that always carries `code`: its constructor takes the message (and a cause). */
  static coded<C extends string> (code: C): new (message: string, options?: { cause?: unknown }) => RafspeerError<C> {
    return class extends RafspeerError<C> {
      constructor (message: string, options?: { cause?: unknown }) { super(code, message, options) }
    }
  }
}

/** The `code` of any error-like value (ours, Node's errno codes, undici's), or undefined. */
export function errorCode (err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code
  return typeof code === 'string' ? code : undefined
}

/** The message of any thrown value, prefixed with its code when the message does not already say it. */
export function describeError (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const code = errorCode(err)
  return code !== undefined && !err.message.includes(code) ? `${code}: ${err.message}` : err.message
}
