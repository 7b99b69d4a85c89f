/*
 * The tiny test framework of the C suites (test_etcd_registry.c, test_tls.c): checks that mark
 * the running test failed, polling with a deadline, and the runner that selects tests by name
 * substring and prints one line per test, then "N passed, M failed".
 */
#ifndef ETCD_REGISTRY_TESTS_CHECK_H
#define ETCD_REGISTRY_TESTS_CHECK_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd_registry.h"

static int current_failed;

/* Timeouts are generous and scaled by ETCD_REGISTRY_TEST_SLOWDOWN (valgrind is ~20x slower). */
static double slow = 1.0;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "    %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            current_failed = 1;                                                        \
        }                                                                              \
    } while (0)

/* Checks a status; on mismatch prints both names and the library's message. */
#define CHECK_STATUS(expr, want)                                                           \
    do {                                                                                   \
        etcd_registry_status got_ = (expr);                                                \
        etcd_registry_status want_ = (want);                                               \
        if (got_ != want_) {                                                               \
            fprintf(stderr, "    %s:%d: %s returned %s (%u), want %s (%u): %s\n", __FILE__, \
                    __LINE__, #expr, etcd_registry_status_name(got_), got_,                \
                    etcd_registry_status_name(want_), want_,                               \
                    etcd_registry_last_error_message());                                   \
            current_failed = 1;                                                            \
        }                                                                                  \
    } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, ETCD_REGISTRY_STATUS_OK)

/* Fails the test and returns from it when a precondition does not hold. */
#define REQUIRE(cond)                                                                    \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "    %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond); \
            current_failed = 1;                                                          \
            return;                                                                      \
        }                                                                                \
    } while (0)

#define REQUIRE_OK(expr)                                           \
    do {                                                           \
        int before_ = current_failed;                              \
        current_failed = 0;                                        \
        CHECK_OK(expr);                                            \
        if (current_failed) return;                                \
        current_failed = before_;                                  \
    } while (0)

/* Checks that the thread's last error message contains `text`. */
#define CHECK_MESSAGE(text)                                                                    \
    do {                                                                                       \
        if (strstr(etcd_registry_last_error_message(), (text)) == NULL) {                      \
            fprintf(stderr, "    %s:%d: message lacks \"%s\": %s\n", __FILE__, __LINE__, (text), \
                    etcd_registry_last_error_message());                                       \
            current_failed = 1;                                                                \
        }                                                                                      \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Polls `cond` every 10 ms until it holds or `seconds` pass; evaluates to whether it held. */
#define WAIT_FOR(cond, seconds)                                           \
    ({                                                                    \
        double deadline_ = now_s() + (seconds);                           \
        bool ok_;                                                         \
        while (!(ok_ = (cond)) && now_s() < deadline_) usleep(10 * 1000); \
        ok_;                                                              \
    })

typedef struct {
    const char *name;
    void (*run)(void);
} test_case;

#define TEST(fn) {#fn, fn}

/* Reads ETCD_REGISTRY_TEST_SLOWDOWN into `slow`. */
static void read_slowdown(void) {
    const char *factor = getenv("ETCD_REGISTRY_TEST_SLOWDOWN");
    if (factor != NULL && atof(factor) >= 1) slow = atof(factor);
}

/* Runs the tests whose name contains one of argv[1..] (all without arguments), printing
 * "ok  NAME (T s)" or "FAIL NAME (T s)" for each; adds to *passed and *failed. */
static void run_tests(const test_case *tests, size_t count, int argc, char **argv, int *passed,
                      int *failed) {
    for (size_t i = 0; i < count; i++) {
        bool selected = argc < 2;
        for (int a = 1; a < argc; a++) selected |= strstr(tests[i].name, argv[a]) != NULL;
        if (!selected) continue;
        current_failed = 0;
        double start = now_s();
        tests[i].run();
        printf("%s %s (%.1fs)\n", current_failed ? "FAIL" : "ok  ", tests[i].name, now_s() - start);
        if (current_failed)
            (*failed)++;
        else
            (*passed)++;
    }
}

#endif
