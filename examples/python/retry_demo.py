"""Keep-alive and retry, live: registers a node and prints a line per status event. Restart
or stop etcd while it runs to see the node lose its keep-alive, retry with backoff, and come
back by itself:

    12:00:01 registered
    12:00:09 keep-alive lost: connection: etcd at http://…: h2 protocol error: ...
    12:00:09 keep-alive lost, retrying in 1s
    12:00:10 re-registered

    ETCD_ENDPOINTS=127.0.0.1:2379 python examples/python/retry_demo.py [--ttl 5] [--seconds 60]

It runs until Ctrl-C (or for --seconds), then unregisters.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time

import etcd_registry


def say(line: str) -> None:
    """One write per line: callbacks print from the library's thread, main() from its own."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class StatusPrinter:
    """An `on_status` callback: one line per event. It runs on the library's callback thread."""

    def __init__(self) -> None:
        self.registered_once = False

    def __call__(self, event: etcd_registry.StatusEvent) -> None:
        if event.kind == "registered":
            self.registered_once = True
            line = "registered"
        elif event.kind == "failed":
            line = f"registration failed: {event.error}"
        elif event.kind == "keepalive_lost":
            line = f"keep-alive lost: {event.error}"
        elif event.kind == "retrying":
            why = "keep-alive lost" if self.registered_once else "not registered yet"
            attempt = f" (attempt {event.attempt})" if event.attempt and event.attempt > 1 else ""
            line = f"{why}, retrying in {event.delay or 0:.0f}s{attempt}"
        elif event.kind == "reregistered":
            line = "re-registered"
        else:
            line = event.kind
        say(f"{time.strftime('%H:%M:%S')} {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttl", type=float, default=5.0, help="lease TTL in seconds")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--verbose", action="store_true", help="show the library's own logs")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    endpoints = os.environ.get("ETCD_ENDPOINTS", "127.0.0.1:2379").split(",")
    with etcd_registry.Registry(endpoints, timeout=3.0) as reg:
        reg.register("retry-demo", f"node-{os.getpid()}", {"pid": str(os.getpid())},
                     ttl=args.ttl, on_status=StatusPrinter())
        say(f"running{'' if args.seconds else ' until Ctrl-C'}; restart etcd to see the retries")
        try:
            # Sleeping on an Event keeps the main thread responsive to Ctrl-C.
            threading.Event().wait(args.seconds)
        except KeyboardInterrupt:
            pass
    say("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
