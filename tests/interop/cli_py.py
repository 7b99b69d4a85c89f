"""The Python interop program (see tests/interop/README.md)."""

import json
import os
import sys

import etcd_registry


def dump(nodes):
    print(json.dumps([{"name": n.name, "info": n.info} for n in sorted(nodes, key=lambda n: n.name)]))


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
            sys.stdin.read()
            handle.unregister()
        elif argv[0] == "list":
            dump(reg.list(argv[1]))
        elif argv[0] == "watch":
            count = int(argv[2])
            with reg.watch(argv[1]) as watch:
                while len(watch.nodes()) < count:
                    if watch.next_event(timeout=30.0) is None:
                        sys.exit("watch ended or timed out")
                dump(watch.nodes())
        else:
            sys.exit("usage: cli register|list|watch ...")


if __name__ == "__main__":
    main(sys.argv[1:])
