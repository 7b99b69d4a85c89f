/*
 * Benchmark driver of the C library (libetcd_registry.a + include/etcd_registry.h), speaking
 * the driver protocol of bench/README.md:  driver ENDPOINTS BASE_PATH, commands on stdin,
 * one JSON object per line on stdout.
 *
 * Uses the library the way the header documents it: callbacks for status and watch events
 * (on the library's callback thread), blocking list / wait_registered / close.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd_registry.h"

#define WARMUP 3
#define WAIT_MS 120000

static const char *g_endpoints;
static const char *g_base;

/* ------------------------------------------------------------------------------ helpers */

static double mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static unsigned long long unix_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Prints {"error": "..."}, the message escaped enough for JSON. */
static void reply_error(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fputs("{\"error\":\"", stdout);
    for (const char *p = msg; *p; p++) {
        if (*p == '"' || *p == '\\') {
            putchar('\\');
            putchar(*p);
        } else if ((unsigned char)*p < 0x20) {
            putchar(' ');
        } else {
            putchar(*p);
        }
    }
    fputs("\"}\n", stdout);
    fflush(stdout);
}

static void reply_samples(const double *us, size_t n, const char *extra) {
    fputs("{\"us\":[", stdout);
    for (size_t i = 0; i < n; i++) printf(i ? ",%.1f" : "%.1f", us[i]);
    printf("]%s}\n", extra ? extra : "");
    fflush(stdout);
}

static void fail(const char *what, etcd_registry_status st) {
    reply_error("%s: %s: %s", what, etcd_registry_status_name(st),
                etcd_registry_last_error_message());
}

static etcd_registry *open_registry(void) {
    etcd_registry_config *cfg = NULL;
    etcd_registry *reg = NULL;
    etcd_registry_status st = etcd_registry_config_new(&cfg);
    if (st == ETCD_REGISTRY_STATUS_OK) st = etcd_registry_config_set_endpoints(cfg, g_endpoints);
    if (st == ETCD_REGISTRY_STATUS_OK) st = etcd_registry_config_set_base_path(cfg, g_base);
    if (st == ETCD_REGISTRY_STATUS_OK) st = etcd_registry_connect(cfg, &reg);
    etcd_registry_config_free(cfg);
    if (st != ETCD_REGISTRY_STATUS_OK) {
        fail("connect", st);
        return NULL;
    }
    return reg;
}

static void node_info(size_t k, char *buf, size_t cap) {
    snprintf(buf, cap, "{\"address\":\"10.0.%zu.%zu:8080\",\"version\":\"1.0.0\"}", k / 256 % 256,
             k % 256);
}

/* A status callback that ignores the events (a C service would log them). */
static void on_status(const etcd_registry_status_event *event, void *user_data) {
    (void)event;
    (void)user_data;
}

/* --------------------------------------------------------------------------------- list */

static void cmd_list(const char *service, size_t n) {
    etcd_registry *reg = open_registry();
    if (!reg) return;
    double *us = calloc(n ? n : 1, sizeof *us);
    size_t nodes = 0;
    for (size_t i = 0; i < WARMUP + n; i++) {
        etcd_registry_node_list *list = NULL;
        double t0 = mono_us();
        etcd_registry_status st = etcd_registry_list(reg, service, &list);
        double took = mono_us() - t0;
        if (st != ETCD_REGISTRY_STATUS_OK) {
            fail("list", st);
            free(us);
            etcd_registry_free(reg);
            return;
        }
        nodes = etcd_registry_node_list_len(list);
        etcd_registry_node_list_free(list);
        if (i >= WARMUP) us[i - WARMUP] = took;
    }
    char extra[64];
    snprintf(extra, sizeof extra, ",\"nodes\":%zu", nodes);
    reply_samples(us, n, extra);
    free(us);
    etcd_registry_free(reg);
}

/* --------------------------------------------------------------------- register_visible */

static int list_contains(etcd_registry *reg, const char *service, const char *name, int *found) {
    etcd_registry_node_list *list = NULL;
    etcd_registry_status st = etcd_registry_list(reg, service, &list);
    if (st != ETCD_REGISTRY_STATUS_OK) {
        fail("list", st);
        return -1;
    }
    *found = 0;
    size_t len = etcd_registry_node_list_len(list);
    for (size_t j = 0; j < len && !*found; j++) {
        const char *nm = etcd_registry_node_list_name(list, j);
        if (nm && strcmp(nm, name) == 0) *found = 1;
    }
    etcd_registry_node_list_free(list);
    return 0;
}

/* With first, every registration is the first of its TTL (TTL + 1 + i s): the library grants a
 * lease for it. */
static void cmd_register_visible(const char *service, size_t n, uint64_t ttl, int first) {
    etcd_registry *a = open_registry();
    if (!a) return;
    etcd_registry *b = open_registry();
    if (!b) {
        etcd_registry_free(a);
        return;
    }
    double *us = calloc(n ? n : 1, sizeof *us);
    for (size_t i = 0; i < WARMUP + n; i++) {
        char name[32], info[128];
        snprintf(name, sizeof name, "n%zu", i);
        node_info(i, info, sizeof info);
        uint64_t id = 0;
        double t0 = mono_us();
        etcd_registry_status st =
            etcd_registry_register_json(a, service, name, info, (first ? ttl + 1 + i : ttl) * 1000,
                                        on_status, NULL, &id);
        if (st != ETCD_REGISTRY_STATUS_OK) {
            fail("register", st);
            goto out;
        }
        int found = 0;
        while (!found) {
            if (list_contains(b, service, name, &found) != 0) goto out;
            if (mono_us() - t0 > 30e6) {
                reply_error("register_visible: %s not visible within 30 s", name);
                goto out;
            }
        }
        if (i >= WARMUP) us[i - WARMUP] = mono_us() - t0;
        /* As the floor and the peers do: the registration is complete (its keep-alive running)
         * before the next one begins, outside the timed span. */
        st = etcd_registry_wait_registered(a, id, 30000);
        if (st != ETCD_REGISTRY_STATUS_OK) {
            fail("wait_registered", st);
            goto out;
        }
    }
    reply_samples(us, n, NULL);
out:
    free(us);
    etcd_registry_free(a);
    etcd_registry_free(b);
}

/* -------------------------------------------------------------------------------- watch */

struct watch_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    double *us;
    size_t want, got;
    int warm;
};

/* On the library's callback thread. */
static void on_watch(const etcd_registry_watch_event *ev, void *user_data) {
    struct watch_state *ws = user_data;
    unsigned long long now = unix_ns();
    if (ev->kind != ETCD_REGISTRY_WATCH_KIND_ADDED && ev->kind != ETCD_REGISTRY_WATCH_KIND_UPDATED)
        return;
    if (!ev->info_json) return;
    const char *t = strstr(ev->info_json, "\"t\":\"");
    pthread_mutex_lock(&ws->mu);
    if (strstr(ev->info_json, "\"warm\"") && !ws->warm) {
        ws->warm = 1;
    } else if (t && ws->got < ws->want) {
        unsigned long long put_ns = strtoull(t + 5, NULL, 10);
        ws->us[ws->got++] = now > put_ns ? (double)(now - put_ns) / 1e3 : 0.0;
    }
    pthread_cond_broadcast(&ws->cv);
    pthread_mutex_unlock(&ws->mu);
}

/* Waits until pred(ws) holds or 30 s passed; returns nonzero when it holds. */
static int wait_for(struct watch_state *ws, int (*pred)(struct watch_state *)) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&ws->mu);
    int ok = pred(ws);
    while (!ok) {
        if (pthread_cond_timedwait(&ws->cv, &ws->mu, &deadline) == ETIMEDOUT) {
            ok = pred(ws);
            break;
        }
        ok = pred(ws);
    }
    pthread_mutex_unlock(&ws->mu);
    return ok;
}

static int is_warm(struct watch_state *ws) { return ws->warm; }
static int is_full(struct watch_state *ws) { return ws->got >= ws->want; }

static void cmd_watch(const char *service, size_t n) {
    etcd_registry *reg = open_registry();
    if (!reg) return;
    struct watch_state ws = {.us = calloc(n ? n : 1, sizeof(double)), .want = n};
    pthread_mutex_init(&ws.mu, NULL);
    pthread_cond_init(&ws.cv, NULL);
    uint64_t id = 0;
    etcd_registry_status st = etcd_registry_watch(reg, service, on_watch, &ws, &id);
    if (st != ETCD_REGISTRY_STATUS_OK) {
        fail("watch", st);
    } else {
        puts("{\"ready\":true}");
        fflush(stdout);
        if (!wait_for(&ws, is_warm)) {
            reply_error("watch: warm-up event not delivered within 30 s");
        } else {
            puts("{\"warm\":true}");
            fflush(stdout);
            if (!wait_for(&ws, is_full))
                reply_error("watch: %zu of %zu events within 30 s", ws.got, ws.want);
            else
                reply_samples(ws.us, n, NULL);
        }
        etcd_registry_unwatch(reg, id); /* the callback is not running after this */
    }
    etcd_registry_free(reg);
    pthread_cond_destroy(&ws.cv);
    pthread_mutex_destroy(&ws.mu);
    free(ws.us);
}

/* --------------------------------------------------------------------- hold/state/release */

static etcd_registry *g_hold;
static uint64_t *g_ids;
static size_t g_len, g_cap;

static void cmd_hold(const char *service, size_t n, uint64_t ttl) {
    if (!g_hold && !(g_hold = open_registry())) return;
    if (g_len + n > g_cap) {
        g_cap = (g_len + n) * 2;
        g_ids = realloc(g_ids, g_cap * sizeof *g_ids);
    }
    size_t start = g_len;
    double t0 = mono_us();
    for (size_t k = start; k < start + n; k++) {
        char name[32], info[128];
        snprintf(name, sizeof name, "n%zu", k);
        node_info(k, info, sizeof info);
        etcd_registry_status st = etcd_registry_register_json(g_hold, service, name, info, ttl * 1000,
                                                         on_status, NULL, &g_ids[g_len]);
        if (st != ETCD_REGISTRY_STATUS_OK) {
            fail("register", st);
            return;
        }
        g_len++;
    }
    for (size_t k = start; k < g_len; k++) {
        etcd_registry_status st = etcd_registry_wait_registered(g_hold, g_ids[k], WAIT_MS);
        if (st != ETCD_REGISTRY_STATUS_OK) {
            fail("wait_registered", st);
            return;
        }
    }
    printf("{\"ms\":%.3f,\"registered\":%zu}\n", (mono_us() - t0) / 1e3, g_len);
    fflush(stdout);
}

static void cmd_state(void) {
    size_t registered = 0;
    for (size_t k = 0; k < g_len; k++) {
        etcd_registry_state state = 0;
        if (etcd_registry_registration_state(g_hold, g_ids[k], &state) == ETCD_REGISTRY_STATUS_OK &&
            state == ETCD_REGISTRY_STATE_REGISTERED)
            registered++;
    }
    printf("{\"registered\":%zu,\"total\":%zu}\n", registered, g_len);
    fflush(stdout);
}

static void release(void) {
    if (g_hold) {
        etcd_registry_close(g_hold);
        etcd_registry_free(g_hold);
        g_hold = NULL;
    }
    g_len = 0;
}

/* --------------------------------------------------------------------------------- main */

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ENDPOINTS BASE_PATH\n", argv[0]);
        return 2;
    }
    g_endpoints = argv[1];
    g_base = argv[2];
    /* Off by default: the driver behaves like a program that leaves SIGPIPE alone. */
    const char *ignore = getenv("BENCH_IGNORE_SIGPIPE");
    if (ignore && strcmp(ignore, "1") == 0) signal(SIGPIPE, SIG_IGN);
    puts("{\"ready\":true}");
    fflush(stdout);
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[64] = "", service[256] = "", mode[16] = "";
        unsigned long long n = 0, ttl = 0;
        int fields = sscanf(line, "%63s %255s %llu %llu %15s", cmd, service, &n, &ttl, mode);
        if (fields < 1) continue;
        if (strcmp(cmd, "quit") == 0) break;
        if (strcmp(cmd, "list") == 0 && fields >= 3) {
            cmd_list(service, (size_t)n);
        } else if (strcmp(cmd, "register_visible") == 0 && fields >= 4) {
            cmd_register_visible(service, (size_t)n, ttl, strcmp(mode, "first") == 0);
        } else if (strcmp(cmd, "watch") == 0 && fields >= 3) {
            cmd_watch(service, (size_t)n);
        } else if (strcmp(cmd, "hold") == 0 && fields >= 4) {
            cmd_hold(service, (size_t)n, ttl);
        } else if (strcmp(cmd, "state") == 0) {
            cmd_state();
        } else if (strcmp(cmd, "release") == 0) {
            release();
            puts("{\"released\":true}");
            fflush(stdout);
        } else {
            reply_error("unknown or incomplete command: %s", cmd);
        }
    }
    release();
    free(g_ids);
    return 0;
}
