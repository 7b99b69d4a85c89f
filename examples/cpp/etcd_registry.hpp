// etcd_registry.hpp — a small RAII wrapper over the etcd_registry C API (header only, C++17).
// ffi/install.sh does not install it: copy it into your tree, next to your code.
//
//   etcdreg::Registry registry(etcdreg::Config().endpoints("127.0.0.1:2379"));
//   auto id = registry.register_node("api", "node-1", {{"address", "10.0.0.5:8080"}},
//                                    std::chrono::seconds(10),
//                                    [](const etcdreg::StatusEvent &e) { /* ... */ });
//   for (const auto &node : registry.list("api")) std::cout << node.name << "\n";
//   std::future<std::vector<etcdreg::Node>> nodes = registry.list_async("api");  // no thread blocked
//   registry.unregister_async(id).get();  // or wait elsewhere: no thread blocked meanwhile
//                                         // (except inside a callback: see unregister_async)
//
// - Handles are std::unique_ptr with the C free functions as deleters.
// - Every failing status throws etcdreg::Error (status code + the library's message).
// - Durations: a negative one is taken as 0, refused (INVALID_ARGUMENT) where it must be
//   greater than zero (TTL, timeout, backoff); wait_registered only checks then.
// - Callbacks are std::function, called on the library's callback thread (one call at a time,
//   in order per registration/watch); an empty one (nullptr) is accepted and never called.
//   Declare everything a callback captures by reference before the Registry, so that it
//   outlives ~Registry, which stops the callbacks (also when an exception unwinds the scope).
//   The wrapper owns them and destroys each one only when
//   the C library guarantees it will not be called again and it is not running: a status
//   callback once its UNREGISTERED call (its last: after unregister, close, or a newer
//   registration of the same node) has returned, a watch callback after unwatch/close (after
//   ~Registry for a close made inside a callback). One let
//   go from inside a callback (it may be the one running) goes when the outermost returns.
//   An exception a callback throws is caught and dropped (it must not reach the C library).
// - A callback may hold the last reference to its Registry (e.g. a captured
//   std::shared_ptr<Registry>). Let go inside a status or watch callback, ~Registry closes and
//   frees the handle right there: the other callbacks get their last calls nested, before it
//   returns; only the callbacks still on that thread's stack run on. (Inside a callback that a
//   close or unregister of the same Registry delivers nested, the C library frees the handle,
//   and delivers the remaining last calls, once that outer call returns.) Let go on a library
//   runtime thread (the status callback of an unregister_async, freed there just before its
//   future is made ready), where the library cannot wait for etcd, ~Registry returns at once
//   and a detached thread of its own closes and frees it: the other callbacks still get their
//   last calls, and may be running, after the destructor has returned and the future is ready.
//   Nothing waits for that thread; it destroys the callbacks last. (If no thread can be
//   started, the handle is freed there: the library stops the callbacks without their
//   UNREGISTERED calls.)
// - Strings go to C as NUL-terminated: a name, endpoint, path or credential holding a NUL is
//   refused with INVALID_ARGUMENT rather than cut short.
#pragma once

#include <etcd_registry.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace etcdreg {

// A failed call: the C status and the library's message.
class Error : public std::runtime_error {
  public:
    Error(etcd_registry_status status, const std::string &message)
        : std::runtime_error(std::string(etcd_registry_status_name(status)) + ": " + message),
          status_(status) {}
    etcd_registry_status status() const noexcept { return status_; }

  private:
    etcd_registry_status status_;
};

namespace detail {
inline void check(etcd_registry_status status) {
    if (status != ETCD_REGISTRY_STATUS_OK) throw Error(status, etcd_registry_last_error_message());
}
// The failure of a call, taken at once: freeing a callback afterwards may make library calls,
// which replace the thread's last error message.
struct Failure {
    etcd_registry_status status;
    std::string message;
    explicit Failure(etcd_registry_status status)
        : status(status), message(status != ETCD_REGISTRY_STATUS_OK ? etcd_registry_last_error_message() : "") {}
    void check() const {
        if (status != ETCD_REGISTRY_STATUS_OK) throw Error(status, message);
    }
};
// `s` as a C string; one holding a NUL would be cut short there, so it is refused.
inline const char *c_str(const std::string &s, const char *what) {
    if (s.find('\0') != std::string::npos)
        throw Error(ETCD_REGISTRY_STATUS_INVALID_ARGUMENT, std::string(what) + " must not contain NUL");
    return s.c_str();
}
inline std::string str(const char *s) { return s != nullptr ? std::string(s) : std::string(); }
// A duration in milliseconds for C: a negative one is 0, which the library refuses as not
// greater than zero (a cast would make it a huge value, refused as too large).
inline uint64_t ms(std::chrono::milliseconds d) noexcept {
    return d.count() > 0 ? static_cast<uint64_t>(d.count()) : 0;
}

struct ConfigFree {
    void operator()(etcd_registry_config *c) const noexcept { etcd_registry_config_free(c); }
};
struct RegistryFree {
    void operator()(etcd_registry *r) const noexcept { etcd_registry_free(r); }
};
struct NodeListFree {
    void operator()(etcd_registry_node_list *l) const noexcept { etcd_registry_node_list_free(l); }
};
struct StringListFree {
    void operator()(etcd_registry_string_list *l) const noexcept { etcd_registry_string_list_free(l); }
};

struct Callbacks;

// One callback the wrapper owns, the user_data given to C for its registration or watch.
struct SlotBase {
    explicit SlotBase(std::weak_ptr<Callbacks> owner) : owner(std::move(owner)) {}
    SlotBase(const SlotBase &) = delete;
    SlotBase &operator=(const SlotBase &) = delete;
    virtual ~SlotBase() = default;

    // Weak: a status callback handed to unregister_async may still be called after its
    // Registry is gone (its last call, UNREGISTERED), and must then leave the maps alone.
    std::weak_ptr<Callbacks> owner;
    bool ended = false;     // its last call has returned, none running (under Callbacks::mutex)
    unsigned running = 0;   // its calls running now, nested ones counted (callback thread only)
    bool last_seen = false; // its UNREGISTERED call has begun (callback thread only)
    bool adopted = false;   // its first call has looked for it in `starting` (callback thread only)
    uint64_t starting_key = 0;  // its key in `starting`, set before C is given the slot
    SlotBase *next_buried = nullptr;  // in the graveyard (below)
};
template <typename Fn>
struct Slot : SlotBase {
    Slot(std::weak_ptr<Callbacks> owner, Fn fn) : SlotBase(std::move(owner)), fn(std::move(fn)) {}
    Fn fn;
};

using SlotMap = std::map<uint64_t, std::unique_ptr<SlotBase>>;

// What a Registry owns of its callbacks, shared (weakly) with them.
struct Callbacks {
    std::mutex mutex;  // held only briefly: never across a C call, a callback or a destructor
    SlotMap status;    // by registration id
    SlotMap watches;   // by watch id
    // From before the C call until the id is known: when it returns, or at the first call of
    // the callback, which may come first (events carry the id), so that a callback
    // unregistering or unwatching itself at once finds itself. By a key never used again (not
    // the address: the C call's return may come after the slot is freed and another made).
    SlotMap starting;
    uint64_t last_starting_key = 0;
};

// A map node holding `slot`, allocated now, so that moving it between maps later (under a new
// key) allocates nothing and cannot throw: once C holds the callback, losing it to bad_alloc
// would free it while C may still call it.
inline SlotMap::node_type node_of(std::unique_ptr<SlotBase> slot) {
    SlotMap one;
    one.emplace(0, std::move(slot));
    return one.extract(one.begin());
}

// Moves the slot filed under `key` from `starting` to `map` under `id`, if it is still there.
inline void adopt(Callbacks &callbacks, SlotMap &map, uint64_t key, uint64_t id) noexcept {
    auto node = callbacks.starting.extract(key);
    if (!node) return;
    node.key() = id;
    auto placed = map.insert(std::move(node));
    if (!placed.inserted) {
        // Not expected (ids are unique): keep it rather than free a callback C may still call.
        placed.node.key() = key;
        callbacks.starting.insert(std::move(placed.node));
    }
}

// Callback frames of the wrapper on this thread (nested calls count: a callback calling
// unregister/close gets the registration's remaining calls nested), and the callbacks let go
// meanwhile. A std::function must not be destroyed while it runs, and one let go from inside
// a callback may be the one running (or one below it): those wait here until the outermost
// frame returns. Only callbacks run callbacks, so the list is empty on every other thread.
// Plain pointers and counters: nothing to free when a thread exits.
inline thread_local unsigned callback_depth = 0;
inline thread_local SlotBase *graveyard = nullptr;
// The same frames until each has returned to C, the freeing of what was let go included (the
// destructors of a callback's captures run there): nonzero only on the library's callback
// thread, inside one of its calls, where nothing waiting for that thread may block.
inline thread_local unsigned callback_thread_depth = 0;

// Frees a callback C will not call again, now or, inside a callback, once it is safe.
inline void bury(std::unique_ptr<SlotBase> slot) noexcept {
    if (slot && callback_depth > 0) {
        slot->next_buried = graveyard;
        graveyard = slot.release();
    }
    // Otherwise `slot` (if set) is freed here: nothing of ours runs on this thread, and C
    // runs callbacks on no other thread while it is not to call this one again.
}

// Frames of the library's _async callbacks on this thread: a library runtime thread, where the
// library refuses to wait (for etcd, or for other callbacks).
inline thread_local unsigned async_depth = 0;

struct AsyncScope {
    AsyncScope() noexcept { ++async_depth; }
    ~AsyncScope() { --async_depth; }
    AsyncScope(const AsyncScope &) = delete;
    AsyncScope &operator=(const AsyncScope &) = delete;
};

struct CallbackScope {
    CallbackScope() noexcept {
        ++callback_depth;
        ++callback_thread_depth;
    }
    ~CallbackScope() {
        // A counter, not a flag: a nested call returning must not make the outer callback,
        // still running, look finished.
        if (--callback_depth == 0) {
            while (SlotBase *slot = graveyard) {
                // Freed at depth 0: a destructor that unregisters frees what it lets go at once.
                graveyard = slot->next_buried;
                delete slot;
            }
        }
        --callback_thread_depth;
    }
    CallbackScope(const CallbackScope &) = delete;
    CallbackScope &operator=(const CallbackScope &) = delete;
};
}  // namespace detail

// Owned copies of the C events (the C pointers are valid only during the call).
struct StatusEvent {
    etcd_registry_status_kind kind;
    uint64_t registration_id;
    std::string service, node;
    uint32_t attempt;
    std::chrono::milliseconds delay;
    etcd_registry_status error_status;
    std::string error_message;
    int64_t lease_id;
};

struct WatchEvent {
    etcd_registry_watch_kind kind;
    uint64_t watch_id;
    std::string service, node_name, info_json;
    int64_t revision;
    std::map<std::string, std::string> info;  // the same info, key by key
};

struct Node {
    std::string name;
    std::string info_json;
    std::map<std::string, std::string> info;  // the same info, key by key
};

class Config {
  public:
    Config() {
        etcd_registry_config *raw = nullptr;
        detail::check(etcd_registry_config_new(&raw));
        config_.reset(raw);
    }
    // Each setter also exists for a temporary, returning the Config itself (moved), so that
    // `auto c = Config().endpoints(e).base_path(p);` holds a Config rather than a reference to
    // a temporary destroyed at the end of the statement.
    Config &endpoints(const std::string &comma_separated) & {
        detail::check(etcd_registry_config_set_endpoints(config_.get(), detail::c_str(comma_separated, "endpoints")));
        return *this;
    }
    Config endpoints(const std::string &comma_separated) && { return std::move(endpoints(comma_separated)); }
    Config &base_path(const std::string &path) & {
        detail::check(etcd_registry_config_set_base_path(config_.get(), detail::c_str(path, "base path")));
        return *this;
    }
    Config base_path(const std::string &path) && { return std::move(base_path(path)); }
    Config &credentials(const std::string &user, const std::string &password) & {
        detail::check(etcd_registry_config_set_credentials(config_.get(), detail::c_str(user, "user"),
                                                            detail::c_str(password, "password")));
        return *this;
    }
    Config credentials(const std::string &user, const std::string &password) && {
        return std::move(credentials(user, password));
    }
    // A negative duration is taken as 0 (refused: it must be greater than zero).
    Config &timeout(std::chrono::milliseconds t) & {
        detail::check(etcd_registry_config_set_timeout_ms(config_.get(), detail::ms(t)));
        return *this;
    }
    Config timeout(std::chrono::milliseconds t) && { return std::move(timeout(t)); }
    Config &backoff(std::chrono::milliseconds min, std::chrono::milliseconds max) & {
        detail::check(etcd_registry_config_set_backoff_ms(config_.get(), detail::ms(min), detail::ms(max)));
        return *this;
    }
    Config backoff(std::chrono::milliseconds min, std::chrono::milliseconds max) && {
        return std::move(backoff(min, max));
    }
    const etcd_registry_config *get() const noexcept { return config_.get(); }

  private:
    std::unique_ptr<etcd_registry_config, detail::ConfigFree> config_;
};

class Registry {
  public:
    using StatusCallback = std::function<void(const StatusEvent &)>;
    using WatchCallback = std::function<void(const WatchEvent &)>;

    explicit Registry(const Config &config) : callbacks_(std::make_shared<detail::Callbacks>()) {
        etcd_registry *raw = nullptr;
        detail::check(etcd_registry_connect(config.get(), &raw));
        registry_.reset(raw);
    }
    Registry(const Registry &) = delete;
    Registry &operator=(const Registry &) = delete;

    // Frees the handle (closing it if needed); afterwards no callback of it runs, so they can
    // go. Through bury: this may run inside a callback (of another registry, or its own). On a
    // library runtime thread (the last reference held by a status callback that
    // unregister_async frees there), a thread of its own does it: there the library could not
    // deliver the other callbacks' last calls.
    ~Registry() {
        Remains remains{std::move(registry_), callbacks_};
        if (detail::async_depth > 0 && Remains::finish_elsewhere(remains)) return;
        remains.finish();
    }

    // A ttl of 0 or less is refused (INVALID_ARGUMENT: "ttl must be greater than zero").
    uint64_t register_node(const std::string &service, const std::string &node,
                           const std::map<std::string, std::string> &info,
                           std::chrono::milliseconds ttl, StatusCallback callback) {
        std::vector<etcd_registry_info_entry> entries;
        entries.reserve(info.size());
        for (const auto &kv : info)
            entries.push_back({kv.first.data(), kv.first.size(), kv.second.data(), kv.second.size()});
        const char *service_c = detail::c_str(service, "service name");
        const char *node_c = detail::c_str(node, "node name");
        const Starting starting = start(std::make_unique<detail::Slot<StatusCallback>>(callbacks_, std::move(callback)));
        uint64_t id = 0;
        const detail::Failure status(etcd_registry_register(registry_.get(), service_c, node_c, entries.data(),
                                                            entries.size(), detail::ms(ttl),
                                                            &Registry::status_trampoline, starting.slot, &id));
        started(&detail::Callbacks::status, starting, status.status, id);
        status.check();
        return id;
    }

    void unregister(uint64_t id) { unregister_now(id).check(); }

    // Unregisters without blocking: the registration is taken at once (unregistering it again
    // throws NOT_FOUND), and the future is ready once the key is deleted, or etcd could not be
    // reached (the shutdown rule: ready all the same), with the status callback done for good.
    // The library's callback makes it ready on a library thread and owns the status callback
    // meanwhile, so both outlive the Registry, if need be. Refusals throw here.
    // Inside a status or watch callback (or a destructor of a callback's captures run there)
    // it blocks instead, as unregister() does (the remaining events delivered nested), and
    // returns a future already ready (holding the etcd error, if any; refusals still throw):
    // the future would be made ready only after UNREGISTERED has been delivered on the
    // library's callback thread, the one that would wait in get(). The status callback is
    // then freed once the outermost callback returns.
    std::future<void> unregister_async(uint64_t id) {
        if (detail::callback_thread_depth > 0) {
            const detail::Failure failure = unregister_now(id);
            if (refused(failure.status)) failure.check();
            std::promise<void> promise;
            if (failure.status == ETCD_REGISTRY_STATUS_OK)
                promise.set_value();
            else
                promise.set_exception(std::make_exception_ptr(Error(failure.status, failure.message)));
            return promise.get_future();
        }
        auto pending = std::make_unique<PendingUnregister>();
        std::future<void> future = pending->promise.get_future();
        {
            // Owned by the pending call from before it starts: its callback may run at once.
            std::lock_guard<std::mutex> lock(callbacks_->mutex);
            pending->status_callback = callbacks_->status.extract(id);
        }
        PendingUnregister *raw = pending.release();
        const detail::Failure failure(
            etcd_registry_unregister_async(registry_.get(), id, &Registry::on_unregistered, raw));
        if (failure.status != ETCD_REGISTRY_STATUS_OK) {
            // The done callback is never called then, and this call changed nothing: the
            // status callback goes back (its node, so nothing is allocated), unless another
            // unregister or a close delivered its last call meanwhile (found it gone, marked it
            // ended, and returned from it).
            pending.reset(raw);
            std::unique_ptr<detail::SlotBase> ended;
            if (pending->status_callback) {
                std::lock_guard<std::mutex> lock(callbacks_->mutex);
                if (pending->status_callback.mapped()->ended)
                    ended = std::move(pending->status_callback.mapped());
                else
                    callbacks_->status.insert(std::move(pending->status_callback));
            }
            detail::bury(std::move(ended));
            failure.check();
        }
        return future;
    }

    void wait_registered(uint64_t id, std::chrono::milliseconds timeout) {
        // A negative timeout only checks, as 0 does.
        detail::check(etcd_registry_wait_registered(registry_.get(), id, detail::ms(timeout)));
    }

    std::vector<Node> list(const std::string &service) {
        etcd_registry_node_list *raw = nullptr;
        detail::check(etcd_registry_list(registry_.get(), detail::c_str(service, "service name"), &raw));
        return nodes_of(raw);
    }

    // Lists a service without blocking: the future gets the nodes, or an etcdreg::Error, once
    // etcd answers. The library's callback fulfils it on a library thread (so it may be ready
    // before this returns); it outlives the Registry, if need be. Refusals (a closed registry)
    // throw here.
    std::future<std::vector<Node>> list_async(const std::string &service) {
        const char *service_c = detail::c_str(service, "service name");
        auto *promise = new std::promise<std::vector<Node>>();
        std::future<std::vector<Node>> future = promise->get_future();
        const etcd_registry_status status =
            etcd_registry_list_async(registry_.get(), service_c, &Registry::on_listed, promise);
        if (status != ETCD_REGISTRY_STATUS_OK) {
            delete promise;  // the callback is never called then
            detail::check(status);
        }
        return future;
    }

    // The names of the services that have at least one node, sorted.
    std::vector<std::string> services() {
        etcd_registry_string_list *raw = nullptr;
        detail::check(etcd_registry_services(registry_.get(), &raw));
        std::unique_ptr<etcd_registry_string_list, detail::StringListFree> list(raw);
        std::vector<std::string> names;
        const size_t len = etcd_registry_string_list_len(list.get());
        names.reserve(len);
        for (size_t i = 0; i < len; i++) names.push_back(detail::str(etcd_registry_string_list_get(list.get(), i)));
        return names;
    }

    // The etcd endpoint (a URL) that calls and keep-alives go to now.
    std::string active_endpoint() const {
        std::string endpoint(64, '\0');
        for (;;) {  // again with more room if it was cut (or changed to a longer one meanwhile)
            size_t len = 0;
            detail::check(etcd_registry_active_endpoint(registry_.get(), endpoint.data(), endpoint.size() + 1, &len));
            if (len <= endpoint.size()) {
                endpoint.resize(len);
                return endpoint;
            }
            endpoint.assign(len, '\0');
        }
    }

    uint64_t watch(const std::string &service, WatchCallback callback) {
        const char *service_c = detail::c_str(service, "service name");
        const Starting starting = start(std::make_unique<detail::Slot<WatchCallback>>(callbacks_, std::move(callback)));
        uint64_t id = 0;
        // Not under the lock: watch blocks on etcd, and the first events may be delivered
        // before it returns (the callback's first call files it under its id then).
        const detail::Failure status(etcd_registry_watch(registry_.get(), service_c, &Registry::watch_trampoline,
                                                         starting.slot, &id));
        started(&detail::Callbacks::watches, starting, status.status, id);
        status.check();
        return id;
    }

    void unwatch(uint64_t id) {
        detail::check(etcd_registry_unwatch(registry_.get(), id));
        release(&detail::Callbacks::watches, id);  // stopped: not running, never called again
    }

    std::vector<Node> watch_nodes(uint64_t id) {
        etcd_registry_node_list *raw = nullptr;
        detail::check(etcd_registry_watch_nodes(registry_.get(), id, &raw));
        return nodes_of(raw);
    }

    // Unregisters everything (revoking the leases) and stops the watches. Idempotent.
    // The status callbacks let themselves go in their UNREGISTERED calls; the watch callbacks,
    // stopped for good, go here rather than with the Registry. Not when called inside a
    // callback: there a close another thread began returns at once, while that thread is still
    // stopping the watches (one may be called yet), so they go with the Registry.
    void close() {
        // Held here: a callback the close delivers nested may let go of the last reference to
        // this Registry, destroying it before the C call returns.
        std::shared_ptr<detail::Callbacks> callbacks = callbacks_;
        detail::check(etcd_registry_close(registry_.get()));
        if (detail::callback_thread_depth > 0) return;
        detail::SlotMap stopped;
        {
            std::lock_guard<std::mutex> lock(callbacks->mutex);
            stopped.swap(callbacks->watches);
        }
        for (auto &entry : stopped) detail::bury(std::move(entry.second));
    }

  private:
    // The callbacks C calls. Exceptions must not cross into the C library. The scope comes
    // first, so it ends last: whatever the call let go is freed after it is done with the slot.
    static void status_trampoline(const etcd_registry_status_event *e, void *user_data) noexcept {
        detail::CallbackScope scope;
        auto *slot = static_cast<detail::Slot<StatusCallback> *>(static_cast<detail::SlotBase *>(user_data));
        if (!slot->adopted) adopt_first(slot, &detail::Callbacks::status, e->registration_id);
        // Its last call may come nested inside an earlier one (which called unregister or
        // close): the callback is done only when the outermost of its calls returns.
        ++slot->running;
        if (e->kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) slot->last_seen = true;
        // An empty std::function (nullptr given) is not called: only the bookkeeping is done.
        if (slot->fn) {
            try {
                const StatusEvent event{e->kind,
                                        e->registration_id,
                                        detail::str(e->service),
                                        detail::str(e->node),
                                        e->attempt,
                                        std::chrono::milliseconds(e->delay_ms),
                                        e->error_status,
                                        detail::str(e->error_message),
                                        e->lease_id};
                slot->fn(event);
            } catch (...) {
            }
        }
        if (--slot->running == 0 && slot->last_seen) ended(slot, e->registration_id);
    }

    static void watch_trampoline(const etcd_registry_watch_event *e, void *user_data) noexcept {
        detail::CallbackScope scope;
        auto *slot = static_cast<detail::Slot<WatchCallback> *>(static_cast<detail::SlotBase *>(user_data));
        if (!slot->adopted) adopt_first(slot, &detail::Callbacks::watches, e->watch_id);
        if (slot->fn) {
            try {
                WatchEvent event{e->kind, e->watch_id, detail::str(e->service),
                                 e->node_name != nullptr ? std::string(e->node_name, e->node_name_len) : std::string(),
                                 detail::str(e->info_json), e->revision, {}};
                for (size_t j = 0; j < e->info_len; j++)
                    event.info.emplace(std::string(e->info[j].key, e->info[j].key_len),
                                       std::string(e->info[j].value, e->info[j].value_len));
                slot->fn(event);
            } catch (...) {
            }
        }
    }

    // A callback's first call: files it under its id if the C call that made it has not
    // returned yet, so that unregister/unwatch from inside it find it.
    static void adopt_first(detail::SlotBase *slot, detail::SlotMap detail::Callbacks::*map, uint64_t id) noexcept {
        slot->adopted = true;
        const std::shared_ptr<detail::Callbacks> owner = slot->owner.lock();
        if (!owner) return;
        try {
            std::lock_guard<std::mutex> lock(owner->mutex);
            detail::adopt(*owner, (*owner).*map, slot->starting_key, id);
        } catch (...) {  // std::system_error from the lock: it stays in `starting` until ~Registry
        }
    }

    // The end of a status callback's last call (UNREGISTERED), or of the call it was nested in:
    // C never calls it again and none of its calls runs, so it lets itself go, freed once the
    // outermost callback returns. A registration replaced by a
    // newer one of the same node ends this way with no unregister of ours to release it.
    // Not found: unregister_async holds it, or gives it back seeing `ended`.
    static void ended(detail::SlotBase *slot, uint64_t id) noexcept {
        const std::shared_ptr<detail::Callbacks> owner = slot->owner.lock();
        if (!owner) return;
        std::unique_ptr<detail::SlotBase> gone;
        try {
            std::lock_guard<std::mutex> lock(owner->mutex);
            slot->ended = true;  // the last touch of the slot: another thread may free it next
            auto it = owner->status.find(id);
            if (it != owner->status.end() && it->second.get() == slot) {
                gone = std::move(it->second);
                owner->status.erase(it);
            }
        } catch (...) {
        }
        detail::bury(std::move(gone));
    }

    // A new callback, filed in `starting` before the C call that hands it over.
    struct Starting {
        detail::SlotBase *slot;
        uint64_t key;
    };
    Starting start(std::unique_ptr<detail::SlotBase> owned) {
        detail::SlotBase *slot = owned.get();
        detail::SlotMap::node_type node = detail::node_of(std::move(owned));
        std::lock_guard<std::mutex> lock(callbacks_->mutex);
        node.key() = slot->starting_key = ++callbacks_->last_starting_key;
        callbacks_->starting.insert(std::move(node));
        return {slot, slot->starting_key};
    }

    // After the C call that was handed the slot (which may be gone already: only its key is
    // used): files it under its id (unless its first call did), or, when the call failed,
    // frees it (C never calls it then).
    void started(detail::SlotMap detail::Callbacks::*map, const Starting &starting,
                 etcd_registry_status status, uint64_t id) {
        detail::SlotMap::node_type refused;
        {
            std::lock_guard<std::mutex> lock(callbacks_->mutex);
            if (status == ETCD_REGISTRY_STATUS_OK)
                detail::adopt(*callbacks_, (*callbacks_).*map, starting.key, id);
            else
                refused = callbacks_->starting.extract(starting.key);
        }
        // `refused` (if set) is freed here, outside the lock.
    }

    // Statuses of unregister that changed nothing: the registration was refused (invalid,
    // unknown, closed), not ended by this call.
    static bool refused(etcd_registry_status status) noexcept {
        switch (status) {
            case ETCD_REGISTRY_STATUS_INVALID_ARGUMENT:
            case ETCD_REGISTRY_STATUS_NULL_POINTER:
            case ETCD_REGISTRY_STATUS_NOT_FOUND:
            case ETCD_REGISTRY_STATUS_CLOSED:
            case ETCD_REGISTRY_STATUS_PANIC:
                return true;
            default:
                return false;
        }
    }

    // The blocking unregister, its failure returned rather than thrown. The callback normally
    // let itself go in its UNREGISTERED call already; if this call ended the registration, it
    // is done for good whatever the status (an etcd error here means etcd refused the delete,
    // the registration is gone all the same). Not when refused: on NOT_FOUND or CLOSED another
    // unregister or a close may be delivering its last call right now (it lets itself go then).
    detail::Failure unregister_now(uint64_t id) {
        // Held here: a callback the unregister delivers nested may let go of the last reference
        // to this Registry, destroying it before the C call returns.
        std::shared_ptr<detail::Callbacks> callbacks = callbacks_;
        detail::Failure failure(etcd_registry_unregister(registry_.get(), id));
        if (!refused(failure.status)) release(*callbacks, &detail::Callbacks::status, id);
        return failure;
    }

    void release(detail::SlotMap detail::Callbacks::*map, uint64_t id) { release(*callbacks_, map, id); }

    static void release(detail::Callbacks &callbacks, detail::SlotMap detail::Callbacks::*map, uint64_t id) {
        std::unique_ptr<detail::SlotBase> gone;
        {
            std::lock_guard<std::mutex> lock(callbacks.mutex);
            auto node = (callbacks.*map).extract(id);
            if (node) gone = std::move(node.mapped());
        }
        detail::bury(std::move(gone));  // outside the lock: its destructor may call us
    }

    // An unregister_async in flight: what its callback owns.
    // What ~Registry frees.
    struct Remains {
        std::unique_ptr<etcd_registry, detail::RegistryFree> registry;
        std::shared_ptr<detail::Callbacks> callbacks;

        void finish() noexcept {
            registry.reset();
            detail::SlotMap left[3];
            {
                std::lock_guard<std::mutex> lock(callbacks->mutex);
                left[0].swap(callbacks->status);
                left[1].swap(callbacks->watches);
                left[2].swap(callbacks->starting);
            }
            for (auto &map : left)
                for (auto &entry : map) detail::bury(std::move(entry.second));
        }

        // On a new thread; false (`remains` untouched) when none could be made.
        static bool finish_elsewhere(Remains &remains) noexcept {
            auto *moved = new (std::nothrow) Remains(std::move(remains));
            if (moved == nullptr) return false;
            try {
                std::thread([moved] {
                    moved->finish();
                    delete moved;
                }).detach();
                return true;
            } catch (...) {
                remains = std::move(*moved);
                delete moved;
                return false;
            }
        }
    };

    struct PendingUnregister {
        std::promise<void> promise;
        detail::SlotMap::node_type status_callback;  // done for good once the callback runs
    };

    // etcd_registry_unregister_async's callback: it owns the pending call; nothing may throw
    // back into the library.
    static void on_unregistered(void *user_data, etcd_registry_status status,
                                const char *message) noexcept {
        const detail::AsyncScope scope;
        std::unique_ptr<PendingUnregister> pending(static_cast<PendingUnregister *>(user_data));
        // The status callback is done for good (its UNREGISTERED call has returned): freed
        // before the future is ready, so that nothing of the registration is left by then.
        { detail::SlotMap::node_type done = std::move(pending->status_callback); }
        try {
            if (status == ETCD_REGISTRY_STATUS_OK)
                pending->promise.set_value();
            else
                pending->promise.set_exception(std::make_exception_ptr(Error(status, detail::str(message))));
        } catch (...) {
        }
    }

    // etcd_registry_list_async's callback: it owns the promise (and the list); nothing may
    // throw back into the library.
    static void on_listed(void *user_data, etcd_registry_status status, const char *message,
                          etcd_registry_node_list *list) noexcept {
        std::unique_ptr<std::promise<std::vector<Node>>> promise(
            static_cast<std::promise<std::vector<Node>> *>(user_data));
        try {
            if (status == ETCD_REGISTRY_STATUS_OK)
                promise->set_value(nodes_of(list));
            else
                promise->set_exception(std::make_exception_ptr(Error(status, detail::str(message))));
        } catch (...) {
            try {
                promise->set_exception(std::current_exception());
            } catch (...) {
            }
        }
    }

    static std::vector<Node> nodes_of(etcd_registry_node_list *raw) {
        std::unique_ptr<etcd_registry_node_list, detail::NodeListFree> list(raw);
        const size_t len = etcd_registry_node_list_len(list.get());
        const etcd_registry_node_entry *entries = etcd_registry_node_list_entries(list.get());
        std::vector<Node> nodes;
        nodes.reserve(len);
        for (size_t i = 0; i < len; i++) {
            Node node{std::string(entries[i].name, entries[i].name_len),
                      detail::str(etcd_registry_node_list_info_json(list.get(), i)), {}};
            for (size_t j = 0; j < entries[i].info_len; j++)
                node.info.emplace(std::string(entries[i].info[j].key, entries[i].info[j].key_len),
                                  std::string(entries[i].info[j].value, entries[i].info[j].value_len));
            nodes.push_back(std::move(node));
        }
        return nodes;
    }

    // Declared first, destroyed last: callbacks outlive the handle that calls them.
    std::shared_ptr<detail::Callbacks> callbacks_;
    std::unique_ptr<etcd_registry, detail::RegistryFree> registry_;
};

}  // namespace etcdreg
