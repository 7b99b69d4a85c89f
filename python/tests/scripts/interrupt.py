"""Blocks in a library call until SIGINT: prints "in call" once the main thread is inside the
call, then on KeyboardInterrupt prints "interrupted" and exits 0.

Usage: interrupt.py MODE (MODE: wait | list | iterate | close | unregister). `wait` and `list`
talk to a silent server (accepts connections, never answers); `iterate` reads a watch on
$ETCD_ENDPOINTS that gets no events. `close` and `unregister` register a node with `on_status`
on $ETCD_ENDPOINTS, print "ready" once it is registered, read a line from stdin (etcd is paused
meanwhile) and then close the registry or unregister the node.
"""

import os
import socket
import sys
import threading
import time

import etcd_registry


def announce_when_inside(name: str) -> None:
    """Prints "in call" once the main thread is inside the C function `name` it calls next, so
    that a Ctrl-C sent on reading it cannot come before the call.

    A profile hook sees the call begin: the "c_call" event comes right before the C function
    runs, with no bytecode in between (where a pending Ctrl-C would be raised instead). A thread
    then waits until the main thread's innermost frame is this module's again: it has left the
    hook, and a C function has no frame of its own, so the main thread is inside the call (which
    has released the GIL, since this thread runs)."""
    module_code = sys._getframe(1).f_code
    main = threading.get_ident()
    entered = threading.Event()

    def hook(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) == name:
            sys.setprofile(None)
            entered.set()

    def announce() -> None:
        entered.wait()
        while sys._current_frames()[main].f_code is not module_code:
            time.sleep(0.001)
        print("in call", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    sys.setprofile(hook)


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
    if mode == "close":
        announce_when_inside("close")
        reg.close()
    elif mode == "unregister":
        announce_when_inside("unregister")
        registered.unregister()
    elif handle is not None:
        announce_when_inside("wait")
        handle.wait(timeout=300.0)
    elif watch is not None:
        # `next` rather than a for loop: the loop calls the iterator's __next__ slot directly,
        # which no profile hook sees; `next` is a C function that calls the same slot.
        events = iter(watch)
        announce_when_inside("next")
        while True:
            next(events)
    else:
        announce_when_inside("list")
        reg.list("api")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(0)
print("not interrupted", flush=True)
sys.exit(1)
