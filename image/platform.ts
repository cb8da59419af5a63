/** Which image of an index a node takes by default: its own platform, in OCI terms. */

const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }

/** The host's platform in OCI terms (`linux/amd64` on x86-64 Linux), used when no platform is asked. */
export function defaultPlatform (): string {
  return `linux/${ARCH[process.arch] ?? 'amd64'}`
}
