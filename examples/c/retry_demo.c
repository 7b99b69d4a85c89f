/*
 * retry_demo.c — one registration, one line per status event. Stop and restart etcd while it
 * runs to see the keep-alive being lost and the node re-registered:
 *
 *   registered (lease 694d8a1f0c3e2a04)
 *   keep-alive lost: etcd at http://…: h2 protocol error: ...
 *   keep-alive lost, retrying in 1.0s (attempt 1)
 *   keep-alive lost, retrying in 1.9s (attempt 2)
 *   re-registered (lease 694d8a1f0c3e2a04)
 *
 *   ETCD_ENDPOINTS=127.0.0.1:2379 ./retry_demo [SECONDS]
 *
 * Runs until Ctrl-C (SIGINT/SIGTERM) or for SECONDS, then closes the registry, which revokes
 * the lease and so removes the key at once.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <etcd_registry.h>

static volatile sig_atomic_t stop = 0;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void check(etcd_registry_status status, const char *what) {
    if (status != ETCD_REGISTRY_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, etcd_registry_status_name(status),
                etcd_registry_last_error_message());
        exit(1);
    }
}

/* Runs on the library's callback thread; calls never overlap, so `was_registered` needs no
 * lock. */
static void on_status(const etcd_registry_status_event *event, void *user_data) {
    int *was_registered = user_data;
    switch (event->kind) {
    case ETCD_REGISTRY_STATUS_KIND_REGISTERED:
        *was_registered = 1;
        printf("registered (lease %llx)\n", (unsigned long long)event->lease_id);
        break;
    case ETCD_REGISTRY_STATUS_KIND_FAILED:
        printf("registration failed: %s\n", event->error_message);
        break;
    case ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST:
        printf("keep-alive lost: %s\n", event->error_message);
        break;
    case ETCD_REGISTRY_STATUS_KIND_RETRYING:
        printf("%s, retrying in %.1fs (attempt %u)\n",
               *was_registered ? "keep-alive lost" : "not registered yet",
               (double)event->delay_ms / 1000.0, event->attempt);
        break;
    case ETCD_REGISTRY_STATUS_KIND_REREGISTERED:
        printf("re-registered (lease %llx)\n", (unsigned long long)event->lease_id);
        break;
    case ETCD_REGISTRY_STATUS_KIND_UNREGISTERED:
        printf("unregistered\n");
        break;
    default:
        printf("status event %u\n", event->kind);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    double seconds = argc > 1 ? atof(argv[1]) : 0; /* 0: until a signal */
    const char *endpoints = getenv("ETCD_ENDPOINTS");
    if (endpoints == NULL || *endpoints == '\0') endpoints = "127.0.0.1:2379";
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    etcd_registry_config *config = NULL;
    check(etcd_registry_config_new(&config), "config_new");
    check(etcd_registry_config_set_endpoints(config, endpoints), "set_endpoints");
    check(etcd_registry_config_set_timeout_ms(config, 3000), "set_timeout_ms");
    check(etcd_registry_config_set_backoff_ms(config, 1000, 8000), "set_backoff_ms");
    etcd_registry *registry = NULL;
    check(etcd_registry_connect(config, &registry), "connect");
    etcd_registry_config_free(config);

    int was_registered = 0;
    uint64_t id = 0;
    check(etcd_registry_register_json(registry, "retry-demo", "node-1",
                                      "{\"address\":\"127.0.0.1:9000\"}", 5000, on_status,
                                      &was_registered, &id),
          "register");

    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!stop) {
        usleep(100 * 1000);
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = (double)(now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
        if (seconds > 0 && elapsed >= seconds) break;
    }

    /* After close returns on_status is never called again, so was_registered may go. */
    etcd_registry_status closed = etcd_registry_close(registry);
    printf("closed: %s\n", closed == ETCD_REGISTRY_STATUS_OK ? "lease revoked"
                                                              : etcd_registry_last_error_message());
    etcd_registry_free(registry);
    return 0;
}
