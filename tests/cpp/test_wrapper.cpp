// Tests of the C++ wrapper examples/cpp/etcd_registry.hpp against a real etcd, run by
// tests/c/run.sh (plain, with AddressSanitizer, ThreadSanitizer and under valgrind):
//
//   etcd-harness run -- test_wrapper [TEST_NAME_SUBSTRING...]
//
// They check when the wrapper frees the callbacks it owns: never while one runs (a callback
// unregistering its own registration gets the UNREGISTERED call nested, and then goes on using
// what it captured), and not later than needed (a replaced registration, a callback let go
// from inside a callback). Each callback captures a Tracker, which counts its live copies.
// Prints one line per test and "N passed, M failed", like the C suites.
#include "etcd_registry.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <type_traits>
#include <thread>
#include <vector>

#ifdef HAVE_VALGRIND
#include <valgrind/memcheck.h>
#endif

using namespace std::chrono_literals;

namespace {

std::string endpoints;
double slow = 1.0;  // ETCD_REGISTRY_TEST_SLOWDOWN: timeouts scaled (valgrind is ~20x slower)
bool current_failed = false;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "    %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            current_failed = true;                                                     \
        }                                                                              \
    } while (0)

// Polls `cond` every 10 ms until it holds or `seconds` (scaled) pass; returns whether it held.
bool wait_for(const std::function<bool()> &cond, double seconds = 10) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds * slow);
    for (;;) {
        if (cond()) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(10ms);
    }
}

// Counts its live copies in `live`: captured by value in a callback, it tells whether the
// wrapper still holds that callback.
struct Tracker {
    explicit Tracker(std::atomic<int> &live) : live(&live) { ++*this->live; }
    Tracker(const Tracker &other) noexcept : live(other.live) { ++*live; }
    Tracker &operator=(const Tracker &) = delete;
    ~Tracker() { --*live; }
    std::atomic<int> *live;
};

etcdreg::Config config() {
    etcdreg::Config c;
    c.endpoints(endpoints).base_path("/cpp-wrapper-tests");
    return c;
}
const std::chrono::milliseconds ttl = 10s;

// Run by the wrapper's calls of etcd_registry_unregister_async before the library is called
// (the test programs are linked with -Wl,--wrap=etcd_registry_unregister_async): a test puts
// an interleaving in the window between the wrapper's own steps and the C call.
std::function<void()> before_unregister_async;

}  // namespace

extern "C" etcd_registry_status __real_etcd_registry_unregister_async(etcd_registry *registry, uint64_t id,
                                                                      etcd_registry_done_callback callback,
                                                                      void *user_data);
extern "C" etcd_registry_status __wrap_etcd_registry_unregister_async(etcd_registry *registry, uint64_t id,
                                                                      etcd_registry_done_callback callback,
                                                                      void *user_data) {
    if (before_unregister_async) before_unregister_async();
    return __real_etcd_registry_unregister_async(registry, id, callback, user_data);
}

namespace {

// ---------------------------------------------------------------- tests

// A status callback unregistering its own registration gets UNREGISTERED nested, inside that
// call; its std::function must outlive the outer call, which then reads its captures (a use
// after free, caught by ASan and valgrind, when the nested call ended the wrapper's "inside a
// callback" state). It is freed once the outer call returns, not later.
void unregister_inside_own_status_callback() {
    std::atomic<int> live{0};
    std::atomic<int> unregistered{0};
    std::atomic<bool> done{false}, intact{false}, threw{false};
    etcdreg::Registry registry(config());
    const std::string big(200, 'x');  // on the heap, inside the std::function
    registry.register_node(
        "self-unregister", "n1", {}, ttl,
        [&, big, t = Tracker(live)](const etcdreg::StatusEvent &e) {
            if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
            if (e.kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
            try {
                registry.unregister(e.registration_id);  // UNREGISTERED comes nested, in here
            } catch (const etcdreg::Error &) {
                threw = true;
            }
            intact = unregistered == 1 && big.size() == 200 && big[0] == 'x' && big[199] == 'x' &&
                     *t.live >= 1;
            done = true;
        });
    CHECK(wait_for([&] { return done.load(); }));
    CHECK(!threw);
    CHECK(intact);
    CHECK(wait_for([&] { return live == 0; }));  // freed once the outer call returned
    CHECK(registry.list("self-unregister").empty());
}

// The same from inside a watch callback: unwatch of its own watch, then the captures in use.
void unwatch_inside_own_watch_callback() {
    std::atomic<int> live{0};
    std::atomic<bool> done{false}, intact{false};
    etcdreg::Registry registry(config());
    const auto node = registry.register_node("self-unwatch", "n1", {}, ttl, nullptr);
    registry.wait_registered(node, 5s);
    const std::string big(200, 'y');
    const uint64_t watch = registry.watch("self-unwatch", [&, big, t = Tracker(live)](const etcdreg::WatchEvent &e) {
        if (done) return;  // not called again after unwatch: checked below through `live`
        registry.unwatch(e.watch_id);  // the first call: before watch() may have returned
        intact = big.size() == 200 && big[0] == 'y' && *t.live >= 1;
        done = true;
    });
    CHECK(wait_for([&] { return done.load(); }));
    CHECK(intact);
    // Freed when the call returned, with the Registry still there (even when the call came
    // before watch() returned the id).
    CHECK(wait_for([&] { return live == 0; }));
    bool not_found = false;
    try {
        registry.unwatch(watch);
    } catch (const etcdreg::Error &e) {
        not_found = e.status() == ETCD_REGISTRY_STATUS_NOT_FOUND;
    }
    CHECK(not_found);
}

// close() while another thread's unwatch waits for the watch's running callback: close
// returns only once that call has returned, and only then destroys the callback (it crashed
// inside the call when the C close did not wait for it).
void close_while_another_thread_unwatches_a_running_callback() {
    std::atomic<int> live{0};
    std::atomic<bool> entered{false}, intact{false}, close_seen{false};
    // The node is another registry's: one of this registry's own would have close wait for the
    // callback thread anyway.
    etcdreg::Registry other(config()), registry(config());
    const auto node = other.register_node("close-unwatch", "n1", {}, ttl, nullptr);
    other.wait_registered(node, 5s);
    const std::string big(200, 'z');
    const uint64_t watch = registry.watch("close-unwatch", [&, big, t = Tracker(live)](const etcdreg::WatchEvent &) {
        if (entered.exchange(true)) return;
        // Held until the close has begun (after the unwatch, see below): calls refuse with
        // CLOSED from its start. Id 0 is no watch's: NOT_FOUND while the registry is open.
        close_seen = wait_for([&] {
            try {
                registry.watch_nodes(0);
                return false;
            } catch (const etcdreg::Error &e) {
                return e.status() == ETCD_REGISTRY_STATUS_CLOSED;
            }
        });
        intact = big.size() == 200 && big[0] == 'z' && *t.live >= 1;
    });
    CHECK(wait_for([&] { return entered.load(); }));
    std::thread unwatching([&] {
        try {
            registry.unwatch(watch);
        } catch (const etcdreg::Error &) {  // CLOSED when the close came first
        }
    });
    // The unwatch has taken the watch (and waits for the call).
    CHECK(wait_for([&] {
        try {
            registry.watch_nodes(watch);
            return false;
        } catch (const etcdreg::Error &e) {
            return e.status() == ETCD_REGISTRY_STATUS_NOT_FOUND;
        }
    }));
    registry.close();
    CHECK(intact);
    CHECK(close_seen);  // the callback was still running when close began
    unwatching.join();
    CHECK(wait_for([&] { return live == 0; }));
}

// close() inside a watch callback while another thread's close waits for that very call: the
// inner close returns at once (the outer one is still stopping the other watches, which may
// still be called), so it must not destroy the other watches' callbacks.
void close_inside_a_watch_callback_while_another_thread_closes() {
    std::atomic<int> live{0};
    std::atomic<bool> entered{false}, close_seen{false}, intact{true};
    etcdreg::Registry other(config());
    const auto node = other.register_node("close-race", "n1", {}, ttl, nullptr);
    other.wait_registered(node, 5s);
    {
        etcdreg::Registry registry(config());
        registry.watch("close-race", [&](const etcdreg::WatchEvent &) {
            if (entered.exchange(true)) return;
            close_seen = wait_for([&] {
                try {
                    registry.watch_nodes(0);
                    return false;
                } catch (const etcdreg::Error &e) {
                    return e.status() == ETCD_REGISTRY_STATUS_CLOSED;
                }
            });
            registry.close();  // returns at once: the main thread's close is under way
        });
        CHECK(wait_for([&] { return entered.load(); }));
        // Their first events wait behind the call held above.
        const std::string big(200, 'w');
        for (int i = 0; i < 8; i++)
            registry.watch("close-race", [&, big, t = Tracker(live)](const etcdreg::WatchEvent &) {
                if (big.size() != 200 || big[0] != 'w' || big[199] != 'w' || *t.live < 1) intact = false;
            });
        registry.close();
        CHECK(close_seen);
    }
    CHECK(intact);
    CHECK(live == 0);
}

// Registering a node this registry holds replaces the older registration, which gets
// UNREGISTERED with no unregister of ours: its callback is freed then, not with the Registry.
void reregistering_a_node_frees_the_replaced_callbacks() {
    const int n = 20;
    std::atomic<int> live{0}, unregistered{0};
    etcdreg::Registry registry(config());
    uint64_t last = 0;
    for (int i = 0; i < n; i++) {
        last = registry.register_node("reregister", "n1", {{"i", std::to_string(i)}}, ttl,
                                      [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                          if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                      });
    }
    CHECK(wait_for([&] { return unregistered == n - 1; }));
    CHECK(wait_for([&] { return live == 1; }));
    registry.wait_registered(last, 5s);
    const auto nodes = registry.list("reregister");
    CHECK(nodes.size() == 1 && nodes[0].info.at("i") == std::to_string(n - 1));
    registry.unregister(last);
    CHECK(unregistered == n);
    CHECK(live == 0);  // freed in its last call, which unregister waits for
}

// The same from two threads at once: a registration may be replaced (and its callback get its
// last call) before the register_node that made it has returned.
void reregistering_a_node_from_two_threads() {
    const int n = 20;
    std::atomic<int> live{0}, unregistered{0};
    etcdreg::Registry registry(config());
    auto reregister = [&] {
        for (int i = 0; i < n; i++)
            registry.register_node("reregister-threads", "n1", {}, ttl,
                                   [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                       if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                   });
    };
    std::thread other(reregister);
    reregister();
    other.join();
    CHECK(wait_for([&] { return unregistered == 2 * n - 1; }));
    CHECK(wait_for([&] { return live == 1; }));
    registry.close();
    CHECK(unregistered == 2 * n);
    CHECK(live == 0);
}

// Callbacks let go from inside a callback (unregister/unwatch there) are freed once it returns,
// not kept until the Registry goes.
void callbacks_let_go_inside_a_callback_are_freed() {
    const int k = 10;
    std::atomic<int> live{0}, watch_live{0};
    std::atomic<bool> done{false};
    etcdreg::Registry registry(config());
    std::vector<uint64_t> ids;
    for (int i = 0; i < k; i++)
        ids.push_back(registry.register_node("let-go", "n" + std::to_string(i), {}, ttl,
                                             [t = Tracker(live)](const etcdreg::StatusEvent &) {}));
    CHECK(live == k);
    uint64_t watch = 0;
    std::atomic<uint64_t> watch_id{0};
    watch = registry.watch("let-go-trigger", [&, t = Tracker(watch_live)](const etcdreg::WatchEvent &e) {
        if (e.kind != ETCD_REGISTRY_WATCH_KIND_ADDED || done) return;
        for (uint64_t id : ids) registry.unregister(id);
        registry.unwatch(e.watch_id);
        watch_id = e.watch_id;
        done = true;
    });
    const auto trigger = registry.register_node("let-go-trigger", "go", {}, ttl, nullptr);
    CHECK(wait_for([&] { return done.load(); }));
    CHECK(watch_id == watch);
    CHECK(wait_for([&] { return live == 0 && watch_live == 0; }));
    CHECK(registry.list("let-go").empty());
    registry.unregister(trigger);
}

// A register or watch that fails frees its callback at once (C never calls it).
void refused_calls_free_the_callback() {
    std::atomic<int> live{0};
    etcdreg::Registry registry(config());
    int refused = 0;
    try {
        registry.register_node("refused", "", {}, ttl, [t = Tracker(live)](const etcdreg::StatusEvent &) {});
    } catch (const etcdreg::Error &e) {
        refused += e.status() == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT;
    }
    try {
        registry.watch("", [t = Tracker(live)](const etcdreg::WatchEvent &) {});
    } catch (const etcdreg::Error &e) {
        refused += e.status() == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT;
    }
    CHECK(refused == 2);
    CHECK(live == 0);
}

// unregister_async: the callback is done for good, and freed, by the time the future is ready;
// a refused unregister_async (unknown id) leaves everything as it was.
void unregister_async_frees_the_callback() {
    std::atomic<int> live{0}, unregistered{0};
    etcdreg::Registry registry(config());
    const auto id = registry.register_node("async", "n1", {}, ttl,
                                           [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                               if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                           });
    registry.wait_registered(id, 5s);
    bool not_found = false;
    try {
        registry.unregister_async(id + 1000);
    } catch (const etcdreg::Error &e) {
        not_found = e.status() == ETCD_REGISTRY_STATUS_NOT_FOUND;
    }
    CHECK(not_found);
    CHECK(live == 1);
    registry.unregister_async(id).get();
    CHECK(unregistered == 1);
    CHECK(live == 0);  // freed before the future is ready
    CHECK(registry.list("async").empty());
}

// close(): every status callback gets UNREGISTERED and is freed, the watch callbacks too; the
// Registry object (still alive) keeps none.
void close_frees_every_callback() {
    std::atomic<int> live{0};
    etcdreg::Registry registry(config());
    const auto id = registry.register_node("close", "n1", {}, ttl, [t = Tracker(live)](const etcdreg::StatusEvent &) {});
    registry.watch("close", [t = Tracker(live)](const etcdreg::WatchEvent &) {});
    registry.wait_registered(id, 5s);
    CHECK(live == 2);
    registry.close();
    CHECK(live == 0);
}

// A status callback closing its own registry: every UNREGISTERED (its own nested) inside it.
void close_inside_a_status_callback() {
    std::atomic<int> live{0}, unregistered{0};
    std::atomic<bool> done{false}, intact{false};
    etcdreg::Registry registry(config());
    const std::string big(200, 'z');
    registry.register_node("close-inside", "other", {}, ttl,
                           [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                               if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                           });
    registry.register_node("close-inside", "closer", {}, ttl, [&, big, t = Tracker(live)](const etcdreg::StatusEvent &e) {
        if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
        if (e.kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
        registry.close();
        intact = unregistered == 2 && big[199] == 'z' && *t.live >= 1;
        done = true;
    });
    CHECK(wait_for([&] { return done.load(); }));
    CHECK(intact);
    CHECK(wait_for([&] { return live == 0; }));
}

// The Registry going frees what it still holds.
void destroying_the_registry_frees_the_callbacks() {
    std::atomic<int> live{0};
    {
        etcdreg::Registry registry(config());
        const auto id = registry.register_node("destroy", "n1", {}, ttl, [t = Tracker(live)](const etcdreg::StatusEvent &) {});
        registry.watch("destroy", [t = Tracker(live)](const etcdreg::WatchEvent &) {});
        registry.wait_registered(id, 5s);
        CHECK(live == 2);
    }
    CHECK(live == 0);
}

// True once a Registry made with config() lists no node of `service` (its keys gone).
bool no_node_left(const std::string &service) {
    etcdreg::Registry check(config());
    return wait_for([&] { return check.list(service).empty(); });
}

// A status callback holding the last reference to its Registry lets it go inside a call: the
// Registry is destroyed on the library's callback thread. Every callback still gets its last
// call (the other registration's UNREGISTERED, its own), the keys go, every callback is freed.
void last_reference_let_go_inside_a_status_callback() {
    std::atomic<int> live{0}, unregistered{0};
    std::atomic<bool> released{false}, let_go{false};
    auto holder = std::make_shared<std::shared_ptr<etcdreg::Registry>>(std::make_shared<etcdreg::Registry>(config()));
    const std::weak_ptr<etcdreg::Registry> weak = *holder;
    etcdreg::Registry &registry = **holder;
    const auto other = registry.register_node("last-ref", "other", {}, ttl,
                                              [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                                  if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                              });
    registry.wait_registered(other, 5s);
    registry.watch("last-ref", [t = Tracker(live)](const etcdreg::WatchEvent &) {});
    registry.register_node("last-ref", "holder", {}, ttl,
                           [&, holder, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                               if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                               if (e.kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
                               wait_for([&] { return released.load(); });
                               holder->reset();  // the last reference: ~Registry runs here
                               let_go = true;
                           });
    holder.reset();
    released = true;
    CHECK(wait_for([&] { return let_go.load(); }));
    CHECK(weak.expired());
    CHECK(wait_for([&] { return unregistered == 2; }));
    CHECK(wait_for([&] { return live == 0; }));
    CHECK(no_node_left("last-ref"));
}

// The same through unregister_async: its status callback, holding the last reference, is freed
// on a library runtime thread once the unregister is done, and the Registry with it there.
void last_reference_held_by_a_callback_freed_by_unregister_async() {
    std::atomic<int> live{0}, unregistered{0};
    auto registry = std::make_shared<etcdreg::Registry>(config());
    const std::weak_ptr<etcdreg::Registry> weak = registry;
    const auto other = registry->register_node("last-ref-async", "other", {}, ttl,
                                               [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                                   if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                               });
    registry->watch("last-ref-async", [t = Tracker(live)](const etcdreg::WatchEvent &) {});
    const auto self = registry->register_node("last-ref-async", "holder", {}, ttl,
                                              [&unregistered, keep = registry, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                                  if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                              });
    registry->wait_registered(other, 5s);
    registry->wait_registered(self, 5s);
    // Once the wrapper has handed the status callback to the pending call, before the library
    // is called: from then on that callback holds the last reference.
    etcdreg::Registry *raw = registry.get();
    before_unregister_async = [&] { registry.reset(); };
    std::future<void> done = raw->unregister_async(self);
    before_unregister_async = nullptr;
    CHECK(done.wait_for(std::chrono::duration<double>(10 * slow)) == std::future_status::ready);
    CHECK(weak.expired());
    CHECK(wait_for([&] { return unregistered == 2; }));
    CHECK(wait_for([&] { return live == 0; }));
    CHECK(no_node_left("last-ref-async"));
}

// Under valgrind, waits (up to 20 s) until the library has finished freeing what the registries
// held (part of it is freed on its own threads after etcd_registry_free returns), so that the
// exit leak check, which counts every block, sees only its process-wide state. As the C suite,
// but against the blocks counted before the tests, and only while the count still changes:
// some blocks are freed only at exit (the C++ runtime's exception pool, glibc's dlerror state
// of the library's lookups), and the exit check tells whether anything else was left.
unsigned long blocks_before_tests = 0;
unsigned long count_blocks() {
    unsigned long blocks = 0;
#ifdef HAVE_VALGRIND
    unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
    VALGRIND_DO_QUICK_LEAK_CHECK;
    VALGRIND_COUNT_LEAK_BLOCKS(leaked, dubious, reachable, suppressed);
    blocks = leaked + dubious + reachable;
    (void)suppressed;
#endif
    return blocks;
}
void wait_for_library_teardown() {
#ifdef HAVE_VALGRIND
    if (!RUNNING_ON_VALGRIND) return;
    const auto start = std::chrono::steady_clock::now();
    auto changed = start;
    unsigned long blocks = count_blocks();
    while (blocks > blocks_before_tests && std::chrono::steady_clock::now() - changed < 2s &&
           std::chrono::steady_clock::now() - start < 20s) {
        std::this_thread::sleep_for(100ms);
        const unsigned long now = count_blocks();
        if (now != blocks) changed = std::chrono::steady_clock::now();
        blocks = now;
    }
    std::printf("leak check: %lu blocks allocated outside the library's global state (%lu before the tests)\n",
                blocks, blocks_before_tests);
#endif
}

// Sends a command to the etcd-harness this program runs under (its control socket); false,
// with the reply on stderr, when it fails.
bool harness(const std::string &command) {
    const char *bin = std::getenv("ETCD_HARNESS_BIN");
    const char *sock = std::getenv("ETCD_HARNESS_CONTROL");
    if (bin == nullptr || sock == nullptr) {
        std::fprintf(stderr, "    ETCD_HARNESS_BIN / ETCD_HARNESS_CONTROL not set\n");
        return false;
    }
    const std::string shell = std::string("\"") + bin + "\" ctl \"" + sock + "\" " + command;
    FILE *p = popen(shell.c_str(), "r");
    if (p == nullptr) return false;
    std::string reply;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) reply.append(buf, n);
    const int rc = pclose(p);
    if (rc != 0 || reply.find("\"ok\":true") == std::string::npos) {
        std::fprintf(stderr, "    harness %s: %s\n", command.c_str(), reply.c_str());
        return false;
    }
    return true;
}

// Runs last: it turns authentication on for the rest of the cluster's life. etcd refuses the
// delete (the user lost its write permission): unregister throws AUTH, and the registration
// has ended all the same, its callback freed after its UNREGISTERED call.
void unregister_refused_by_etcd_frees_the_callback() {
    const char *prefix = "/cpp-wrapper-tests/";
    const bool ready = harness("enable-auth root secret") &&
                       harness("etcdctl user add limited --new-user-password=pw") &&
                       harness("etcdctl role add cpp") &&
                       harness(std::string("etcdctl role grant-permission cpp readwrite ") + prefix + " --prefix") &&
                       harness("etcdctl user grant-role limited cpp");
    CHECK(ready);
    if (!ready) return;
    std::atomic<int> live{0}, unregistered{0};
    etcdreg::Registry registry(config().credentials("limited", "pw"));
    const auto id = registry.register_node("authed", "n1", {}, ttl,
                                           [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                                               if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
                                           });
    registry.wait_registered(id, 10s);
    // Read only from now on.
    CHECK(harness(std::string("etcdctl role revoke-permission cpp ") + prefix + " --prefix"));
    CHECK(harness(std::string("etcdctl role grant-permission cpp read ") + prefix + " --prefix"));
    etcd_registry_status status = ETCD_REGISTRY_STATUS_OK;
    try {
        registry.unregister(id);
    } catch (const etcdreg::Error &e) {
        status = e.status();
    }
    CHECK(status == ETCD_REGISTRY_STATUS_AUTH);
    CHECK(unregistered == 1);
    CHECK(live == 0);
    // It has ended: unregistering it again finds nothing, and nothing is left to free.
    status = ETCD_REGISTRY_STATUS_OK;
    try {
        registry.unregister(id);
    } catch (const etcdreg::Error &e) {
        status = e.status();
    }
    CHECK(status == ETCD_REGISTRY_STATUS_NOT_FOUND);
}

// unregister_async takes the status callback from the wrapper's map, then calls C. If the
// callback, running meanwhile, unregisters itself (its UNREGISTERED comes nested), the C call
// finds nothing (NOT_FOUND) and gives the callback back: it must not be freed then, as it is
// still running (it goes on using its captures), but once its outermost call returns.
void unregister_async_racing_the_callback_unregistering_itself() {
    std::atomic<int> live{0};
    std::atomic<int> step{0};  // 1 registered, 2 let it unregister, 3 its unregister returned, 4 finish
    std::atomic<bool> intact{false}, timed_out{false};
    etcdreg::Registry registry(config());
    std::atomic<uint64_t> id_seen{0};
    const uint64_t id = registry.register_node(
        "race", "n1", {{"a", "1"}}, ttl,
        [&registry, &step, &intact, &id_seen, &timed_out, tracker = Tracker(live), text = std::string(64, 'x')](
            const etcdreg::StatusEvent &e) {
            (void)tracker;
            if (e.kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
            step = 1;
            if (!wait_for([&] { return step == 2; })) timed_out = true;
            registry.unregister(e.registration_id);
            step = 3;
            if (!wait_for([&] { return step == 4; })) timed_out = true;
            intact = text == std::string(64, 'x');
            id_seen = e.registration_id;
        });
    CHECK(wait_for([&] { return step == 1; }));
    before_unregister_async = [&] {
        step = 2;
        CHECK(wait_for([&] { return step == 3; }));
    };
    etcd_registry_status status = ETCD_REGISTRY_STATUS_OK;
    try {
        registry.unregister_async(id).get();
    } catch (const etcdreg::Error &e) {
        status = e.status();
    }
    before_unregister_async = nullptr;
    CHECK(status == ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK(live == 1);  // still running: not freed
    step = 4;
    CHECK(wait_for([&] { return live == 0; }));
    CHECK(!timed_out);
    CHECK(intact);
    CHECK(id_seen == id);
}

// Whether `f` is ready within a generous deadline (failing rather than hanging when it never
// is), and then holds no error.
bool ready_in_time(std::future<void> f) {
    if (f.wait_for(std::chrono::duration<double>(10 * slow)) != std::future_status::ready) return false;
    f.get();
    return true;
}

// unregister_async inside a status or watch callback (or in a destructor of a callback's
// captures run on the callback thread): its future is ready before it returns. It used to be
// made ready only after UNREGISTERED was delivered on the callback thread, the one waiting.
void unregister_async_inside_a_callback_is_ready() {
    std::atomic<int> live{0}, unregistered{0};
    std::atomic<bool> status_done{false}, status_ready{false}, own_ready{false}, refused{false};
    std::atomic<bool> watch_done{false}, watch_ready{false};
    std::atomic<bool> destroyed{false}, destructor_ready{false};
    etcdreg::Registry registry(config());
    auto counted = [&] {
        return [&unregistered, t = Tracker(live)](const etcdreg::StatusEvent &e) {
            if (e.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) unregistered++;
        };
    };
    const auto nodes = {"target-status", "target-watch", "target-destructor"};
    std::vector<uint64_t> targets;
    for (const char *node : nodes) {
        targets.push_back(registry.register_node("async-inside", node, {}, ttl, counted()));
        registry.wait_registered(targets.back(), 5s);
    }

    // A status callback: another registration's, then its own.
    registry.register_node("async-inside-caller", "status", {}, ttl,
                           [&, t = Tracker(live)](const etcdreg::StatusEvent &e) {
                               if (e.kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
                               status_ready = ready_in_time(registry.unregister_async(targets[0])) &&
                                              unregistered == 1;  // delivered nested
                               try {
                                   registry.unregister_async(targets[0]);
                               } catch (const etcdreg::Error &error) {  // a refusal throws here
                                   refused = error.status() == ETCD_REGISTRY_STATUS_NOT_FOUND;
                               }
                               own_ready = ready_in_time(registry.unregister_async(e.registration_id));
                               status_done = true;
                           });
    CHECK(wait_for([&] { return status_done.load(); }));
    CHECK(status_ready);
    CHECK(refused);
    CHECK(own_ready);

    // A watch callback.
    const uint64_t watch = registry.watch("async-inside", [&, t = Tracker(live)](const etcdreg::WatchEvent &) {
        if (watch_done) return;
        watch_ready = ready_in_time(registry.unregister_async(targets[1]));
        watch_done = true;
    });
    CHECK(wait_for([&] { return watch_done.load(); }));
    CHECK(watch_ready);
    registry.unwatch(watch);

    // A destructor of a callback's captures, run when the callback is freed on the callback
    // thread (it unregisters itself there).
    struct UnregistersOnDestroy {
        UnregistersOnDestroy(etcdreg::Registry &registry, uint64_t id, std::atomic<bool> &ready,
                             std::atomic<bool> &destroyed)
            : registry(registry), id(id), ready(ready), destroyed(destroyed) {}
        UnregistersOnDestroy(const UnregistersOnDestroy &) = delete;
        UnregistersOnDestroy &operator=(const UnregistersOnDestroy &) = delete;
        etcdreg::Registry &registry;
        uint64_t id;
        std::atomic<bool> &ready, &destroyed;
        ~UnregistersOnDestroy() {
            try {
                ready = ready_in_time(registry.unregister_async(id));
            } catch (const std::exception &) {
            }
            destroyed = true;
        }
    };
    registry.register_node(
        "async-inside-caller", "destructor", {}, ttl,
        [&registry, t = Tracker(live),
         guard = std::make_shared<UnregistersOnDestroy>(registry, targets[2], destructor_ready, destroyed)](
            const etcdreg::StatusEvent &e) {
            if (e.kind == ETCD_REGISTRY_STATUS_KIND_REGISTERED) registry.unregister(e.registration_id);
        });
    CHECK(wait_for([&] { return destroyed.load(); }));
    CHECK(destructor_ready);

    CHECK(wait_for([&] { return unregistered == 3; }));
    CHECK(wait_for([&] { return live == 0; }));
    CHECK(registry.list("async-inside").empty());
    CHECK(registry.list("async-inside-caller").empty());
}

// Setters chained on a temporary Config give a Config (moved), not a reference to the
// temporary: it can be kept with auto (Config is not copyable) or bound to a const reference.
void config_chained_on_a_temporary() {
    static_assert(std::is_same<decltype(etcdreg::Config().endpoints("")), etcdreg::Config>::value,
                  "a temporary's setter returns a Config");
    static_assert(std::is_same<decltype(std::declval<etcdreg::Config &>().endpoints("")), etcdreg::Config &>::value,
                  "an lvalue's setter returns a reference to it");
    auto kept = etcdreg::Config()
                    .endpoints(endpoints)
                    .base_path("/cpp-wrapper-tests")
                    .timeout(5s)
                    .backoff(100ms, 2s)
                    .credentials("", "");
    const etcdreg::Config &bound = etcdreg::Config().endpoints(endpoints).base_path("/cpp-wrapper-tests");
    etcdreg::Registry registry(kept), other(bound);
    const auto id = registry.register_node("chained", "n1", {}, ttl, nullptr);
    registry.wait_registered(id, 5s);
    const auto nodes = other.list("chained");
    CHECK(nodes.size() == 1 && nodes[0].name == "n1");
    registry.unregister(id);
}

// A negative duration goes to C as 0, refused as not greater than zero (it used to be cast to
// a huge value, refused as larger than the maximum); the callback is freed.
void negative_durations_are_refused_as_not_greater_than_zero() {
    std::atomic<int> live{0};
    etcdreg::Registry registry(config());
    auto refusal = [](const std::function<void()> &call) {
        try {
            call();
        } catch (const etcdreg::Error &e) {
            return e.status() == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT ? std::string(e.what()) : std::string();
        }
        return std::string();
    };
    const std::string ttl_error = refusal([&] {
        registry.register_node("negative", "n1", {}, -1s, [t = Tracker(live)](const etcdreg::StatusEvent &) {});
    });
    CHECK(ttl_error.find("ttl must be greater than zero") != std::string::npos);
    CHECK(live == 0);
    CHECK(refusal([] { etcdreg::Config().timeout(-1s); }).find("timeout must be greater than zero") !=
          std::string::npos);
    CHECK(refusal([] { etcdreg::Config().backoff(1s, -1s); }).find("0 < minimum <= maximum") != std::string::npos);
    CHECK(registry.list("negative").empty());
}

// A string holding a NUL would be cut short as a C string: refused, nothing registered.
void names_holding_nul_are_refused() {
    etcdreg::Registry registry(config());
    const std::string bad[] = {std::string("svc\0x", 5), std::string("n\0other", 7)};
    for (int i = 0; i < 2; i++) {
        etcd_registry_status status = ETCD_REGISTRY_STATUS_OK;
        try {
            registry.register_node(i == 0 ? bad[0] : "nul", i == 1 ? bad[1] : "n", {}, ttl,
                                   [](const etcdreg::StatusEvent &) {});
        } catch (const etcdreg::Error &e) {
            status = e.status();
            CHECK(std::strstr(e.what(), "NUL") != nullptr);
        }
        CHECK(status == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    }
    for (const auto &call : std::vector<std::function<void()>>{
             [&] { registry.list(bad[0]); },
             [&] { registry.watch(bad[0], [](const etcdreg::WatchEvent &) {}); },
             [&] { etcdreg::Config().base_path(bad[0]); }}) {
        etcd_registry_status status = ETCD_REGISTRY_STATUS_OK;
        try {
            call();
        } catch (const etcdreg::Error &e) {
            status = e.status();
        }
        CHECK(status == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    }
    CHECK(registry.list("svc").empty());
    CHECK(registry.list("nul").empty());
}

// A refused call frees the callback it was given; a destructor of its captures making library
// calls of its own must not change the error thrown.
void refused_call_keeps_its_message_when_the_callback_is_freed() {
    etcdreg::Registry registry(config());
    struct CallsOnDestroy {
        etcdreg::Registry *registry;
        ~CallsOnDestroy() {
            try {
                registry->list("");  // fails: another last error message
            } catch (const etcdreg::Error &) {
            }
        }
    };
    // The callback holds the only reference: freeing it runs the destructor.
    auto holder = std::make_shared<CallsOnDestroy>(CallsOnDestroy{&registry});
    std::string message;
    try {
        registry.register_node("svc", "", {}, ttl, [h = std::move(holder)](const etcdreg::StatusEvent &) {});
    } catch (const etcdreg::Error &e) {
        message = e.what();
    }
    CHECK(message.find("node name") != std::string::npos);
}

struct Test {
    const char *name;
    void (*run)();
};
#define TEST(fn) Test{#fn, fn}
const Test tests[] = {
    TEST(unregister_inside_own_status_callback),
    TEST(unwatch_inside_own_watch_callback),
    TEST(close_while_another_thread_unwatches_a_running_callback),
    TEST(close_inside_a_watch_callback_while_another_thread_closes),
    TEST(reregistering_a_node_frees_the_replaced_callbacks),
    TEST(reregistering_a_node_from_two_threads),
    TEST(callbacks_let_go_inside_a_callback_are_freed),
    TEST(refused_calls_free_the_callback),
    TEST(unregister_async_frees_the_callback),
    TEST(unregister_async_racing_the_callback_unregistering_itself),
    TEST(unregister_async_inside_a_callback_is_ready),
    TEST(config_chained_on_a_temporary),
    TEST(negative_durations_are_refused_as_not_greater_than_zero),
    TEST(names_holding_nul_are_refused),
    TEST(refused_call_keeps_its_message_when_the_callback_is_freed),
    TEST(close_frees_every_callback),
    TEST(close_inside_a_status_callback),
    TEST(destroying_the_registry_frees_the_callbacks),
    TEST(last_reference_let_go_inside_a_status_callback),
    TEST(last_reference_held_by_a_callback_freed_by_unregister_async),
    TEST(unregister_refused_by_etcd_frees_the_callback),  // last: it turns auth on for good
};

}  // namespace

int main(int argc, char **argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const char *env = std::getenv("ETCD_ENDPOINTS");
    if (env == nullptr || *env == '\0') {
        std::fprintf(stderr, "ETCD_ENDPOINTS is not set: run me under `etcd-harness run --`\n");
        return 2;
    }
    endpoints = env;
    const char *factor = std::getenv("ETCD_REGISTRY_TEST_SLOWDOWN");
    if (factor != nullptr && std::atof(factor) >= 1) slow = std::atof(factor);

    blocks_before_tests = count_blocks();
    int passed = 0, failed = 0;
    for (const Test &test : tests) {
        bool selected = argc < 2;
        for (int a = 1; a < argc; a++) selected = selected || std::strstr(test.name, argv[a]) != nullptr;
        if (!selected) continue;
        current_failed = false;
        const auto start = std::chrono::steady_clock::now();
        try {
            test.run();
        } catch (const std::exception &e) {
            std::fprintf(stderr, "    exception: %s\n", e.what());
            current_failed = true;
        }
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
        std::printf("%s %s (%.1fs)\n", current_failed ? "FAIL" : "ok  ", test.name, took.count());
        (current_failed ? failed : passed)++;
    }
    wait_for_library_teardown();
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
