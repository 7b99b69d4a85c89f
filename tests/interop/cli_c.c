/* The C interop program (see tests/interop/README.md). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd_registry.h"

static void die(const char *what, etcd_registry_status status) {
    fprintf(stderr, "%s: %s: %s\n", what, etcd_registry_status_name(status),
            etcd_registry_last_error_message());
    exit(1);
}

#define CHECK(what, call)                              \
    do {                                               \
        etcd_registry_status s_ = (call);              \
        if (s_ != ETCD_REGISTRY_STATUS_OK) die(what, s_); \
    } while (0)

static void ignore_status(const etcd_registry_status_event *e, void *u) { (void)e; (void)u; }
static void ignore_watch(const etcd_registry_watch_event *e, void *u) { (void)e; (void)u; }

/* Prints [{"name": ..., "info": {...}}, ...]; the library returns nodes sorted by name, and info
 * JSON as stored by the library (a compact object with sorted keys). A node without an info
 * object (info_json "null") prints as {}, as the other languages' CLIs print it. */
static void dump(etcd_registry_node_list *list) {
    size_t n = etcd_registry_node_list_len(list);
    printf("[");
    for (size_t i = 0; i < n; i++) {
        const char *info = etcd_registry_node_list_info_json(list, i);
        printf("%s{\"name\": \"%s\", \"info\": %s}", i ? ", " : "",
               etcd_registry_node_list_name(list, i), strcmp(info, "null") == 0 ? "{}" : info);
    }
    printf("]\n");
}

int main(int argc, char **argv) {
    const char *endpoints = getenv("ETCD_ENDPOINTS");
    const char *base = getenv("ETCD_BASE_PATH");
    if (!endpoints || argc < 3) {
        fprintf(stderr, "usage: cli register|list|watch ... (ETCD_ENDPOINTS set)\n");
        return 2;
    }
    etcd_registry_config *config = NULL;
    etcd_registry *reg = NULL;
    CHECK("config", etcd_registry_config_new(&config));
    CHECK("endpoints", etcd_registry_config_set_endpoints(config, endpoints));
    CHECK("base path", etcd_registry_config_set_base_path(config, base ? base : "/services"));
    CHECK("timeout", etcd_registry_config_set_timeout_ms(config, 5000));
    CHECK("connect", etcd_registry_connect(config, &reg));
    etcd_registry_config_free(config);

    if (strcmp(argv[1], "register") == 0 && argc == 6) {
        uint64_t id = 0;
        CHECK("register", etcd_registry_register_json(reg, argv[2], argv[3], argv[4],
                                                 strtoull(argv[5], NULL, 10) * 1000, ignore_status,
                                                 NULL, &id));
        CHECK("wait", etcd_registry_wait_registered(reg, id, 30000));
        printf("registered\n");
        fflush(stdout);
        while (getchar() != EOF) {
        }
        CHECK("unregister", etcd_registry_unregister(reg, id));
    } else if (strcmp(argv[1], "list") == 0) {
        etcd_registry_node_list *list = NULL;
        CHECK("list", etcd_registry_list(reg, argv[2], &list));
        dump(list);
        etcd_registry_node_list_free(list);
    } else if (strcmp(argv[1], "watch") == 0 && argc == 4) {
        size_t want = strtoul(argv[3], NULL, 10);
        uint64_t id = 0;
        CHECK("watch", etcd_registry_watch(reg, argv[2], ignore_watch, NULL, &id));
        time_t deadline = time(NULL) + 30;
        for (;;) {
            etcd_registry_node_list *list = NULL;
            CHECK("watch nodes", etcd_registry_watch_nodes(reg, id, &list));
            if (etcd_registry_node_list_len(list) >= want) {
                dump(list);
                etcd_registry_node_list_free(list);
                break;
            }
            etcd_registry_node_list_free(list);
            if (time(NULL) > deadline) {
                fprintf(stderr, "watch: timed out\n");
                return 1;
            }
            struct timespec pause = {0, 20 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
        CHECK("unwatch", etcd_registry_unwatch(reg, id));
    } else {
        fprintf(stderr, "usage: cli register|list|watch ...\n");
        return 2;
    }
    CHECK("close", etcd_registry_close(reg));
    etcd_registry_free(reg);
    return 0;
}
