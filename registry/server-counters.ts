/**
 * Byte and request accounting of the embedded registry, per repository (what the simulator and the demo report
 * as registry egress). Its egress cap is a `TokenBucket` of `base/` shared by every connection, so the limit
 * models the registry's uplink, not a per-client cap.
 */

export interface RepoCounters { bytesServed: number, bytesReceived: number, requests: number, rangeRequests: number }

/** Per-repository byte and request counters; requests outside any repository (`/v2/`, `/token`) count under "". */
export class Counters {
  private readonly byRepo = new Map<string, RepoCounters>()

  private entry (repo: string): RepoCounters {
    let e = this.byRepo.get(repo)
    if (e === undefined) {
      e = { bytesServed: 0, bytesReceived: 0, requests: 0, rangeRequests: 0 }
      this.byRepo.set(repo, e)
    }
    return e
  }

  request (repo: string, ranged = false): void {
    const e = this.entry(repo)
    e.requests++
    if (ranged) e.rangeRequests++
  }

  served (repo: string, n: number): void { this.entry(repo).bytesServed += n }
  received (repo: string, n: number): void { this.entry(repo).bytesReceived += n }

  private sum (repo: string | undefined, key: keyof RepoCounters): number {
    if (repo !== undefined) return this.byRepo.get(repo)?.[key] ?? 0
    let total = 0
    for (const e of this.byRepo.values()) total += e[key]
    return total
  }

  bytesServed (repo?: string): number { return this.sum(repo, 'bytesServed') }
  requests (repo?: string): number { return this.sum(repo, 'requests') }

  snapshot (): Record<string, RepoCounters> {
    const out: Record<string, RepoCounters> = {}
    for (const [repo, e] of this.byRepo) out[repo] = { ...e }
    return out
  }
}
