/* The C interop program (see tests/interop/README.md). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
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

static const char *kind_name(etcd_registry_status_kind kind) {
    switch (kind) {
    case ETCD_REGISTRY_STATUS_KIND_REGISTERED: return "registered";
    case ETCD_REGISTRY_STATUS_KIND_FAILED: return "failed";
    case ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST: return "keepalive_lost";
    case ETCD_REGISTRY_STATUS_KIND_RETRYING: return "retrying";
    case ETCD_REGISTRY_STATUS_KIND_REREGISTERED: return "reregistered";
    case ETCD_REGISTRY_STATUS_KIND_UNREGISTERED: return "unregistered";
    case ETCD_REGISTRY_STATUS_KIND_UPDATED: return "updated";
    default: return "unknown";
    }
}

/* events: one line "<node> <kind>" per status event, from the callback thread. */
static void print_status(const etcd_registry_status_event *e, void *u) {
    (void)u;
    printf("%s %s\n", e->node, kind_name(e->kind));
    fflush(stdout);
}

/* events ... pull: the same lines, from a thread pulling until the registry is closed. */
static void *print_pulled(void *arg) {
    etcd_registry *reg = arg;
    etcd_registry_event *e = NULL;
    while (etcd_registry_next_event(reg, ETCD_REGISTRY_WAIT_FOREVER, &e) == ETCD_REGISTRY_STATUS_OK) {
        if (e->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS) print_status(&e->status, NULL);
        etcd_registry_event_free(e);
    }
    return NULL;
}

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

static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

static void print_watch_nodes(etcd_registry *reg, uint64_t id) {
    etcd_registry_node_list *list = NULL;
    etcd_registry_status s = etcd_registry_watch_nodes(reg, id, &list);
    /* A callback running while main unwatches finds the watch gone already. */
    if (s == ETCD_REGISTRY_STATUS_NOT_FOUND) return;
    CHECK("watch nodes", s);
    dump(list);
    etcd_registry_node_list_free(list);
    fflush(stdout);
}

/* follow: the live set after each event. */
static void print_live(const etcd_registry_watch_event *e, void *reg) {
    pthread_mutex_lock(&print_lock);
    print_watch_nodes(reg, e->watch_id);
    pthread_mutex_unlock(&print_lock);
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
        /* Commands on stdin: "register NAME INFO_JSON" (same service and TTL) and
         * "unregister NAME", each answered once done; the registry stays open until EOF. */
        struct { char name[64]; uint64_t id; } held[16] = {{"", id}};
        size_t n_held = 1;
        snprintf(held[0].name, sizeof held[0].name, "%s", argv[3]);
        char line[1024];
        while (fgets(line, sizeof line, stdin)) {
            line[strcspn(line, "\n")] = '\0';
            char *command = strtok(line, " "), *name = strtok(NULL, " "), *info = strtok(NULL, "");
            if (command && name && info && strcmp(command, "register") == 0 && n_held < 16) {
                CHECK("register", etcd_registry_register_json(reg, argv[2], name, info,
                                                         strtoull(argv[5], NULL, 10) * 1000,
                                                         ignore_status, NULL, &held[n_held].id));
                CHECK("wait", etcd_registry_wait_registered(reg, held[n_held].id, 30000));
                snprintf(held[n_held].name, sizeof held[n_held].name, "%s", name);
                n_held++;
                printf("registered %s\n", name);
            } else if (command && name && !info && strcmp(command, "unregister") == 0) {
                size_t i = 0;
                while (i < n_held && (held[i].id == 0 || strcmp(held[i].name, name) != 0)) i++;
                if (i == n_held) {
                    fprintf(stderr, "unregister: %s not held\n", name);
                    return 1;
                }
                CHECK("unregister", etcd_registry_unregister(reg, held[i].id));
                held[i].id = 0;
                printf("unregistered %s\n", name);
            } else {
                fprintf(stderr, "unknown command\n");
                return 2;
            }
            fflush(stdout);
        }
        if (held[0].id != 0) CHECK("unregister", etcd_registry_unregister(reg, held[0].id));
    } else if (strcmp(argv[1], "follow") == 0) {
        /* The live set, printed when the watch starts and after each of its events (from the
         * callback), until stdin closes. */
        uint64_t id = 0;
        CHECK("watch", etcd_registry_watch(reg, argv[2], print_live, reg, &id));
        pthread_mutex_lock(&print_lock);
        print_watch_nodes(reg, id);
        pthread_mutex_unlock(&print_lock);
        while (getchar() != EOF) {
        }
        CHECK("unwatch", etcd_registry_unwatch(reg, id));
    } else if (strcmp(argv[1], "events") == 0 && (argc == 4 || argc == 5)) {
        /* The scenario of tests/interop/test_events.py, driven by commands on stdin. */
        bool pull = argc == 5 && strcmp(argv[4], "pull") == 0;
        etcd_registry_status_callback callback = pull ? NULL : print_status;
        uint64_t ttl_ms = strtoull(argv[3], NULL, 10) * 1000, a = 0, b = 0;
        pthread_t puller;
        if (pull && pthread_create(&puller, NULL, print_pulled, reg) != 0) return 1;
        CHECK("register a", etcd_registry_register(reg, argv[2], "a", NULL, 0, ttl_ms, callback, NULL, &a));
        char line[64];
        while (fgets(line, sizeof line, stdin)) {
            if (strcmp(line, "unregister\n") == 0) {
                CHECK("unregister", etcd_registry_unregister(reg, a));
                CHECK("register b", etcd_registry_register(reg, argv[2], "b", NULL, 0, ttl_ms, callback, NULL, &b));
            } else if (strcmp(line, "close\n") == 0) {
                break;
            }
        }
        CHECK("close", etcd_registry_close(reg));
        if (pull) pthread_join(puller, NULL);
        printf("end\n");
        etcd_registry_free(reg);
        return 0;
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
        fprintf(stderr, "usage: cli register|list|watch|follow|events ...\n");
        return 2;
    }
    CHECK("close", etcd_registry_close(reg));
    etcd_registry_free(reg);
    return 0;
}
