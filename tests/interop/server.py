"""A WebSocket server we did not write, for tests/interop.rs: Python's `websockets`.

Started by the Rust tests as a child process:

    python server.py

It listens on 127.0.0.1, port 0 (the system picks one), and prints the port alone on
the first line of stdout. It exits when its stdin reaches end of file, so it does
not outlive the test process even if that one aborts (a watchdog) before its Drop
guard could kill it. Logs go to stderr.

Routes, by request path (a query string is allowed on each):

- /echo                 echoes every text and binary message.
- /fragmented           on "go": a fragmented text message (a fragment boundary
                        splits a multi-byte UTF-8 character), a fragmented binary
                        one, and a 1 MiB binary one in 64 fragments.
- /ping                 sends a ping every 50 ms; on "status" replies, as text, how
                        many pongs came back whose payload matched a ping sent.
- /close/<code>         after any message, closes with <code> and reason "bye <code>".
                        With ?once=<tag>: only the first connection for <tag> is
                        closed; later ones echo.
- /abort                after any message, drops the TCP connection without a close
                        frame. ?once=<tag> as for /close.
- /burst/<n>            sends "burst 0" .. "burst <n-1>" at once, then echoes.
- /last-close/<tag>     replies, as text, with the close code the client sent on the
                        connection that carried ?tag=<tag> ("<code>" or
                        "<code> <reason>"; 1006 when no close frame came), waiting
                        up to 5 s for that connection to end; "none" after that.

Any connection with ?tag=<tag> has its close recorded for /last-close.
"""

import os
import sys
import threading


def watch_stdin():
    # End of file on stdin: the test process is gone (or dropped us). Exit at
    # once, without a graceful shutdown that would wait on dead peers.
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)


# Started first, before the slower imports, so that even a server still starting
# up when the test process dies goes away.
threading.Thread(target=watch_stdin, daemon=True).start()

import asyncio  # noqa: E402
import logging  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

log = logging.getLogger("interop-server")

# tag -> (code, reason) of the close frame the client sent, for /last-close.
closes = {}
# Set whenever a close is recorded, so /last-close can wait for one.
close_recorded = None
# Tags whose /close/<code>?once=<tag> already closed once.
once_used = set()


class CountingConnection(ServerConnection):
    """Counts the pongs that answer one of our pings (by exact payload)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.solicited_pongs = 0

    def acknowledge_pings(self, data: bytes) -> None:
        # Called for every pong frame received.
        if data in self.pending_pings:
            self.solicited_pongs += 1
        super().acknowledge_pings(data)


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def fragmented(ws):
    async for message in ws:
        if message != "go":
            await ws.send(message)
            continue
        # "Hello, fragmented wörld 🎉": the first boundary falls inside "ö"
        # (0xC3 0xB6), the next inside the emoji's four bytes.
        text = "Hello, fragmented wörld 🎉".encode("utf-8")
        cut1 = text.index("ö".encode("utf-8")) + 1
        cut2 = text.index("🎉".encode("utf-8")) + 2
        parts = [text[:cut1], text[cut1:cut2], text[cut2:]]
        await ws.send(parts, text=True)
        await ws.send([bytes([i]) * (i + 1) for i in range(5)])
        big = [bytes([i]) * 16384 for i in range(64)]
        await ws.send(big)


async def ping(ws):
    async def pinger():
        n = 0
        while True:
            await asyncio.sleep(0.05)
            n += 1
            await ws.ping(f"zen-interop-{n}")

    task = asyncio.create_task(pinger())
    try:
        async for message in ws:
            if message == "status":
                await ws.send(str(ws.solicited_pongs))
            else:
                await ws.send(message)
    finally:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, ConnectionClosed):
            pass


async def close_with(ws, code, query):
    tag = query.get("once", [None])[0]
    if tag is not None:
        if tag in once_used:
            await echo(ws)
            return
        once_used.add(tag)
    await ws.recv()
    await ws.close(code, f"bye {code}")


async def abort(ws, query):
    tag = query.get("once", [None])[0]
    if tag is not None:
        if tag in once_used:
            await echo(ws)
            return
        once_used.add(tag)
    await ws.recv()
    # Drop the TCP connection without a close frame.
    ws.transport.abort()


async def burst(ws, n):
    for i in range(n):
        await ws.send(f"burst {i}")
    await echo(ws)


async def last_close(ws, tag):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while tag not in closes:
        left = deadline - loop.time()
        if left <= 0:
            break
        close_recorded.clear()
        try:
            await asyncio.wait_for(close_recorded.wait(), left)
        except asyncio.TimeoutError:
            break
    if tag in closes:
        code, reason = closes[tag]
        await ws.send(f"{code} {reason}" if reason else f"{code}")
    else:
        await ws.send("none")
    await echo(ws)


async def route(ws, path, query):
    parts = [p for p in path.split("/") if p]
    if parts == ["echo"]:
        await echo(ws)
    elif parts == ["fragmented"]:
        await fragmented(ws)
    elif parts == ["ping"]:
        await ping(ws)
    elif len(parts) == 2 and parts[0] == "close" and parts[1].isdigit():
        await close_with(ws, int(parts[1]), query)
    elif parts == ["abort"]:
        await abort(ws, query)
    elif len(parts) == 2 and parts[0] == "burst" and parts[1].isdigit():
        await burst(ws, int(parts[1]))
    elif len(parts) == 2 and parts[0] == "last-close":
        await last_close(ws, parts[1])
    else:
        await ws.close(4404, f"unknown path {path}")


async def handler(ws):
    url = urlsplit(ws.request.path)
    query = parse_qs(url.query)
    tag = query.get("tag", [None])[0]
    log.info("connection %s", ws.request.path)
    try:
        await route(ws, url.path, query)
    except ConnectionClosed:
        pass
    finally:
        if tag is not None:
            await ws.wait_closed()
            rcvd = ws.protocol.close_rcvd
            closes[tag] = (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")
            log.info("tag %s closed with %s", tag, closes[tag])
            close_recorded.set()


async def main():
    global close_recorded
    close_recorded = asyncio.Event()
    async with serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=CountingConnection,
        # Only the /ping route pings; the client's own heartbeats are answered
        # automatically.
        ping_interval=None,
        max_size=32 * 1024 * 1024,
        close_timeout=2,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()  # until killed, or stdin closes


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(main())
