// example.cpp — the RAII wrapper in use: register two nodes, list them, watch the service.
//
//   ETCD_ENDPOINTS=127.0.0.1:2379 ./example
#include "etcd_registry.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

int main() {
    using namespace std::chrono_literals;
    const char *env = std::getenv("ETCD_ENDPOINTS");
    std::string endpoints = env != nullptr && *env != '\0' ? env : "127.0.0.1:2379";
    try {
        // Captured by reference in the watch callback: declared before the Registry, so that it
        // is destroyed after it (~Registry stops the callbacks), even on an exception.
        std::atomic<int> added{0};
        etcdreg::Registry registry(etcdreg::Config().endpoints(endpoints).base_path("/services"));

        auto on_status = [](const etcdreg::StatusEvent &e) {
            if (e.kind == ETCD_REGISTRY_STATUS_KIND_REGISTERED)
                std::cout << "registered " << e.service << "/" << e.node << "\n";
        };
        auto first = registry.register_node("cpp-api", "node-1", {{"address", "10.0.0.5:8080"}}, 10s, on_status);
        registry.wait_registered(first, 5s);

        auto watch = registry.watch("cpp-api", [&added](const etcdreg::WatchEvent &e) {
            if (e.kind == ETCD_REGISTRY_WATCH_KIND_ADDED) {
                std::cout << "watch: added " << e.node_name << " " << e.info_json << "\n";
                added++;
            }
        });
        auto second = registry.register_node("cpp-api", "node-2", {{"address", "10.0.0.6:8080"}}, 10s, on_status);
        registry.wait_registered(second, 5s);
        for (int i = 0; i < 200 && added < 2; i++) std::this_thread::sleep_for(50ms);

        for (const auto &node : registry.list("cpp-api")) {
            const auto address = node.info.find("address");  // another program's node may lack it
            std::cout << "list: " << node.name << " address="
                      << (address != node.info.end() ? address->second : "-") << "\n";
        }
        // The same list without blocking: the future is fulfilled by the library's callback.
        auto pending = registry.list_async("cpp-api");
        const size_t async_nodes = pending.get().size();
        std::cout << "list_async: " << async_nodes << " nodes\n";
        bool listed = false;
        for (const auto &service : registry.services()) listed = listed || service == "cpp-api";
        std::cout << "services include cpp-api: " << (listed ? "yes" : "no") << "\n";
        std::cout << "etcd in use: " << registry.active_endpoint() << "\n";

        registry.unwatch(watch);  // after this the lambda (and `added`) are no longer used
        registry.unregister(first);
        // Without blocking: the future is ready once the key is deleted.
        auto unregistered = registry.unregister_async(second);
        unregistered.get();
        const size_t left = registry.list("cpp-api").size();
        std::cout << "after unregister_async: " << left << " nodes\n";

        try {
            registry.register_node("cpp-api", "", {}, 10s, on_status);
        } catch (const etcdreg::Error &e) {
            std::cout << "expected error: " << e.what() << " (status " << e.status() << ")\n";
        }
        bool async_refused = false;
        try {
            registry.list_async("").get();  // the error comes through the future
        } catch (const etcdreg::Error &e) {
            std::cout << "expected error from list_async: " << e.what() << "\n";
            async_refused = e.status() == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT;
        }
        registry.close();
        std::cout << "done (" << added << " added)\n";
        return added == 2 && listed && async_nodes == 2 && async_refused && left == 0 ? 0 : 1;
    } catch (const etcdreg::Error &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    } catch (const std::exception &e) {  // unwinds through ~Registry, which closes it
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
