/*
 * shims.h — thin C wrappers the Go package calls instead of the library functions.
 *
 * Each wrapper makes one library call and, when it fails, copies the error message in the same
 * native call: the message is thread-local, and a goroutine may run on another OS thread by
 * its next cgo call. The copy is malloc'd; the Go side frees it. Registrations and watches are
 * made with a NULL callback (events are pulled with etcd_registry_next_event), so C never holds
 * a Go pointer: the log trampoline's user data is a runtime/cgo.Handle, and the callbacks of the
 * calls that wait in the netpoller (goer_call) write C memory and signal an eventfd.
 */
#ifndef GO_ETCD_REGISTRY_SHIMS_H
#define GO_ETCD_REGISTRY_SHIMS_H

#include <stdint.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include <etcd_registry.h>

static inline char *goer_error_copy(etcd_registry_status status) {
    if (status == ETCD_REGISTRY_STATUS_OK) return NULL;
    size_t len = etcd_registry_last_error_copy(NULL, 0);
    char *buf = malloc(len + 1);
    if (buf != NULL) etcd_registry_last_error_copy(buf, len + 1);
    return buf;
}

#define GOER_CALL(call)                              \
    do {                                             \
        etcd_registry_status status_ = (call);       \
        *err = goer_error_copy(status_);             \
        return status_;                              \
    } while (0)

static inline etcd_registry_status goer_config_new(etcd_registry_config **out, char **err) {
    GOER_CALL(etcd_registry_config_new(out));
}

static inline etcd_registry_status goer_config_add_endpoint(etcd_registry_config *config,
                                                            const char *endpoint, char **err) {
    GOER_CALL(etcd_registry_config_add_endpoint(config, endpoint));
}

static inline etcd_registry_status goer_config_set_base_path(etcd_registry_config *config,
                                                             const char *base_path, char **err) {
    GOER_CALL(etcd_registry_config_set_base_path(config, base_path));
}

static inline etcd_registry_status goer_config_set_credentials(etcd_registry_config *config,
                                                               const char *username,
                                                               const char *password, char **err) {
    GOER_CALL(etcd_registry_config_set_credentials(config, username, password));
}

static inline etcd_registry_status goer_config_set_timeout_ms(etcd_registry_config *config,
                                                              uint64_t timeout_ms, char **err) {
    GOER_CALL(etcd_registry_config_set_timeout_ms(config, timeout_ms));
}

static inline etcd_registry_status goer_config_set_backoff_ms(etcd_registry_config *config,
                                                              uint64_t min_ms, uint64_t max_ms,
                                                              char **err) {
    GOER_CALL(etcd_registry_config_set_backoff_ms(config, min_ms, max_ms));
}

static inline etcd_registry_status goer_config_set_tls_files(etcd_registry_config *config,
                                                             const char *ca, const char *cert,
                                                             const char *key, char **err) {
    GOER_CALL(etcd_registry_config_set_tls_files(config, ca, cert, key));
}

static inline etcd_registry_status goer_config_set_tls_pem(etcd_registry_config *config,
                                                           const uint8_t *ca, size_t ca_len,
                                                           const uint8_t *cert, size_t cert_len,
                                                           const uint8_t *key, size_t key_len,
                                                           char **err) {
    GOER_CALL(etcd_registry_config_set_tls_pem(config, ca, ca_len, cert, cert_len, key, key_len));
}

static inline etcd_registry_status goer_config_set_tls_server_name(etcd_registry_config *config,
                                                                   const char *name, char **err) {
    GOER_CALL(etcd_registry_config_set_tls_server_name(config, name));
}

static inline etcd_registry_status goer_connect(const etcd_registry_config *config,
                                                etcd_registry **out, char **err) {
    GOER_CALL(etcd_registry_connect(config, out));
}

static inline etcd_registry_status goer_register(etcd_registry *registry, const char *service,
                                                 const char *node,
                                                 const etcd_registry_info_entry *info,
                                                 size_t info_len, uint64_t ttl_ms,
                                                 uint64_t *out_id, char **err) {
    GOER_CALL(etcd_registry_register(registry, service, node, info, info_len, ttl_ms, NULL, NULL,
                                     out_id));
}

static inline etcd_registry_status goer_check_register(etcd_registry *registry,
                                                       const char *service, const char *node,
                                                       const etcd_registry_info_entry *info,
                                                       size_t info_len, uint64_t ttl_ms,
                                                       char **err) {
    GOER_CALL(etcd_registry_check_register(registry, service, node, info, info_len, ttl_ms));
}

static inline etcd_registry_status goer_update(etcd_registry *registry, uint64_t id,
                                               const etcd_registry_info_entry *info,
                                               size_t info_len, char **err) {
    GOER_CALL(etcd_registry_update(registry, id, info, info_len));
}

static inline etcd_registry_status goer_unregister(etcd_registry *registry, uint64_t id,
                                                   char **err) {
    GOER_CALL(etcd_registry_unregister(registry, id));
}

static inline etcd_registry_status goer_registration_state(etcd_registry *registry, uint64_t id,
                                                           etcd_registry_state *out, char **err) {
    GOER_CALL(etcd_registry_registration_state(registry, id, out));
}

static inline etcd_registry_status goer_dropped_events(etcd_registry *registry, uint64_t id,
                                                      uint64_t *out, char **err) {
    GOER_CALL(etcd_registry_dropped_events(registry, id, out));
}

static inline etcd_registry_status goer_registration_lease_id(etcd_registry *registry,
                                                              uint64_t id, int64_t *out,
                                                              char **err) {
    GOER_CALL(etcd_registry_registration_lease_id(registry, id, out));
}

static inline etcd_registry_status goer_list(etcd_registry *registry, const char *service,
                                             etcd_registry_node_list **out, char **err) {
    GOER_CALL(etcd_registry_list(registry, service, out));
}

/* A call in flight for goer_list_async, goer_services_async, goer_watch_async or
 * goer_unregister_async: C memory (the library's callback writes it), reused by the Go side for
 * one call at a time. `fd` is an eventfd the callback signals once the result is in; the Go side
 * waits for it in the netpoller, so no OS thread stays blocked in C. `list`, `names` and
 * `watch_id` are the results of a list, a services call and a watch (NULL or 0 otherwise). */
typedef struct goer_call {
    int fd;
    etcd_registry_status status;
    char *err;
    etcd_registry_node_list *list;
    etcd_registry_string_list *names;
    uint64_t watch_id;
} goer_call;

/* A new goer_call with its eventfd (non-blocking, close-on-exec), or NULL where there is no
 * eventfd (not Linux, or out of descriptors): the Go side then makes the blocking call. */
static inline goer_call *goer_call_new(void) {
#ifdef __linux__
    goer_call *call = calloc(1, sizeof *call);
    if (call == NULL) return NULL;
    call->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (call->fd < 0) {
        free(call);
        return NULL;
    }
    return call;
#else
    return NULL;
#endif
}

static void goer_call_done(goer_call *call, etcd_registry_status status, const char *message) {
    call->status = status;
    call->err = NULL;
    if (message != NULL) {
        size_t len = strlen(message);
        call->err = malloc(len + 1);
        if (call->err != NULL) memcpy(call->err, message, len + 1);
    }
    uint64_t one = 1;
    while (write(call->fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

static void goer_list_done(void *user_data, etcd_registry_status status, const char *message,
                           etcd_registry_node_list *list) {
    ((goer_call *)user_data)->list = list;
    goer_call_done(user_data, status, message);
}

static void goer_services_done(void *user_data, etcd_registry_status status, const char *message,
                               etcd_registry_string_list *names) {
    ((goer_call *)user_data)->names = names;
    goer_call_done(user_data, status, message);
}

static void goer_watch_started(void *user_data, etcd_registry_status status, const char *message,
                               uint64_t watch_id) {
    ((goer_call *)user_data)->watch_id = watch_id;
    goer_call_done(user_data, status, message);
}

static void goer_unregister_done(void *user_data, etcd_registry_status status,
                                 const char *message) {
    goer_call_done(user_data, status, message);
}

static inline void goer_call_reset(goer_call *call) {
    call->status = ETCD_REGISTRY_STATUS_OK;
    call->err = NULL;
    call->list = NULL;
    call->names = NULL;
    call->watch_id = 0;
}

static inline etcd_registry_status goer_list_async(etcd_registry *registry, const char *service,
                                                   goer_call *call, char **err) {
    goer_call_reset(call);
    GOER_CALL(etcd_registry_list_async(registry, service, goer_list_done, call));
}

static inline etcd_registry_status goer_services_async(etcd_registry *registry, goer_call *call,
                                                       char **err) {
    goer_call_reset(call);
    GOER_CALL(etcd_registry_services_async(registry, goer_services_done, call));
}

/* A watch whose events go to the pull queue, made without blocking on its first listing. */
static inline etcd_registry_status goer_watch_async(etcd_registry *registry, const char *service,
                                                    goer_call *call, char **err) {
    goer_call_reset(call);
    GOER_CALL(etcd_registry_watch_async(registry, service, NULL, NULL, goer_watch_started, call));
}

static inline etcd_registry_status goer_unregister_async(etcd_registry *registry, uint64_t id,
                                                         goer_call *call, char **err) {
    goer_call_reset(call);
    GOER_CALL(etcd_registry_unregister_async(registry, id, goer_unregister_done, call));
}

static inline etcd_registry_status goer_services(etcd_registry *registry,
                                                 etcd_registry_string_list **out, char **err) {
    GOER_CALL(etcd_registry_services(registry, out));
}

static inline etcd_registry_status goer_active_endpoint(etcd_registry *registry, char *buffer,
                                                        size_t capacity, size_t *out_len,
                                                        char **err) {
    GOER_CALL(etcd_registry_active_endpoint(registry, buffer, capacity, out_len));
}

static inline etcd_registry_status goer_watch(etcd_registry *registry, const char *service,
                                              uint64_t *out_id, char **err) {
    GOER_CALL(etcd_registry_watch(registry, service, NULL, NULL, out_id));
}

static inline etcd_registry_status goer_unwatch(etcd_registry *registry, uint64_t id,
                                                char **err) {
    GOER_CALL(etcd_registry_unwatch(registry, id));
}

static inline etcd_registry_status goer_watch_nodes(etcd_registry *registry, uint64_t id,
                                                    etcd_registry_node_list **out, char **err) {
    GOER_CALL(etcd_registry_watch_nodes(registry, id, out));
}

static inline etcd_registry_status goer_next_event(etcd_registry *registry, uint64_t timeout_ms,
                                                   etcd_registry_event **out, char **err) {
    GOER_CALL(etcd_registry_next_event(registry, timeout_ms, out));
}

static inline etcd_registry_status goer_event_fd(etcd_registry *registry, int *out_fd,
                                                 char **err) {
    GOER_CALL(etcd_registry_event_fd(registry, out_fd));
}

static inline etcd_registry_status goer_close(etcd_registry *registry, char **err) {
    GOER_CALL(etcd_registry_close(registry));
}

/* Defined in log_trampoline.c: forwards one log message to the Go logger behind the handle. */
void goer_log_trampoline(etcd_registry_log_level level, const char *target, const char *message,
                         void *user_data);

/* The handle travels as an integer through C's void *user_data; C never dereferences it. */
static inline etcd_registry_status goer_set_log(etcd_registry_log_level max_level,
                                                uintptr_t handle, char **err) {
    if (max_level == ETCD_REGISTRY_LOG_OFF)
        GOER_CALL(etcd_registry_set_log_callback(NULL, ETCD_REGISTRY_LOG_OFF, NULL));
    GOER_CALL(etcd_registry_set_log_callback(goer_log_trampoline, max_level, (void *)handle));
}

#endif
