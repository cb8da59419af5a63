/**
 * @packageDocumentation
 * The node daemon, in four rooms:
 * - `fetch/`: where chunk bytes come from and how a read gets them (fetcher, batch plan, queue, sources);
 * - `exchange/`: chunks between neighbours (the chunk protocol, the chunk server, the neighbour source, the P2P node);
 * - `mount/`: images as file trees (mount manager, image opening, prefetch, read-ahead, FUSE and kernel mounts);
 * - `daemon/`: the node as an operator runs it (config, composition root, daemon shell, admin API and client, metrics).
 *
 * This file is the face: `cli/`, `sim/`, `bench/` and the other modules import the node from here only.
 *
 * @example
 * ```ts
 * import { loadDaemonConfig, runDaemon } from './peer/index.js'
 * await runDaemon(await loadDaemonConfig('/etc/rafspeer/config.json'))
 * ```
 */
export * from './fetch/index.js'
export * from './exchange/index.js'
export * from './mount/index.js'
export * from './daemon/index.js'
