"""fork() with a live registry: the child gets ClosedError from every object made before the
fork (never a hang), a new Registry in the child works, and the parent's registration is
untouched. Prints one line per check; exits 0 when all pass.
"""

import asyncio
import os
import sys
import time

import etcd_registry
from etcd_registry import ClosedError, RegistryError

endpoints = os.environ["ETCD_ENDPOINTS"].split(",")
base_path = sys.argv[1]
reg = etcd_registry.Registry(endpoints, base_path=base_path, timeout=5.0)
events: list[etcd_registry.StatusEvent] = []
handle = reg.register("api", "parent", on_status=events.append)
assert handle.wait(30.0)
watch = reg.watch("api")


def child() -> int:
    failures = []
    calls = {
        "list": lambda: reg.list("api"),
        "register": lambda: reg.register("api", "x"),
        "watch": lambda: reg.watch("api"),
        "list_async": lambda: reg.list_async("api"),
        "wait": lambda: handle.wait(1.0),
        "unregister": lambda: handle.unregister(),
        "state": lambda: handle.state,
        "nodes": lambda: watch.nodes(),
        "next": lambda: next(watch),
        "next_event": lambda: watch.next_event(1.0),
    }
    for name, call in calls.items():
        try:
            call()
        except ClosedError as exc:
            assert isinstance(exc, RegistryError)
            print(f"child: {name} -> ClosedError", flush=True)
        except BaseException as exc:  # noqa: BLE001
            failures.append(f"{name} raised {exc!r}")
        else:
            failures.append(f"{name} did not raise")
    if not reg.closed or not watch.closed:
        failures.append("pre-fork objects do not report closed")
    reg.close()  # a no-op in the child: it must not unregister the parent's node
    # A registry made in the child works, with the blocking and the asyncio API.
    with etcd_registry.Registry(endpoints, base_path=base_path, timeout=5.0) as mine:
        seen: list[etcd_registry.StatusEvent] = []
        own = mine.register("api", "child", on_status=seen.append)
        if not own.wait(30.0):
            failures.append("the child's registration did not complete")
        names = sorted(n.name for n in mine.list("api"))
        if names != ["child", "parent"]:
            failures.append(f"child lists {names}")

        async def list_async() -> list[etcd_registry.Node]:
            return await mine.list_async("api")

        listed = asyncio.run(list_async())
        if len(listed) != 2:
            failures.append(f"child lists {listed} from asyncio")
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        if [e.kind for e in seen][:1] != ["registered"]:
            failures.append(f"child callbacks: {seen}")
        print("child: new registry works", flush=True)
    for failure in failures:
        print("child FAILED:", failure, flush=True)
    return 1 if failures else 0


pid = os.fork()
if pid == 0:
    code = 1
    try:
        code = child()
    finally:
        os._exit(code)

deadline = time.monotonic() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        print("parent: the child hung", flush=True)
        sys.exit(1)
    time.sleep(0.05)
if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
    print(f"parent: child ended with status {status}", flush=True)
    sys.exit(1)
# The parent goes on as before: its node is still registered and its objects work.
assert handle.state == "registered", handle.state
assert [n.name for n in reg.list("api")] == ["parent"], reg.list("api")
assert [n.name for n in watch.nodes()] == ["parent"]
reg.close()
deadline = time.monotonic() + 30
while [e.kind for e in events][-1:] != ["unregistered"]:
    assert time.monotonic() < deadline, events
    time.sleep(0.05)
print("parent: ok", flush=True)
