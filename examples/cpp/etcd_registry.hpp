// etcd_registry.hpp — a small RAII wrapper over the etcd_registry C API (header only, C++17).
//
//   etcdreg::Registry registry(etcdreg::Config().endpoints("127.0.0.1:2379"));
//   auto id = registry.register_node("api", "node-1", R"({"address":"10.0.0.5:8080"})",
//                                    std::chrono::seconds(10),
//                                    [](const etcdreg::StatusEvent &e) { /* ... */ });
//   for (const auto &node : registry.list("api")) std::cout << node.name << "\n";
//   std::future<std::vector<etcdreg::Node>> nodes = registry.list_async("api");  // no thread blocked
//   registry.unregister_async(id).get();  // or wait elsewhere: no thread blocked meanwhile
//
// - Handles are std::unique_ptr with the C free functions as deleters.
// - Every failing status throws etcdreg::Error (status code + the library's message).
// - Callbacks are std::function, called on the library's callback thread (one call at a time,
//   in order per registration/watch). The wrapper owns them and destroys each one only when
//   the C library guarantees it will not be called again (after unregister/unwatch/close).
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
#include <stdexcept>
#include <string>
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
inline std::string str(const char *s) { return s != nullptr ? std::string(s) : std::string(); }

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

// Set while this thread runs one of our callbacks: a std::function must not be destroyed
// while it runs, so an unregister from inside a callback defers the destruction.
inline thread_local bool in_callback = false;
struct CallbackScope {
    CallbackScope() { in_callback = true; }
    ~CallbackScope() { in_callback = false; }
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
    Config &endpoints(const std::string &comma_separated) {
        detail::check(etcd_registry_config_set_endpoints(config_.get(), comma_separated.c_str()));
        return *this;
    }
    Config &base_path(const std::string &path) {
        detail::check(etcd_registry_config_set_base_path(config_.get(), path.c_str()));
        return *this;
    }
    Config &credentials(const std::string &user, const std::string &password) {
        detail::check(etcd_registry_config_set_credentials(config_.get(), user.c_str(), password.c_str()));
        return *this;
    }
    Config &timeout(std::chrono::milliseconds t) {
        detail::check(etcd_registry_config_set_timeout_ms(config_.get(), static_cast<uint64_t>(t.count())));
        return *this;
    }
    Config &backoff(std::chrono::milliseconds min, std::chrono::milliseconds max) {
        detail::check(etcd_registry_config_set_backoff_ms(config_.get(), static_cast<uint64_t>(min.count()),
                                                          static_cast<uint64_t>(max.count())));
        return *this;
    }
    const etcd_registry_config *get() const noexcept { return config_.get(); }

  private:
    std::unique_ptr<etcd_registry_config, detail::ConfigFree> config_;
};

class Registry {
  public:
    using StatusCallback = std::function<void(const StatusEvent &)>;
    using WatchCallback = std::function<void(const WatchEvent &)>;

    explicit Registry(const Config &config) {
        etcd_registry *raw = nullptr;
        detail::check(etcd_registry_connect(config.get(), &raw));
        registry_.reset(raw);
    }
    Registry(const Registry &) = delete;
    Registry &operator=(const Registry &) = delete;

    // Frees the handle (closing it if needed); afterwards no callback runs, so they can go.
    ~Registry() { registry_.reset(); }

    uint64_t register_node(const std::string &service, const std::string &node,
                           const std::map<std::string, std::string> &info,
                           std::chrono::milliseconds ttl, StatusCallback callback) {
        std::vector<etcd_registry_info_entry> entries;
        entries.reserve(info.size());
        for (const auto &kv : info)
            entries.push_back({kv.first.data(), kv.first.size(), kv.second.data(), kv.second.size()});
        auto owned = std::make_unique<StatusCallback>(std::move(callback));
        uint64_t id = 0;
        std::lock_guard<std::mutex> lock(mutex_);
        detail::check(etcd_registry_register(registry_.get(), service.c_str(), node.c_str(),
                                             entries.data(), entries.size(),
                                             static_cast<uint64_t>(ttl.count()),
                                             &Registry::status_trampoline, owned.get(), &id));
        status_callbacks_[id] = std::move(owned);
        return id;
    }

    void unregister(uint64_t id) {
        detail::check(etcd_registry_unregister(registry_.get(), id));
        release(status_callbacks_, id);  // the C call returned: the callback is done for good
    }

    // Unregisters without blocking: the registration is taken at once (unregistering it again
    // throws NOT_FOUND), and the future is ready once the key is deleted, or etcd could not be
    // reached (the shutdown rule: ready all the same), with the status callback done for good.
    // The library's callback makes it ready on a library thread and owns the status callback
    // meanwhile, so both outlive the Registry, if need be. Refusals throw here.
    std::future<void> unregister_async(uint64_t id) {
        auto pending = std::make_unique<PendingUnregister>();
        std::future<void> future = pending->promise.get_future();
        std::unique_lock<std::mutex> lock(mutex_);
        auto it = status_callbacks_.find(id);
        if (it != status_callbacks_.end()) {
            // Owned by the pending call from before it starts: its callback may run at once.
            pending->status_callback = std::move(it->second);
            status_callbacks_.erase(it);
        }
        PendingUnregister *raw = pending.release();
        const etcd_registry_status status =
            etcd_registry_unregister_async(registry_.get(), id, &Registry::on_unregistered, raw);
        if (status != ETCD_REGISTRY_STATUS_OK) {
            // The callback is never called then: nothing changed, the callback goes back.
            pending.reset(raw);
            if (pending->status_callback) status_callbacks_[id] = std::move(pending->status_callback);
            lock.unlock();
            detail::check(status);
        }
        return future;
    }

    void wait_registered(uint64_t id, std::chrono::milliseconds timeout) {
        detail::check(etcd_registry_wait_registered(registry_.get(), id, static_cast<uint64_t>(timeout.count())));
    }

    std::vector<Node> list(const std::string &service) {
        etcd_registry_node_list *raw = nullptr;
        detail::check(etcd_registry_list(registry_.get(), service.c_str(), &raw));
        return nodes_of(raw);
    }

    // Lists a service without blocking: the future gets the nodes, or an etcdreg::Error, once
    // etcd answers. The library's callback fulfils it on a library thread (so it may be ready
    // before this returns); it outlives the Registry, if need be. Refusals (a closed registry)
    // throw here.
    std::future<std::vector<Node>> list_async(const std::string &service) {
        auto *promise = new std::promise<std::vector<Node>>();
        std::future<std::vector<Node>> future = promise->get_future();
        const etcd_registry_status status =
            etcd_registry_list_async(registry_.get(), service.c_str(), &Registry::on_listed, promise);
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
        auto owned = std::make_unique<WatchCallback>(std::move(callback));
        uint64_t id = 0;
        // Not under mutex_: watch blocks on etcd, and the first events may be delivered (to
        // owned, which lives on) before the map entry exists.
        detail::check(etcd_registry_watch(registry_.get(), service.c_str(), &Registry::watch_trampoline,
                                          owned.get(), &id));
        std::lock_guard<std::mutex> lock(mutex_);
        watch_callbacks_[id] = std::move(owned);
        return id;
    }

    void unwatch(uint64_t id) {
        detail::check(etcd_registry_unwatch(registry_.get(), id));
        release(watch_callbacks_, id);
    }

    std::vector<Node> watch_nodes(uint64_t id) {
        etcd_registry_node_list *raw = nullptr;
        detail::check(etcd_registry_watch_nodes(registry_.get(), id, &raw));
        return nodes_of(raw);
    }

    // Unregisters everything (revoking the leases) and stops the watches. Idempotent.
    void close() { detail::check(etcd_registry_close(registry_.get())); }

  private:
    static void status_trampoline(const etcd_registry_status_event *e, void *user_data) {
        detail::CallbackScope scope;
        StatusEvent event{e->kind,
                          e->registration_id,
                          detail::str(e->service),
                          detail::str(e->node),
                          e->attempt,
                          std::chrono::milliseconds(e->delay_ms),
                          e->error_status,
                          detail::str(e->error_message),
                          e->lease_id};
        try {
            (*static_cast<StatusCallback *>(user_data))(event);
        } catch (...) {
            // Exceptions must not cross into the C library.
        }
    }

    static void watch_trampoline(const etcd_registry_watch_event *e, void *user_data) {
        detail::CallbackScope scope;
        WatchEvent event{e->kind, e->watch_id, detail::str(e->service), detail::str(e->node_name),
                         detail::str(e->info_json), e->revision, {}};
        for (size_t j = 0; j < e->info_len; j++)
            event.info.emplace(std::string(e->info[j].key, e->info[j].key_len),
                               std::string(e->info[j].value, e->info[j].value_len));
        try {
            (*static_cast<WatchCallback *>(user_data))(event);
        } catch (...) {
        }
    }

    template <typename Map>
    void release(Map &map, uint64_t id) {
        std::unique_lock<std::mutex> lock(mutex_);
        auto it = map.find(id);
        if (it == map.end()) return;
        auto owned = std::move(it->second);
        map.erase(it);
        if (detail::in_callback) {
            // Possibly our own std::function, still running: destroy it with the registry.
            graveyard_.emplace_back(owned.release(), [](void *p) { delete static_cast<typename Map::mapped_type::element_type *>(p); });
        }
        lock.unlock();
        // `owned` (if still set) is destroyed here, outside the lock.
    }

    // An unregister_async in flight: what its callback owns.
    struct PendingUnregister {
        std::promise<void> promise;
        std::unique_ptr<StatusCallback> status_callback;  // done for good once the callback runs
    };

    // etcd_registry_unregister_async's callback: it owns the pending call; nothing may throw
    // back into the library.
    static void on_unregistered(void *user_data, etcd_registry_status status,
                                const char *message) noexcept {
        std::unique_ptr<PendingUnregister> pending(static_cast<PendingUnregister *>(user_data));
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
    std::mutex mutex_;
    std::map<uint64_t, std::unique_ptr<StatusCallback>> status_callbacks_;
    std::map<uint64_t, std::unique_ptr<WatchCallback>> watch_callbacks_;
    std::vector<std::unique_ptr<void, void (*)(void *)>> graveyard_;
    std::unique_ptr<etcd_registry, detail::RegistryFree> registry_;
};

}  // namespace etcdreg
