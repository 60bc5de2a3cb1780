"""
The terminado baseline for the benchmark: a tornado app serving terminado's
UniqueTermManager (one shell per WebSocket, SIGHUP on disconnect) at
/websocket, on 127.0.0.1 only.

Usage: python terminado_server.py [--port N] [--nodelay]
  --port 0 (the default) picks a free port.
  --nodelay sets TCP_NODELAY on each WebSocket (stock TermSocket leaves Nagle's
  algorithm on, so two small frames in a row can wait for a delayed ACK).

Prints "LISTENING <port>" on stdout once it accepts connections.  Stops on
SIGTERM or SIGINT after killing its terminals (bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import tornado.web
from terminado import TermSocket, UniqueTermManager

SHELL = ["/bin/bash", "--noprofile", "--norc", "-i"]


class NoDelayTermSocket(TermSocket):
    def open(self, url_component=None):
        self.set_nodelay(True)
        super().open(url_component)


async def main(port: int, nodelay: bool) -> None:
    manager = UniqueTermManager(shell_command=SHELL, extra_env={"PS1": "$ "})
    handler = NoDelayTermSocket if nodelay else TermSocket
    app = tornado.web.Application([(r"/websocket", handler, {"term_manager": manager})])
    server = app.listen(port, address="127.0.0.1")
    bound = next(iter(server._sockets.values())).getsockname()[1]
    sys.stdout.write(f"LISTENING {bound}\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    try:
        await asyncio.wait_for(manager.shutdown(), timeout=10)
    except (asyncio.TimeoutError, Exception):  # the benchmark kills what is left
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nodelay", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.nodelay))
