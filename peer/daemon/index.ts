/**
 * The daemon room: a node as an operator runs it. The config schema (validated once, frozen), the composition root
 * that assembles a node from it ({@link startNode}), the {@link Daemon} shell with its Unix-socket admin API and
 * client, and the JSON and Prometheus metrics.
 */
export { Daemon, runDaemon, DaemonStartError, type AssembleNode, type DaemonComponents, type DaemonInit, type DaemonLifecycle, type RunDaemonOptions } from './daemon.js'
export { startNode, type Node, type DaemonNode, type DaemonExtension } from './node.js'
export {
  loadDaemonConfig, parseDaemonConfig, daemonConfigSchema, ConfigError, DEFAULT_DAEMON_CONFIG, DEFAULT_SOCKET, DEFAULT_WORK_DIR,
  DEFAULT_P2P_LISTEN, type DaemonConfig, type DaemonConfigInput
} from './config.js'
export {
  startAdminApi, prepareSocket, parseMountRequest, statusOf, AdminApiError, MAX_BODY_BYTES, type AdminApi, type AdminApiInit,
  type AdminApiComponents, type DaemonInfo, type DaemonState, type ApiErrorBody
} from './admin-api.js'
export { AdminClient, AdminClientError, DEFAULT_CLIENT_TIMEOUT_MS, MOUNT_TIMEOUT_MS, type CallOptions } from './admin-client.js'
export {
  DaemonMetrics, LatencyWindow, metricsJson, type MetricsJson, type ImageMetrics, type LatencySummary, type BytesBySource
} from './metrics.js'
