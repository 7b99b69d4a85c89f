"""The Python interop program (see tests/interop/README.md)."""

import json
import os
import sys
import threading

import etcd_registry


def dump(nodes):
    print(json.dumps([{"name": n.name, "info": n.info} for n in sorted(nodes, key=lambda n: n.name)]),
          flush=True)


def events(reg, service, ttl):
    """The scenario of tests/interop/test_events.py, driven by commands on stdin: one line
    "<node> <kind>" per status event, from the on_status callbacks."""
    ended = {"a": threading.Event(), "b": threading.Event()}

    def on_status(event):
        print(event.node_name, event.kind, flush=True)
        if event.kind == "unregistered":
            ended[event.node_name].set()

    a = reg.register(service, "a", ttl=ttl, on_status=on_status)
    for line in sys.stdin:
        if line.strip() == "unregister":
            a.unregister()
            reg.register(service, "b", ttl=ttl, on_status=on_status)
        elif line.strip() == "close":
            break
    reg.close()
    # unregister() and close() return once on_status has had "unregistered".
    for node, event in ended.items():
        if not event.is_set():
            sys.exit(f"no 'unregistered' for {node} when close() returned")
    print("end", flush=True)


def main(argv):
    endpoints = os.environ["ETCD_ENDPOINTS"].split(",")
    base = os.environ.get("ETCD_BASE_PATH", "/services")
    with etcd_registry.Registry(endpoints, base_path=base, timeout=5.0) as reg:
        if argv[0] == "register":
            service, node, info, ttl = argv[1:5]
            handle = reg.register(service, node, json.loads(info), ttl=float(ttl))
            if not handle.wait(timeout=30.0):
                sys.exit("not registered in time")
            print("registered", flush=True)
            held = {node: handle}
            # Commands on stdin: "register NAME INFO_JSON" (same service and TTL) and
            # "unregister NAME", each answered once done; the registry stays open until EOF.
            for line in sys.stdin:
                command, name, *rest = line.split(maxsplit=2)
                if command == "register":
                    held[name] = reg.register(service, name, json.loads(rest[0]), ttl=float(ttl))
                    if not held[name].wait(timeout=30.0):
                        sys.exit(f"{name} not registered in time")
                    print("registered", name, flush=True)
                elif command == "unregister":
                    held.pop(name).unregister()
                    print("unregistered", name, flush=True)
                else:
                    sys.exit(f"unknown command {line!r}")
            if node in held:
                held[node].unregister()
        elif argv[0] == "list":
            dump(reg.list(argv[1]))
        elif argv[0] == "watch":
            count = int(argv[2])
            with reg.watch(argv[1]) as watch:
                while len(watch.nodes()) < count:
                    if watch.next_event(timeout=30.0) is None:
                        sys.exit("watch ended or timed out")
                dump(watch.nodes())
        elif argv[0] == "follow":
            watch = reg.watch(argv[1])
            dump(watch.nodes())

            def follow():
                try:
                    for _ in watch:
                        dump(watch.nodes())
                except etcd_registry.ClosedError:
                    pass

            threading.Thread(target=follow, daemon=True).start()
            sys.stdin.read()
            watch.close()
        elif argv[0] == "events":
            events(reg, argv[1], float(argv[2]))
            return
        else:
            sys.exit("usage: cli register|list|watch|follow|events ...")


if __name__ == "__main__":
    main(sys.argv[1:])
