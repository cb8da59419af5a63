/** Parsing of the units people type: byte sizes (`20GiB`, `0x100000`) and `host:port` addresses. */

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, ki: 1024, kib: 1024, kb: 1000,
  m: 1024 ** 2, mi: 1024 ** 2, mib: 1024 ** 2, mb: 1000 ** 2,
  g: 1024 ** 3, gi: 1024 ** 3, gib: 1024 ** 3, gb: 1000 ** 3,
  t: 1024 ** 4, ti: 1024 ** 4, tib: 1024 ** 4, tb: 1000 ** 4
}

/**
 * A byte count: a number, `0x`-hex (nydus-image writes chunk sizes so), or a number with a unit. IEC units (`KiB`,
 * `MiB`, `GiB`, `TiB`) and bare letters (`K`, `M`, `G`, `T`) are powers of 1024; SI units (`kB`, `MB`, `GB`, `TB`)
 * are powers of 1000. Returns undefined when `value` is not a size.
 */
export function parseByteSize (value: string): number | undefined {
  const s = value.trim()
  if (/^0x[0-9a-f]+$/i.test(s)) return parseInt(s.slice(2), 16)
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(s)
  if (m === null) return undefined
  const unit = UNITS[m[2]!.toLowerCase()]
  if (unit === undefined) return undefined
  const n = Math.round(Number(m[1]) * unit)
  return Number.isSafeInteger(n) ? n : undefined
}

/** Splits `host:port` (`[::1]:9110` for IPv6; a bare `:9110` means all interfaces); undefined when malformed. */
export function parseHostPort (value: string): { host: string, port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value)
  if (m === null) return undefined
  const port = Number(m[3])
  if (port > 65535) return undefined
  return { host: m[1] ?? (m[2] === '' ? '::' : m[2]!), port }
}

/** `1.5 MiB`-style text for a byte count. */
export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`
}
