#!/usr/bin/env python3
"""A TCP proxy on loopback that adds a fixed one-way delay in each direction, so that a
network backing store (sshfs to an sshd on 127.0.0.1) can be measured at a NAS's or a WAN's
round-trip time:

    python3 scripts/tcp_delay_proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT2 --delay-ms 5

Each direction of each connection is a queue: a chunk read at time t is written to the
other side at t + delay, in the order read. Delays overlap (a chunk does not wait for the
previous chunk's delay), so a connection keeps its throughput and only its latency grows,
as on a long link: the round trip grows by twice --delay-ms. A connection is forwarded
as soon as it is accepted (the TCP handshake itself is not delayed), a half-close (EOF) is
forwarded after the same delay, and a reset on either side closes both.

Only loopback addresses (127.0.0.0/8) are accepted for --listen and --upstream. With
--listen 127.0.0.1:0 a free port is chosen. Once listening, one line goes to stdout,
`ready 127.0.0.1:PORT` (unless --quiet); nothing else is printed there. Errors go to stderr.
SIGTERM or SIGINT stops it (exit 0)."""
import argparse, asyncio, ipaddress, signal, socket, sys

CHUNK = 64 * 1024
# Chunks queued per direction before the reader waits: the link's "buffer". At 256 chunks of
# up to 64 KiB (16 MiB in flight) the proxy is not the bottleneck at any delay it is used with.
QUEUE_CHUNKS = 256


def loopback(addr, what):
    host, _, port = addr.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
        port = int(port)
    except ValueError:
        sys.exit(f"tcp_delay_proxy: {what} must be 127.x.y.z:PORT, not {addr!r}")
    if not ip.is_loopback or ip.version != 4:
        sys.exit(f"tcp_delay_proxy: {what} {addr} is not on 127.0.0.0/8")
    return str(ip), port


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def pump(reader, writer, delay, loop):
    """Read from `reader`, write each chunk to `writer` `delay` seconds after it was read."""
    queue = asyncio.Queue(QUEUE_CHUNKS)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time(), None))

    async def write_side():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:  # the source failed: tear the connection down
                raise ConnectionResetError
            if not data:  # EOF: pass the half-close on
                if writer.can_write_eof():
                    writer.write_eof()
                    await writer.drain()
                return
            writer.write(data)
            await writer.drain()

    rd = asyncio.ensure_future(read_side())
    try:
        await write_side()
    finally:
        rd.cancel()
        await asyncio.gather(rd, return_exceptions=True)


async def handle(c_reader, c_writer, upstream, delay, loop):
    try:
        u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection(*upstream), 10)
    except (OSError, asyncio.TimeoutError) as e:
        print(f"tcp_delay_proxy: cannot connect to {upstream[0]}:{upstream[1]}: {e}", file=sys.stderr)
        c_writer.close()
        return
    nodelay(c_writer)
    nodelay(u_writer)
    tasks = [asyncio.ensure_future(pump(c_reader, u_writer, delay, loop)),
             asyncio.ensure_future(pump(u_reader, c_writer, delay, loop))]
    try:
        # Both directions end with EOF (a clean close); if either fails, tear down both.
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() for t in done if not t.cancelled()):
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
    finally:
        for w in (c_writer, u_writer):
            w.close()
        for w in (c_writer, u_writer):
            try:
                await asyncio.wait_for(w.wait_closed(), 5)
            except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
                pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="127.0.0.1:PORT (0: pick a free port)")
    ap.add_argument("--upstream", required=True, help="127.0.0.1:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay added in each direction")
    ap.add_argument("--quiet", action="store_true", help="do not print the ready line")
    a = ap.parse_args()
    if a.delay_ms < 0:
        sys.exit("tcp_delay_proxy: --delay-ms must be >= 0")
    listen, upstream = loopback(a.listen, "--listen"), loopback(a.upstream, "--upstream")
    delay = a.delay_ms / 1000.0
    loop = asyncio.get_running_loop()
    conns = set()

    def accepted(r, w):
        t = asyncio.ensure_future(handle(r, w, upstream, delay, loop))
        conns.add(t)
        t.add_done_callback(conns.discard)

    server = await asyncio.start_server(accepted, *listen, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not a.quiet:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"ready {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    for t in list(conns):
        t.cancel()
    await asyncio.gather(*conns, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
