/**
 * The deadlines every HTTP server of rafspeer puts on its clients (the embedded registry, the daemon's admin API,
 * the registry mirror), and the one answer to a request head that was malformed, too large or too slow.
 *
 * Node checks `headersTimeout` and `requestTimeout` only every `connectionsCheckingInterval` (30 s by default), which
 * would let a socket that trickles its headers (slowloris) outlive a 10 s deadline several times over; the check
 * walks the open connections, cheap at a quarter of the deadline (between 50 ms and 1 s).
 */
import type { Duplex } from 'node:stream'

/** `createServer` options for a request-head deadline of `headersTimeoutMs` (and a whole-request one, 0 = none). */
export function headDeadlines (headersTimeoutMs: number, requestTimeoutMs: number): { headersTimeout: number, requestTimeout: number, connectionsCheckingInterval: number } {
  return {
    headersTimeout: headersTimeoutMs,
    requestTimeout: requestTimeoutMs === 0 ? 0 : Math.max(headersTimeoutMs, requestTimeoutMs),
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeoutMs / 4)))
  }
}

/**
 * Answers a request head that never reached a handler (the server's `clientError`): 408 when too slow, 431 when its
 * headers are too large, 400 otherwise; returns the status. The socket is destroyed once the answer is out: only
 * ending it would leave it half-open for a client that keeps trickling bytes.
 */
export function answerClientError (err: Error, socket: Duplex): number {
  const code = (err as NodeJS.ErrnoException).code
  const status = code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : code === 'HPE_HEADER_OVERFLOW' ? 431 : 400
  if (!socket.writable) {
    socket.destroy()
    return status
  }
  const reason = status === 408 ? 'Request Timeout' : status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`, () => socket.destroy())
  return status
}
