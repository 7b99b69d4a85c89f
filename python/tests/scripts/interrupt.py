"""Blocks in a library call until SIGINT: prints "waiting", then on KeyboardInterrupt prints
"interrupted" and exits 0.

Usage: interrupt.py MODE (MODE: wait | list | iterate | close | unregister). `wait` and `list`
talk to a silent server (accepts connections, never answers); `iterate` reads a watch on
$ETCD_ENDPOINTS that gets no events. `close` and `unregister` register a node with `on_status`
on $ETCD_ENDPOINTS, print "ready" once it is registered, read a line from stdin (etcd is paused
meanwhile) and then close the registry or unregister the node.
"""

import os
import socket
import sys

import etcd_registry

mode = sys.argv[1]
silent = socket.socket()
silent.bind(("127.0.0.1", 0))
silent.listen(16)
host, port = silent.getsockname()
if mode in ("iterate", "close", "unregister"):
    endpoints = os.environ["ETCD_ENDPOINTS"].split(",")
else:
    endpoints = [f"{host}:{port}"]
reg = etcd_registry.Registry(endpoints, base_path="/interrupt", timeout=300.0)
watch = reg.watch("nothing-here") if mode == "iterate" else None
handle = reg.register("api", "n") if mode == "wait" else None
if mode in ("close", "unregister"):
    registered = reg.register("api", "n", on_status=lambda event: None)
    assert registered.wait(timeout=60.0)
    print("ready", flush=True)
    sys.stdin.readline()
try:
    # Inside the try: a Ctrl-C that comes early is still a KeyboardInterrupt here.
    print("waiting", flush=True)
    if mode == "close":
        reg.close()
    elif mode == "unregister":
        registered.unregister()
    elif handle is not None:
        handle.wait(timeout=300.0)
    elif watch is not None:
        for event in watch:
            pass
    else:
        reg.list("api")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(0)
print("not interrupted", flush=True)
sys.exit(1)
