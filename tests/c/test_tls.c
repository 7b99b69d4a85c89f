/*
 * TLS tests of libetcd_registry against a real etcd that requires client certificates, run by
 * tests/c/run.sh under `etcd-harness run --client-cert-auth --proxy`, which provides (besides
 * ETCD_ENDPOINTS, ETCD_HARNESS_CONTROL and ETCD_HARNESS_BIN) the PEM files it generated:
 *   ETCD_HARNESS_TLS_CA, ETCD_HARNESS_TLS_CLIENT_CERT, ETCD_HARNESS_TLS_CLIENT_KEY,
 *   ETCD_HARNESS_TLS_OTHER_CA (a CA etcd does not trust), ETCD_HARNESS_TLS_EXPIRED_CLIENT_CERT …
 *
 *   test_tls [NAME_SUBSTRING...]
 *   ETCD_TLS_EXPIRED_SERVER=1 test_tls      (under `etcd-harness run --tls-expired-server`)
 *
 * Prints one line per test and finally "N passed, M failed"; exits 1 if any failed.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd_registry.h"
#include "check.h"


static const char *endpoints;

static const char *file(const char *name) {
    char var[128];
    snprintf(var, sizeof var, "ETCD_HARNESS_TLS_%s", name);
    const char *path = getenv(var);
    if (path == NULL) {
        fprintf(stderr, "%s is not set: run me under `etcd-harness run --client-cert-auth`\n", var);
        exit(2);
    }
    return path;
}

/* The whole file, NUL-terminated; *len without the NUL. */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = malloc(1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Runs `etcd-harness ctl SOCKET <command>`; 0 when it succeeded. */
static int harness(const char *command) {
    char shell[1024];
    snprintf(shell, sizeof shell, "\"%s\" ctl \"%s\" %s >/dev/null", getenv("ETCD_HARNESS_BIN"),
             getenv("ETCD_HARNESS_CONTROL"), command);
    return system(shell);
}

static etcd_registry_config *base_config(const char *eps) {
    etcd_registry_config *config = NULL;
    if (etcd_registry_config_new(&config) != ETCD_REGISTRY_STATUS_OK) return NULL;
    etcd_registry_config_set_endpoints(config, eps);
    etcd_registry_config_set_base_path(config, "/ctls");
    etcd_registry_config_set_timeout_ms(config, (uint64_t)(5000 * slow));
    etcd_registry_config_set_backoff_ms(config, 200, 1000);
    return config;
}

static char list_message[2048];

#define CHECK_LIST_MESSAGE(text)                                                               \
    do {                                                                                       \
        if (strstr(list_message, (text)) == NULL) {                                            \
            fprintf(stderr, "    %s:%d: message lacks \"%s\": %s\n", __FILE__, __LINE__, (text), \
                    list_message);                                                             \
            current_failed = 1;                                                                \
        }                                                                                      \
    } while (0)

/* Connects with `config` (freed) and returns the status of a first list; its message goes to
 * `list_message`. */
static etcd_registry_status first_list(etcd_registry_config *config) {
    etcd_registry *r = NULL;
    etcd_registry_status status = etcd_registry_connect(config, &r);
    etcd_registry_config_free(config);
    if (status != ETCD_REGISTRY_STATUS_OK) return status;
    etcd_registry_node_list *list = NULL;
    status = etcd_registry_list(r, "api", &list);
    etcd_registry_node_list_free(list);
    /* Keep the list's message: the next status-returning call resets it. */
    snprintf(list_message, sizeof list_message, "%s", etcd_registry_last_error_message());
    etcd_registry_free(r);
    return status;
}

static long count_nodes(etcd_registry *r, const char *service) {
    etcd_registry_node_list *list = NULL;
    if (etcd_registry_list(r, service, &list) != ETCD_REGISTRY_STATUS_OK) return -1;
    long n = (long)etcd_registry_node_list_len(list);
    etcd_registry_node_list_free(list);
    return n;
}

static long watch_size(etcd_registry *r, uint64_t watch) {
    etcd_registry_node_list *list = NULL;
    if (etcd_registry_watch_nodes(r, watch, &list) != ETCD_REGISTRY_STATUS_OK) return -1;
    long n = (long)etcd_registry_node_list_len(list);
    etcd_registry_node_list_free(list);
    return n;
}

/* Registers, lists and watches one node through `r`. */
static void register_list_watch(etcd_registry *r, const char *node) {
    uint64_t watch = 0, id = 0;
    CHECK_OK(etcd_registry_watch(r, "api", NULL, NULL, &watch));
    CHECK_OK(etcd_registry_register_json(r, "api", node, "{\"address\":\"10.0.0.5:80\"}", 10000, NULL, NULL, &id));
    CHECK_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));
    CHECK(count_nodes(r, "api") >= 1);
    /* The watch sees the node: its live set holds it. */
    CHECK(WAIT_FOR(watch_size(r, watch) == 1, 10 * slow));
    CHECK_OK(etcd_registry_unregister(r, id));
    CHECK_OK(etcd_registry_unwatch(r, watch));
}

static void test_mtls_from_files(void) {
    etcd_registry_config *c = base_config(endpoints);
    REQUIRE(c != NULL);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), file("CLIENT_CERT"), file("CLIENT_KEY")));
    etcd_registry *r = NULL;
    CHECK_OK(etcd_registry_connect(c, &r));
    etcd_registry_config_free(c);
    REQUIRE(r != NULL);
    register_list_watch(r, "files");
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
}

static void test_mtls_from_pem_in_memory_with_a_server_name(void) {
    size_t ca_len = 0, cert_len = 0, key_len = 0;
    char *ca = slurp(file("CA"), &ca_len);
    char *cert = slurp(file("CLIENT_CERT"), &cert_len);
    char *key = slurp(file("CLIENT_KEY"), &key_len);
    REQUIRE(ca != NULL && cert != NULL && key != NULL);
    etcd_registry_config *c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_pem(c, (const uint8_t *)ca, ca_len, (const uint8_t *)cert, cert_len,
                                              (const uint8_t *)key, key_len));
    /* The bytes were copied. */
    memset(key, 0, key_len);
    free(ca);
    free(cert);
    free(key);
    CHECK_OK(etcd_registry_config_set_tls_server_name(c, "etcd.test"));
    etcd_registry *r = NULL;
    CHECK_OK(etcd_registry_connect(c, &r));
    etcd_registry_config_free(c);
    REQUIRE(r != NULL);
    register_list_watch(r, "memory");
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
}

static void test_handshake_errors(void) {
    /* Wrong CA: a TLS status naming the endpoint, not a timeout. */
    etcd_registry_config *c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("OTHER_CA"), file("CLIENT_CERT"), file("CLIENT_KEY")));
    CHECK_STATUS(first_list(c), ETCD_REGISTRY_STATUS_TLS);
    CHECK_LIST_MESSAGE("certificate verify failed");
    char first_endpoint[128];
    snprintf(first_endpoint, sizeof first_endpoint, "%s", endpoints);
    char *comma = strchr(first_endpoint, ',');
    if (comma) *comma = '\0';
    CHECK_LIST_MESSAGE(first_endpoint);

    /* Host name mismatch. */
    c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), file("CLIENT_CERT"), file("CLIENT_KEY")));
    CHECK_OK(etcd_registry_config_set_tls_server_name(c, "wrong.test"));
    CHECK_STATUS(first_list(c), ETCD_REGISTRY_STATUS_TLS);
    CHECK_LIST_MESSAGE("hostname mismatch");

    /* No client certificate, where etcd requires one. */
    c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), NULL, NULL));
    CHECK_STATUS(first_list(c), ETCD_REGISTRY_STATUS_TLS);
    CHECK_LIST_MESSAGE("requires a client certificate");

    /* An expired client certificate. */
    c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), file("EXPIRED_CLIENT_CERT"),
                                                file("EXPIRED_CLIENT_KEY")));
    CHECK_STATUS(first_list(c), ETCD_REGISTRY_STATUS_TLS);
    CHECK_LIST_MESSAGE("rejected the client certificate");

    /* A registration reports the TLS error as its first attempt's. */
    c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("OTHER_CA"), file("CLIENT_CERT"), file("CLIENT_KEY")));
    etcd_registry *r = NULL;
    CHECK_OK(etcd_registry_connect(c, &r));
    etcd_registry_config_free(c);
    REQUIRE(r != NULL);
    uint64_t id = 0;
    CHECK_OK(etcd_registry_register_json(r, "api", "n1", NULL, 5000, NULL, NULL, &id));
    CHECK_STATUS(etcd_registry_wait_registered(r, id, (uint64_t)(20000 * slow)), ETCD_REGISTRY_STATUS_TLS);
    etcd_registry_free(r);
}

static void test_unusable_pem_is_an_invalid_argument(void) {
    etcd_registry_config *c = base_config(endpoints);
    etcd_registry *r = NULL;
    CHECK_OK(etcd_registry_config_set_tls_files(c, "/nonexistent/ca.pem", NULL, NULL));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE("/nonexistent/ca.pem");
    /* A key where the CA belongs: the file is named, its content is not shown. */
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CLIENT_KEY"), NULL, NULL));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE(file("CLIENT_KEY"));
    CHECK(strstr(etcd_registry_last_error_message(), "PRIVATE KEY-----") == NULL);
    const char junk[] = "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n";
    CHECK_OK(etcd_registry_config_set_tls_pem(c, (const uint8_t *)junk, sizeof junk - 1, NULL, 0, NULL, 0));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE("in memory");
    /* A certificate without its key. */
    CHECK_STATUS(etcd_registry_config_set_tls_files(c, NULL, file("CLIENT_CERT"), NULL),
                 ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(etcd_registry_config_set_tls_pem(c, NULL, 0, (const uint8_t *)junk, 3, NULL, 0),
                 ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    /* A key that does not fit the certificate. */
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), file("CLIENT_CERT"), file("OTHER_CLIENT_KEY")));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE("does not fit");
    CHECK_STATUS(etcd_registry_config_set_tls_pem(NULL, NULL, 0, NULL, 0, NULL, 0),
                 ETCD_REGISTRY_STATUS_NULL_POINTER);
    /* A length no buffer can have: refused before anything is read. */
    CHECK_STATUS(etcd_registry_config_set_tls_pem(c, (const uint8_t *)junk, SIZE_MAX, NULL, 0, NULL, 0),
                 ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE("larger than any buffer");
    /* NULL means "none" only with a length of 0. */
    CHECK_STATUS(etcd_registry_config_set_tls_pem(c, NULL, 5, NULL, 0, NULL, 0), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_MESSAGE("ca_len 5");
    CHECK_STATUS(etcd_registry_config_set_tls_server_name(NULL, "x"), ETCD_REGISTRY_STATUS_NULL_POINTER);
    CHECK_STATUS(etcd_registry_config_set_tls_server_name(c, "\xff"), ETCD_REGISTRY_STATUS_INVALID_UTF8);
    CHECK_OK(etcd_registry_config_set_tls_server_name(c, "not a name!"));
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), NULL, NULL));
    CHECK_STATUS(etcd_registry_connect(c, &r), ETCD_REGISTRY_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE("server name");
    CHECK(r == NULL);
    etcd_registry_config_free(c);
}

/* Kill -9 and restart, then a partition past the TTL: the node comes back over mutual TLS. */
static void test_restart_and_partition_over_mtls(void) {
    etcd_registry_config *c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), file("CLIENT_CERT"), file("CLIENT_KEY")));
    etcd_registry *r = NULL;
    CHECK_OK(etcd_registry_connect(c, &r));
    etcd_registry_config_free(c);
    REQUIRE(r != NULL);
    uint64_t id = 0;
    CHECK_OK(etcd_registry_register_json(r, "faults", "n1", NULL, 3000, NULL, NULL, &id));
    CHECK_OK(etcd_registry_wait_registered(r, id, (uint64_t)(10000 * slow)));

    REQUIRE(harness("kill 0") == 0);
    REQUIRE(harness("restart 0") == 0);
    CHECK(WAIT_FOR(count_nodes(r, "faults") == 1, 30 * slow));

    REQUIRE(harness("partition") == 0);
    /* The lease expires in etcd while the client cannot reach it. */
    double deadline = now_s() + 30 * slow;
    char shell[1024];
    snprintf(shell, sizeof shell, "\"%s\" ctl \"%s\" lease-count | grep -q '\"value\":0'",
             getenv("ETCD_HARNESS_BIN"), getenv("ETCD_HARNESS_CONTROL"));
    bool expired = false;
    while (!(expired = system(shell) == 0) && now_s() < deadline) usleep(100 * 1000);
    CHECK(expired);
    REQUIRE(harness("heal") == 0);
    CHECK(WAIT_FOR(count_nodes(r, "faults") == 1, 30 * slow));
    etcd_registry_state state = ETCD_REGISTRY_STATE_UNREGISTERED;
    CHECK(WAIT_FOR(etcd_registry_registration_state(r, id, &state) == ETCD_REGISTRY_STATUS_OK &&
                       state == ETCD_REGISTRY_STATE_REGISTERED,
                   30 * slow));
    CHECK_OK(etcd_registry_close(r));
    etcd_registry_free(r);
}

/* Runs alone, against an etcd started with --tls-expired-server (tests/c/run.sh sets
 * ETCD_TLS_EXPIRED_SERVER=1 for it). */
static void test_expired_server_certificate(void) {
    etcd_registry_config *c = base_config(endpoints);
    CHECK_OK(etcd_registry_config_set_tls_files(c, file("CA"), NULL, NULL));
    CHECK_STATUS(first_list(c), ETCD_REGISTRY_STATUS_TLS);
    CHECK_LIST_MESSAGE("expired");
}

static const test_case tests[] = {
    TEST(test_mtls_from_files),
    TEST(test_mtls_from_pem_in_memory_with_a_server_name),
    TEST(test_handshake_errors),
    TEST(test_unusable_pem_is_an_invalid_argument),
    TEST(test_restart_and_partition_over_mtls),
};

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    endpoints = getenv("ETCD_ENDPOINTS");
    if (endpoints == NULL || *endpoints == '\0') {
        fprintf(stderr, "ETCD_ENDPOINTS is not set: run me under `etcd-harness run --client-cert-auth`\n");
        return 2;
    }
    read_slowdown();
    int passed = 0, failed = 0;
    if (getenv("ETCD_TLS_EXPIRED_SERVER") != NULL) {
        current_failed = 0;
        test_expired_server_certificate();
        printf("%s test_expired_server_certificate\n", current_failed ? "FAIL" : "ok  ");
        printf("%d passed, %d failed\n", !current_failed, current_failed);
        return current_failed;
    }
    run_tests(tests, sizeof tests / sizeof tests[0], argc, argv, &passed, &failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
