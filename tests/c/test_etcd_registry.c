/*
 * C test suite of libetcd_registry against a real etcd, run by tests/c/run.sh under
 * `etcd-harness run`, which provides:
 *   ETCD_ENDPOINTS        comma-separated client endpoints
 *   ETCD_HARNESS_CONTROL  the harness control socket
 *   ETCD_HARNESS_BIN      the harness binary (for `ctl` commands: kill, start, leases …)
 *
 *   test_etcd_registry [NAME_SUBSTRING...]   runs every test, or those whose name matches
 *
 * Prints one line per test and finally "N passed, M failed"; exits 1 if any failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_registry.h"
#include "check.h"

#ifdef HAVE_VALGRIND
#include <valgrind/memcheck.h>
#endif

/* ---------------------------------------------------------------- tiny test framework */



/* ---------------------------------------------------------------- harness and helpers */

static const char *endpoints;

/* Runs `etcd-harness ctl SOCKET <command>` and returns the integer "value" of the reply
 * (or 0 when there is none); -1 when the command failed. */
static long long harness(const char *fmt, ...) {
    const char *bin = getenv("ETCD_HARNESS_BIN");
    const char *sock = getenv("ETCD_HARNESS_CONTROL");
    if (bin == NULL || sock == NULL) {
        fprintf(stderr, "    ETCD_HARNESS_BIN / ETCD_HARNESS_CONTROL not set\n");
        return -1;
    }
    char command[512], line[4096];
    va_list args;
    va_start(args, fmt);
    vsnprintf(command, sizeof command, fmt, args);
    va_end(args);
    char shell[1024];
    snprintf(shell, sizeof shell, "\"%s\" ctl \"%s\" %s", bin, sock, command);
    FILE *p = popen(shell, "r");
    if (p == NULL) return -1;
    size_t n = fread(line, 1, sizeof line - 1, p);
    line[n] = '\0';
    int rc = pclose(p);
    if (rc != 0 || strstr(line, "\"ok\":true") == NULL) {
        fprintf(stderr, "    harness %s: %s\n", command, line);
        return -1;
    }
    const char *value = strstr(line, "\"value\":");
    return value ? strtoll(value + 8, NULL, 10) : 0;
}

/* The whole reply of `etcd-harness ctl SOCKET <command>` (malloc'd), or NULL when the command
 * failed. */
static char *harness_reply(const char *command) {
    const char *bin = getenv("ETCD_HARNESS_BIN");
    const char *sock = getenv("ETCD_HARNESS_CONTROL");
    if (bin == NULL || sock == NULL) return NULL;
    char shell[1024];
    snprintf(shell, sizeof shell, "\"%s\" ctl \"%s\" %s", bin, sock, command);
    FILE *p = popen(shell, "r");
    if (p == NULL) return NULL;
    size_t len = 0, cap = 4096;
    char *reply = malloc(cap);
    size_t n;
    while (reply != NULL && (n = fread(reply + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *bigger = realloc(reply, cap * 2);
            if (bigger == NULL) free(reply);
            reply = bigger;
            cap *= 2;
        }
    }
    int rc = pclose(p);
    if (reply == NULL) return NULL;
    reply[len] = '\0';
    if (rc != 0 || strstr(reply, "\"ok\":true") == NULL) {
        fprintf(stderr, "    harness %s: %s\n", command, reply);
        free(reply);
        return NULL;
    }
    return reply;
}

/* 1 when etcd holds lease `lease`, 0 when it does not, -1 when asking failed. Unlike the number
 * of leases, it does not depend on what the tests before left in the shared etcd. */
static int etcd_has_lease(int64_t lease) {
    char *reply = harness_reply("leases");
    if (reply == NULL) return -1;
    const char *c = strstr(reply, "\"value\":[");
    int found = c == NULL ? -1 : 0;
    for (c = c ? c + strlen("\"value\":[") : ""; *c != '\0' && *c != ']';) {
        char *end = NULL;
        long long id = strtoll(c, &end, 10);
        if (end == c) {
            c++;
            continue;
        }
        if (id == lease) found = 1;
        c = end;
    }
    free(reply);
    return found;
}

/* How many keys under `prefix` etcd has attached to lease `lease`; -1 when asking failed. */
static long etcd_lease_keys(int64_t lease, const char *prefix) {
    char command[128];
    snprintf(command, sizeof command, "etcdctl lease timetolive %llx --keys", (unsigned long long)lease);
    char *reply = harness_reply(command);
    if (reply == NULL) return -1;
    long count = 0;
    for (const char *c = strstr(reply, prefix); c != NULL; c = strstr(c + 1, prefix)) count++;
    free(reply);
    return count;
}

/* Whether etcd holds `json` under `key` (defined with the update tests below). */
static bool etcd_value_is(const char *key, const char *json);

static etcd_registry_config *make_config(const char *eps) {
    etcd_registry_config *config = NULL;
    if (etcd_registry_config_new(&config) != ETCD_REGISTRY_STATUS_OK) return NULL;
    if (etcd_registry_config_set_endpoints(config, eps) != ETCD_REGISTRY_STATUS_OK ||
        etcd_registry_config_set_base_path(config, "/ctest") != ETCD_REGISTRY_STATUS_OK ||
        etcd_registry_config_set_timeout_ms(config, (uint64_t)(5000 * slow)) != ETCD_REGISTRY_STATUS_OK ||
        etcd_registry_config_set_backoff_ms(config, 200, 1000) != ETCD_REGISTRY_STATUS_OK) {
        etcd_registry_config_free(config);
        return NULL;
    }
    return config;
}

static etcd_registry *connect_to(const char *eps) {
    etcd_registry_config *config = make_config(eps);
    etcd_registry *registry = NULL;
    if (config != NULL && etcd_registry_connect(config, &registry) != ETCD_REGISTRY_STATUS_OK) {
        fprintf(stderr, "    connect: %s\n", etcd_registry_last_error_message());
        registry = NULL;
    }
    etcd_registry_config_free(config);
    return registry;
}

static etcd_registry *connect_etcd(void) { return connect_to(endpoints); }

/* Number of nodes of `service` as a fresh listing shows them; -1 on error. */
static long count_nodes(etcd_registry *registry, const char *service) {
    etcd_registry_node_list *list = NULL;
    if (etcd_registry_list(registry, service, &list) != ETCD_REGISTRY_STATUS_OK) return -1;
    long n = (long)etcd_registry_node_list_len(list);
    /* The flat array agrees: NULL exactly when the list is empty. */
    if ((etcd_registry_node_list_entries(list) == NULL) != (n == 0)) n = -2;
    etcd_registry_node_list_free(list);
    return n;
}

/* Lists through a separate registry (so it also works when `registry` is closed). */
static long count_nodes_fresh(const char *service) {
    etcd_registry *other = connect_etcd();
    if (other == NULL) return -1;
    long n = count_nodes(other, service);
    etcd_registry_free(other);
    return n;
}

/* Whether a call on `registry` reports CLOSED. */
static bool is_closed(etcd_registry *registry) {
    etcd_registry_node_list *list = NULL;
    etcd_registry_status s = etcd_registry_list(registry, "probe", &list);
    etcd_registry_node_list_free(list);
    return s == ETCD_REGISTRY_STATUS_CLOSED;
}

/* Whether a close of `registry` has begun (or finished): calls refuse with CLOSED from the moment
 * it starts, long before it returns. Does not block or reach etcd, so another thread (a held
 * callback, a releaser) can poll it while close runs. */
static bool close_begun(etcd_registry *registry) {
    uint64_t dropped = 0;
    return etcd_registry_dropped_events(registry, 0, &dropped) == ETCD_REGISTRY_STATUS_CLOSED;
}

/* Whether the live set of `watch` has `n` nodes, the first with info value v == `v`. */
static bool live_set_is(etcd_registry *registry, uint64_t watch, size_t n, const char *v) {
    etcd_registry_node_list *live = NULL;
    if (etcd_registry_watch_nodes(registry, watch, &live) != ETCD_REGISTRY_STATUS_OK) return false;
    const char *first = etcd_registry_node_list_info_value(live, 0, "v");
    bool ok = etcd_registry_node_list_len(live) == n && first != NULL && strcmp(first, v) == 0;
    etcd_registry_node_list_free(live);
    return ok;
}

/* Number of nodes in the live set of `watch`; -1 on error. */
static long live_set_size(etcd_registry *registry, uint64_t watch) {
    etcd_registry_node_list *live = NULL;
    if (etcd_registry_watch_nodes(registry, watch, &live) != ETCD_REGISTRY_STATUS_OK) return -1;
    long n = (long)etcd_registry_node_list_len(live);
    etcd_registry_node_list_free(live);
    return n;
}

/* A free loopback port with nothing listening on it. */
static int dead_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    bind(fd, (struct sockaddr *)&addr, sizeof addr);
    getsockname(fd, (struct sockaddr *)&addr, &len);
    close(fd);
    return ntohs(addr.sin_port);
}

/* A registry on a port nobody listens on (written to `eps`), whose calls and registration
 * attempts give up after 1 s: connections are refused at once, and the tests using it only need
 * attempts to fail, so the timeout is not scaled for valgrind (50 s a failed attempt there). */
static etcd_registry *connect_dead(char *eps, size_t size) {
    snprintf(eps, size, "127.0.0.1:%d", dead_port());
    etcd_registry_config *config = make_config(eps);
    etcd_registry *registry = NULL;
    if (config == NULL || etcd_registry_config_set_timeout_ms(config, 1000) != ETCD_REGISTRY_STATUS_OK ||
        etcd_registry_connect(config, &registry) != ETCD_REGISTRY_STATUS_OK) {
        fprintf(stderr, "    connect: %s\n", etcd_registry_last_error_message());
        registry = NULL;
    }
    etcd_registry_config_free(config);
    return registry;
}

/* ---------------------------------------------------------------- callback recorders */

#define MAX_EVENTS 256

/* Records the events a callback receives, and on which thread. */
typedef struct {
    pthread_mutex_t mu;
    int count;
    uint32_t kinds[MAX_EVENTS];
    uint64_t ids[MAX_EVENTS];
    char names[MAX_EVENTS][64];
    etcd_registry_status errors[MAX_EVENTS];
    uint32_t attempts[MAX_EVENTS];
    uint64_t delays[MAX_EVENTS];
    bool messages[MAX_EVENTS];
    char first_message[256]; /* the first error message received */
    pthread_t thread;
    char thread_name[32];
    bool other_thread; /* a call came from a thread that is not the recorded one */
} recorder;

static void recorder_init(recorder *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

static void recorder_destroy(recorder *r) { pthread_mutex_destroy(&r->mu); }

static void record(recorder *r, uint32_t kind, uint64_t id, const char *name, etcd_registry_status error,
                   uint32_t attempt, uint64_t delay, const char *message) {
    pthread_mutex_lock(&r->mu);
    if (r->count == 0) {
        r->thread = pthread_self();
        pthread_getname_np(pthread_self(), r->thread_name, sizeof r->thread_name);
    } else if (!pthread_equal(r->thread, pthread_self())) {
        r->other_thread = true;
    }
    if (r->count < MAX_EVENTS) {
        r->kinds[r->count] = kind;
        r->ids[r->count] = id;
        snprintf(r->names[r->count], sizeof r->names[0], "%s", name ? name : "");
        r->errors[r->count] = error;
        r->attempts[r->count] = attempt;
        r->delays[r->count] = delay;
        r->messages[r->count] = message != NULL;
    }
    if (message != NULL && r->first_message[0] == '\0') {
        snprintf(r->first_message, sizeof r->first_message, "%s", message);
    }
    r->count++;
    pthread_mutex_unlock(&r->mu);
}

static void on_status(const etcd_registry_status_event *e, void *user_data) {
    record(user_data, e->kind, e->registration_id, e->node, e->error_status, e->attempt, e->delay_ms,
           e->error_message);
}

static void on_watch(const etcd_registry_watch_event *e, void *user_data) {
    record(user_data, e->kind, e->watch_id, e->node_name, ETCD_REGISTRY_STATUS_OK, 0, 0, e->info_json != NULL ? "" : NULL);
}

static int count_of(recorder *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->count;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Index of the first event of `kind` (for `name`, if not NULL) at or after `from`, or -1. */
static int find_event(recorder *r, uint32_t kind, const char *name, int from) {
    pthread_mutex_lock(&r->mu);
    int found = -1;
    for (int i = from; i < r->count && i < MAX_EVENTS; i++)
        if (r->kinds[i] == kind && (name == NULL || strcmp(r->names[i], name) == 0)) {
            found = i;
            break;
        }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* Registers `node` of `service` through a pull-mode watch in a second registry and waits until
 * that watch has seen it: the event then has passed through etcd, so every active watch of the
 * service has it too. Used to show that a stopped callback receives nothing any more. */
static bool barrier(const char *service, const char *node) {
    etcd_registry *other = connect_etcd();
    if (other == NULL) return false;
    uint64_t watch = 0, reg = 0;
    bool seen = false;
    if (etcd_registry_watch(other, service, NULL, NULL, &watch) == ETCD_REGISTRY_STATUS_OK &&
        etcd_registry_register_json(other, service, node, NULL, 10000, NULL, NULL, &reg) == ETCD_REGISTRY_STATUS_OK) {
        double deadline = now_s() + 10 * slow;
        while (!seen && now_s() < deadline) {
            etcd_registry_event *event = NULL;
            if (etcd_registry_next_event(other, 100, &event) != ETCD_REGISTRY_STATUS_OK) continue;
            seen = event->event_type == ETCD_REGISTRY_EVENT_TYPE_WATCH &&
                   event->watch.kind == ETCD_REGISTRY_WATCH_KIND_ADDED && strcmp(event->watch.node_name, node) == 0;
            etcd_registry_event_free(event);
        }
    }
    etcd_registry_free(other);
    return seen;
}

/* ---------------------------------------------------------------- tests: no etcd needed */

static void test_version_and_status_names(void) {
    const char *version = etcd_registry_version();
    REQUIRE(version != NULL);
    CHECK(strlen(version) >= 5 && strchr(version, '.') != NULL);
    /* The header's macros (generated from Cargo.toml) name the library that is linked. */
    CHECK(strcmp(version, ETCD_REGISTRY_VERSION) == 0);
    char parts[64];
    snprintf(parts, sizeof parts, "%d.%d.%d", ETCD_REGISTRY_VERSION_MAJOR, ETCD_REGISTRY_VERSION_MINOR,
             ETCD_REGISTRY_VERSION_PATCH);
    CHECK(strncmp(version, parts, strlen(parts)) == 0);
    CHECK(strcmp(etcd_registry_status_name(ETCD_REGISTRY_STATUS_OK), "ok") == 0);
    CHECK(strcmp(etcd_registry_status_name(ETCD_REGISTRY_STATUS_TIMEOUT), "timeout") == 0);
    CHECK(strcmp(etcd_registry_status_name(ETCD_REGISTRY_STATUS_INVALID_UTF8), "invalid utf-8") == 0);
    CHECK(strcmp(etcd_registry_status_name(12345), "unknown") == 0);
    /* The numbers are part of the ABI. */
    CHECK(ETCD_REGISTRY_STATUS_OK == 0 && ETCD_REGISTRY_STATUS_INVALID_ARGUMENT == 1 &&
          ETCD_REGISTRY_STATUS_NULL_POINTER == 2 && ETCD_REGISTRY_STATUS_CONNECTION == 3 &&
          ETCD_REGISTRY_STATUS_TIMEOUT == 4 && ETCD_REGISTRY_STATUS_AUTH == 5 &&
          ETCD_REGISTRY_STATUS_NOT_FOUND == 6 && ETCD_REGISTRY_STATUS_CLOSED == 7 &&
          ETCD_REGISTRY_STATUS_PANIC == 8 && ETCD_REGISTRY_STATUS_INTERNAL == 9 &&
          ETCD_REGISTRY_STATUS_INVALID_UTF8 == 10 && ETCD_REGISTRY_STATUS_TLS == 11);
    CHECK(strcmp(etcd_registry_status_name(ETCD_REGISTRY_STATUS_TLS), "tls") == 0);
    CHECK(ETCD_REGISTRY_STATUS_RESOURCE_EXHAUSTED == 12);
    CHECK(strcmp(etcd_registry_status_name(ETCD_REGISTRY_STATUS_RESOURCE_EXHAUSTED),
                 "resource exhausted") == 0);
}

static void test_config_setters_and_errors(void) {
    CHECK_STATUS(etcd_registry_config_new(NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    etcd_registry_config *c = NULL;
    REQUIRE_OK(etcd_registry_config_new(&c));
    REQUIRE(c != NULL);

    CHECK_OK(etcd_registry_config_set_endpoints(c, "127.0.0.1:1, http://127.0.0.1:2"));
    CHECK_OK(etcd_registry_config_add_endpoint(c, "127.0.0.1:3"));
    CHECK_OK(etcd_registry_config_set_base_path(c, "/x"));
    CHECK_OK(etcd_registry_config_set_base_path(c, ""));
    CHECK_OK(etcd_registry_config_set_credentials(c, "user", "pw"));
    CHECK_OK(etcd_registry_config_set_credentials(c, "user", NULL));
    CHECK_OK(etcd_registry_config_set_credentials(c, NULL, NULL));
    CHECK_OK(etcd_registry_config_set_timeout_ms(c, 1));
    CHECK_OK(etcd_registry_config_set_backoff_ms(c, 5, 5));
    CHECK_OK(etcd_registry_config_set_runtime_threads(c, 2));
    CHECK_OK(etcd_registry_config_set_tls_files(c, NULL, NULL, NULL));
    CHECK(strcmp(etcd_registry_last_error_message(), "") == 0);

    /* NULL handles and strings. */
    CHECK_STATUS(etcd_registry_config_set_endpoints(NULL, "a:1"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(strstr(etcd_registry_last_error_message(), "config") != NULL);
    CHECK_STATUS(etcd_registry_config_set_endpoints(c, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_add_endpoint(c, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_base_path(c, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_timeout_ms(NULL, 5), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_backoff_ms(NULL, 1, 2), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_runtime_threads(NULL, 2), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_credentials(NULL, "u", "p"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_tls_files(NULL, NULL, NULL, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);

    /* Invalid UTF-8. */
    CHECK_STATUS(etcd_registry_config_set_endpoints(c, "\xff\xfe:1"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_config_add_endpoint(c, "h\xc3:1"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_config_set_base_path(c, "/\xff"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_config_set_credentials(c, "u\xff", "p"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_config_set_credentials(c, "u", "p\xff"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_config_set_tls_files(c, "\xff", NULL, NULL), ETCD_REGISTRY_STATUS_INVALID_UTF8);

    /* Unusable values. */
    CHECK_STATUS(etcd_registry_config_set_endpoints(c, ""), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_endpoints(c, " , ,"), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_add_endpoint(c, "  "), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    /* add_endpoint checks the endpoint as connect does, with the core's message. */
    CHECK_STATUS(etcd_registry_config_add_endpoint(c, "no-port"), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE("malformed endpoint");
    CHECK_STATUS(etcd_registry_config_add_endpoint(c, "ftp://h:1"), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_timeout_ms(c, 0), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_backoff_ms(c, 0, 10), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_backoff_ms(c, 20, 10), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_runtime_threads(c, 0), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_runtime_threads(c, 65), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strlen(etcd_registry_last_error_message()) > 0);

    etcd_registry_config_free(c);
    etcd_registry_config_free(NULL);
}

static void test_last_error_is_thread_local_and_copyable(void) {
    CHECK_STATUS(etcd_registry_config_set_timeout_ms(NULL, 1), ETCD_REGISTRY_STATUS_NULL_POINTER);
    const char *message = etcd_registry_last_error_message();
    REQUIRE(message != NULL);
    size_t full = strlen(message);
    CHECK(full > 4);
    CHECK(etcd_registry_last_error_copy(NULL, 0) == full);
    char small[5];
    memset(small, 'x', sizeof small);
    CHECK(etcd_registry_last_error_copy(small, sizeof small) == full);
    CHECK(small[4] == '\0' && strncmp(small, message, 4) == 0);
    char big[256];
    CHECK(etcd_registry_last_error_copy(big, sizeof big) == full);
    CHECK(strcmp(big, etcd_registry_last_error_message()) == 0);

    /* A success clears it. */
    etcd_registry_config *c = NULL;
    CHECK_OK(etcd_registry_config_new(&c));
    CHECK(strcmp(etcd_registry_last_error_message(), "") == 0);
    CHECK(etcd_registry_last_error_copy(big, sizeof big) == 0 && big[0] == '\0');
    etcd_registry_config_free(c);
}

static void test_connect_errors(void) {
    etcd_registry *sentinel = (etcd_registry *)(uintptr_t)0x1;
    etcd_registry *r = sentinel;
    CHECK_STATUS(etcd_registry_connect(NULL, &r), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(r == sentinel); /* out-parameters are written only on success */

    etcd_registry_config *c = NULL;
    REQUIRE_OK(etcd_registry_config_new(&c));
    CHECK_STATUS(etcd_registry_connect(c, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT); /* no endpoint */
    CHECK(strstr(etcd_registry_last_error_message(), "endpoint") != NULL);
    CHECK_OK(etcd_registry_config_set_endpoints(c, "not-an-endpoint"));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_OK(etcd_registry_config_set_endpoints(c, "http://127.0.0.1:2379,https://127.0.0.1:2380"));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT); /* mixed */
    CHECK_OK(etcd_registry_config_set_endpoints(c, "127.0.0.1:2379"));
    CHECK_OK(etcd_registry_config_set_tls_files(c, "/ca.pem", NULL, NULL));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(etcd_registry_last_error_message(), "TLS") != NULL);
    CHECK(strstr(etcd_registry_last_error_message(), "/ca.pem") != NULL);
    CHECK(r == sentinel);
    etcd_registry_config_free(c);

    etcd_registry_free(NULL);
    etcd_registry_node_list_free(NULL);
    etcd_registry_event_free(NULL);
}

static void test_node_list_accessors_on_null(void) {
    CHECK(etcd_registry_node_list_len(NULL) == 0);
    CHECK(etcd_registry_node_list_name(NULL, 0) == NULL);
    CHECK(etcd_registry_node_list_info_json(NULL, 0) == NULL);
    CHECK(etcd_registry_node_list_info_value(NULL, 0, "k") == NULL);
    CHECK(etcd_registry_node_list_entries(NULL) == NULL);
    CHECK(etcd_registry_string_list_len(NULL) == 0);
    CHECK(etcd_registry_string_list_get(NULL, 0) == NULL);
    etcd_registry_string_list_free(NULL);
}

static void test_null_registry_everywhere(void) {
    uint64_t id = 0;
    uint32_t state = 0;
    int64_t lease = 0;
    etcd_registry_node_list *list = NULL;
    etcd_registry_event *event = NULL;
    CHECK_STATUS(etcd_registry_register_json(NULL, "s", "n", NULL, 1000, NULL, NULL, &id), ETCD_REGISTRY_STATUS_NULL_POINTER);
    /* The handle is checked before the info JSON, as by the entry variants. */
    CHECK_STATUS(etcd_registry_register_json(NULL, "s", "n", "{", 1000, NULL, NULL, &id), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_update_json(NULL, 1, "{"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_update_json(NULL, 1, "null"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_unregister(NULL, 1), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_update_json(NULL, 1, "{}"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_wait_registered(NULL, 1, 10), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_registration_state(NULL, 1, &state), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_registration_lease_id(NULL, 1, &lease), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_list(NULL, "s", &list), ETCD_REGISTRY_STATUS_NULL_POINTER);
    etcd_registry_string_list *services = NULL;
    CHECK_STATUS(etcd_registry_services(NULL, &services), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(services == NULL);
    CHECK_STATUS(etcd_registry_watch(NULL, "s", NULL, NULL, &id), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_unwatch(NULL, 1), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_watch_nodes(NULL, 1, &list), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_next_event(NULL, 0, &event), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_close(NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(id == 0 && state == 0 && lease == 0 && list == NULL && event == NULL);
}

/* ---------------------------------------------------------------- tests against etcd */

static void test_register_list_unregister(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    CHECK_OK(etcd_registry_register_json(r, "basic", "node-1", "{\"address\":\"10.0.0.5:8080\",\"zone\":\"eu\"}", 10000,
                                    on_status, &rec, &id));
    CHECK(id != 0);
    CHECK_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    uint32_t state = 0;
    CHECK_OK(etcd_registry_registration_state(r, id, &state));
    CHECK(state == ETCD_REGISTRY_STATE_REGISTERED);
    int64_t lease = 0;
    CHECK_OK(etcd_registry_registration_lease_id(r, id, &lease));
    CHECK(lease != 0);
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_REGISTERED, "node-1", 0) >= 0, 10 * slow));
    CHECK(rec.ids[0] == id);

    etcd_registry_node_list *list = NULL;
    CHECK_OK(etcd_registry_list(r, "basic", &list));
    REQUIRE(list != NULL);
    CHECK(etcd_registry_node_list_len(list) == 1);
    CHECK(strcmp(etcd_registry_node_list_name(list, 0), "node-1") == 0);
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 0), "{\"address\":\"10.0.0.5:8080\",\"zone\":\"eu\"}") == 0);
    CHECK(strcmp(etcd_registry_node_list_info_value(list, 0, "address"), "10.0.0.5:8080") == 0);
    CHECK(etcd_registry_node_list_info_value(list, 0, "missing") == NULL);
    CHECK(etcd_registry_node_list_info_value(list, 0, NULL) == NULL);
    CHECK(etcd_registry_node_list_info_value(list, 0, "\xff") == NULL);
    CHECK(etcd_registry_node_list_name(list, 1) == NULL);
    CHECK(etcd_registry_node_list_info_json(list, 1) == NULL);
    CHECK(etcd_registry_node_list_info_value(list, 1, "address") == NULL);
    /* The same node through the flat array. */
    const etcd_registry_node_entry *entries = etcd_registry_node_list_entries(list);
    REQUIRE(entries != NULL);
    CHECK(strcmp(entries[0].name, "node-1") == 0);
    REQUIRE(entries[0].info_len == 2);
    CHECK(strcmp(entries[0].info[0].key, "address") == 0 && strcmp(entries[0].info[0].value, "10.0.0.5:8080") == 0);
    CHECK(strcmp(entries[0].info[1].key, "zone") == 0 && strcmp(entries[0].info[1].value, "eu") == 0);
    etcd_registry_node_list_free(list);

    /* The key is where the Go library puts it: <base>/<service>/<node>, holding the info
     * registered (read from etcd itself, at that exact key). */
    CHECK(etcd_value_is("/ctest/basic/node-1", "{\"address\":\"10.0.0.5:8080\",\"zone\":\"eu\"}"));

    CHECK_OK(etcd_registry_unregister(r, id));
    CHECK(count_nodes(r, "basic") == 0);
    CHECK_STATUS(etcd_registry_unregister(r, id), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_registration_state(r, id, &state), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_wait_registered(r, id, 10), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_registration_lease_id(r, id, &lease), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_unregister(r, 987654321), ETCD_REGISTRY_STATUS_NOT_FOUND);
    /* unregister delivered UNREGISTERED before it returned, as the last event. */
    CHECK(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_UNREGISTERED, NULL, 0) == count_of(&rec) - 1);

    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

static void test_register_argument_errors(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    uint64_t id = 42;
#define REG(service, node, info, ttl) etcd_registry_register_json(r, service, node, info, ttl, NULL, NULL, &id)
    CHECK_STATUS(REG(NULL, "n", NULL, 1000), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(REG("argerr", NULL, NULL, 1000), ETCD_REGISTRY_STATUS_NULL_POINTER);
    /* The names are checked before the info JSON, as by etcd_registry_register. */
    CHECK_STATUS(REG(NULL, "n", "{", 1000), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(REG("argerr", NULL, "{", 1000), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(REG("arg\xff", "n", "{", 1000), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_register_json(r, "argerr", "n", NULL, 1000, NULL, NULL, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(REG("arg\xff", "n", NULL, 1000), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(REG("argerr", "n\xc3", NULL, 1000), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(REG("argerr", "n", "{\"a\":\"\xff\"}", 1000), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(REG("", "n", NULL, 1000), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(REG("argerr", "", NULL, 1000), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(REG("  ", "n", NULL, 1000), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(REG("argerr", "..", NULL, 1000), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(REG("argerr", "n", NULL, 0), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(etcd_registry_last_error_message(), "ttl") != NULL);
    CHECK_STATUS(REG("argerr", "n", NULL, UINT64_MAX), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    {
        /* Info larger than etcd accepts in one request (1.5 MiB). */
        size_t len = 2u << 20;
        char *big = malloc(len + 16);
        REQUIRE(big != NULL);
        memcpy(big, "{\"big\":\"", 8);
        memset(big + 8, 'x', len);
        memcpy(big + 8 + len, "\"}", 3);
        CHECK_STATUS(REG("argerr", "n", big, 1000), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(etcd_registry_last_error_message(), "too large") != NULL);
        free(big);
    }
    const char *bad_json[] = {"", "{", "[1,2]", "\"text\"", "42", "{\"a\":1}", "{\"a\":null}",
                              "{\"a\":{\"b\":\"c\"}}", "{\"a\":[\"x\"]}", "{\"\":\"empty key\"}",
                              "{\"a\":\"1\",\"a\":\"2\"}", "{\"a\":\"1\"} trailing"};
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        etcd_registry_status s = REG("argerr", "n", bad_json[i], 1000);
        if (s != ETCD_REGISTRY_STATUS_INVALID_ARGUMENT) {
            fprintf(stderr, "    info %s: got %s\n", bad_json[i], etcd_registry_status_name(s));
            current_failed = 1;
        }
    }
    /* A key given twice is refused, as in info entries, and said so. */
    CHECK_STATUS(REG("argerr", "n", "{\"a\":\"1\",\"a\":\"2\"}", 1000), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(etcd_registry_last_error_message(), "given twice") != NULL);
#undef REG
    CHECK(id == 42); /* never written by a failed call */
    CHECK(count_nodes(r, "argerr") == 0);

    /* NULL info is no info. */
    CHECK_OK(etcd_registry_register_json(r, "argerr", "no-info", NULL, 10000, NULL, NULL, &id));
    CHECK_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    etcd_registry_node_list *list = NULL;
    CHECK_OK(etcd_registry_list(r, "argerr", &list));
    CHECK(etcd_registry_node_list_len(list) == 1);
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 0), "{}") == 0);
    etcd_registry_node_list_free(list);

    /* "null" is no info object at all: stored as an empty value (as Go's library stores a nil
     * map), listed with info_json "null" and no entries. */
    CHECK_OK(etcd_registry_register_json(r, "argerr", "null-info", "null", 10000, NULL, NULL, &id));
    CHECK_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    list = NULL;
    CHECK_OK(etcd_registry_list(r, "argerr", &list));
    CHECK(etcd_registry_node_list_len(list) == 2);
    CHECK(strcmp(etcd_registry_node_list_name(list, 1), "null-info") == 0);
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 1), "null") == 0);
    CHECK(etcd_registry_node_list_entries(list)[1].info_len == 0);
    etcd_registry_node_list_free(list);
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
}

/* etcd_registry_check_register: for each set of arguments, the status and message that
 * etcd_registry_register gives, and nothing registered. */
static void test_check_register(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    etcd_registry_info_entry ok_info[] = {{"address", 7, "10.0.0.5:8080", 13}};
    etcd_registry_info_entry empty_key[] = {{"", 0, "x", 1}};
    etcd_registry_info_entry twice[] = {{"a", 1, "x", 1}, {"a", 1, "y", 1}};
    size_t big_len = 2u << 20;
    char *big = malloc(big_len);
    REQUIRE(big != NULL);
    memset(big, 'x', big_len);
    etcd_registry_info_entry too_large[] = {{"blob", 4, big, big_len}};
    etcd_registry_info_entry huge_value[] = {{"blob", 4, big, SIZE_MAX - 1}};
    struct {
        const char *service, *node;
        const etcd_registry_info_entry *info;
        size_t info_len;
        uint64_t ttl_ms;
        etcd_registry_status want;
    } cases[] = {
        {"checked", "n1", ok_info, 1, 10000, ETCD_REGISTRY_STATUS_OK},
        {"checked", "n1", NULL, ETCD_REGISTRY_NO_INFO, 10000, ETCD_REGISTRY_STATUS_OK},
        {NULL, "n1", NULL, 0, 10000, ETCD_REGISTRY_STATUS_NULL_POINTER},
        {"checked", "n\xc3", NULL, 0, 10000, ETCD_REGISTRY_STATUS_INVALID_UTF8},
        {"", "n1", NULL, 0, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "..", NULL, 0, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "n1", NULL, 0, 0, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "n1", NULL, 0, UINT64_MAX, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "n1", NULL, 1, 10000, ETCD_REGISTRY_STATUS_NULL_POINTER},
        {"checked", "n1", empty_key, 1, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "n1", twice, 2, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "n1", too_large, 1, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        /* Lengths no buffer can have: refused before anything is read. */
        {"checked", "n1", ok_info, SIZE_MAX / 2, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
        {"checked", "n1", huge_value, 1, 10000, ETCD_REGISTRY_STATUS_INVALID_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        etcd_registry_status got = etcd_registry_check_register(r, cases[i].service, cases[i].node, cases[i].info,
                                                                cases[i].info_len, cases[i].ttl_ms);
        if (got != cases[i].want) {
            fprintf(stderr, "    case %zu: got %s, want %s\n", i, etcd_registry_status_name(got),
                    etcd_registry_status_name(cases[i].want));
            current_failed = 1;
        }
        if (got == ETCD_REGISTRY_STATUS_OK) {
            continue;
        }
        char checked[256];
        etcd_registry_last_error_copy(checked, sizeof checked);
        uint64_t id = 42;
        etcd_registry_status reg = etcd_registry_register(r, cases[i].service, cases[i].node, cases[i].info,
                                                          cases[i].info_len, cases[i].ttl_ms, NULL, NULL, &id);
        if (reg != got || strcmp(checked, etcd_registry_last_error_message()) != 0) {
            fprintf(stderr, "    case %zu: check gave %s \"%s\", register %s \"%s\"\n", i,
                    etcd_registry_status_name(got), checked, etcd_registry_status_name(reg),
                    etcd_registry_last_error_message());
            current_failed = 1;
        }
        CHECK(id == 42);
    }
    free(big);
    /* Checking registers nothing, also for arguments that are good. */
    CHECK(count_nodes(r, "checked") == 0);
    CHECK_STATUS(etcd_registry_check_register(NULL, "checked", "n1", NULL, 0, 10000), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_OK(etcd_registry_close(r));
    CHECK_STATUS(etcd_registry_check_register(r, "checked", "n1", NULL, 0, 10000), ETCD_REGISTRY_STATUS_CLOSED);
    etcd_registry_free(r);
}

static void test_info_json_round_trip(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    uint64_t id = 0;
    /* Keys come back sorted; escapes and non-ASCII survive. */
    CHECK_OK(etcd_registry_register_json(r, "json", "n1", "{\"z\":\"last\",\"quote\":\"a \\\"q\\\" \\\\ \\n\",\"name\":\"Zürich ✓\"}",
                                    10000, NULL, NULL, &id));
    CHECK_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    etcd_registry_node_list *list = NULL;
    CHECK_OK(etcd_registry_list(r, "json", &list));
    REQUIRE(etcd_registry_node_list_len(list) == 1);
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 0),
                 "{\"name\":\"Zürich ✓\",\"quote\":\"a \\\"q\\\" \\\\ \\n\",\"z\":\"last\"}") == 0);
    CHECK(strcmp(etcd_registry_node_list_info_value(list, 0, "quote"), "a \"q\" \\ \n") == 0);
    CHECK(strcmp(etcd_registry_node_list_info_value(list, 0, "name"), "Zürich ✓") == 0);
    etcd_registry_node_list_free(list);
    etcd_registry_free(r); /* free closes */
}

/* An info entry from bytes with an explicit length (NUL and invalid UTF-8 allowed). */
#define ENTRY(k, kl, v, vl) ((etcd_registry_info_entry){(k), (kl), (v), (vl)})

static bool bytes_are(const char *p, size_t len, const char *want, size_t want_len) {
    return p != NULL && len == want_len && memcmp(p, want, len) == 0 && p[len] == '\0';
}

/* The value of `key` (given with its length) of node `index` in a fresh listing equals `want`. */
static bool listed_value_is(etcd_registry *r, const char *service, size_t index, const char *key,
                            size_t key_len, const char *want, size_t want_len) {
    etcd_registry_node_list *list = NULL;
    if (etcd_registry_list(r, service, &list) != ETCD_REGISTRY_STATUS_OK) return false;
    bool found = false;
    if (index < etcd_registry_node_list_len(list)) {
        const etcd_registry_node_entry *e = &etcd_registry_node_list_entries(list)[index];
        for (size_t j = 0; j < e->info_len; j++)
            if (bytes_are(e->info[j].key, e->info[j].key_len, key, key_len))
                found = bytes_are(e->info[j].value, e->info[j].value_len, want, want_len);
    }
    etcd_registry_node_list_free(list);
    return found;
}

/* Info as key/value entries with lengths, in and out: NUL survives, invalid UTF-8 is stored as
 * Go's json.Marshal writes it (\ufffd per byte) and so reads back as U+FFFD; no info object
 * (ETCD_REGISTRY_NO_INFO) differs from an empty one; bad entries are clear errors. */
static void test_info_entries(void) {
    /* A size_t, as info_len is: compared with a size_t under -Wextra -Werror, no sign warning. */
    _Static_assert(_Generic(ETCD_REGISTRY_NO_INFO, size_t: 1, default: 0), "ETCD_REGISTRY_NO_INFO is a size_t");
    size_t no_info = ETCD_REGISTRY_NO_INFO;
    CHECK(no_info == ETCD_REGISTRY_NO_INFO && no_info == SIZE_MAX);
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    uint64_t id = 42;
    const etcd_registry_info_entry info[] = {
        ENTRY("nul\0key", 7, "a\0b", 3),
        ENTRY("bad\xff", 4, "x\xe2\x80y", 4),
        ENTRY("addr", 4, "10.0.0.5", 8),
    };
#define REG(name, entries, n) etcd_registry_register(r, "entries", name, entries, n, 10000, NULL, NULL, &id)
    /* Errors first: nothing is registered, id is not written. */
    CHECK_STATUS(REG("n1", NULL, 2), ETCD_REGISTRY_STATUS_NULL_POINTER);
    const etcd_registry_info_entry null_key[] = {ENTRY(NULL, 3, "v", 1)};
    CHECK_STATUS(REG("n1", null_key, 1), ETCD_REGISTRY_STATUS_NULL_POINTER);
    const etcd_registry_info_entry null_value[] = {ENTRY("k", 1, NULL, 1)};
    CHECK_STATUS(REG("n1", null_value, 1), ETCD_REGISTRY_STATUS_NULL_POINTER);
    const etcd_registry_info_entry empty_key[] = {ENTRY("", 0, "v", 1)};
    CHECK_STATUS(REG("n1", empty_key, 1), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(etcd_registry_last_error_message(), "empty") != NULL);
    const etcd_registry_info_entry twice[] = {ENTRY("k", 1, "1", 1), ENTRY("k", 1, "2", 1)};
    CHECK_STATUS(REG("n1", twice, 2), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(etcd_registry_last_error_message(), "twice") != NULL);
    CHECK_STATUS(REG("n\xff", info, 3), ETCD_REGISTRY_STATUS_INVALID_UTF8); /* names stay UTF-8 */
    {
        /* A key that a delete, which carries it twice, could not fit into one request: refused,
         * with no info object too. */
        size_t len = 1u << 20;
        char *long_name = malloc(len + 1);
        REQUIRE(long_name != NULL);
        memset(long_name, 'n', len);
        long_name[len] = '\0';
        CHECK_STATUS(REG(long_name, NULL, ETCD_REGISTRY_NO_INFO), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(etcd_registry_last_error_message(), "too long") != NULL);
        free(long_name);
    }
    CHECK(id == 42);

    uint64_t n1 = 0, n2 = 0, n3 = 0;
    CHECK_OK(REG("n1", info, 3));
    n1 = id;
    CHECK_OK(REG("n2", NULL, 0)); /* empty info: {} */
    n2 = id;
    CHECK_OK(REG("n3", NULL, ETCD_REGISTRY_NO_INFO)); /* no info object: an empty value */
    n3 = id;
#undef REG
    CHECK_OK(etcd_registry_wait_registered(r, n1, (uint64_t)(10000 * slow)));
    CHECK_OK(etcd_registry_wait_registered(r, n2, (uint64_t)(10000 * slow)));
    CHECK_OK(etcd_registry_wait_registered(r, n3, (uint64_t)(10000 * slow)));

    etcd_registry_node_list *list = NULL;
    CHECK_OK(etcd_registry_list(r, "entries", &list));
    REQUIRE(etcd_registry_node_list_len(list) == 3);
    const etcd_registry_node_entry *e = etcd_registry_node_list_entries(list);
    CHECK(bytes_are(e[0].name, e[0].name_len, "n1", 2));
    REQUIRE(e[0].info_len == 3 && !e[0].info_absent);
    /* Sorted by key bytes; each invalid byte read back as U+FFFD (EF BF BD). */
    CHECK(bytes_are(e[0].info[0].key, e[0].info[0].key_len, "addr", 4));
    CHECK(bytes_are(e[0].info[0].value, e[0].info[0].value_len, "10.0.0.5", 8));
    CHECK(bytes_are(e[0].info[1].key, e[0].info[1].key_len, "bad\xef\xbf\xbd", 6));
    CHECK(bytes_are(e[0].info[1].value, e[0].info[1].value_len, "x\xef\xbf\xbd\xef\xbf\xbdy", 8));
    CHECK(bytes_are(e[0].info[2].key, e[0].info[2].key_len, "nul\0key", 7));
    CHECK(bytes_are(e[0].info[2].value, e[0].info[2].value_len, "a\0b", 3));
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 0),
                 "{\"addr\":\"10.0.0.5\",\"bad\xef\xbf\xbd\":\"x\xef\xbf\xbd\xef\xbf\xbdy\","
                 "\"nul\\u0000key\":\"a\\u0000b\"}") == 0);
    CHECK(strcmp(etcd_registry_node_list_info_value(list, 0, "addr"), "10.0.0.5") == 0);
    CHECK(e[1].info_len == 0 && e[1].info == NULL && !e[1].info_absent);
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 1), "{}") == 0);
    CHECK(e[2].info_len == 0 && e[2].info_absent);
    CHECK(strcmp(etcd_registry_node_list_info_json(list, 2), "null") == 0);
    etcd_registry_node_list_free(list);

    /* Watch events carry the same entries. */
    uint64_t watch = 0;
    REQUIRE_OK(etcd_registry_watch(r, "entries", NULL, NULL, &watch));
    int seen = 0;
    double deadline = now_s() + 10 * slow;
    while (seen < 3 && now_s() < deadline) {
        etcd_registry_event *ev = NULL;
        etcd_registry_status s = etcd_registry_next_event(r, 100, &ev);
        if (s == ETCD_REGISTRY_STATUS_TIMEOUT) continue;
        CHECK_OK(s);
        if (s != ETCD_REGISTRY_STATUS_OK) break;
        const etcd_registry_watch_event *w = &ev->watch;
        if (ev->event_type == ETCD_REGISTRY_EVENT_TYPE_WATCH && w->kind == ETCD_REGISTRY_WATCH_KIND_ADDED) {
            seen++;
            if (strcmp(w->node_name, "n1") == 0) {
                CHECK(w->info_len == 3 && !w->info_absent);
                if (w->info_len == 3)
                    CHECK(bytes_are(w->info[2].value, w->info[2].value_len, "a\0b", 3));
            } else if (strcmp(w->node_name, "n2") == 0) {
                CHECK(w->info_len == 0 && !w->info_absent && strcmp(w->info_json, "{}") == 0);
            } else {
                CHECK(w->info_len == 0 && w->info_absent && strcmp(w->info_json, "null") == 0);
            }
        }
        etcd_registry_event_free(ev);
    }
    CHECK(seen == 3);
    CHECK_OK(etcd_registry_unwatch(r, watch));

    /* Update with entries; no info object is for registering only. */
    const etcd_registry_info_entry next[] = {ENTRY("v", 1, "2\0", 2)};
    CHECK_OK(etcd_registry_update(r, n1, next, 1));
    CHECK(WAIT_FOR(listed_value_is(r, "entries", 0, "v", 1, "2\0", 2), 10 * slow));
    CHECK_STATUS(etcd_registry_update(r, n1, NULL, ETCD_REGISTRY_NO_INFO), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_update(r, n1, twice, 2), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_update(r, n1, NULL, 1), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_OK(etcd_registry_update(r, n1, NULL, 0)); /* {} */
    CHECK(WAIT_FOR(count_nodes(r, "entries") == 3, 10 * slow));
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
}
#undef ENTRY

static void test_list_errors(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    etcd_registry_node_list *list = (etcd_registry_node_list *)(uintptr_t)0x1;
    CHECK_STATUS(etcd_registry_list(r, NULL, &list), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_list(r, "s", NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_list(r, "\xff", &list), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_list(r, "", &list), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(list == (etcd_registry_node_list *)(uintptr_t)0x1);
    CHECK_OK(etcd_registry_list(r, "no-such-service", &list));
    CHECK(etcd_registry_node_list_len(list) == 0);
    etcd_registry_node_list_free(list);
    etcd_registry_free(r);
}

/* What an etcd_registry_list_async callback saw. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    etcd_registry_status status;
    char message[256];
    etcd_registry_node_list *list;
    etcd_registry_string_list *names;      /* what etcd_registry_services_async gave */
    uint64_t watch_id;                     /* what etcd_registry_watch_async gave */
    pthread_t thread;
    etcd_registry *registry;               /* for a blocking call from inside the callback */
    etcd_registry_status blocking_status;  /* what that call returned */
} list_result;

static void list_result_init(list_result *res, etcd_registry *registry) {
    memset(res, 0, sizeof *res);
    pthread_mutex_init(&res->mu, NULL);
    pthread_cond_init(&res->cv, NULL);
    res->registry = registry;
}

static void list_result_destroy(list_result *res) {
    etcd_registry_node_list_free(res->list);
    etcd_registry_string_list_free(res->names);
    pthread_mutex_destroy(&res->mu);
    pthread_cond_destroy(&res->cv);
}

/* Records a call of an _async callback, res->mu held (and let go here): its status, message
 * and thread, and wakes list_result_wait. */
static void list_result_called_locked(list_result *res, etcd_registry_status status, const char *message) {
    res->calls++;
    res->status = status;
    snprintf(res->message, sizeof res->message, "%s", message ? message : "");
    res->thread = pthread_self();
    pthread_cond_broadcast(&res->cv);
    pthread_mutex_unlock(&res->mu);
}

static void on_list(void *user_data, etcd_registry_status status, const char *message,
                    etcd_registry_node_list *list) {
    list_result *res = user_data;
    etcd_registry_status blocking = ETCD_REGISTRY_STATUS_OK;
    if (res->registry != NULL) {
        etcd_registry_node_list *inner = NULL;
        blocking = etcd_registry_list(res->registry, "async", &inner);
        etcd_registry_node_list_free(inner);
    }
    pthread_mutex_lock(&res->mu);
    res->list = list;
    res->blocking_status = blocking;
    list_result_called_locked(res, status, message);
}

/* Waits until the callback has run (true) or `seconds` pass. */
static bool list_result_wait(list_result *res, double seconds) {
    bool done = WAIT_FOR(({
        pthread_mutex_lock(&res->mu);
        int calls_ = res->calls;
        pthread_mutex_unlock(&res->mu);
        calls_ > 0;
    }), seconds);
    return done;
}

static void test_list_async(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "async", "node-a", "{\"address\":\"10.0.0.7:80\"}", 10000, NULL, NULL, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));

    /* The nodes, handed to the callback on a library thread, which cannot make blocking calls. */
    list_result res;
    list_result_init(&res, r);
    CHECK_OK(etcd_registry_list_async(r, "async", on_list, &res));
    CHECK(list_result_wait(&res, 10 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.calls == 1);
    CHECK(res.status == ETCD_REGISTRY_STATUS_OK && res.message[0] == '\0');
    CHECK(etcd_registry_node_list_len(res.list) == 1);
    CHECK(res.list && strcmp(etcd_registry_node_list_name(res.list, 0), "node-a") == 0);
    CHECK(res.list && strcmp(etcd_registry_node_list_info_value(res.list, 0, "address"), "10.0.0.7:80") == 0);
    CHECK(!pthread_equal(res.thread, pthread_self()));
    CHECK(res.blocking_status == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);

    /* A name the core refuses: the error and its message go to the callback, with no list. */
    list_result_init(&res, NULL);
    CHECK_OK(etcd_registry_list_async(r, "", on_list, &res));
    CHECK(list_result_wait(&res, 10 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.status == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(res.message, "service") != NULL);
    CHECK(res.list == NULL);
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);

    /* Refused at once: the callback is never called. */
    list_result_init(&res, NULL);
    CHECK_STATUS(etcd_registry_list_async(NULL, "async", on_list, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_list_async(r, NULL, on_list, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_list_async(r, "async", NULL, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_MESSAGE("callback");
    CHECK_STATUS(etcd_registry_list_async(r, "\xff", on_list, &res), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_OK(etcd_registry_close(r));
    CHECK_STATUS(etcd_registry_list_async(r, "async", on_list, &res), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(res.calls == 0);
    list_result_destroy(&res);
    etcd_registry_free(r);

    /* etcd unreachable: the timeout, with its message, comes through the callback. */
    char eps[64];
    snprintf(eps, sizeof eps, "127.0.0.1:%d", dead_port());
    etcd_registry_config *config = make_config(eps);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_timeout_ms(config, (uint64_t)(500 * slow)));
    etcd_registry *dead = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &dead));
    etcd_registry_config_free(config);
    list_result_init(&res, NULL);
    CHECK_OK(etcd_registry_list_async(dead, "async", on_list, &res));
    CHECK(list_result_wait(&res, 20 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.status == ETCD_REGISTRY_STATUS_TIMEOUT);
    CHECK(strstr(res.message, "did not finish within") != NULL);
    CHECK(res.list == NULL);
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);
    etcd_registry_free(dead);
}

/* An etcd_registry_unregister_async callback: records like on_list (no list), after trying a
 * blocking call, which a library thread must refuse. */
static void on_unregistered(void *user_data, etcd_registry_status status, const char *message) {
    list_result *res = user_data;
    etcd_registry_status blocking = ETCD_REGISTRY_STATUS_OK;
    if (res->registry != NULL) blocking = etcd_registry_unregister(res->registry, 987654321);
    pthread_mutex_lock(&res->mu);
    res->blocking_status = blocking;
    list_result_called_locked(res, status, message);
}

static void test_unregister_async(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "unreg-async", "n1", NULL, 10000, on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    CHECK(count_nodes(r, "unreg-async") == 1);

    /* Taken at once; the key deleted on a library thread, which then calls back. */
    list_result res;
    list_result_init(&res, r);
    CHECK_OK(etcd_registry_unregister_async(r, id, on_unregistered, &res));
    CHECK_STATUS(etcd_registry_unregister_async(r, id, on_unregistered, &res), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_unregister(r, id), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK(list_result_wait(&res, 10 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.calls == 1);
    CHECK(res.status == ETCD_REGISTRY_STATUS_OK && res.message[0] == '\0');
    CHECK(!pthread_equal(res.thread, pthread_self()));
    CHECK(res.blocking_status == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);
    CHECK(count_nodes(r, "unreg-async") == 0);
    /* UNREGISTERED was delivered before the callback, as the last event. */
    CHECK(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_UNREGISTERED, NULL, 0) == count_of(&rec) - 1);

    /* Refused at once: the callback is never called, and the registration stays. */
    uint64_t other = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "unreg-async", "n2", NULL, 10000, NULL, NULL, &other));
    list_result_init(&res, NULL);
    CHECK_STATUS(etcd_registry_unregister_async(NULL, other, on_unregistered, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_unregister_async(r, other, NULL, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_MESSAGE("callback");
    CHECK_STATUS(etcd_registry_unregister_async(r, 987654321, on_unregistered, &res), ETCD_REGISTRY_STATUS_NOT_FOUND);
    uint32_t state = 0;
    CHECK_OK(etcd_registry_registration_state(r, other, &state));
    CHECK_OK(etcd_registry_close(r));
    CHECK_STATUS(etcd_registry_unregister_async(r, other, on_unregistered, &res), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(res.calls == 0);
    list_result_destroy(&res);
    etcd_registry_free(r);
    recorder_destroy(&rec);

    /* etcd unreachable: the shutdown rule, as for etcd_registry_unregister (OK, the key left to
     * its lease), within the timeout. */
    char eps[64];
    snprintf(eps, sizeof eps, "127.0.0.1:%d", dead_port());
    etcd_registry_config *config = make_config(eps);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_timeout_ms(config, (uint64_t)(500 * slow)));
    etcd_registry *dead = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &dead));
    etcd_registry_config_free(config);
    REQUIRE_OK(etcd_registry_register_json(dead, "unreg-async", "n3", NULL, 10000, NULL, NULL, &id));
    list_result_init(&res, NULL);
    CHECK_OK(etcd_registry_unregister_async(dead, id, on_unregistered, &res));
    CHECK(list_result_wait(&res, 20 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.calls == 1 && res.status == ETCD_REGISTRY_STATUS_OK);
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);
    etcd_registry_free(dead);
}

static void on_services(void *user_data, etcd_registry_status status, const char *message,
                        etcd_registry_string_list *names) {
    list_result *res = user_data;
    pthread_mutex_lock(&res->mu);
    res->names = names;
    list_result_called_locked(res, status, message);
}

static void test_services(void) {
    /* A base path of its own: the other tests' services live under /ctest. */
    etcd_registry_config *config = make_config(endpoints);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_base_path(config, "/ctest-services"));
    etcd_registry *r = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &r));
    etcd_registry_config_free(config);

    etcd_registry_string_list *services = (etcd_registry_string_list *)(uintptr_t)0x1;
    CHECK_STATUS(etcd_registry_services(r, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(services == (etcd_registry_string_list *)(uintptr_t)0x1);
    CHECK_OK(etcd_registry_services(r, &services));
    CHECK(etcd_registry_string_list_len(services) == 0);
    CHECK(etcd_registry_string_list_get(services, 0) == NULL);
    etcd_registry_string_list_free(services);

    /* Two nodes of one service, one of a service whose name holds a '/' (it reads as '-'). */
    uint64_t ids[3] = {0};
    REQUIRE_OK(etcd_registry_register_json(r, "web", "b", NULL, 10000, NULL, NULL, &ids[0]));
    REQUIRE_OK(etcd_registry_register_json(r, "web", "a", NULL, 10000, NULL, NULL, &ids[1]));
    REQUIRE_OK(etcd_registry_register_json(r, "db/main", "x", NULL, 10000, NULL, NULL, &ids[2]));
    for (int i = 0; i < 3; i++) CHECK_OK(etcd_registry_wait_registered(r, ids[i], (uint64_t)(10000 * slow)));
    services = NULL;
    CHECK_OK(etcd_registry_services(r, &services));
    REQUIRE(services != NULL);
    CHECK(etcd_registry_string_list_len(services) == 2);
    const char *first = etcd_registry_string_list_get(services, 0);
    const char *second = etcd_registry_string_list_get(services, 1);
    CHECK(first && strcmp(first, "db-main") == 0);
    CHECK(second && strcmp(second, "web") == 0);
    CHECK(etcd_registry_string_list_get(services, 2) == NULL);

    /* The same without blocking: the names go to a callback on a library thread. */
    list_result res;
    list_result_init(&res, NULL);
    CHECK_OK(etcd_registry_services_async(r, on_services, &res));
    CHECK(list_result_wait(&res, 10 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.calls == 1 && res.status == ETCD_REGISTRY_STATUS_OK && res.message[0] == '\0');
    CHECK(etcd_registry_string_list_len(res.names) == 2);
    CHECK(res.names && strcmp(etcd_registry_string_list_get(res.names, 0), "db-main") == 0);
    CHECK(res.names && strcmp(etcd_registry_string_list_get(res.names, 1), "web") == 0);
    CHECK(!pthread_equal(res.thread, pthread_self()));
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);
    list_result_init(&res, NULL);
    CHECK_STATUS(etcd_registry_services_async(NULL, on_services, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_services_async(r, NULL, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);

    /* The list is a snapshot: it outlives the registry that made it. */
    CHECK_OK(etcd_registry_close(r));
    CHECK_STATUS(etcd_registry_services_async(r, on_services, &res), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(res.calls == 0);
    list_result_destroy(&res);
    etcd_registry_free(r);
    CHECK(first && strcmp(etcd_registry_string_list_get(services, 0), "db-main") == 0);
    etcd_registry_string_list_free(services);
}

static void test_active_endpoint(void) {
    char eps[64], want[80];
    int port = dead_port();
    snprintf(eps, sizeof eps, "127.0.0.1:%d", port);
    snprintf(want, sizeof want, "http://127.0.0.1:%d", port);
    etcd_registry *r = connect_to(eps); /* connect does not dial: nothing needs to answer */
    REQUIRE(r != NULL);
    size_t len = 0;
    CHECK_OK(etcd_registry_active_endpoint(r, NULL, 0, &len)); /* the length only */
    CHECK(len == strlen(want));
    char full[80] = {0};
    CHECK_OK(etcd_registry_active_endpoint(r, full, sizeof full, &len));
    CHECK(strcmp(full, want) == 0 && len == strlen(want));
    char cut[8];
    memset(cut, 'x', sizeof cut);
    CHECK_OK(etcd_registry_active_endpoint(r, cut, 5, &len)); /* truncated like snprintf */
    CHECK(memcmp(cut, "http", 5) == 0 && cut[5] == 'x' && len == strlen(want));
    len = 7;
    CHECK_STATUS(etcd_registry_active_endpoint(NULL, full, sizeof full, &len), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_active_endpoint(r, full, sizeof full, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_active_endpoint(r, NULL, 4, &len), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(len == 7);
    /* Still answered after close: the member last used. */
    CHECK_OK(etcd_registry_close(r));
    memset(full, 0, sizeof full);
    CHECK_OK(etcd_registry_active_endpoint(r, full, sizeof full, &len));
    CHECK(strcmp(full, want) == 0);
    etcd_registry_free(r);
}

static void test_unreachable_etcd(void) {
    char eps[64], where[80];
    int port = dead_port();
    snprintf(eps, sizeof eps, "127.0.0.1:%d", port);
    snprintf(where, sizeof where, "http://127.0.0.1:%d", port);
    /* Calls wait for etcd until their timeout (wait-for-ready), so keep it short here, yet long
     * enough for a refused connection attempt to be seen within it under valgrind. */
    etcd_registry_config *config = make_config(eps);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_timeout_ms(config, (uint64_t)(1000 * slow)));
    etcd_registry *r = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &r)); /* connect does not dial */
    etcd_registry_config_free(config);
    etcd_registry_node_list *list = NULL;
    /* A timeout whose message names the endpoint and the cause. */
    CHECK_STATUS(etcd_registry_list(r, "svc", &list), ETCD_REGISTRY_STATUS_TIMEOUT);
    const char *message = etcd_registry_last_error_message();
    CHECK(message && strstr(message, "did not finish within") && strstr(message, where) &&
          strstr(message, "connection refused"));
    if (!(message && strstr(message, "connection refused")))
        fprintf(stderr, "    message: %s\n", message ? message : "(null)");
    CHECK(list == NULL);
    uint64_t watch = 0;
    CHECK_STATUS(etcd_registry_watch(r, "svc", NULL, NULL, &watch), ETCD_REGISTRY_STATUS_TIMEOUT);

    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    CHECK_OK(etcd_registry_register_json(r, "svc", "n1", NULL, 5000, on_status, &rec, &id));
    /* The first attempt fails: FAILED with the reason, then RETRYING with attempt and delay. */
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, 0) >= 0, 20 * slow));
    int failed = find_event(&rec, ETCD_REGISTRY_STATUS_KIND_FAILED, NULL, 0);
    int retrying = find_event(&rec, ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, 0);
    CHECK(failed == 0 && retrying == 1);
    if (failed == 0 && retrying == 1) {
        CHECK(rec.errors[0] == ETCD_REGISTRY_STATUS_TIMEOUT);
        CHECK(rec.messages[0] && strstr(rec.first_message, "connection refused") &&
              strstr(rec.first_message, where));
        if (current_failed)
            fprintf(stderr, "    first event: %s (%s)\n", etcd_registry_status_name(rec.errors[0]),
                    rec.first_message);
        CHECK(rec.attempts[1] == 1 && rec.delays[1] > 0 && rec.delays[1] <= 1000);
    }
    CHECK_STATUS(etcd_registry_wait_registered(r, id, 5000), ETCD_REGISTRY_STATUS_TIMEOUT);
    uint32_t state = 0;
    CHECK_OK(etcd_registry_registration_state(r, id, &state));
    CHECK(state == ETCD_REGISTRY_STATE_REGISTERING);
    int64_t lease = -1;
    CHECK_OK(etcd_registry_registration_lease_id(r, id, &lease));
    CHECK(lease == 0);
    /* Unregister reaches out to etcd to delete the key: it cannot, which is no failure (the
     * shutdown rule); the registration is gone all the same, and its callback is done. */
    CHECK_OK(etcd_registry_unregister(r, id));
    CHECK_STATUS(etcd_registry_registration_state(r, id, &state), ETCD_REGISTRY_STATUS_NOT_FOUND);
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

/* etcd_registry_watch_async's `started`: records like on_list. */
static void on_watch_started(void *user_data, etcd_registry_status status, const char *message,
                             uint64_t watch_id) {
    list_result *res = user_data;
    pthread_mutex_lock(&res->mu);
    res->watch_id = watch_id;
    list_result_called_locked(res, status, message);
}

/* Starts a watch with etcd_registry_watch_async and waits for `started`: its status, and the id
 * in *id. */
static etcd_registry_status watch_async_wait(etcd_registry *r, const char *service,
                                             etcd_registry_watch_callback callback, void *user_data,
                                             uint64_t *id, char *message, size_t message_len) {
    list_result res;
    list_result_init(&res, NULL);
    etcd_registry_status s = etcd_registry_watch_async(r, service, callback, user_data, on_watch_started, &res);
    if (s == ETCD_REGISTRY_STATUS_OK) {
        CHECK(list_result_wait(&res, 20 * slow));
        pthread_mutex_lock(&res.mu);
        CHECK(res.calls == 1);
        CHECK(!pthread_equal(res.thread, pthread_self()));
        s = res.status;
        *id = res.watch_id;
        snprintf(message, message_len, "%s", res.message);
        pthread_mutex_unlock(&res.mu);
    }
    list_result_destroy(&res);
    return s;
}

static void test_watch_async(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    uint64_t reg = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "wasync", "a", "{\"v\":\"1\"}", 10000, NULL, NULL, &reg));
    REQUIRE_OK(etcd_registry_wait_registered(r, reg, (uint64_t)(10000 * slow)));

    /* With a callback: the node present comes as ADDED, with the id `started` gave. */
    recorder events;
    recorder_init(&events);
    uint64_t watch = 0;
    char message[256];
    CHECK_OK(watch_async_wait(r, "wasync", on_watch, &events, &watch, message, sizeof message));
    CHECK(watch != 0 && message[0] == '\0');
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_ADDED, "a", 0) >= 0, 10 * slow));
    CHECK(events.ids[0] == watch);
    CHECK(WAIT_FOR(live_set_is(r, watch, 1, "1"), 10 * slow));
    CHECK_OK(etcd_registry_unwatch(r, watch));
    recorder_destroy(&events);

    /* With no callback: the events are pulled, with the same id. */
    uint64_t pulled = 0;
    CHECK_OK(watch_async_wait(r, "wasync", NULL, NULL, &pulled, message, sizeof message));
    bool added = false;
    double deadline = now_s() + 10 * slow;
    while (!added && now_s() < deadline) {
        etcd_registry_event *e = NULL;
        if (etcd_registry_next_event(r, 100, &e) != ETCD_REGISTRY_STATUS_OK) continue;
        added = e->event_type == ETCD_REGISTRY_EVENT_TYPE_WATCH && e->watch.watch_id == pulled &&
                e->watch.kind == ETCD_REGISTRY_WATCH_KIND_ADDED && strcmp(e->watch.node_name, "a") == 0;
        etcd_registry_event_free(e);
    }
    CHECK(added);
    CHECK_OK(etcd_registry_unwatch(r, pulled));

    /* A name the core refuses: the error goes to `started`, with id 0 and no watch. */
    uint64_t refused = 99;
    CHECK_STATUS(watch_async_wait(r, "", on_watch, NULL, &refused, message, sizeof message),
                 ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(refused == 0 && strstr(message, "service") != NULL);

    /* Refused at once: `started` is never called. */
    list_result res;
    list_result_init(&res, NULL);
    CHECK_STATUS(etcd_registry_watch_async(NULL, "wasync", NULL, NULL, on_watch_started, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_watch_async(r, NULL, NULL, NULL, on_watch_started, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_watch_async(r, "wasync", NULL, NULL, NULL, &res), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_MESSAGE("started");
    CHECK_STATUS(etcd_registry_watch_async(r, "w\xff", NULL, NULL, on_watch_started, &res), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_OK(etcd_registry_close(r));
    CHECK_STATUS(etcd_registry_watch_async(r, "wasync", NULL, NULL, on_watch_started, &res), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(res.calls == 0);
    list_result_destroy(&res);
    etcd_registry_free(r);

    /* Closed while the first listing waits for a paused etcd: `started` gets CLOSED, and no
     * watch is left behind. */
    etcd_registry *closing = connect_etcd();
    REQUIRE(closing != NULL);
    CHECK(count_nodes(closing, "wasync") == 0); /* connected (r closed: its node is gone) */
    list_result_init(&res, NULL);
    REQUIRE(harness("pause 0") >= 0);
    CHECK_OK(etcd_registry_watch_async(closing, "wasync", NULL, NULL, on_watch_started, &res));
    CHECK_OK(etcd_registry_close(closing));
    REQUIRE(harness("resume 0") >= 0);
    CHECK(list_result_wait(&res, 20 * slow));
    pthread_mutex_lock(&res.mu);
    CHECK(res.calls == 1 && res.status == ETCD_REGISTRY_STATUS_CLOSED && res.watch_id == 0);
    pthread_mutex_unlock(&res.mu);
    list_result_destroy(&res);
    etcd_registry_free(closing);

    /* etcd unreachable: the first listing's error comes through `started`. */
    char eps[64];
    snprintf(eps, sizeof eps, "127.0.0.1:%d", dead_port());
    etcd_registry_config *config = make_config(eps);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_timeout_ms(config, (uint64_t)(500 * slow)));
    etcd_registry *dead = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &dead));
    etcd_registry_config_free(config);
    uint64_t none = 99;
    etcd_registry_status s = watch_async_wait(dead, "wasync", NULL, NULL, &none, message, sizeof message);
    CHECK(s == ETCD_REGISTRY_STATUS_TIMEOUT || s == ETCD_REGISTRY_STATUS_CONNECTION);
    CHECK(none == 0);
    etcd_registry_free(dead);
}

static void test_watch_callbacks_on_the_library_thread(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder status, events;
    recorder_init(&status);
    recorder_init(&events);
    uint64_t first = 0, second = 0, watch = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "watched", "a", "{\"v\":\"1\"}", 10000, on_status, &status, &first));
    REQUIRE_OK(etcd_registry_wait_registered(r, first, (uint64_t)(10000 * slow)));

    uint64_t sentinel = 77;
    CHECK_STATUS(etcd_registry_watch(r, NULL, on_watch, &events, &sentinel), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_watch(r, "w\xff", on_watch, &events, &sentinel), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_STATUS(etcd_registry_watch(r, "", on_watch, &events, &sentinel), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_watch(r, "watched", on_watch, &events, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(sentinel == 77);

    REQUIRE_OK(etcd_registry_watch(r, "watched", on_watch, &events, &watch));
    CHECK(watch != 0 && watch != first);
    /* The node present at the start comes as ADDED. */
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_ADDED, "a", 0) >= 0, 10 * slow));

    REQUIRE_OK(etcd_registry_register_json(r, "watched", "b", "{\"v\":\"1\"}", 10000, on_status, &status, &second));
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_ADDED, "b", 0) >= 0, 10 * slow));

    /* Registering node a again replaces the first registration: it ends with UNREGISTERED,
     * the watch sees the new info as UPDATED. */
    uint64_t again = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "watched", "a", "{\"v\":\"2\"}", 10000, on_status, &status, &again));
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_UPDATED, "a", 0) >= 0, 10 * slow));
    CHECK(WAIT_FOR(find_event(&status, ETCD_REGISTRY_STATUS_KIND_UNREGISTERED, "a", 0) >= 0, 10 * slow));
    /* Once that has been delivered, the registry forgets the replaced id. */
    uint32_t state = 0;
    CHECK(WAIT_FOR(etcd_registry_registration_state(r, first, &state) == ETCD_REGISTRY_STATUS_NOT_FOUND, 10 * slow));

    /* The live set of the watch, without asking etcd. */
    CHECK(WAIT_FOR(live_set_is(r, watch, 2, "2"), 10 * slow));
    etcd_registry_node_list *live = NULL;
    CHECK_OK(etcd_registry_watch_nodes(r, watch, &live));
    CHECK(etcd_registry_node_list_len(live) == 2);
    if (etcd_registry_node_list_len(live) == 2) {
        CHECK(strcmp(etcd_registry_node_list_name(live, 0), "a") == 0);
        CHECK(strcmp(etcd_registry_node_list_name(live, 1), "b") == 0);
    }
    etcd_registry_node_list_free(live);
    live = NULL;
    CHECK_STATUS(etcd_registry_watch_nodes(r, watch, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_watch_nodes(r, 123456789, &live), ETCD_REGISTRY_STATUS_NOT_FOUND);

    CHECK_OK(etcd_registry_unregister(r, second));
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_REMOVED, "b", 0) >= 0, 10 * slow));

    /* Every callback ran on the library's callback thread, never on this one. */
    CHECK(!pthread_equal(events.thread, pthread_self()));
    CHECK(!pthread_equal(status.thread, pthread_self()));
    CHECK(pthread_equal(events.thread, status.thread));
    CHECK(!events.other_thread && !status.other_thread);
    CHECK(strcmp(events.thread_name, "etcd-reg-events") == 0);

    /* After unwatch returns, the callback is never called again. */
    CHECK_OK(etcd_registry_unwatch(r, watch));
    int seen = count_of(&events);
    CHECK(barrier("watched", "after-unwatch"));
    CHECK(count_of(&events) == seen);
    CHECK_STATUS(etcd_registry_unwatch(r, watch), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_watch_nodes(r, watch, &live), ETCD_REGISTRY_STATUS_NOT_FOUND);

    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    recorder_destroy(&status);
    recorder_destroy(&events);
}

/* Unregisters its own registration from inside its callback, and lists from there too. */
typedef struct {
    etcd_registry *registry;
    atomic_int calls;
    atomic_int unregister_status;
    atomic_int list_status;
    atomic_long listed;
    atomic_bool done;
} self_unregister;

static void unregister_myself(const etcd_registry_status_event *e, void *user_data) {
    self_unregister *ctx = user_data;
    atomic_fetch_add(&ctx->calls, 1);
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    etcd_registry_node_list *list = NULL;
    atomic_store(&ctx->list_status, etcd_registry_list(ctx->registry, e->service, &list));
    atomic_store(&ctx->listed, (long)etcd_registry_node_list_len(list));
    etcd_registry_node_list_free(list);
    atomic_store(&ctx->unregister_status, etcd_registry_unregister(ctx->registry, e->registration_id));
    atomic_store(&ctx->done, true);
}

typedef struct {
    etcd_registry *registry;
    atomic_int calls;
    atomic_int unwatch_status;
} self_unwatch;

static void unwatch_myself(const etcd_registry_watch_event *e, void *user_data) {
    self_unwatch *ctx = user_data;
    if (atomic_fetch_add(&ctx->calls, 1) == 0)
        atomic_store(&ctx->unwatch_status, etcd_registry_unwatch(ctx->registry, e->watch_id));
}

static void test_calls_from_inside_callbacks(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    self_unregister *ctx = calloc(1, sizeof *ctx);
    ctx->registry = r;
    atomic_store(&ctx->unregister_status, -1);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "selfish", "n1", NULL, 10000, unregister_myself, ctx, &id));
    CHECK(WAIT_FOR(atomic_load(&ctx->done), 10 * slow));
    CHECK(atomic_load(&ctx->list_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&ctx->listed) == 1);
    CHECK(atomic_load(&ctx->unregister_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(count_nodes(r, "selfish") == 0);
    CHECK_STATUS(etcd_registry_unregister(r, id), ETCD_REGISTRY_STATUS_NOT_FOUND);
    /* REGISTERED, then UNREGISTERED delivered nested in the unregister made by the callback. */
    CHECK(atomic_load(&ctx->calls) == 2);

    /* Two watches on one service: each stops itself at its first event. */
    self_unwatch *w1 = calloc(1, sizeof *w1), *w2 = calloc(1, sizeof *w2);
    w1->registry = w2->registry = r;
    uint64_t watch1 = 0, watch2 = 0, node = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "unwatched", "n1", NULL, 10000, NULL, NULL, &node));
    REQUIRE_OK(etcd_registry_wait_registered(r, node, (uint64_t)(10000 * slow)));
    REQUIRE_OK(etcd_registry_watch(r, "unwatched", unwatch_myself, w1, &watch1));
    REQUIRE_OK(etcd_registry_watch(r, "unwatched", unwatch_myself, w2, &watch2));
    CHECK(WAIT_FOR(atomic_load(&w1->calls) >= 1 && atomic_load(&w2->calls) >= 1, 10 * slow));
    CHECK(barrier("unwatched", "n2"));
    CHECK(atomic_load(&w1->calls) == 1 && atomic_load(&w2->calls) == 1);
    CHECK(atomic_load(&w1->unwatch_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&w2->unwatch_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK_STATUS(etcd_registry_unwatch(r, watch1), ETCD_REGISTRY_STATUS_NOT_FOUND);

    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    /* Unregister/unwatch/close returned: the callbacks are done, their data can go. */
    free(ctx);
    free(w1);
    free(w2);
}

/* A watch callback that, at its first event, says so, waits until told, then makes a blocking
 * call (allowed on the callback thread); and an _async callback that stops that watch
 * meanwhile: unwatch waits for the running watch callback, whose call needs the runtime that
 * the _async callback runs on (one thread by default). */
typedef struct {
    etcd_registry *registry;
    uint64_t watch;
    atomic_bool entered, go_on;
    atomic_int list_status, unwatch_status, wait_status, peek_status;
    atomic_bool watch_done, async_done;
} crossed_waits;

static void slow_watch_callback(const etcd_registry_watch_event *e, void *user_data) {
    (void)e;
    crossed_waits *c = user_data;
    if (atomic_exchange(&c->entered, true)) return;
    WAIT_FOR(atomic_load(&c->go_on), 10 * slow);
    etcd_registry_node_list *list = NULL;
    etcd_registry_status status = etcd_registry_list(c->registry, "crossed", &list);
    if (status == ETCD_REGISTRY_STATUS_OK) etcd_registry_node_list_free(list);
    atomic_store(&c->list_status, status);
    atomic_store(&c->watch_done, true);
}

static void unwatch_from_async(void *user_data, etcd_registry_status status, const char *message,
                               etcd_registry_node_list *list) {
    (void)status;
    (void)message;
    crossed_waits *c = user_data;
    if (list) etcd_registry_node_list_free(list);
    /* The pull queue cannot be waited on here; taking what is queued is. */
    etcd_registry_event *ev = NULL;
    atomic_store(&c->wait_status, etcd_registry_next_event(c->registry, 1000, &ev));
    etcd_registry_status peek = etcd_registry_next_event(c->registry, 0, &ev);
    if (peek == ETCD_REGISTRY_STATUS_OK) etcd_registry_event_free(ev);
    atomic_store(&c->peek_status, peek);
    atomic_store(&c->go_on, true);
    atomic_store(&c->unwatch_status, etcd_registry_unwatch(c->registry, c->watch));
    atomic_store(&c->async_done, true);
}

/* next_event waiting inside a status callback: refused (a close would wait for the callback). */
typedef struct {
    etcd_registry *registry;
    atomic_int wait_status;
    char message[256];
    atomic_bool done;
} pull_in_callback;

static void pull_inside_status_callback(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    pull_in_callback *p = user_data;
    etcd_registry_event *ev = NULL;
    atomic_store(&p->wait_status, etcd_registry_next_event(p->registry, ETCD_REGISTRY_WAIT_FOREVER, &ev));
    snprintf(p->message, sizeof p->message, "%s", etcd_registry_last_error_message());
    atomic_store(&p->done, true);
}

static void test_waits_inside_callbacks_cannot_deadlock(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    crossed_waits *c = calloc(1, sizeof *c);
    c->registry = r;
    atomic_store(&c->list_status, -1);
    atomic_store(&c->unwatch_status, -1);
    uint64_t node = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "crossed", "n1", NULL, 10000, NULL, NULL, &node));
    REQUIRE_OK(etcd_registry_wait_registered(r, node, (uint64_t)(10000 * slow)));
    REQUIRE_OK(etcd_registry_watch(r, "crossed", slow_watch_callback, c, &c->watch));
    CHECK(WAIT_FOR(atomic_load(&c->entered), 10 * slow));
    CHECK_OK(etcd_registry_list_async(r, "crossed", unwatch_from_async, c));
    CHECK(WAIT_FOR(atomic_load(&c->watch_done) && atomic_load(&c->async_done), 20 * slow));
    CHECK(atomic_load(&c->list_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&c->unwatch_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&c->wait_status) == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    /* n1's REGISTERED, queued for pulling (it has no callback). */
    CHECK(atomic_load(&c->peek_status) == ETCD_REGISTRY_STATUS_OK);

    pull_in_callback p = {.registry = r, .wait_status = -1};
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "crossed", "n2", NULL, 10000, pull_inside_status_callback, &p, &id));
    CHECK(WAIT_FOR(atomic_load(&p.done), 10 * slow));
    CHECK(atomic_load(&p.wait_status) == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(p.message, "inside a status or watch callback") != NULL);

    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    if (atomic_load(&c->watch_done) && atomic_load(&c->async_done)) free(c);
}

/* Closes its registry from inside a callback. */
typedef struct {
    etcd_registry *registry;
    atomic_int status;
    atomic_bool done;
} closer;

static void close_from_callback(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    closer *c = user_data;
    atomic_store(&c->status, etcd_registry_close(c->registry));
    atomic_store(&c->done, true);
}

static void test_close_from_inside_a_callback(void) {
    closer c = {.registry = connect_etcd(), .status = -1};
    REQUIRE(c.registry != NULL);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(c.registry, "closing", "n1", NULL, 10000, close_from_callback, &c, &id));
    REQUIRE(WAIT_FOR(atomic_load(&c.done), 10 * slow)); /* else it may still run: no free */
    CHECK(atomic_load(&c.status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(is_closed(c.registry));
    CHECK(count_nodes_fresh("closing") == 0);
    etcd_registry_free(c.registry); /* the callback has left close: free is the last call */
}

/* A callback that closes its registry and keeps running; another thread closes it too. */
typedef struct {
    etcd_registry *registry;
    atomic_int status;
    atomic_bool closed_in_callback; /* the callback's own close returned */
    atomic_bool other_closing;      /* the main thread is about to call close */
    atomic_bool done;               /* the callback's last access to this struct */
} racing_closer;

static void close_and_keep_running(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    racing_closer *c = user_data;
    atomic_store(&c->status, etcd_registry_close(c->registry));
    atomic_store(&c->closed_in_callback, true);
    /* Keep running while the other thread's close is under way: it must wait for us. That close
     * changes nothing a call could see (the registry reads closed since our own close), so
     * there is no condition to wait for: hold long enough (scaled, for valgrind) for a close
     * that does not wait to return first. */
    WAIT_FOR(atomic_load(&c->other_closing), 10 * slow);
    usleep((useconds_t)(200 * 1000 * slow));
    atomic_store(&c->done, true);
}

static void test_second_close_waits_for_a_callback_that_closed(void) {
    racing_closer *c = calloc(1, sizeof *c);
    REQUIRE(c != NULL);
    c->registry = connect_etcd();
    atomic_init(&c->status, -1);
    REQUIRE(c->registry != NULL);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(c->registry, "racing-close", "n1", NULL, 10000, close_and_keep_running, c, &id));
    REQUIRE(WAIT_FOR(atomic_load(&c->closed_in_callback), 10 * slow)); /* else it may still run: no free */
    atomic_store(&c->other_closing, true);
    CHECK_OK(etcd_registry_close(c->registry));
    /* close returned: no callback of the registry runs any more, its data can go. */
    CHECK(atomic_load(&c->done));
    CHECK(atomic_load(&c->status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(count_nodes_fresh("racing-close") == 0);
    etcd_registry *registry = c->registry;
    if (!atomic_load(&c->done)) {
        /* The bug this test is about: freeing now would race the callback. Wait it out. */
        WAIT_FOR(atomic_load(&c->done), 10 * slow);
    }
    free(c);
    etcd_registry_free(registry);
}

/* One callback of a registry closes it, or unregisters another registration of it, at its
 * REGISTERED; the other frees the registry at its UNREGISTERED, which that close or unregister
 * delivers nested, on the callback thread, while it is still using the handle. */
typedef struct {
    etcd_registry *registry;
    bool by_unregister;    /* unregister `victim` instead of closing */
    uint64_t victim;       /* the registration whose callback frees the registry */
    atomic_int status;     /* of the close or unregister */
    atomic_bool freed;     /* the nested callback's free returned */
    atomic_bool done;      /* the first callback's last access to this struct */
} nested_free;

static void free_at_unregistered(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) return;
    nested_free *n = user_data;
    etcd_registry_free(n->registry);
    atomic_store(&n->freed, true);
}

static void end_at_registered(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    nested_free *n = user_data;
    atomic_store(&n->status, n->by_unregister ? etcd_registry_unregister(n->registry, n->victim)
                                              : etcd_registry_close(n->registry));
    atomic_store(&n->done, true);
}

static void test_free_inside_a_nested_unregistered_callback(void) {
    for (int by_unregister = 0; by_unregister <= 1; by_unregister++) {
        const char *service = by_unregister ? "nested-free-unregister" : "nested-free-close";
        nested_free *n = calloc(1, sizeof *n);
        REQUIRE(n != NULL);
        n->registry = connect_etcd();
        n->by_unregister = by_unregister;
        atomic_init(&n->status, -1);
        REQUIRE(n->registry != NULL);
        uint64_t closer_id = 0;
        REQUIRE_OK(etcd_registry_register_json(n->registry, service, "frees", NULL, 10000, free_at_unregistered, n, &n->victim));
        REQUIRE_OK(etcd_registry_wait_registered(n->registry, n->victim, (uint64_t)(10000 * slow)));
        REQUIRE_OK(etcd_registry_register_json(n->registry, service, "ends", NULL, 10000, end_at_registered, n, &closer_id));
        /* The registry is freed by the callback: the test makes no call on it from here. */
        REQUIRE(WAIT_FOR(atomic_load(&n->done), 20 * slow)); /* else it may still run: no free */
        CHECK(atomic_load(&n->freed));
        CHECK(atomic_load(&n->status) == ETCD_REGISTRY_STATUS_OK);
        /* The free closed the registry once the outer call returned: both keys are gone. */
        CHECK(count_nodes_fresh(service) == 0);
        free(n);
    }
}

/* At its UNREGISTERED, delivered nested inside an unregister or a close made from another
 * callback, lists the service (a blocking call) and closes the registry. */
typedef struct {
    etcd_registry *registry;
    atomic_int list_status, close_status;
    atomic_long listed;
    char list_message[512];
    atomic_bool done;
} nested_calls;

static void calls_at_unregistered(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) return;
    nested_calls *n = user_data;
    etcd_registry_node_list *list = NULL;
    etcd_registry_status status = etcd_registry_list(n->registry, e->service, &list);
    snprintf(n->list_message, sizeof n->list_message, "%s", etcd_registry_last_error_message());
    if (status == ETCD_REGISTRY_STATUS_OK) {
        atomic_store(&n->listed, (long)etcd_registry_node_list_len(list));
        etcd_registry_node_list_free(list);
    }
    atomic_store(&n->list_status, status);
    atomic_store(&n->close_status, etcd_registry_close(n->registry));
    atomic_store(&n->done, true);
}

/* Unregisters another registration of its registry at its REGISTERED. */
typedef struct {
    etcd_registry *registry;
    uint64_t victim;
    atomic_int status;
    atomic_bool done;
} unregisterer;

static void unregister_other_at_registered(const etcd_registry_status_event *e, void *user_data) {
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    unregisterer *u = user_data;
    atomic_store(&u->status, etcd_registry_unregister(u->registry, u->victim));
    atomic_store(&u->done, true);
}

static void test_nested_callbacks_may_block_and_close(void) {
    /* Inside an unregister made from a callback: the registry is open, the list answers (the
     * other node), and the close, which delivers the unregistering callback's UNREGISTERED
     * nested in turn, succeeds. */
    nested_calls n = {.registry = connect_etcd(), .close_status = -1, .list_status = -1, .listed = -1};
    REQUIRE(n.registry != NULL);
    unregisterer u = {.registry = n.registry, .status = -1};
    REQUIRE_OK(etcd_registry_register_json(n.registry, "nested-calls", "n1", NULL, 10000, calls_at_unregistered, &n, &u.victim));
    REQUIRE_OK(etcd_registry_wait_registered(n.registry, u.victim, (uint64_t)(10000 * slow)));
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(n.registry, "nested-calls", "unregisters", NULL, 10000, unregister_other_at_registered, &u, &id));
    REQUIRE(WAIT_FOR(atomic_load(&u.done), 20 * slow)); /* else it may still run: no free */
    CHECK(atomic_load(&u.status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&n.done));
    if (atomic_load(&n.list_status) != ETCD_REGISTRY_STATUS_OK) {
        fprintf(stderr, "    list: %d %s\n", atomic_load(&n.list_status), n.list_message);
        current_failed = 1;
    }
    CHECK(atomic_load(&n.listed) == 1);
    CHECK(atomic_load(&n.close_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(count_nodes_fresh("nested-calls") == 0);
    etcd_registry_free(n.registry);

    /* Inside a close made from a callback: a list gets CLOSED, a second close OK at once. */
    nested_calls m = {.registry = connect_etcd(), .close_status = -1, .list_status = -1};
    REQUIRE(m.registry != NULL);
    REQUIRE_OK(etcd_registry_register_json(m.registry, "nested-close", "n1", NULL, 10000, calls_at_unregistered, &m, &id));
    REQUIRE_OK(etcd_registry_wait_registered(m.registry, id, (uint64_t)(10000 * slow)));
    closer c = {.registry = m.registry, .status = -1};
    REQUIRE_OK(etcd_registry_register_json(m.registry, "nested-close", "closer", NULL, 10000, close_from_callback, &c, &id));
    REQUIRE(WAIT_FOR(atomic_load(&c.done), 20 * slow)); /* else it may still run: no free */
    CHECK(atomic_load(&c.status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&m.done));
    CHECK(atomic_load(&m.list_status) == ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(atomic_load(&m.close_status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(count_nodes_fresh("nested-close") == 0);
    etcd_registry_free(m.registry);
}

/* Holds up the callback thread in its REGISTERED call until released (by a releaser, below). */
typedef struct {
    atomic_bool running;
    atomic_bool release;
} dispatcher_hold;

static void hold_the_callback_thread(const etcd_registry_status_event *e, void *user_data) {
    dispatcher_hold *hold = user_data;
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    atomic_store(&hold->running, true);
    WAIT_FOR(atomic_load(&hold->release), 60 * slow); /* the releaser's deadline is shorter */
}

/* A registration or watch of a registry, for the conditions a releaser waits for. */
typedef struct {
    etcd_registry *registry;
    uint64_t id;
} registry_id;

/* Releases a dispatcher_hold from a thread of its own once `cond(arg)` holds, observed while the
 * call under test runs (that call's thread is blocked in it, waiting for the held thread): the
 * hold then ends only once the call has reached the point `cond` shows. Released at the
 * deadline all the same, `seen` false (the test checks it). Join it before freeing what `cond`
 * reads. */
typedef struct {
    dispatcher_hold *hold;
    bool (*cond)(void *arg);
    void *arg;
    atomic_bool seen;
    pthread_t thread;
} releaser;

static void *release_when(void *arg) {
    releaser *rel = arg;
    atomic_store(&rel->seen, WAIT_FOR(rel->cond(rel->arg), 30 * slow));
    atomic_store(&rel->hold->release, true);
    return NULL;
}

static bool start_releaser(releaser *rel, dispatcher_hold *hold, bool (*cond)(void *), void *arg) {
    rel->hold = hold;
    rel->cond = cond;
    rel->arg = arg;
    atomic_init(&rel->seen, false);
    return pthread_create(&rel->thread, NULL, release_when, rel) == 0;
}

/* The releasers' conditions. */
static bool registry_close_begun(void *arg) { return close_begun(((registry_id *)arg)->registry); }

/* The registration has been taken by an etcd_registry_unregister (NOT_FOUND from then on; a
 * replaced one is not forgotten by itself while its UNREGISTERED is held up). */
static bool taken_to_unregister(void *arg) {
    registry_id *ref = arg;
    etcd_registry_state state = 0;
    return etcd_registry_registration_state(ref->registry, ref->id, &state) == ETCD_REGISTRY_STATUS_NOT_FOUND;
}

/* Takes the registry's pull queue until the UNREGISTERED of registration `id`. */
static bool pulled_unregistered(void *arg) {
    registry_id *ref = arg;
    etcd_registry_event *e = NULL;
    while (etcd_registry_next_event(ref->registry, 0, &e) == ETCD_REGISTRY_STATUS_OK) {
        bool last = e->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS && e->status.registration_id == ref->id &&
                    e->status.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED;
        etcd_registry_event_free(e);
        if (last) return true;
    }
    return false;
}

/* The last event a replaced registration's callback saw (its user data, freed after). */
typedef struct {
    atomic_int calls;
    atomic_uint last_kind;
} last_event;

static void record_last_event(const etcd_registry_status_event *e, void *user_data) {
    last_event *last = user_data;
    atomic_fetch_add(&last->calls, 1);
    atomic_store(&last->last_kind, e->kind); /* last: reading UNREGISTERED orders the whole call */
}

/* Whether `id` is no longer one of the registry's (the question etcd_registry_dropped_events
 * and etcd_registry_registration_state answer alike). */
static bool forgotten(etcd_registry *r, uint64_t id) {
    uint64_t n = 0;
    etcd_registry_state state = 0;
    return etcd_registry_dropped_events(r, id, &n) == ETCD_REGISTRY_STATUS_NOT_FOUND &&
           etcd_registry_registration_state(r, id, &state) == ETCD_REGISTRY_STATUS_NOT_FOUND;
}

static void test_a_replaced_registration_ends_like_an_unregistered_one(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    dispatcher_hold *hold = calloc(1, sizeof *hold);
    uint64_t slow_id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "replaced-hold", "slow", NULL, 10000, hold_the_callback_thread, hold, &slow_id));
    REQUIRE(WAIT_FOR(atomic_load(&hold->running), 10 * slow));

    /* Unregistering the replaced registration returns once its UNREGISTERED has been
     * delivered, as for a current one: its user data may be freed then (ASan checks it). */
    last_event *old = calloc(1, sizeof *old);
    uint64_t old_id = 0, new_id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "replaced", "a", NULL, 10000, record_last_event, old, &old_id));
    REQUIRE_OK(etcd_registry_register_json(r, "replaced", "a", NULL, 10000, NULL, NULL, &new_id));
    /* The callback thread is released once the unregister below has taken the registration:
     * the unregister is under way, its UNREGISTERED still held up. */
    registry_id taken = {r, old_id};
    releaser rel;
    REQUIRE(start_releaser(&rel, hold, taken_to_unregister, &taken));
    CHECK_OK(etcd_registry_unregister(r, old_id));
    CHECK(atomic_load(&old->last_kind) == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED);
    pthread_join(rel.thread, NULL);
    CHECK(atomic_load(&rel.seen));
    free(old);
    CHECK(forgotten(r, old_id));
    CHECK_STATUS(etcd_registry_unregister(r, old_id), ETCD_REGISTRY_STATUS_NOT_FOUND);
    /* The key stays, the newer registration's. */
    CHECK_OK(etcd_registry_wait_registered(r, new_id, (uint64_t)(10000 * slow)));
    CHECK(count_nodes(r, "replaced") == 1);

    /* Not unregistered: the handle forgets it by itself once its UNREGISTERED has been
     * delivered, instead of keeping it until close. */
    last_event *left = calloc(1, sizeof *left);
    uint64_t left_id = 0, newer_id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "replaced", "b", NULL, 10000, record_last_event, left, &left_id));
    REQUIRE_OK(etcd_registry_register_json(r, "replaced", "b", NULL, 10000, NULL, NULL, &newer_id));
    CHECK(WAIT_FOR(forgotten(r, left_id), 10 * slow));
    CHECK(atomic_load(&left->last_kind) == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED);
    CHECK_OK(etcd_registry_wait_registered(r, newer_id, (uint64_t)(10000 * slow)));
    CHECK(count_nodes(r, "replaced") == 2);

    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    free(left);
    free(hold);
}

/* Close while an etcd_registry_unregister_async is in flight, its UNREGISTERED still queued
 * (the callback thread held up by another registry's callback): close returns only once the
 * status callback has had it, so its user data may be freed then (ASan checks it). */
static void test_close_delivers_the_unregistered_of_an_unregister_async_in_flight(void) {
    etcd_registry *r = connect_etcd(), *other = connect_etcd();
    REQUIRE(r != NULL && other != NULL);
    dispatcher_hold *hold = calloc(1, sizeof *hold);
    uint64_t slow_id = 0;
    REQUIRE_OK(etcd_registry_register_json(other, "unreg-async-close", "slow", NULL, 10000, hold_the_callback_thread, hold, &slow_id));
    REQUIRE(WAIT_FOR(atomic_load(&hold->running), 10 * slow));

    last_event *seen = calloc(1, sizeof *seen);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "unreg-async-close", "a", NULL, 10000, record_last_event, seen, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    list_result done;
    list_result_init(&done, NULL);
    CHECK_OK(etcd_registry_unregister_async(r, id, on_unregistered, &done));
    /* Released once close has begun: close is called while the callback thread is held. */
    registry_id closing = {r, 0};
    releaser rel;
    REQUIRE(start_releaser(&rel, hold, registry_close_begun, &closing));
    CHECK_OK(etcd_registry_close(r));
    CHECK(atomic_load(&seen->last_kind) == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED);
    free(seen);
    pthread_join(rel.thread, NULL);
    CHECK(atomic_load(&rel.seen));
    CHECK(list_result_wait(&done, 10 * slow));
    CHECK(done.status == ETCD_REGISTRY_STATUS_OK);
    list_result_destroy(&done);
    etcd_registry_free(r);
    CHECK_OK(etcd_registry_close(other));
    etcd_registry_free(other);
    free(hold);
}

/* A callback held up in its call: `entered` once it runs, `left` when it returns, which it does
 * once a close of its registry has begun (`close_seen`), so that close finds it running. */
typedef struct {
    etcd_registry *registry;
    uint64_t id;
    atomic_bool entered, left, close_seen;
    atomic_int status;
} held_call;

/* The held part of the call: until close has begun (the registry is alive until the callback
 * returns, as close waits for it: the test checks that). */
static void hold_until_closing(held_call *h) {
    atomic_store(&h->close_seen, WAIT_FOR(close_begun(h->registry), 10 * slow));
    atomic_store(&h->left, true);
}

static void hold_unregistered(const etcd_registry_status_event *e, void *user_data) {
    held_call *h = user_data;
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_UNREGISTERED) return;
    atomic_store(&h->entered, true);
    hold_until_closing(h);
}

static void hold_first_watch_event(const etcd_registry_watch_event *e, void *user_data) {
    (void)e;
    held_call *h = user_data;
    if (atomic_exchange(&h->entered, true)) return;
    hold_until_closing(h);
}

static void *unregister_held(void *arg) {
    held_call *h = arg;
    atomic_store(&h->status, etcd_registry_unregister(h->registry, h->id));
    return NULL;
}

static void *unwatch_held(void *arg) {
    held_call *h = arg;
    atomic_store(&h->status, etcd_registry_unwatch(h->registry, h->id));
    return NULL;
}

/* A held_call with a registry of its own; NULL if either could not be made. */
static held_call *new_held_call(void) {
    held_call *h = calloc(1, sizeof *h);
    if (h != NULL && (h->registry = connect_etcd()) == NULL) {
        free(h);
        h = NULL;
    }
    return h;
}

/* Closes the registry while `thread` is in its call: the held callback has returned when close
 * does, then the call returns OK. */
static void close_while_held(held_call *h, pthread_t thread) {
    CHECK_OK(etcd_registry_close(h->registry));
    CHECK(atomic_load(&h->left));
    CHECK(atomic_load(&h->close_seen)); /* the callback was still running when close began */
    pthread_join(thread, NULL);
    CHECK(atomic_load(&h->status) == ETCD_REGISTRY_STATUS_OK);
    etcd_registry_free(h->registry);
    free(h);
}

/* Whether watch `id` is gone from the registry (taken by an unwatch). */
static bool watch_gone(etcd_registry *r, uint64_t id) {
    etcd_registry_node_list *list = NULL;
    etcd_registry_status status = etcd_registry_watch_nodes(r, id, &list);
    if (status == ETCD_REGISTRY_STATUS_OK) etcd_registry_node_list_free(list);
    return status == ETCD_REGISTRY_STATUS_NOT_FOUND;
}

/* Close while another thread's etcd_registry_unregister is delivering UNREGISTERED: close
 * returns only once that callback has returned, as the header promises (no callback of the
 * registry running once close returns), so its user data may be freed then. */
static void test_close_waits_for_the_callback_of_an_unregister_in_flight(void) {
    held_call *h = new_held_call();
    REQUIRE(h != NULL);
    REQUIRE_OK(etcd_registry_register_json(h->registry, "close-unreg", "n1", NULL, 10000, hold_unregistered, h, &h->id));
    REQUIRE_OK(etcd_registry_wait_registered(h->registry, h->id, (uint64_t)(10000 * slow)));
    pthread_t unregistering;
    REQUIRE(pthread_create(&unregistering, NULL, unregister_held, h) == 0);
    REQUIRE(WAIT_FOR(atomic_load(&h->entered), 10 * slow));
    close_while_held(h, unregistering);
}

/* The same for a watch callback running while another thread's etcd_registry_unwatch stops
 * it: close waits for that call too. */
static void test_close_waits_for_the_callback_of_an_unwatch_in_flight(void) {
    held_call *h = new_held_call();
    REQUIRE(h != NULL);
    uint64_t node = 0;
    REQUIRE_OK(etcd_registry_register_json(h->registry, "close-unwatch", "n1", NULL, 10000, NULL, NULL, &node));
    REQUIRE_OK(etcd_registry_wait_registered(h->registry, node, (uint64_t)(10000 * slow)));
    REQUIRE_OK(etcd_registry_watch(h->registry, "close-unwatch", hold_first_watch_event, h, &h->id));
    REQUIRE(WAIT_FOR(atomic_load(&h->entered), 10 * slow));
    pthread_t unwatching;
    REQUIRE(pthread_create(&unwatching, NULL, unwatch_held, h) == 0);
    /* The unwatch has taken the watch (it waits for the callback now). */
    REQUIRE(WAIT_FOR(watch_gone(h->registry, h->id), 10 * slow));
    close_while_held(h, unwatching);
}

typedef struct {
    etcd_registry *registry;
    atomic_int status;
    atomic_bool returned;
} closing;

static void *close_in_thread(void *arg) {
    closing *c = arg;
    atomic_store(&c->status, etcd_registry_close(c->registry));
    atomic_store(&c->returned, true);
    return NULL;
}

/* Close while the callback of a watch still open runs and calls the library: the callback's
 * calls get CLOSED, it returns, and close returns once it has. (Close used to stop the watch
 * while it held the registry's lock, which the callback's call waited for: both hung. The
 * test program exits instead of hanging then.) */
static void test_close_while_a_watch_callback_calls_the_library(void) {
    held_call *h = new_held_call();
    REQUIRE(h != NULL);
    uint64_t node = 0;
    REQUIRE_OK(etcd_registry_register_json(h->registry, "close-watching", "n1", NULL, 10000, NULL, NULL, &node));
    REQUIRE_OK(etcd_registry_wait_registered(h->registry, node, (uint64_t)(10000 * slow)));
    /* The callback polls close_begun (a library call) until the close has begun. */
    REQUIRE_OK(etcd_registry_watch(h->registry, "close-watching", hold_first_watch_event, h, &h->id));
    REQUIRE(WAIT_FOR(atomic_load(&h->entered), 10 * slow));
    closing c = {.registry = h->registry};
    pthread_t closer;
    REQUIRE(pthread_create(&closer, NULL, close_in_thread, &c) == 0);
    if (!WAIT_FOR(atomic_load(&c.returned), 30 * slow)) {
        fprintf(stderr, "    %s:%d: close and the watch callback wait for each other\n", __FILE__, __LINE__);
        _exit(1);
    }
    pthread_join(closer, NULL);
    CHECK(atomic_load(&c.status) == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&h->left));
    CHECK(atomic_load(&h->close_seen)); /* the callback was still running when close began */
    etcd_registry_free(h->registry);
    free(h);
}

/* A replaced registration whose UNREGISTERED is still queued when close is called has had it
 * when close returns. The order in which only the handle's part of close delivers it (e94a688)
 * is forced: the replaced registration has ended in the core before close (the core's close
 * leaves it alone then), the callback thread is held by another registry's callback (so the
 * core's close of this one waits for no callback), and it is released only once the core's
 * close has ended the current registrations (their UNREGISTERED is in the pull queue): the
 * queued UNREGISTERED is then the handle's to deliver, or it is lost. (Its release comes a
 * poll later than the core's close, not at a point the API shows; a close dropping the event
 * does so in that time, by far the shorter.) */
static void test_close_delivers_a_replaced_registrations_unregistered(void) {
    etcd_registry *r = connect_etcd(), *other = connect_etcd();
    REQUIRE(r != NULL && other != NULL);
    dispatcher_hold *hold = calloc(1, sizeof *hold);
    uint64_t slow_id = 0;
    REQUIRE_OK(etcd_registry_register_json(other, "replaced-close", "slow", NULL, 10000, hold_the_callback_thread, hold, &slow_id));
    REQUIRE(WAIT_FOR(atomic_load(&hold->running), 10 * slow));

    last_event *old = calloc(1, sizeof *old);
    uint64_t old_id = 0, new_id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "replaced-close", "a", NULL, 10000, record_last_event, old, &old_id));
    REQUIRE_OK(etcd_registry_register_json(r, "replaced-close", "a", NULL, 10000, NULL, NULL, &new_id));
    /* The replaced one has ended in the core, its events (UNREGISTERED last) queued behind the
     * hold. Its state reads UNREGISTERED at once, before its lease's task has ended it; that
     * task takes its commands in order, so a registration of the same TTL made after it shows
     * when it has: once that one is registered, the replaced one was ended before. */
    uint64_t after_id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "replaced-close", "after", NULL, 10000, NULL, NULL, &after_id));
    REQUIRE_OK(etcd_registry_wait_registered(r, after_id, (uint64_t)(10000 * slow)));
    CHECK(atomic_load(&old->calls) == 0);
    registry_id current = {r, new_id};
    releaser rel;
    REQUIRE(start_releaser(&rel, hold, pulled_unregistered, &current));
    CHECK_OK(etcd_registry_close(r));
    /* close returned: the replaced registration's callback has had its UNREGISTERED, and
     * its user data may be freed now (ASan checks it). */
    CHECK(atomic_load(&old->last_kind) == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED);
    pthread_join(rel.thread, NULL);
    CHECK(atomic_load(&rel.seen)); /* released only after the core's close */
    free(old);
    etcd_registry_free(r);
    CHECK_OK(etcd_registry_close(other));
    etcd_registry_free(other);
    free(hold);
}

/* etcd_registry_free called inside an _async callback (a library runtime thread) while a
 * status callback of the registry runs on the callback thread. */
typedef struct {
    etcd_registry *registry;
    etcd_registry *probe;       /* another registry, to list with while `registry` is freed */
    atomic_bool key_gone;       /* the status callback saw the key go while it was held */
    atomic_bool in_callback;    /* the status callback is running */
    atomic_bool freeing;        /* the async callback is about to free the registry */
    atomic_bool freed;          /* free returned */
    atomic_bool ran_after_free; /* a status callback ran after free returned */
    atomic_bool running_at_return; /* ... or was still running when it returned */
    atomic_bool done;           /* the async callback's last access */
} free_in_callback;

static void status_while_freed(const etcd_registry_status_event *e, void *user_data) {
    free_in_callback *ctx = user_data;
    if (atomic_load(&ctx->freed)) atomic_store(&ctx->ran_after_free, true);
    if (e->kind != ETCD_REGISTRY_STATUS_KIND_REGISTERED) return;
    atomic_store(&ctx->in_callback, true);
    /* Held until the free is under way: it has closed the registry, whose close (going on in
     * the background) revoked the lease, so the key is gone. Seen through another registry:
     * a free that did not wait would free this one under us. */
    atomic_store(&ctx->key_gone, WAIT_FOR(atomic_load(&ctx->freeing) && count_nodes(ctx->probe, "free-async") == 0,
                                          30 * slow));
    if (atomic_load(&ctx->freed)) atomic_store(&ctx->ran_after_free, true);
    atomic_store(&ctx->in_callback, false);
}

static void free_from_list_callback(void *user_data, etcd_registry_status status, const char *message,
                                    etcd_registry_node_list *list) {
    (void)status;
    (void)message;
    free_in_callback *ctx = user_data;
    etcd_registry_node_list_free(list);
    atomic_store(&ctx->freeing, true);
    etcd_registry_free(ctx->registry);
    atomic_store(&ctx->freed, true);
    atomic_store(&ctx->running_at_return, atomic_load(&ctx->in_callback));
    atomic_store(&ctx->done, true);
}

static void test_free_inside_an_async_callback_stops_every_callback(void) {
    free_in_callback *ctx = calloc(1, sizeof *ctx);
    REQUIRE(ctx != NULL);
    ctx->registry = connect_etcd();
    ctx->probe = connect_etcd();
    REQUIRE(ctx->registry != NULL && ctx->probe != NULL);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(ctx->registry, "free-async", "n1", NULL, 10000, status_while_freed, ctx, &id));
    REQUIRE(WAIT_FOR(atomic_load(&ctx->in_callback), 10 * slow)); /* else it may still run: no free */
    REQUIRE_OK(etcd_registry_list_async(ctx->registry, "free-async", free_from_list_callback, ctx));
    REQUIRE(WAIT_FOR(atomic_load(&ctx->done), 30 * slow)); /* else it may still run: no free */
    /* free returned: no callback of the registry was running, and none ran since. */
    CHECK(!atomic_load(&ctx->running_at_return));
    CHECK(!atomic_load(&ctx->ran_after_free));
    /* The close went on in the background, while the callback was held: the key is gone. */
    CHECK(atomic_load(&ctx->key_gone));
    CHECK(WAIT_FOR(count_nodes_fresh("free-async") == 0, 30 * slow));
    CHECK(!atomic_load(&ctx->ran_after_free));
    CHECK_OK(etcd_registry_close(ctx->probe));
    etcd_registry_free(ctx->probe);
    free(ctx);
}

/* A registry closed already, closed again and freed from an _async callback (a library
 * runtime thread, where no call may block): the close is OK, as from any thread, and the free
 * logs no error (the error is for a registry freed there before it was closed). */
typedef struct {
    etcd_registry *closed;
    etcd_registry_status close_status;
    atomic_bool done;
} close_closed_ctx;

static atomic_int free_errors; /* ERROR lines about etcd_registry_free in a callback */

static void count_free_errors(etcd_registry_log_level level, const char *target, const char *message,
                              void *user_data) {
    (void)target;
    (void)user_data;
    if (level == ETCD_REGISTRY_LOG_ERROR && strstr(message, "etcd_registry_free") != NULL)
        atomic_fetch_add(&free_errors, 1);
}

static void close_closed_from_list_callback(void *user_data, etcd_registry_status status, const char *message,
                                            etcd_registry_node_list *list) {
    (void)status;
    (void)message;
    close_closed_ctx *ctx = user_data;
    etcd_registry_node_list_free(list);
    ctx->close_status = etcd_registry_close(ctx->closed);
    etcd_registry_free(ctx->closed);
    atomic_store(&ctx->done, true);
}

static void test_a_closed_registry_closed_and_freed_in_an_async_callback(void) {
    close_closed_ctx ctx = {.closed = connect_etcd(), .close_status = -1};
    etcd_registry *r = connect_etcd();
    REQUIRE(ctx.closed != NULL && r != NULL);
    REQUIRE_OK(etcd_registry_close(ctx.closed));
    atomic_store(&free_errors, 0);
    REQUIRE_OK(etcd_registry_set_log_callback(count_free_errors, ETCD_REGISTRY_LOG_ERROR, NULL));
    REQUIRE_OK(etcd_registry_list_async(r, "closed-in-callback", close_closed_from_list_callback, &ctx));
    REQUIRE(WAIT_FOR(atomic_load(&ctx.done), 30 * slow));
    CHECK_OK(etcd_registry_set_log_callback(NULL, ETCD_REGISTRY_LOG_OFF, NULL));
    CHECK(ctx.close_status == ETCD_REGISTRY_STATUS_OK);
    CHECK(atomic_load(&free_errors) == 0);
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
}

static void test_free_functions_keep_the_last_error(void) {
    char eps[64];
    snprintf(eps, sizeof eps, "127.0.0.1:%d", dead_port());
    etcd_registry_config *config = make_config(eps);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_timeout_ms(config, 1000)); /* fails fast, see connect_dead */
    etcd_registry *r = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &r));
    etcd_registry_node_list *list = NULL;
    CHECK(etcd_registry_list(r, "svc", &list) != ETCD_REGISTRY_STATUS_OK);
    char before[512];
    snprintf(before, sizeof before, "%s", etcd_registry_last_error_message());
    CHECK(before[0] != '\0');
    /* The message stays until the next status-returning call: freeing is not one. */
    etcd_registry_config_free(config);
    CHECK(strcmp(etcd_registry_last_error_message(), before) == 0);
    etcd_registry_node_list_free(list);
    etcd_registry_event_free(NULL);
    etcd_registry_free(r);
    CHECK(strcmp(etcd_registry_last_error_message(), before) == 0);
}

static void test_retry_attempts_start_at_one_for_every_registration(void) {
    char eps[64];
    etcd_registry *r = connect_dead(eps, sizeof eps);
    REQUIRE(r != NULL);
    recorder recs[3];
    const char *names[3] = {"n1", "n2", "n3"};
    uint64_t id = 0;
    for (int i = 0; i < 3; i++) recorder_init(&recs[i]);
    CHECK_OK(etcd_registry_register_json(r, "svc", names[0], NULL, 5000, on_status, &recs[0], &id));
    /* The others join the lease group of the same TTL while it backs off after a failure. */
    CHECK(WAIT_FOR(find_event(&recs[0], ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, 0) >= 0, 20 * slow));
    for (int i = 1; i < 3; i++)
        CHECK_OK(etcd_registry_register_json(r, "svc", names[i], NULL, 5000, on_status, &recs[i], &id));
    for (int i = 0; i < 3; i++) {
        int first = -1;
        CHECK(WAIT_FOR((first = find_event(&recs[i], ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, 0)) >= 0, 20 * slow));
        if (first < 0) continue;
        int second = -1;
        CHECK(WAIT_FOR((second = find_event(&recs[i], ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, first + 1)) >= 0,
                       20 * slow));
        pthread_mutex_lock(&recs[i].mu);
        uint32_t a1 = recs[i].attempts[first], a2 = second >= 0 ? recs[i].attempts[second] : 0;
        pthread_mutex_unlock(&recs[i].mu);
        if (a1 != 1 || a2 != 2) fprintf(stderr, "    %s: attempts %u, %u\n", names[i], a1, a2);
        CHECK(a1 == 1 && a2 == 2);
    }
    etcd_registry_free(r); /* waits for the callbacks: the recorders can go */
    for (int i = 0; i < 3; i++) recorder_destroy(&recs[i]);
}

static void test_pull_api(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    etcd_registry_event *event = (etcd_registry_event *)(uintptr_t)0x1;
    CHECK_STATUS(etcd_registry_next_event(r, 0, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_next_event(r, 0, &event), ETCD_REGISTRY_STATUS_TIMEOUT);
    CHECK_STATUS(etcd_registry_next_event(r, 20, &event), ETCD_REGISTRY_STATUS_TIMEOUT);
    CHECK(event == (etcd_registry_event *)(uintptr_t)0x1);

    uint64_t reg = 0, watch = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "pulled", "n1", "{\"k\":\"v\"}", 10000, NULL, NULL, &reg));
    REQUIRE_OK(etcd_registry_watch(r, "pulled", NULL, NULL, &watch));
    bool registered = false, added = false;
    double deadline = now_s() + 10 * slow;
    while (!(registered && added) && now_s() < deadline) {
        etcd_registry_event *e = NULL;
        etcd_registry_status s = etcd_registry_next_event(r, 100, &e);
        if (s == ETCD_REGISTRY_STATUS_TIMEOUT) continue;
        CHECK_OK(s);
        if (s != ETCD_REGISTRY_STATUS_OK) break;
        if (e->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS) {
            CHECK(e->status.registration_id == reg);
            CHECK(strcmp(e->status.service, "pulled") == 0 && strcmp(e->status.node, "n1") == 0);
            if (e->status.kind == ETCD_REGISTRY_STATUS_KIND_REGISTERED) registered = e->status.lease_id != 0;
        } else {
            CHECK(e->event_type == ETCD_REGISTRY_EVENT_TYPE_WATCH);
            CHECK(e->watch.watch_id == watch);
            if (e->watch.kind == ETCD_REGISTRY_WATCH_KIND_ADDED && strcmp(e->watch.node_name, "n1") == 0) {
                added = strcmp(e->watch.info_json, "{\"k\":\"v\"}") == 0 && e->watch.revision > 0;
            }
        }
        etcd_registry_event_free(e);
    }
    CHECK(registered && added);

    /* A reader that keeps up loses nothing; the counter is the pull queue's for any pulled id. */
    uint64_t dropped = 7;
    CHECK_OK(etcd_registry_dropped_events(r, 0, &dropped));
    CHECK(dropped == 0);
    dropped = 7;
    CHECK_OK(etcd_registry_dropped_events(r, reg, &dropped));
    CHECK(dropped == 0);
    CHECK_STATUS(etcd_registry_dropped_events(r, 987654321, &dropped), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_STATUS(etcd_registry_dropped_events(r, 0, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_dropped_events(NULL, 0, &dropped), ETCD_REGISTRY_STATUS_NULL_POINTER);

    /* After unregister/unwatch returns, nothing of theirs is pulled any more. */
    uint64_t quiet = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "pulled", "n2", NULL, 10000, NULL, NULL, &quiet));
    REQUIRE_OK(etcd_registry_wait_registered(r, quiet, (uint64_t)(10000 * slow)));
    CHECK_OK(etcd_registry_unwatch(r, watch));
    CHECK_OK(etcd_registry_unregister(r, quiet));
    bool quiet_ended = false;
    for (;;) {
        etcd_registry_event *e = NULL;
        etcd_registry_status s = etcd_registry_next_event(r, 200, &e);
        if (s != ETCD_REGISTRY_STATUS_OK) {
            CHECK(s == ETCD_REGISTRY_STATUS_TIMEOUT);
            break;
        }
        /* Only the events queued before: the last one of `quiet` is its UNREGISTERED. */
        CHECK(e->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS);
        if (e->status.registration_id == quiet) {
            CHECK(!quiet_ended);
            quiet_ended = e->status.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED;
        } else {
            CHECK(e->status.registration_id == reg);
        }
        etcd_registry_event_free(e);
    }
    CHECK(quiet_ended);
    CHECK_OK(etcd_registry_close(r));
    /* After close: what is still queued (reg's UNREGISTERED, its last event), then CLOSED. */
    event = NULL;
    REQUIRE_OK(etcd_registry_next_event(r, 0, &event));
    CHECK(event->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS && event->status.registration_id == reg &&
          event->status.kind == ETCD_REGISTRY_STATUS_KIND_UNREGISTERED);
    etcd_registry_event_free(event);
    CHECK_STATUS(etcd_registry_next_event(r, 0, &event), ETCD_REGISTRY_STATUS_CLOSED);
    etcd_registry_free(r);
}

/* Whether fd turns readable within ms milliseconds. */
static bool readable_within(int fd, int ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n;
    while ((n = poll(&p, 1, ms)) < 0 && errno == EINTR) {
    }
    return n == 1 && (p.revents & POLLIN);
}

/* Reads the event fd once it is readable and takes every queued event without waiting; true
 * when one was a status event of `kind` for registration `id`. */
static bool drain_after_signal(etcd_registry *r, int fd, uint64_t id, uint32_t kind, bool *closed) {
    uint64_t count = 0;
    CHECK(read(fd, &count, sizeof count) == (ssize_t)sizeof count && count >= 1);
    bool seen = false;
    for (;;) {
        etcd_registry_event *e = NULL;
        etcd_registry_status s = etcd_registry_next_event(r, 0, &e);
        if (s == ETCD_REGISTRY_STATUS_CLOSED) *closed = true;
        if (s != ETCD_REGISTRY_STATUS_OK) {
            CHECK(s == ETCD_REGISTRY_STATUS_TIMEOUT || s == ETCD_REGISTRY_STATUS_CLOSED);
            return seen;
        }
        seen |= e->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS && e->status.registration_id == id &&
                e->status.kind == kind;
        etcd_registry_event_free(e);
    }
}

static void test_event_fd_wakes_a_poll_loop(void) {
    int fd = -7;
    CHECK_STATUS(etcd_registry_event_fd(NULL, &fd), ETCD_REGISTRY_STATUS_NULL_POINTER);
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    CHECK_STATUS(etcd_registry_event_fd(r, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK(fd == -7);
    REQUIRE_OK(etcd_registry_event_fd(r, &fd));
    REQUIRE(fd >= 0);
    int again = -1;
    CHECK_OK(etcd_registry_event_fd(r, &again));
    CHECK(again == fd);
    CHECK((fcntl(fd, F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFD) & FD_CLOEXEC));
    CHECK(!readable_within(fd, 0)); /* nothing queued yet */

    /* A registration's REGISTERED wakes the loop; once read and drained, it is quiet again. */
    uint64_t reg = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "polled", "n1", NULL, 10000, NULL, NULL, &reg));
    bool registered = false, closed = false;
    double deadline = now_s() + 10 * slow;
    while (!registered && now_s() < deadline) {
        if (readable_within(fd, 100)) registered = drain_after_signal(r, fd, reg, ETCD_REGISTRY_STATUS_KIND_REGISTERED, &closed);
    }
    CHECK(registered && !closed);
    CHECK(!readable_within(fd, 0));

    /* Close signals it: what is queued (the UNREGISTERED), then CLOSED. */
    CHECK_OK(etcd_registry_close(r));
    CHECK(readable_within(fd, 0));
    CHECK(drain_after_signal(r, fd, reg, ETCD_REGISTRY_STATUS_KIND_UNREGISTERED, &closed));
    CHECK(closed);
    CHECK_STATUS(etcd_registry_event_fd(r, &again), ETCD_REGISTRY_STATUS_CLOSED);
    etcd_registry_free(r);
}

typedef struct {
    etcd_registry *registry;
    atomic_int status;
    atomic_bool waiting; /* took the REGISTERED: waits again, on an empty queue */
    atomic_bool returned;
} puller;

static void *pull_forever(void *arg) {
    puller *p = arg;
    etcd_registry_event *e = NULL;
    etcd_registry_status s;
    while ((s = etcd_registry_next_event(p->registry, ETCD_REGISTRY_WAIT_FOREVER, &e)) == ETCD_REGISTRY_STATUS_OK) {
        bool registered = e->event_type == ETCD_REGISTRY_EVENT_TYPE_STATUS &&
                          e->status.kind == ETCD_REGISTRY_STATUS_KIND_REGISTERED;
        etcd_registry_event_free(e);
        if (registered) atomic_store(&p->waiting, true); /* set right before the next wait */
    }
    atomic_store(&p->status, s);
    atomic_store(&p->returned, true);
    return NULL;
}

static void test_close_wakes_a_waiting_puller(void) {
    puller p = {.registry = connect_etcd()};
    REQUIRE(p.registry != NULL);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(p.registry, "pullers", "n1", NULL, 10000, NULL, NULL, &id));
    pthread_t thread;
    REQUIRE(pthread_create(&thread, NULL, pull_forever, &p) == 0);
    REQUIRE_OK(etcd_registry_wait_registered(p.registry, id, (uint64_t)(10000 * slow)));
    /* The puller has taken the only event and gone back to wait, on an empty queue (it cannot
     * be seen blocked: this is the closest observable point before it blocks). */
    CHECK(WAIT_FOR(atomic_load(&p.waiting), 10 * slow));
    CHECK(!atomic_load(&p.returned));
    CHECK_OK(etcd_registry_close(p.registry));
    CHECK(WAIT_FOR(atomic_load(&p.returned), 10 * slow));
    pthread_join(thread, NULL);
    CHECK(atomic_load(&p.status) == ETCD_REGISTRY_STATUS_CLOSED);
    etcd_registry_free(p.registry); /* the puller has left: now free is safe */
}

static void test_use_after_close_and_double_close(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec, events;
    recorder_init(&rec);
    recorder_init(&events);
    uint64_t id = 0, watch = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "closed", "n1", NULL, 10000, on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    REQUIRE_OK(etcd_registry_watch(r, "closed", on_watch, &events, &watch));
    CHECK(WAIT_FOR(count_of(&events) >= 1, 10 * slow));
    int64_t registered_lease = 0;
    CHECK_OK(etcd_registry_registration_lease_id(r, id, &registered_lease));
    CHECK(registered_lease != 0 && etcd_has_lease(registered_lease) == 1);

    CHECK_OK(etcd_registry_close(r));
    CHECK_OK(etcd_registry_close(r)); /* idempotent */
    /* close revoked the lease: the key is gone at once. */
    CHECK(count_nodes_fresh("closed") == 0);
    CHECK(etcd_has_lease(registered_lease) == 0);

    /* After close returned, no callback of this registry runs. */
    int status_calls = count_of(&rec), watch_calls = count_of(&events);
    CHECK(barrier("closed", "after-close"));
    CHECK(count_of(&rec) == status_calls && count_of(&events) == watch_calls);
    /* close delivered UNREGISTERED before it returned, as the last event. */
    CHECK(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_UNREGISTERED, NULL, 0) == status_calls - 1);

    uint64_t out = 5;
    uint32_t state = 0;
    int64_t lease = 0;
    etcd_registry_node_list *list = NULL;
    etcd_registry_event *event = NULL;
    CHECK_STATUS(etcd_registry_register_json(r, "closed", "n2", NULL, 1000, NULL, NULL, &out), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_unregister(r, id), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_wait_registered(r, id, 10), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_registration_state(r, id, &state), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_registration_lease_id(r, id, &lease), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_list(r, "closed", &list), ETCD_REGISTRY_STATUS_CLOSED);
    etcd_registry_string_list *services = NULL;
    CHECK_STATUS(etcd_registry_services(r, &services), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(services == NULL);
    CHECK_STATUS(etcd_registry_watch(r, "closed", NULL, NULL, &out), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_unwatch(r, watch), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_watch_nodes(r, watch, &list), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK_STATUS(etcd_registry_next_event(r, 10, &event), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(out == 5 && list == NULL && event == NULL);
    CHECK(strstr(etcd_registry_last_error_message(), "closed") != NULL);
    etcd_registry_free(r);
    recorder_destroy(&rec);
    recorder_destroy(&events);
}

static void test_free_without_close_unregisters(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    uint64_t id = 0, watch = 0;
    recorder events;
    recorder_init(&events);
    REQUIRE_OK(etcd_registry_register_json(r, "freed", "n1", NULL, 10000, NULL, NULL, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    REQUIRE_OK(etcd_registry_watch(r, "freed", on_watch, &events, &watch));
    CHECK(count_nodes_fresh("freed") == 1);
    int64_t lease = 0;
    CHECK_OK(etcd_registry_registration_lease_id(r, id, &lease));
    CHECK(lease != 0 && etcd_has_lease(lease) == 1);
    etcd_registry_free(r);
    CHECK(count_nodes_fresh("freed") == 0);
    CHECK(etcd_has_lease(lease) == 0);
    recorder_destroy(&events); /* free returned: the watch callback is done */
}

/* 1000 registrations from 8 threads on one registry. */
#define THREADS 8
#define PER_THREAD 125

typedef struct {
    etcd_registry *registry;
    int index;
    uint64_t ids[PER_THREAD];
    int failures;
} registrar;

static atomic_int registered_events;

static void count_registered(const etcd_registry_status_event *e, void *user_data) {
    (void)user_data;
    if (e->kind == ETCD_REGISTRY_STATUS_KIND_REGISTERED) atomic_fetch_add(&registered_events, 1);
}

static void *register_many(void *arg) {
    registrar *t = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char node[32], info[64];
        snprintf(node, sizeof node, "node-%d-%03d", t->index, i);
        snprintf(info, sizeof info, "{\"thread\":\"%d\",\"i\":\"%d\"}", t->index, i);
        if (etcd_registry_register_json(t->registry, "crowd", node, info, 15000, count_registered, NULL, &t->ids[i]) !=
            ETCD_REGISTRY_STATUS_OK) {
            fprintf(stderr, "    register %s: %s\n", node, etcd_registry_last_error_message());
            t->failures++;
        }
    }
    return NULL;
}

static void test_1000_registrations_from_8_threads(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    atomic_store(&registered_events, 0);
    registrar threads[THREADS];
    pthread_t handles[THREADS];
    for (int t = 0; t < THREADS; t++) {
        threads[t] = (registrar){.registry = r, .index = t};
        REQUIRE(pthread_create(&handles[t], NULL, register_many, &threads[t]) == 0);
    }
    for (int t = 0; t < THREADS; t++) pthread_join(handles[t], NULL);

    int64_t first_lease = 0;
    bool one_lease = true, ids_unique = true;
    for (int t = 0; t < THREADS; t++) {
        CHECK(threads[t].failures == 0);
        for (int i = 0; i < PER_THREAD; i++) {
            uint64_t id = threads[t].ids[i];
            etcd_registry_status s = etcd_registry_wait_registered(r, id, (uint64_t)(30000 * slow));
            if (s != ETCD_REGISTRY_STATUS_OK) {
                CHECK_OK(s);
                continue;
            }
            int64_t lease = 0;
            CHECK_OK(etcd_registry_registration_lease_id(r, id, &lease));
            if (first_lease == 0) first_lease = lease;
            one_lease &= lease == first_lease;
            if (i > 0) ids_unique &= id != threads[t].ids[i - 1];
        }
    }
    CHECK(first_lease != 0 && one_lease && ids_unique);
    CHECK(WAIT_FOR(atomic_load(&registered_events) == THREADS * PER_THREAD, 30 * slow));

    etcd_registry_node_list *list = NULL;
    CHECK_OK(etcd_registry_list(r, "crowd", &list));
    CHECK(etcd_registry_node_list_len(list) == THREADS * PER_THREAD);
    /* Sorted by name: node-T-III, so index T*125+I is exactly that node. */
    bool names_ok = etcd_registry_node_list_len(list) == THREADS * PER_THREAD;
    for (size_t k = 0; names_ok && k < THREADS * PER_THREAD; k++) {
        char want[32];
        snprintf(want, sizeof want, "node-%zu-%03zu", k / PER_THREAD, k % PER_THREAD);
        names_ok = strcmp(etcd_registry_node_list_name(list, k), want) == 0;
    }
    CHECK(names_ok);
    etcd_registry_node_list_free(list);
    /* All 1000 keys share one lease in etcd too. */
    CHECK(etcd_has_lease(first_lease) == 1);
    CHECK(etcd_lease_keys(first_lease, "/ctest/crowd/") == THREADS * PER_THREAD);

    CHECK_OK(etcd_registry_close(r));
    CHECK(count_nodes_fresh("crowd") == 0);
    CHECK(etcd_has_lease(first_lease) == 0);
    etcd_registry_free(r);
}

static void test_keepalive_lost_and_reregistered_when_etcd_restarts(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "survivor", "n1", "{\"a\":\"b\"}", 5000, on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_REGISTERED, NULL, 0) == 0, 10 * slow));

    REQUIRE(harness("kill 0") >= 0);
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, 0) >= 0, 30 * slow));
    int lost = find_event(&rec, ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST, NULL, 0);
    int retry = find_event(&rec, ETCD_REGISTRY_STATUS_KIND_RETRYING, NULL, 0);
    CHECK(lost == 1 && retry == 2);
    if (lost == 1 && retry == 2) {
        CHECK(rec.errors[1] != ETCD_REGISTRY_STATUS_OK && rec.messages[1]);
        CHECK(rec.attempts[2] == 1 && rec.delays[2] > 0);
    }
    uint32_t state = 0;
    CHECK_OK(etcd_registry_registration_state(r, id, &state));
    CHECK(state == ETCD_REGISTRY_STATE_RETRYING);

    REQUIRE(harness("start 0") >= 0);
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_REREGISTERED, NULL, 0) >= 0, 60 * slow));
    CHECK_OK(etcd_registry_registration_state(r, id, &state));
    CHECK(state == ETCD_REGISTRY_STATE_REGISTERED);
    CHECK(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_REGISTERED, NULL, 1) < 0); /* REREGISTERED, not REGISTERED */
    /* Attempts count up between the loss and the success. */
    bool counting = true;
    int next = 1;
    for (int i = 0; i < count_of(&rec) && i < MAX_EVENTS; i++)
        if (rec.kinds[i] == ETCD_REGISTRY_STATUS_KIND_RETRYING) counting &= rec.attempts[i] == (uint32_t)next++;
    CHECK(counting);
    CHECK(count_nodes(r, "survivor") == 1);
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

/* The child of a fork() must not touch the parent's registrations: their handles refuse use
 * (CLOSED), closing or freeing them there leaves etcd alone, and new handles work. */
static int forked_child(etcd_registry *parents) {
    int bad = 0;
    etcd_registry_node_list *list = NULL;
    etcd_registry_event *event = NULL;
    uint64_t id = 0;
    bad |= etcd_registry_list(parents, "forked", &list) != ETCD_REGISTRY_STATUS_CLOSED;
    bad |= etcd_registry_register_json(parents, "forked", "x", NULL, 5000, NULL, NULL, &id) != ETCD_REGISTRY_STATUS_CLOSED;
    bad |= etcd_registry_next_event(parents, 0, &event) != ETCD_REGISTRY_STATUS_CLOSED;
    bad |= etcd_registry_close(parents) != ETCD_REGISTRY_STATUS_OK;
    etcd_registry_free(parents);
    etcd_registry *own = connect_etcd();
    if (own == NULL) return 1;
    recorder rec;
    recorder_init(&rec);
    bad |= etcd_registry_register_json(own, "forked", "child", NULL, 5000, on_status, &rec, &id) != ETCD_REGISTRY_STATUS_OK;
    bad |= etcd_registry_wait_registered(own, id, (uint64_t)(10000 * slow)) != ETCD_REGISTRY_STATUS_OK;
    bad |= !WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_REGISTERED, "child", 0) >= 0, 10 * slow);
    bad |= count_nodes(own, "forked") != 2;
    bad |= etcd_registry_close(own) != ETCD_REGISTRY_STATUS_OK;
    etcd_registry_free(own);
    return bad;
}

static void test_fork_child_leaves_the_parent_registrations_alone(void) {
#ifdef __SANITIZE_THREAD__
    /* ThreadSanitizer does not support fork() in a multi-threaded process; the plain and
     * valgrind runs cover this test. */
    printf("    (skipped under ThreadSanitizer: fork of a multi-threaded process)\n");
    return;
#endif
#ifdef __SANITIZE_ADDRESS__
    /* The AddressSanitizer runtime of gcc 12 (Debian 12) takes no lock of its allocator around
     * fork() (it does since LLVM's "[asan] Install pthread_atfork", llvm-project#75290): a
     * library thread allocating at that moment leaves the child's malloc locked, and the child
     * hangs (seen: 1 run in a few). The plain and valgrind runs cover this test. */
    printf("    (skipped under AddressSanitizer: its allocator is not fork-safe here)\n");
    return;
#endif
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "forked", "parent", NULL, 5000, on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    int result[2];
    REQUIRE(pipe(result) == 0);
    fflush(NULL);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        /* The verdict goes through the pipe: under valgrind the exit code of the child is
         * valgrind's, which counts the parent's memory the child inherited (and must leave
         * alone) as leaked. */
        char verdict = (char)forked_child(r);
        ssize_t written = write(result[1], &verdict, 1);
        _exit(written == 1 ? 0 : 1);
    }
    close(result[1]);
    int status = 0;
    if (!WAIT_FOR(waitpid(child, &status, WNOHANG) == child, 60 * slow)) {
        fprintf(stderr, "    the fork child did not finish: killing it\n");
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        current_failed = 1;
    }
    char verdict = 1;
    CHECK(read(result[0], &verdict, 1) == 1); /* the child has exited: this does not block */
    close(result[0]);
    CHECK(verdict == 0);
    CHECK(WIFEXITED(status)); /* not killed by a signal */
#ifdef HAVE_VALGRIND
    if (!RUNNING_ON_VALGRIND)
#endif
        CHECK(WEXITSTATUS(status) == 0);
    /* The parent's registration is untouched: still registered, its key still there. */
    uint32_t state = 0;
    CHECK_OK(etcd_registry_registration_state(r, id, &state));
    CHECK(state == ETCD_REGISTRY_STATE_REGISTERED);
    CHECK(count_nodes(r, "forked") == 1);
    CHECK(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST, NULL, 0) < 0);
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

/* Log messages, recorded. */
typedef struct {
    pthread_mutex_t mu;
    int count;
    int warnings;
    bool from_core;
    bool bad_level;
} log_sink;

static void on_log(etcd_registry_log_level level, const char *target, const char *message, void *user_data) {
    log_sink *sink = user_data;
    pthread_mutex_lock(&sink->mu);
    sink->count++;
    if (level < ETCD_REGISTRY_LOG_ERROR || level > ETCD_REGISTRY_LOG_TRACE || message == NULL || *message == '\0')
        sink->bad_level = true;
    if (level == ETCD_REGISTRY_LOG_WARN) sink->warnings++;
    if (target != NULL && strncmp(target, "etcd_registry", 13) == 0) sink->from_core = true;
    pthread_mutex_unlock(&sink->mu);
}

static int log_warnings(log_sink *sink) {
    pthread_mutex_lock(&sink->mu);
    int n = sink->warnings;
    pthread_mutex_unlock(&sink->mu);
    return n;
}

static void test_log_callback(void) {
    CHECK_STATUS(etcd_registry_set_log_callback(on_log, 6, NULL), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    log_sink sink = {.mu = PTHREAD_MUTEX_INITIALIZER};
    REQUIRE_OK(etcd_registry_set_log_callback(on_log, ETCD_REGISTRY_LOG_INFO, &sink));

    /* A registration against a dead endpoint logs its failed attempts as warnings. */
    char eps[64];
    etcd_registry *r = connect_dead(eps, sizeof eps);
    REQUIRE(r != NULL);
    uint64_t id = 0;
    CHECK_OK(etcd_registry_register_json(r, "logged", "n1", NULL, 5000, NULL, NULL, &id));
    CHECK(WAIT_FOR(log_warnings(&sink) >= 1, 20 * slow));
    etcd_registry_free(r);

    /* Once set_log_callback returns, the old callback is not called any more. */
    CHECK_OK(etcd_registry_set_log_callback(NULL, ETCD_REGISTRY_LOG_OFF, NULL));
    pthread_mutex_lock(&sink.mu);
    int count = sink.count;
    CHECK(sink.from_core && !sink.bad_level);
    pthread_mutex_unlock(&sink.mu);
    r = connect_dead(eps, sizeof eps);
    REQUIRE(r != NULL);
    CHECK_OK(etcd_registry_register_json(r, "logged", "n1", NULL, 5000, NULL, NULL, &id));
    CHECK_STATUS(etcd_registry_wait_registered(r, id, 3000), ETCD_REGISTRY_STATUS_TIMEOUT);
    etcd_registry_free(r);
    pthread_mutex_lock(&sink.mu);
    CHECK(sink.count == count);
    pthread_mutex_unlock(&sink.mu);
}

/* A log callback that calls into the library when told that events were dropped, as the
 * header allows: the library holds none of its locks while calling it. */
typedef struct {
    etcd_registry *registry;
    atomic_int answered; /* calls into the library that returned */
    atomic_int status;
} log_prober;

static void probe_on_log(etcd_registry_log_level level, const char *target, const char *message,
                         void *user_data) {
    (void)level;
    (void)target;
    log_prober *p = user_data;
    if (strstr(message, "too slow") == NULL) return;
    uint64_t dropped = 0;
    atomic_store(&p->status, etcd_registry_dropped_events(p->registry, 0, &dropped));
    atomic_fetch_add(&p->answered, 1);
}

/* A deadlock inside the library cannot be recovered from: end the run with a clear message. */
static void deadlock_watchdog(int sig) {
    (void)sig;
    static const char message[] = "WATCHDOG: test_log_callback_may_call_into_the_library hung (deadlock)\n";
    ssize_t ignored = write(2, message, sizeof message - 1);
    (void)ignored;
    _exit(3);
}

static void test_log_callback_may_call_into_the_library(void) {
    log_prober prober = {.registry = connect_etcd()};
    REQUIRE(prober.registry != NULL);
    atomic_init(&prober.status, -1);
    signal(SIGALRM, deadlock_watchdog);
    alarm((unsigned)(120 * slow));
    REQUIRE_OK(etcd_registry_set_log_callback(probe_on_log, ETCD_REGISTRY_LOG_WARN, &prober));
    /* Two more REGISTERED events than the pull queue holds, nobody reading: the oldest are
     * dropped and a warning is logged, which the callback answers by asking the count. */
    uint64_t id = 0;
    char node[32];
    for (int i = 0; i < 1026; i++) {
        snprintf(node, sizeof node, "n%04d", i);
        CHECK_OK(etcd_registry_register_json(prober.registry, "log-probe", node, NULL, 30000, NULL, NULL, &id));
    }
    CHECK(WAIT_FOR(atomic_load(&prober.answered) >= 1, 60 * slow));
    CHECK(atomic_load(&prober.status) == ETCD_REGISTRY_STATUS_OK);
    uint64_t dropped = 0;
    CHECK_OK(etcd_registry_dropped_events(prober.registry, 0, &dropped));
    CHECK(dropped >= 1);
    CHECK_OK(etcd_registry_close(prober.registry));
    CHECK_OK(etcd_registry_set_log_callback(NULL, ETCD_REGISTRY_LOG_OFF, NULL));
    alarm(0);
    signal(SIGALRM, SIG_DFL);
    etcd_registry_free(prober.registry);
}

/* A log callback that waits for an event when told the runtime_threads setting was ignored:
 * on the host's thread, inside its etcd_registry_connect. */
static void wait_inside_log_callback(etcd_registry_log_level level, const char *target, const char *message,
                                     void *user_data) {
    (void)level;
    (void)target;
    log_prober *p = user_data;
    if (strstr(message, "runtime_threads ignored") == NULL) return;
    etcd_registry_event *ev = NULL;
    atomic_store(&p->status, etcd_registry_next_event(p->registry, 1500, &ev));
    atomic_fetch_add(&p->answered, 1);
}

static void test_runtime_threads_setting(void) {
    /* The runtime is running by now: the setting is accepted and ignored (logged), and the
     * library keeps working. The warning comes to the log callback on this thread, inside
     * connect: a wait for an event there is refused, as in every callback. */
    log_prober prober = {.registry = connect_etcd()};
    REQUIRE(prober.registry != NULL);
    atomic_init(&prober.status, -1);
    REQUIRE_OK(etcd_registry_set_log_callback(wait_inside_log_callback, ETCD_REGISTRY_LOG_WARN, &prober));
    etcd_registry_config *c = make_config(endpoints);
    REQUIRE(c != NULL);
    CHECK_OK(etcd_registry_config_set_runtime_threads(c, 4));
    etcd_registry *r = NULL;
    CHECK_OK(etcd_registry_connect(c, &r));
    etcd_registry_config_free(c);
    CHECK_OK(etcd_registry_set_log_callback(NULL, ETCD_REGISTRY_LOG_OFF, NULL));
    CHECK(atomic_load(&prober.answered) == 1);
    CHECK(atomic_load(&prober.status) == ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK(count_nodes(r, "anything") == 0);
    etcd_registry_free(r);
    etcd_registry_free(prober.registry);
}

/* Runs last: it turns authentication on for the rest of the cluster's life. */
static void test_auth(void) {
    REQUIRE(harness("enable-auth root secret") >= 0);
    etcd_registry *anonymous = connect_etcd();
    REQUIRE(anonymous != NULL);
    etcd_registry_node_list *list = NULL;
    CHECK_STATUS(etcd_registry_list(anonymous, "authed", &list), ETCD_REGISTRY_STATUS_AUTH);
    CHECK(list == NULL);
    etcd_registry_free(anonymous);

    etcd_registry_config *c = make_config(endpoints);
    REQUIRE(c != NULL);
    CHECK_OK(etcd_registry_config_set_credentials(c, "root", "wrong"));
    etcd_registry *wrong = NULL;
    REQUIRE_OK(etcd_registry_connect(c, &wrong));
    CHECK_STATUS(etcd_registry_list(wrong, "authed", &list), ETCD_REGISTRY_STATUS_AUTH);
    uint64_t id = 0;
    CHECK_OK(etcd_registry_register_json(wrong, "authed", "n1", NULL, 5000, NULL, NULL, &id));
    CHECK_STATUS(etcd_registry_wait_registered(wrong, id, (uint64_t)(10000 * slow)), ETCD_REGISTRY_STATUS_AUTH);
    etcd_registry_free(wrong);

    CHECK_OK(etcd_registry_config_set_credentials(c, "root", "secret"));
    etcd_registry *right = NULL;
    REQUIRE_OK(etcd_registry_connect(c, &right));
    etcd_registry_config_free(c);
    CHECK_OK(etcd_registry_register_json(right, "authed", "n1", NULL, 5000, NULL, NULL, &id));
    CHECK_OK(etcd_registry_wait_registered(right, id, (uint64_t)(10000 * slow)));
    CHECK(count_nodes(right, "authed") == 1);
    CHECK_OK(etcd_registry_close(right));
    etcd_registry_free(right);
}

/* ---------------------------------------------------------------- leak check */

/* Under valgrind: every registry is freed by now, but some of the library's allocations go
 * away asynchronously (the runtime's tasks tear down the etcd connections right after close).
 * Polls valgrind's leak counters until no block is left outside the suppressed process-wide
 * state (tests/c/valgrind.supp), so that valgrind's final check at exit, which run.sh makes
 * fail on any such block, sees the settled state. */
static void wait_for_library_teardown(void) {
#ifdef HAVE_VALGRIND
    if (!RUNNING_ON_VALGRIND) return;
    unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
    double deadline = now_s() + 20;
    do {
        VALGRIND_DO_QUICK_LEAK_CHECK;
        VALGRIND_COUNT_LEAK_BLOCKS(leaked, dubious, reachable, suppressed);
        if (leaked + dubious + reachable == 0) break;
        usleep(100 * 1000);
    } while (now_s() < deadline);
    printf("leak check: %lu leaked, %lu possibly leaked, %lu still allocated blocks outside the library's "
           "global state (%lu suppressed)\n",
           leaked, dubious, reachable, suppressed);
#endif
}

/* ---------------------------------------------------------------- tests: updating info in place */

/* The TTL of the nodes under test: long enough that the lease outlives a machine slowed down by
 * valgrind and other load (these tests check that an update keeps the lease). */
static uint64_t update_ttl_ms(void) { return (uint64_t)(10000 * slow); }

/* Whether etcd holds `json` under `key`, read through the harness (not through the library). */
static bool etcd_value_is(const char *key, const char *json) {
    const char *bin = getenv("ETCD_HARNESS_BIN");
    const char *sock = getenv("ETCD_HARNESS_CONTROL");
    if (bin == NULL || sock == NULL) return false;
    char shell[1024], reply[4096], want[1024];
    snprintf(shell, sizeof shell, "\"%s\" ctl \"%s\" get %s", bin, sock, key);
    FILE *p = popen(shell, "r");
    if (p == NULL) return false;
    size_t n = fread(reply, 1, sizeof reply - 1, p);
    reply[n] = '\0';
    pclose(p);
    /* The reply is JSON: the value is a string with its quotes escaped. */
    size_t w = (size_t)snprintf(want, sizeof want, "\"value\":\"");
    for (const char *c = json; *c != '\0' && w < sizeof want - 4; c++) {
        if (*c == '"' || *c == '\\') want[w++] = '\\';
        want[w++] = *c;
    }
    want[w++] = '"';
    want[w] = '\0';
    bool ok = strstr(reply, want) != NULL;
    if (!ok) fprintf(stderr, "    etcd %s: %s (want %s)\n", key, reply, json);
    return ok;
}

/* Watch events of one node, as a pull-mode watcher saw them. */
typedef struct {
    int count;
    uint32_t kinds[512];
    char infos[512][96];
} node_events;

/* Registers `marker` under `service` on `r` (the same TTL as the nodes under test, so after
 * every put asked for before it) and takes the events of `watcher` (pull mode) until the
 * marker's ADDED, keeping those of `node`. False on a timeout. */
static bool events_until_marker(etcd_registry *r, etcd_registry *watcher, const char *service,
                                const char *marker, const char *node, node_events *out) {
    memset(out, 0, sizeof *out);
    uint64_t id = 0;
    if (etcd_registry_register_json(r, service, marker, NULL, update_ttl_ms(), NULL, NULL, &id) != ETCD_REGISTRY_STATUS_OK)
        return false;
    double deadline = now_s() + 30 * slow;
    while (now_s() < deadline) {
        etcd_registry_event *event = NULL;
        if (etcd_registry_next_event(watcher, 100, &event) != ETCD_REGISTRY_STATUS_OK) continue;
        const etcd_registry_watch_event *e = &event->watch;
        bool done = false;
        if (event->event_type == ETCD_REGISTRY_EVENT_TYPE_WATCH && e->node_name != NULL) {
            if (e->kind == ETCD_REGISTRY_WATCH_KIND_ADDED && strcmp(e->node_name, marker) == 0) {
                done = true;
            } else if (strcmp(e->node_name, node) == 0 && out->count < 512) {
                out->kinds[out->count] = e->kind;
                snprintf(out->infos[out->count], sizeof out->infos[0], "%s", e->info_json);
                out->count++;
            }
        }
        etcd_registry_event_free(event);
        if (done) return true;
    }
    return false;
}

/* Starts a pull-mode watch of `service` on a second registry and takes its first event. */
static etcd_registry *start_watcher(const char *service) {
    etcd_registry *w = connect_etcd();
    if (w == NULL) return NULL;
    uint64_t watch = 0;
    etcd_registry_event *event = NULL;
    if (etcd_registry_watch(w, service, NULL, NULL, &watch) != ETCD_REGISTRY_STATUS_OK ||
        etcd_registry_next_event(w, (uint64_t)(10000 * slow), &event) != ETCD_REGISTRY_STATUS_OK) {
        etcd_registry_free(w);
        return NULL;
    }
    etcd_registry_event_free(event);
    return w;
}

static int count_kind(recorder *r, uint32_t kind) {
    int n = 0;
    for (int i = find_event(r, kind, NULL, 0); i >= 0; i = find_event(r, kind, NULL, i + 1)) n++;
    return n;
}

static void test_update_in_place(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "upd", "n1", "{\"v\":\"1\"}", update_ttl_ms(), on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    int64_t lease = 0, lease_after = 0;
    CHECK_OK(etcd_registry_registration_lease_id(r, id, &lease));
    etcd_registry *w = start_watcher("upd");
    REQUIRE(w != NULL);

    CHECK_OK(etcd_registry_update_json(r, id, "{\"v\":\"2\",\"zone\":\"b\"}"));
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_UPDATED, "n1", 0) >= 0, 10 * slow));
    CHECK(etcd_value_is("/ctest/upd/n1", "{\"v\":\"2\",\"zone\":\"b\"}"));
    CHECK_OK(etcd_registry_registration_lease_id(r, id, &lease_after));
    CHECK(lease_after == lease); /* the same lease */
    uint32_t state = 0;
    CHECK_OK(etcd_registry_registration_state(r, id, &state));
    CHECK(state == ETCD_REGISTRY_STATE_REGISTERED);
    node_events *seen = calloc(1, sizeof *seen);
    REQUIRE(seen != NULL);
    CHECK(events_until_marker(r, w, "upd", "marker", "n1", seen));
    CHECK(seen->count == 1); /* exactly one event for one update */
    CHECK(seen->count >= 1 && seen->kinds[0] == ETCD_REGISTRY_WATCH_KIND_UPDATED &&
          strcmp(seen->infos[0], "{\"v\":\"2\",\"zone\":\"b\"}") == 0);
    CHECK(count_kind(&rec, ETCD_REGISTRY_STATUS_KIND_UPDATED) == 1);

    /* Bad input: a status, and the value in etcd unchanged. */
    CHECK_STATUS(etcd_registry_update_json(NULL, id, "{}"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_update_json(r, id, NULL), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_update_json(r, id, "{\"v\":\"\xff\"}"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    const char *bad_json[] = {"", "{", "[1,2]", "null", "{\"a\":1}", "{\"\":\"empty key\"}"};
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++)
        CHECK_STATUS(etcd_registry_update_json(r, id, bad_json[i]), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    {
        size_t len = 2u << 20;
        char *big = malloc(len + 16);
        REQUIRE(big != NULL);
        memcpy(big, "{\"big\":\"", 8);
        memset(big + 8, 'x', len);
        memcpy(big + 8 + len, "\"}", 3);
        CHECK_STATUS(etcd_registry_update_json(r, id, big), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(etcd_registry_last_error_message(), "too large") != NULL);
        free(big);
    }
    CHECK_STATUS(etcd_registry_update_json(r, 987654321, "{}"), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK(etcd_value_is("/ctest/upd/n1", "{\"v\":\"2\",\"zone\":\"b\"}"));

    CHECK_OK(etcd_registry_unregister(r, id));
    CHECK_STATUS(etcd_registry_update_json(r, id, "{\"v\":\"3\"}"), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_OK(etcd_registry_close(r));
    CHECK_STATUS(etcd_registry_update_json(r, id, "{\"v\":\"3\"}"), ETCD_REGISTRY_STATUS_CLOSED);
    CHECK(count_nodes_fresh("upd") == 0);
    free(seen);
    etcd_registry_free(w);
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

/* The shutdown rule: with etcd stopped, unregister and close return OK (after trying within
 * the timeout); the keys expire with their lease once etcd is back. */
static void test_unregister_and_close_while_etcd_is_stopped(void) {
    etcd_registry_config *config = make_config(endpoints);
    REQUIRE(config != NULL);
    REQUIRE_OK(etcd_registry_config_set_timeout_ms(config, (uint64_t)(1000 * slow)));
    etcd_registry *r = NULL;
    REQUIRE_OK(etcd_registry_connect(config, &r));
    etcd_registry_config_free(config);
    uint64_t first = 0, second = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "cshut", "n1", NULL, 2000, NULL, NULL, &first));
    REQUIRE_OK(etcd_registry_register_json(r, "cshut", "n2", NULL, 2000, NULL, NULL, &second));
    REQUIRE_OK(etcd_registry_wait_registered(r, first, (uint64_t)(10000 * slow)));
    REQUIRE_OK(etcd_registry_wait_registered(r, second, (uint64_t)(10000 * slow)));
    CHECK(count_nodes(r, "cshut") == 2);

    REQUIRE(harness("stop 0") >= 0);
    CHECK_OK(etcd_registry_unregister(r, first));
    uint32_t state = 0;
    CHECK_STATUS(etcd_registry_registration_state(r, first, &state), ETCD_REGISTRY_STATUS_NOT_FOUND);
    CHECK_OK(etcd_registry_close(r));
    CHECK(is_closed(r));
    etcd_registry_free(r);
    REQUIRE(harness("start 0") >= 0);
    CHECK(WAIT_FOR(count_nodes_fresh("cshut") == 0, 30 * slow));
}

static void test_update_while_etcd_is_down_lands_when_it_returns(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "updown", "n1", "{\"v\":\"1\"}", update_ttl_ms(), on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    etcd_registry *w = start_watcher("updown");
    REQUIRE(w != NULL);

    REQUIRE(harness("stop 0") >= 0);
    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST, NULL, 0) >= 0, 30 * slow));
    CHECK_OK(etcd_registry_update_json(r, id, "{\"v\":\"2\"}")); /* returns at once, etcd down */
    CHECK_OK(etcd_registry_update_json(r, id, "{\"v\":\"3\"}"));
    REQUIRE(harness("start 0") >= 0);

    CHECK(WAIT_FOR(find_event(&rec, ETCD_REGISTRY_STATUS_KIND_UPDATED, NULL, 0) >= 0, 60 * slow));
    int back = find_event(&rec, ETCD_REGISTRY_STATUS_KIND_REREGISTERED, NULL, 0);
    int updated = find_event(&rec, ETCD_REGISTRY_STATUS_KIND_UPDATED, NULL, 0);
    CHECK(back >= 0 && updated == back + 1); /* the re-registration carried the last update */
    CHECK(count_kind(&rec, ETCD_REGISTRY_STATUS_KIND_UPDATED) == 1);
    CHECK(etcd_value_is("/ctest/updown/n1", "{\"v\":\"3\"}"));

    /* The watcher, resumed after the outage, ends with the last update; never v=2 after it. */
    node_events *seen = calloc(1, sizeof *seen);
    REQUIRE(seen != NULL);
    CHECK(events_until_marker(r, w, "updown", "marker", "n1", seen));
    CHECK(seen->count >= 1 && strcmp(seen->infos[seen->count - 1], "{\"v\":\"3\"}") == 0);
    for (int i = 0; i < seen->count; i++) CHECK(strcmp(seen->infos[i], "{\"v\":\"2\"}") != 0);
    free(seen);
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(w);
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

#define UPDATERS 4
#define UPDATES_EACH 25

typedef struct {
    etcd_registry *r;
    uint64_t id;
    int writer;
    int failures;
} updater;

static void *update_many(void *arg) {
    updater *u = arg;
    for (int seq = 0; seq < UPDATES_EACH; seq++) {
        char info[64];
        snprintf(info, sizeof info, "{\"seq\":\"%03d\",\"w\":\"%d\"}", seq, u->writer);
        if (etcd_registry_update_json(u->r, u->id, info) != ETCD_REGISTRY_STATUS_OK) u->failures++;
    }
    return NULL;
}

static void test_concurrent_updates_end_with_the_last_one(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder rec;
    recorder_init(&rec);
    uint64_t id = 0;
    REQUIRE_OK(etcd_registry_register_json(r, "updmany", "n1", "{\"w\":\"-\"}", update_ttl_ms(), on_status, &rec, &id));
    REQUIRE_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    etcd_registry *w = start_watcher("updmany");
    REQUIRE(w != NULL);

    pthread_t threads[UPDATERS];
    updater updaters[UPDATERS];
    for (int t = 0; t < UPDATERS; t++) {
        updaters[t] = (updater){.r = r, .id = id, .writer = t};
        pthread_create(&threads[t], NULL, update_many, &updaters[t]);
    }
    for (int t = 0; t < UPDATERS; t++) {
        pthread_join(threads[t], NULL);
        CHECK(updaters[t].failures == 0);
    }
    node_events *seen = calloc(1, sizeof *seen);
    REQUIRE(seen != NULL);
    CHECK(events_until_marker(r, w, "updmany", "marker", "n1", seen));
    REQUIRE(seen->count >= 1);
    /* The final value is one writer's last update, and it is what etcd holds. */
    const char *last = seen->infos[seen->count - 1];
    CHECK(strstr(last, "\"seq\":\"024\"") != NULL);
    CHECK(etcd_value_is("/ctest/updmany/n1", last));
    /* Never reordered: each writer's updates reach the watcher in the order it made them. */
    for (int t = 0; t < UPDATERS; t++) {
        char tag[16];
        snprintf(tag, sizeof tag, "\"w\":\"%d\"", t);
        int previous = -1;
        for (int i = 0; i < seen->count; i++) {
            CHECK(seen->kinds[i] == ETCD_REGISTRY_WATCH_KIND_UPDATED);
            const char *s = strstr(seen->infos[i], "\"seq\":\"");
            if (strstr(seen->infos[i], tag) == NULL || s == NULL) continue;
            int seq = atoi(s + 7);
            CHECK(seq > previous);
            previous = seq;
        }
    }
    /* One UPDATED status event per put, the last one after the last put. */
    CHECK(WAIT_FOR(count_kind(&rec, ETCD_REGISTRY_STATUS_KIND_UPDATED) == seen->count, 10 * slow));
    free(seen);
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(w);
    etcd_registry_free(r);
    recorder_destroy(&rec);
}

/* etcd restarted on an empty data directory: its revision starts again at 1, below the watch's.
 * The watch re-lists: the old nodes come as REMOVED, then RESYNCED (no node, no info), and it
 * follows the new store. */
static void test_a_watch_follows_an_etcd_that_lost_its_data(void) {
    etcd_registry *r = connect_etcd();
    REQUIRE(r != NULL);
    recorder events;
    recorder_init(&events);
    uint64_t watch = 0;
    REQUIRE_OK(etcd_registry_watch(r, "lost", on_watch, &events, &watch));
    char command[128];
    for (int i = 0; i < 10; i++) {
        snprintf(command, sizeof command, "put /ctest/lost/old%d {}", i);
        REQUIRE(harness("%s", command) >= 0);
    }
    /* The callbacks come after the live set has changed: wait for both. */
    CHECK(WAIT_FOR(count_of(&events) >= 10 && live_set_size(r, watch) == 10, 10 * slow));
    int before = count_of(&events);
    CHECK(before == 10 && find_event(&events, ETCD_REGISTRY_WATCH_KIND_ADDED, NULL, 0) == 0 &&
          find_event(&events, ETCD_REGISTRY_WATCH_KIND_REMOVED, NULL, 0) < 0);

    REQUIRE(harness("wipe 0") >= 0);
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_RESYNCED, NULL, before) >= 0, 60 * slow));
    int resynced = find_event(&events, ETCD_REGISTRY_WATCH_KIND_RESYNCED, NULL, before);
    /* Just before it, one REMOVED per old node and nothing else. */
    bool removals = resynced == before + 10;
    for (int i = before; removals && i < resynced; i++)
        removals = events.kinds[i] == ETCD_REGISTRY_WATCH_KIND_REMOVED && strncmp(events.names[i], "old", 3) == 0;
    CHECK(removals);
    for (int i = 0; i < 10; i++) {
        snprintf(command, sizeof command, "old%d", i);
        CHECK(find_event(&events, ETCD_REGISTRY_WATCH_KIND_REMOVED, command, before) >= 0);
    }
    if (resynced >= 0) CHECK(events.names[resynced][0] == '\0' && !events.messages[resynced]);
    CHECK(live_set_size(r, watch) == 0);

    /* The new store is followed. */
    REQUIRE(harness("put /ctest/lost/new '{\"v\":\"1\"}'") >= 0); /* quoted for popen's shell */
    CHECK(WAIT_FOR(find_event(&events, ETCD_REGISTRY_WATCH_KIND_ADDED, "new", before) >= 0, 10 * slow));
    CHECK(WAIT_FOR(live_set_is(r, watch, 1, "1"), 10 * slow));
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
    recorder_destroy(&events);
}

/* ---------------------------------------------------------------- main */

/* A pull queue read late, while a service larger than the event bound starts and a third of
 * it leaves: no watch event is dropped. Past 1024 unread events a node's events are merged in
 * place, so what the reader then takes is one event per node: ADDED for each live one, REMOVED
 * for each one that left (its ADDED merged into it). */
static void test_a_pull_queue_far_behind_loses_no_watch_event(void) {
    enum { NODES = 1500 };
    etcd_registry *feeder = connect_etcd();
    etcd_registry *watcher = connect_etcd();
    REQUIRE(feeder != NULL && watcher != NULL);
    uint64_t watch = 0;
    REQUIRE_OK(etcd_registry_watch(watcher, "late", NULL, NULL, &watch));
    static uint64_t ids[NODES];
    char node[32];
    for (int i = 0; i < NODES; i++) {
        snprintf(node, sizeof node, "n%04d", i);
        CHECK_OK(etcd_registry_register_json(feeder, "late", node, NULL, 30000, NULL, NULL, &ids[i]));
    }
    CHECK(WAIT_FOR(live_set_size(watcher, watch) == NODES, 60 * slow));
    for (int i = 2; i < NODES; i += 3) CHECK_OK(etcd_registry_unregister(feeder, ids[i]));
    CHECK(WAIT_FOR(live_set_size(watcher, watch) == NODES - NODES / 3, 60 * slow));

    static bool seen[NODES];
    int events = 0, wrong = 0;
    etcd_registry_event *ev = NULL;
    while (etcd_registry_next_event(watcher, 0, &ev) == ETCD_REGISTRY_STATUS_OK) {
        const etcd_registry_watch_event *w = &ev->watch;
        int i = -1;
        etcd_registry_watch_kind want = ETCD_REGISTRY_WATCH_KIND_ADDED;
        if (ev->event_type == ETCD_REGISTRY_EVENT_TYPE_WATCH && sscanf(w->node_name, "n%d", &i) == 1 && i >= 0 &&
            i < NODES && !seen[i]) {
            if (i % 3 == 2) want = ETCD_REGISTRY_WATCH_KIND_REMOVED;
            seen[i] = true;
            if (w->kind != want) wrong++;
        } else {
            wrong++;
        }
        events++;
        etcd_registry_event_free(ev);
    }
    CHECK(wrong == 0);
    CHECK(events == NODES);
    uint64_t dropped = 7;
    CHECK_OK(etcd_registry_dropped_events(watcher, 0, &dropped));
    CHECK(dropped == 0);
    CHECK_OK(etcd_registry_close(watcher));
    CHECK_OK(etcd_registry_close(feeder));
    etcd_registry_free(watcher);
    etcd_registry_free(feeder);
}

static const test_case tests[] = {
    TEST(test_version_and_status_names),
    TEST(test_config_setters_and_errors),
    TEST(test_last_error_is_thread_local_and_copyable),
    TEST(test_connect_errors),
    TEST(test_node_list_accessors_on_null),
    TEST(test_null_registry_everywhere),
    TEST(test_register_list_unregister),
    TEST(test_register_argument_errors),
    TEST(test_check_register),
    TEST(test_info_json_round_trip),
    TEST(test_info_entries),
    TEST(test_list_errors),
    TEST(test_list_async),
    TEST(test_a_closed_registry_closed_and_freed_in_an_async_callback),
    TEST(test_unregister_async),
    TEST(test_watch_async),
    TEST(test_services),
    TEST(test_active_endpoint),
    TEST(test_unreachable_etcd),
    TEST(test_watch_callbacks_on_the_library_thread),
    TEST(test_calls_from_inside_callbacks),
    TEST(test_waits_inside_callbacks_cannot_deadlock),
    TEST(test_close_from_inside_a_callback),
    TEST(test_second_close_waits_for_a_callback_that_closed),
    TEST(test_free_inside_a_nested_unregistered_callback),
    TEST(test_nested_callbacks_may_block_and_close),
    TEST(test_free_functions_keep_the_last_error),
    TEST(test_free_inside_an_async_callback_stops_every_callback),
    TEST(test_a_replaced_registration_ends_like_an_unregistered_one),
    TEST(test_close_delivers_a_replaced_registrations_unregistered),
    TEST(test_close_delivers_the_unregistered_of_an_unregister_async_in_flight),
    TEST(test_close_waits_for_the_callback_of_an_unregister_in_flight),
    TEST(test_close_waits_for_the_callback_of_an_unwatch_in_flight),
    TEST(test_close_while_a_watch_callback_calls_the_library),
    TEST(test_retry_attempts_start_at_one_for_every_registration),
    TEST(test_pull_api),
    TEST(test_event_fd_wakes_a_poll_loop),
    TEST(test_close_wakes_a_waiting_puller),
    TEST(test_use_after_close_and_double_close),
    TEST(test_free_without_close_unregisters),
    TEST(test_1000_registrations_from_8_threads),
    TEST(test_fork_child_leaves_the_parent_registrations_alone),
    TEST(test_log_callback),
    TEST(test_log_callback_may_call_into_the_library),
    TEST(test_a_pull_queue_far_behind_loses_no_watch_event),
    TEST(test_runtime_threads_setting),
    TEST(test_keepalive_lost_and_reregistered_when_etcd_restarts),
    TEST(test_update_in_place),
    TEST(test_update_while_etcd_is_down_lands_when_it_returns),
    TEST(test_unregister_and_close_while_etcd_is_stopped),
    TEST(test_concurrent_updates_end_with_the_last_one),
    TEST(test_a_watch_follows_an_etcd_that_lost_its_data),
    TEST(test_auth), /* last: it turns auth on in the shared etcd for good */
};

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    endpoints = getenv("ETCD_ENDPOINTS");
    if (endpoints == NULL || *endpoints == '\0') {
        fprintf(stderr, "ETCD_ENDPOINTS is not set: run me under `etcd-harness run --`\n");
        return 2;
    }
    read_slowdown();

    int passed = 0, failed = 0;
    run_tests(tests, sizeof tests / sizeof tests[0], argc, argv, &passed, &failed);
    wait_for_library_teardown();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
