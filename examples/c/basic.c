/*
 * basic.c — register a node, list the service, watch it.
 *
 *   ETCD_ENDPOINTS=127.0.0.1:2379 ./basic
 *
 * Build:  cc basic.c -o basic $(pkg-config --cflags --libs etcd_registry)
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <etcd_registry.h>

/* Prints the failure and exits: the status name plus the library's message. */
static void check(etcd_registry_status status, const char *what) {
    if (status != ETCD_REGISTRY_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, etcd_registry_status_name(status),
                etcd_registry_last_error_message());
        exit(1);
    }
}

/* Called on the library's callback thread, one call at a time, in order. */
static void on_status(const etcd_registry_status_event *event, void *user_data) {
    (void)user_data;
    if (event->kind == ETCD_REGISTRY_STATUS_KIND_REGISTERED)
        printf("status: %s/%s registered (lease %llx)\n", event->service, event->node,
               (unsigned long long)event->lease_id);
    else if (event->error_message != NULL)
        printf("status: kind %u: %s\n", event->kind, event->error_message);
}

static void on_watch(const etcd_registry_watch_event *event, void *user_data) {
    atomic_int *seen = user_data;
    const char *kind = event->kind == ETCD_REGISTRY_WATCH_KIND_ADDED     ? "added"
                       : event->kind == ETCD_REGISTRY_WATCH_KIND_UPDATED ? "updated"
                       : event->kind == ETCD_REGISTRY_WATCH_KIND_REMOVED ? "removed"
                                                                         : "resynced";
    printf("watch: %s %s %s\n", kind, event->node_name ? event->node_name : "-",
           event->info_json ? event->info_json : "");
    atomic_fetch_add(seen, 1);
}

int main(void) {
    const char *endpoints = getenv("ETCD_ENDPOINTS");
    if (endpoints == NULL || *endpoints == '\0') endpoints = "127.0.0.1:2379";

    etcd_registry_config *config = NULL;
    check(etcd_registry_config_new(&config), "config_new");
    check(etcd_registry_config_set_endpoints(config, endpoints), "set_endpoints");
    check(etcd_registry_config_set_base_path(config, "/services"), "set_base_path");

    etcd_registry *registry = NULL;
    check(etcd_registry_connect(config, &registry), "connect");
    etcd_registry_config_free(config); /* connect copied it */

    /* Register: returns at once; the library registers (and keeps registering) in the
     * background. wait_registered waits for the first success. */
    /* Info is an array of key/value entries, each string with its length. */
    const etcd_registry_info_entry info[] = {
        {"address", strlen("address"), "10.0.0.5:8080", strlen("10.0.0.5:8080")},
        {"version", strlen("version"), "1.2.0", strlen("1.2.0")},
    };
    uint64_t registration = 0;
    check(etcd_registry_register(registry, "api", "node-1", info, 2, 10000, on_status, NULL,
                                 &registration),
          "register");
    check(etcd_registry_wait_registered(registry, registration, 5000), "wait_registered");

    /* List. */
    etcd_registry_node_list *nodes = NULL;
    check(etcd_registry_list(registry, "api", &nodes), "list");
    for (size_t i = 0; i < etcd_registry_node_list_len(nodes); i++) {
        /* NULL for a node without that key (another program's node in the same service). */
        const char *address = etcd_registry_node_list_info_value(nodes, i, "address");
        printf("list: %s address=%s info=%s\n", etcd_registry_node_list_name(nodes, i),
               address ? address : "-", etcd_registry_node_list_info_json(nodes, i));
    }
    etcd_registry_node_list_free(nodes);

    /* Watch: ADDED for node-1 first, then ADDED for node-2 registered below. */
    atomic_int seen = 0;
    uint64_t watch = 0;
    check(etcd_registry_watch(registry, "api", on_watch, &seen, &watch), "watch");
    uint64_t second = 0;
    /* The same with the info as JSON, a convenience. */
    check(etcd_registry_register_json(registry, "api", "node-2",
                                      "{\"address\":\"10.0.0.6:8080\"}", 10000, on_status, NULL,
                                      &second),
          "register node-2");
    check(etcd_registry_wait_registered(registry, second, 5000), "wait_registered node-2");
    for (int i = 0; i < 200 && atomic_load(&seen) < 2; i++) usleep(50 * 1000); /* <= 10 s */

    /* The watch also keeps the live set, without asking etcd. */
    etcd_registry_node_list *live = NULL;
    check(etcd_registry_watch_nodes(registry, watch, &live), "watch_nodes");
    printf("live set: %zu nodes\n", etcd_registry_node_list_len(live));
    etcd_registry_node_list_free(live);

    /* unwatch: once it returns, on_watch is never called again, so `seen` may go away. */
    check(etcd_registry_unwatch(registry, watch), "unwatch");
    printf("watch events: %d\n", atomic_load(&seen));

    /* close revokes the lease, which deletes both keys at once. */
    check(etcd_registry_close(registry), "close");
    etcd_registry_free(registry);
    printf("done\n");
    return 0;
}
