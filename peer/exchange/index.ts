/**
 * The exchange room: chunks between neighbours. The `/rafspeer/chunk/1.0.0` wire format, the {@link ChunkServer}
 * answering neighbours from the cache, the {@link NeighbourSource} the fetcher asks before the registry, and the
 * {@link P2PNode} that holds a daemon's host, server, scheduler side and claims together.
 */
export {
  CHUNK_PROTOCOL, ChunkStatus, ChunkEncoding, ChunkProtocolError, ChunkTimeoutError, MAX_CHUNK_BYTES, MAX_CHUNKS_PER_REQUEST,
  MAX_MESSAGE_BYTES, chunkFrameReader, encodeRequest, decodeRequestBody, readRequest, readReply, replyHeader, errorReply,
  exchangeChunks, type ChunkName, type ChunkReply
} from './chunk-protocol.js'
export { ChunkServer, type ChunkServerCounters, type ChunkServerInit, type ServableCache, type ServableChunk } from './chunk-server.js'
export {
  NeighbourSource, DEFAULT_MAX_REQUEST_BYTES as DEFAULT_NEIGHBOUR_REQUEST_BYTES, DEFAULT_STREAMS_PER_HOLDER,
  type NeighbourSourceCounters, type NeighbourSourceInit, type NeighbourSourceComponents
} from './neighbour-source.js'
export { P2PNode, type P2PNodeInit, type P2PNodeComponents, type P2PStats } from './p2p-node.js'
