"""Registers, watches and lists, then exits without close(): the interpreter must neither hang
nor crash with the runtime, a registration, a callback watch and the callback thread alive.

Usage: exit_without_close.py BASE_PATH INDEX MODE (MODE: end | exit | raise | thread | async)
"""

import asyncio
import os
import sys
import threading

import etcd_registry

base_path, index, mode = sys.argv[1], sys.argv[2], sys.argv[3]
reg = etcd_registry.Registry(os.environ["ETCD_ENDPOINTS"].split(","), base_path=base_path)
handle = reg.register("api", f"n{index}", {"i": index}, ttl=5.0, on_status=lambda event: None)
watch = reg.watch("api", on_event=lambda event: None)
assert handle.wait(30.0)
assert any(node.name == f"n{index}" for node in reg.list("api"))
print("ok", flush=True)
if mode == "exit":
    sys.exit(3)
elif mode == "raise":
    raise RuntimeError("exiting through an exception")
elif mode == "thread":
    # Another thread is blocked in the library (GIL released) when the interpreter exits.
    threading.Thread(target=lambda: reg.watch("api").next_event(None), daemon=True).start()
elif mode == "async":
    # Awaitables left pending on an event loop that is never closed; the other runs' nodes
    # come and go under the same service, so they may resolve while the interpreter exits.
    async def leave_pending() -> etcd_registry.Watch:
        watch = await reg.watch_async("api")
        asyncio.ensure_future(watch.__anext__())
        asyncio.ensure_future(reg.list_async("api"))
        return watch

    loop = asyncio.new_event_loop()
    kept = loop.run_until_complete(leave_pending())
