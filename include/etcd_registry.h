/*
 * etcd_registry.h — service registration and discovery on etcd, C ABI of the Rust
 * etcd-registry library (libetcd_registry.so / libetcd_registry.a).
 *
 *   ffi/install.sh --prefix DIR [--static]    # libraries, this header, etcd_registry.pc
 *   cc app.c $(pkg-config --cflags --libs etcd_registry)
 *
 * links the shared library (with an rpath to DIR/lib), or with --static the archive; the
 * package etcd_registry-static always links the archive. CMake: find_package(etcd_registry
 * CONFIG REQUIRED) and the target etcd_registry::etcd_registry (or _static, _shared).
 *
 * CONVENTIONS
 *   - Every symbol starts with etcd_registry_ / ETCD_REGISTRY_. Handles are opaque; each is
 *     created by one function and freed by its _free function, which accepts NULL.
 *   - Fallible functions return etcd_registry_status (fixed numbers, OK = 0). Out-parameters
 *     are written only when OK is returned. The text of the last failure on the calling thread
 *     is etcd_registry_last_error_message() (valid until the next status-returning call on
 *     that thread) or etcd_registry_last_error_copy() into your buffer.
 *   - Strings in are NUL-terminated UTF-8: NULL gives ETCD_REGISTRY_STATUS_NULL_POINTER,
 *     invalid UTF-8 ETCD_REGISTRY_STATUS_INVALID_UTF8; never a crash. Strings out are owned by
 *     the library; each function says how long they live.
 *   - Node info goes in and out as arrays of etcd_registry_info_entry: key and value as bytes
 *     with lengths (NUL and, going in, non-UTF-8 bytes allowed; names stay UTF-8 C strings).
 *     The library stores them exactly as Go's json.Marshal writes a map[string]string. A JSON
 *     form is offered as a convenience (etcd_registry_register_json, *_info_json).
 *     Nothing is promised about where the strings handed out lie in memory.
 *   - No panic crosses the boundary: a bug inside the library gives ETCD_REGISTRY_STATUS_PANIC.
 *   - The library never prints. Its logs go to etcd_registry_set_log_callback, if set.
 *
 * THREADS
 *   - All functions are thread-safe, except that one etcd_registry_config must not be used by
 *     any call (etcd_registry_connect included) while another thread changes or frees it, and
 *     etcd_registry_free must be the last call on its handle.
 *   - The library runs one global runtime of 1 thread (etcd_registry_config_set_runtime_threads
 *     or the environment variable ETCD_REGISTRY_THREADS, before the first connect) plus one
 *     callback thread named "etcd-reg-events", all started on first use.
 *   - Blocking calls (list, watch, unregister, close) wait for etcd at most the configured
 *     timeout (default 10 s); wait_registered waits up to its timeout_ms; a close made while
 *     another runs waits for that one to finish.
 *   - After fork(), handles created before the fork refuse every call in the child with
 *     ETCD_REGISTRY_STATUS_CLOSED (close and free do nothing there: the registrations remain
 *     the parent's, which keeps them). The child may create new handles.
 *   - fork() from inside a callback (status, watch, _async or log) is not supported unless
 *     the child only calls exec or _exit: the child's one thread is a copy of a library
 *     thread, in the middle of calling your callback, which the library cannot run on.
 *
 * CALLBACKS (status callbacks of registrations, event callbacks of watches)
 *   - All are called on the one library callback thread, which is not one of your threads and
 *     not a runtime thread: one call at a time in the whole process (they never overlap), and
 *     in order for each registration or watch. Keep them short: a slow callback delays all
 *     others.
 *   - The event pointer and every string in it are valid only until the callback returns.
 *   - A callback may call any library function (list, register, unregister, unwatch, close …):
 *     calls from the callback thread never wait for a callback, so they cannot deadlock. It
 *     must not throw C++ exceptions or longjmp out.
 *   - An etcd_registry_unregister or etcd_registry_close made from a callback delivers the
 *     UNREGISTERED events it emits nested, on the callback thread, before it returns (see
 *     below). Those callbacks may call the library too, blocking calls included; a close of
 *     the registry being closed returns OK at once, and etcd_registry_free of the registry
 *     that call is on is deferred until it returns (see etcd_registry_free).
 *   - The end of a registration: etcd_registry_unregister and etcd_registry_close emit
 *     ETCD_REGISTRY_STATUS_KIND_UNREGISTERED as the registration's last event, and it is
 *     delivered: the callback has been called with it (and is not running) when they return,
 *     and is never called again for it; free user_data then. Called from inside a callback
 *     (on the callback thread), they deliver the remaining events of the registration nested,
 *     before returning. A registration replaced by a newer registration of the same node gets
 *     UNREGISTERED as its last call too: etcd_registry_unregister of its id waits for that
 *     call in the same way (and returns OK, deleting nothing: the key is the newer one's).
 *     Once that call has returned, the registry forgets the replaced id by itself, and every
 *     call given it returns NOT_FOUND.
 *   - etcd_registry_unwatch / etcd_registry_close stop a watch's callback: once they return it
 *     is not running and will never be called again (its undelivered events are dropped).
 *     Called from inside that very callback, they do not wait for it. Called from another
 *     thread, they wait for a running call of the callback to return, so do not hold a lock
 *     there that the callback takes.
 *   - Backpressure (the same in every language, see the core's `events` module): a consumer
 *     (each callback, the pull queue) less than 1024 events behind gets every event. Past that,
 *     a watch's events are never dropped: until the consumer has caught up, a node's new event
 *     is merged into its undelivered one, in place, with the newer info and revision (a node
 *     gone at the end is one REMOVED, even if its ADDED was never delivered; otherwise one
 *     ADDED if the undelivered one was, else one UPDATED). A consumer far behind skips
 *     intermediate states of a node but ends at the live node set if it applies ADDED and
 *     UPDATED as insert-or-replace and REMOVED as delete-if-present; revisions of different
 *     nodes may then come out of order. Status events are bounded: past 1024 undelivered ones the oldest is
 *     dropped (never an UNREGISTERED), counted by etcd_registry_dropped_events, and a warning
 *     is logged.
 *
 * PULL INSTEAD OF CALLBACKS (for hosts that cannot take calls on foreign threads, e.g. Go)
 *   - Pass a NULL callback to etcd_registry_register / etcd_registry_watch: their events are
 *     queued on the registry instead, in the same order, and etcd_registry_next_event(registry,
 *     timeout_ms, &event) takes the next one of any such registration or watch (event->event_type
 *     says which; event->status.registration_id / event->watch.watch_id says whose). Free each
 *     event with etcd_registry_event_free. Events are queued from the first, even before
 *     register/watch has returned the id.
 *   - etcd_registry_next_event returns ETCD_REGISTRY_STATUS_TIMEOUT when nothing came in time.
 *     After etcd_registry_close it returns what is still queued (the UNREGISTERED events of
 *     the closed registrations included), then ETCD_REGISTRY_STATUS_CLOSED (also waking a call
 *     that is waiting), so a host can run one pulling thread that exits on CLOSED. Inside a
 *     callback (status, watch, _async or log) it only takes what is queued: a timeout other
 *     than 0 there is ETCD_REGISTRY_STATUS_INVALID_ARGUMENT, as the wait could never end.
 *   - UNREGISTERED is queued before unregister/close return and is the last event of its id.
 *     After unwatch of an id returns, no event of that id is queued any more and the queued
 *     ones are dropped; only a next_event call that had already taken one may return it.
 *
 * SHUTDOWN ORDER
 *   1. etcd_registry_close(registry): stops the watches, revokes the leases (deleting every
 *      key registered through this handle at once), delivers every registration's UNREGISTERED,
 *      ends the pull queue (next_event returns what is queued, then CLOSED) and returns. Like
 *      etcd_registry_unregister, it never fails because etcd is unreachable: it tries within
 *      the timeout, logs a warning when it could not, and the keys expire with their leases
 *      (within the TTL).
 *   2. Wait until your threads have left every call on this registry (e.g. the pulling thread
 *      has seen CLOSED), then free user_data of its callbacks.
 *   3. etcd_registry_free(registry). (free also closes, if you skipped step 1.)
 *   Node lists and events are independent of the registry and may be freed before or after.
 *   The global runtime and the callback thread stay until the process exits.
 */


#ifndef ETCD_REGISTRY_H
#define ETCD_REGISTRY_H

/* Generated by cbindgen 0.29.4 from ffi/src (ffi/cbindgen.toml). Do not edit: run ffi/check-header.sh --update. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * The version of this header, the same as the library's Cargo version. Compare it with
 * etcd_registry_version() (the library actually linked) to detect a header and a library from
 * different installs.
 */
#define ETCD_REGISTRY_VERSION "0.1.0"
#define ETCD_REGISTRY_VERSION_MAJOR 0
#define ETCD_REGISTRY_VERSION_MINOR 1
#define ETCD_REGISTRY_VERSION_PATCH 0

/**
 * The base path used when etcd_registry_config_set_base_path is not called (the core's
 * DEFAULT_BASE_PATH).
 */
#define ETCD_REGISTRY_DEFAULT_BASE_PATH "/services"

/**
 * Pass as `info_len` (with `info` NULL) to `etcd_registry_register` for no info object at all:
 * the value is stored empty, as Go's library stores a nil map (an empty info object, `info_len`
 * 0, is stored as `{}`). A `size_t` (ffi/src/info.rs: a usize constant cbindgen cannot emit).
 */
#define ETCD_REGISTRY_NO_INFO SIZE_MAX

/**
 * The timeout of connecting and of each etcd call when none is set, in milliseconds.
 */
#define ETCD_REGISTRY_DEFAULT_TIMEOUT_MS 10000

/**
 * The first retry delay after a failure when none is set, in milliseconds.
 */
#define ETCD_REGISTRY_DEFAULT_BACKOFF_MIN_MS 1000

/**
 * The cap of the retry delay when none is set, in milliseconds.
 */
#define ETCD_REGISTRY_DEFAULT_BACKOFF_MAX_MS 30000

/**
 * The TTL a binding uses when its caller gives none, in seconds (the C API always takes one).
 */
#define ETCD_REGISTRY_DEFAULT_TTL_SECS 10

/**
 * etcd's largest lease TTL, in seconds: a larger TTL is INVALID_ARGUMENT.
 */
#define ETCD_REGISTRY_MAX_TTL_SECS 9000000000

/**
 * Pass as `timeout_ms` to `etcd_registry_next_event` to wait without a time limit (until an
 * event comes or the registry is closed).
 */
#define ETCD_REGISTRY_WAIT_FOREVER 18446744073709551615ull

/**
 * What a fallible call did. The numbers are fixed and never reused; new codes may be added.
 *
 * The text of the last failure on the calling thread is available from
 * `etcd_registry_last_error_message()`.
 */
enum etcd_registry_status
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * Success. Out-parameters have been written.
     */
    ETCD_REGISTRY_STATUS_OK = 0,
    /**
     * An argument was unusable: empty name, TTL of 0, malformed endpoint, info that is not a
     * JSON object of strings, unknown value, a blocking call from a library thread …
     */
    ETCD_REGISTRY_STATUS_INVALID_ARGUMENT = 1,
    /**
     * A required pointer argument was NULL.
     */
    ETCD_REGISTRY_STATUS_NULL_POINTER = 2,
    /**
     * The connection broke during a call. (etcd unreachable for a whole call is TIMEOUT,
     * whose message names the endpoint and the cause.)
     */
    ETCD_REGISTRY_STATUS_CONNECTION = 3,
    /**
     * The operation did not finish in time (or, for `etcd_registry_next_event`, no event came).
     */
    ETCD_REGISTRY_STATUS_TIMEOUT = 4,
    /**
     * etcd rejected the credentials or the permission.
     */
    ETCD_REGISTRY_STATUS_AUTH = 5,
    /**
     * No such registration or watch on this registry (never existed or already ended).
     */
    ETCD_REGISTRY_STATUS_NOT_FOUND = 6,
    /**
     * The registry is closed.
     */
    ETCD_REGISTRY_STATUS_CLOSED = 7,
    /**
     * A bug inside the library panicked; the call was abandoned. Please report it.
     */
    ETCD_REGISTRY_STATUS_PANIC = 8,
    /**
     * Anything else: an unexpected answer from etcd, or a bug.
     */
    ETCD_REGISTRY_STATUS_INTERNAL = 9,
    /**
     * A string argument was not valid UTF-8.
     */
    ETCD_REGISTRY_STATUS_INVALID_UTF8 = 10,
    /**
     * The TLS handshake with etcd failed: its certificate is not signed by the configured CA,
     * not valid for the host name, or expired; or etcd refused the client certificate or
     * requires one. Unreadable or malformed PEM is INVALID_ARGUMENT (at connect).
     */
    ETCD_REGISTRY_STATUS_TLS = 11,
    /**
     * etcd refused for lack of a resource: its database is full (the NOSPACE alarm, "database
     * space exceeded", until an operator frees space and disarms it) or it is overloaded ("too
     * many requests"). A registration refused so keeps retrying and lands once etcd accepts
     * writes again.
     */
    ETCD_REGISTRY_STATUS_RESOURCE_EXHAUSTED = 12,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum etcd_registry_status etcd_registry_status;
#else
typedef uint32_t etcd_registry_status;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * Opaque registry handle: one etcd connection (made lazily), its registrations and watches.
 * Created by `etcd_registry_connect`, closed by `etcd_registry_close`, freed by
 * `etcd_registry_free`. Every call on it is thread-safe, except `etcd_registry_free`, which
 * must be the last call on it.
 */
typedef struct etcd_registry etcd_registry;

/**
 * Opaque configuration of a registry. Created by `etcd_registry_config_new`, freed by
 * `etcd_registry_config_free`. `etcd_registry_connect` copies what it needs, so the config can
 * be freed (or reused) right after. Not thread-safe: no call may use a config (a connect
 * included) while another thread changes or frees it.
 *
 * Defaults: no endpoints (at least one is required), base path "/services", no credentials,
 * timeout 10000 ms, backoff 1000 ms doubling to 30000 ms, runtime threads from the environment
 * variable `ETCD_REGISTRY_THREADS` or 1, no TLS (see `etcd_registry_config_set_tls_files`).
 */
typedef struct etcd_registry_config etcd_registry_config;

/**
 * Opaque, immutable list of nodes (from `etcd_registry_list` or `etcd_registry_watch_nodes`),
 * sorted by name. Every string and array it hands out is owned by the list and valid until
 * `etcd_registry_node_list_free`. Safe to read from several threads at once.
 */
typedef struct etcd_registry_node_list etcd_registry_node_list;

/**
 * Opaque, immutable list of strings (the service names of `etcd_registry_services`), in the
 * order the call documents. Every string it hands out is owned by the list and valid until
 * `etcd_registry_string_list_free`. Safe to read from several threads at once.
 */
typedef struct etcd_registry_string_list etcd_registry_string_list;

/**
 * Which member of an `etcd_registry_event` is meaningful; one of `ETCD_REGISTRY_EVENT_TYPE_*`.
 */
typedef uint32_t etcd_registry_event_type;

/**
 * Kind of an `etcd_registry_status_event`; one of the `ETCD_REGISTRY_STATUS_KIND_*` values.
 */
typedef uint32_t etcd_registry_status_kind;

/**
 * A change of a registration. Every pointer in it is owned by the library: in a callback it
 * is valid until the callback returns; from `etcd_registry_next_event` until
 * `etcd_registry_event_free`. Copy what you keep.
 */
typedef struct etcd_registry_status_event {
    /**
     * What happened: one of `ETCD_REGISTRY_STATUS_KIND_*`.
     */
    etcd_registry_status_kind kind;
    /**
     * The id `etcd_registry_register` returned.
     */
    uint64_t registration_id;
    /**
     * The service name, as registered. Never NULL.
     */
    const char *service;
    /**
     * The node name, as registered. Never NULL.
     */
    const char *node;
    /**
     * RETRYING: the attempt number, 1 for the first retry after a failure. Otherwise 0.
     */
    uint32_t attempt;
    /**
     * RETRYING: milliseconds until that attempt. Otherwise 0.
     */
    uint64_t delay_ms;
    /**
     * FAILED, KEEPALIVE_LOST, RETRYING: the kind of the failure (CONNECTION, TIMEOUT, AUTH,
     * NOT_FOUND for an expired lease …). Otherwise `ETCD_REGISTRY_STATUS_OK`.
     */
    etcd_registry_status error_status;
    /**
     * FAILED, KEEPALIVE_LOST, RETRYING: a readable description of the failure (its kind is
     * `error_status`). Otherwise NULL.
     */
    const char *error_message;
    /**
     * REGISTERED, REREGISTERED, UPDATED: the etcd lease the key is attached to. Otherwise 0.
     */
    int64_t lease_id;
} etcd_registry_status_event;

/**
 * Kind of an `etcd_registry_watch_event`; one of the `ETCD_REGISTRY_WATCH_KIND_*` values.
 */
typedef uint32_t etcd_registry_watch_kind;

/**
 * One key/value pair of a node's info: each a pointer and a length in bytes.
 *
 * Given to the library, a key or value may hold any bytes, NUL included (the lengths count,
 * not NUL terminators); bytes that are not UTF-8 are stored as Go's `json.Marshal` writes them
 * (each invalid byte as the escape `\ufffd`, read back as U+FFFD). A pointer may be NULL only
 * when its length is 0.
 *
 * Handed out by the library (node lists, watch events), both are UTF-8 and are also followed by
 * a NUL that the length does not count, so that one without NUL inside can be read as a C
 * string.
 */
typedef struct etcd_registry_info_entry {
    /**
     * The key, e.g. "address". Never empty.
     */
    const char *key;
    /**
     * The length of the key in bytes.
     */
    size_t key_len;
    /**
     * Its value, e.g. "10.0.0.5:8080".
     */
    const char *value;
    /**
     * The length of the value in bytes.
     */
    size_t value_len;
} etcd_registry_info_entry;

/**
 * A change of a watched service. Pointers as in `etcd_registry_status_event`.
 */
typedef struct etcd_registry_watch_event {
    /**
     * What happened: one of `ETCD_REGISTRY_WATCH_KIND_*`.
     */
    etcd_registry_watch_kind kind;
    /**
     * The id `etcd_registry_watch` returned.
     */
    uint64_t watch_id;
    /**
     * The service watched. Never NULL.
     */
    const char *service;
    /**
     * The node concerned, NUL-terminated; NULL for RESYNCED. Its length is `node_name_len`:
     * a name another client wrote may hold a NUL (the library's own never do), which only the
     * length shows, as in node lists.
     */
    const char *node_name;
    /**
     * The node's info as a JSON object of strings (for REMOVED its last known info), `null`
     * when the node has no info object (see `etcd_registry_node_list_info_json`); NULL for
     * RESYNCED. A convenience: `info` has the same info as entries.
     */
    const char *info_json;
    /**
     * The node's info as `info_len` entries sorted by key, strings with lengths (see
     * `etcd_registry_info_entry`); NULL when `info_len` is 0.
     */
    const struct etcd_registry_info_entry *info;
    /**
     * The number of entries of `info`.
     */
    size_t info_len;
    /**
     * True when the node has no info object at all (see `etcd_registry_node_entry`); false
     * for RESYNCED.
     */
    bool info_absent;
    /**
     * The etcd revision of the change.
     */
    int64_t revision;
    /**
     * The length of `node_name` in bytes (without the terminating NUL); 0 for RESYNCED.
     */
    size_t node_name_len;
} etcd_registry_watch_event;

/**
 * An event taken from the pull queue by `etcd_registry_next_event`. `event_type` says which of
 * `status` and `watch` is meaningful; the other is zeroed. Free it with
 * `etcd_registry_event_free`; its strings live until then.
 */
typedef struct etcd_registry_event {
    /**
     * `ETCD_REGISTRY_EVENT_TYPE_STATUS` or `ETCD_REGISTRY_EVENT_TYPE_WATCH`.
     */
    etcd_registry_event_type event_type;
    /**
     * The status event, when `event_type` is STATUS.
     */
    struct etcd_registry_status_event status;
    /**
     * The watch event, when `event_type` is WATCH.
     */
    struct etcd_registry_watch_event watch;
} etcd_registry_event;

/**
 * Called once with the result of `etcd_registry_list_async`: `status` OK and a node list that
 * the callback now owns (free it with `etcd_registry_node_list_free`), or an error status, its
 * message (valid until the callback returns) and a NULL list.
 */
typedef void (*etcd_registry_list_callback)(void *user_data,
                                            etcd_registry_status status,
                                            const char *error_message,
                                            struct etcd_registry_node_list *node_list);

/**
 * Called once with the result of `etcd_registry_services_async`: `status` OK and a string list
 * that the callback now owns (free it with `etcd_registry_string_list_free`), or an error
 * status, its message (valid until the callback returns) and a NULL list.
 */
typedef void (*etcd_registry_services_callback)(void *user_data,
                                                etcd_registry_status status,
                                                const char *error_message,
                                                struct etcd_registry_string_list *services);

/**
 * Severity of a log message; one of the `ETCD_REGISTRY_LOG_*` values.
 */
typedef uint32_t etcd_registry_log_level;

/**
 * Receives one log message. `target` is the Rust module that logged (e.g.
 * "etcd_registry::group"), `message` the formatted text; both are valid only during the call.
 */
typedef void (*etcd_registry_log_callback)(etcd_registry_log_level level,
                                           const char *target,
                                           const char *message,
                                           void *user_data);

/**
 * One node of a list: see `etcd_registry_node_list_entries`. Strings as in
 * `etcd_registry_info_entry`: UTF-8 with a length, followed by a NUL the length does not count.
 */
typedef struct etcd_registry_node_entry {
    /**
     * The node's name.
     */
    const char *name;
    /**
     * The length of the name in bytes.
     */
    size_t name_len;
    /**
     * Its info, `info_len` entries sorted by key (bytewise); NULL when `info_len` is 0.
     */
    const struct etcd_registry_info_entry *info;
    /**
     * The number of info entries.
     */
    size_t info_len;
    /**
     * True when the node has no info object at all (its value in etcd was empty, `null` or not
     * a JSON object: what Go's library reads as a nil map); false for an info object, empty or
     * not. `info_len` is 0 when it is true.
     */
    bool info_absent;
} etcd_registry_node_entry;

/**
 * Called with each status event of one registration. See the header's top comment for the
 * thread and the guarantees.
 */
typedef void (*etcd_registry_status_callback)(const struct etcd_registry_status_event *event,
                                              void *user_data);

/**
 * Called once with the result of an `_async` call that gives no value
 * (`etcd_registry_unregister_async`): the status the blocking call would have returned, and on
 * an error its message (valid until the callback returns; NULL on OK).
 */
typedef void (*etcd_registry_done_callback)(void *user_data,
                                            etcd_registry_status status,
                                            const char *error_message);

/**
 * Where a registration stands; one of the `ETCD_REGISTRY_STATE_*` values.
 */
typedef uint32_t etcd_registry_state;

/**
 * Called with each event of one watch. See the header's top comment for the thread and the
 * guarantees.
 */
typedef void (*etcd_registry_watch_callback)(const struct etcd_registry_watch_event *event,
                                             void *user_data);

/**
 * Called once with the result of `etcd_registry_watch_async`: OK and the new watch's id, or an
 * error status, its message (valid until the callback returns) and 0.
 */
typedef void (*etcd_registry_watch_started_callback)(void *user_data,
                                                     etcd_registry_status status,
                                                     const char *error_message,
                                                     uint64_t watch_id);

/**
 * The key was put for the first time, its keep-alive running and (for a new lease) the watch of
 * its keys open (`lease_id` is set).
 */
#define ETCD_REGISTRY_STATUS_KIND_REGISTERED 1

/**
 * The first attempt failed before any registration (`error_status`, `error_message`); RETRYING
 * events follow.
 */
#define ETCD_REGISTRY_STATUS_KIND_FAILED 2

/**
 * A registered node lost its keep-alive: etcd down, partitioned, the lease expired or was
 * revoked (`error_status`, `error_message`). RETRYING events follow.
 */
#define ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST 3

/**
 * The next attempt comes in `delay_ms` (`attempt` counts from 1; `error_*` say why).
 */
#define ETCD_REGISTRY_STATUS_KIND_RETRYING 4

/**
 * The key is back after a loss (`lease_id` is set: the old lease if it survived).
 */
#define ETCD_REGISTRY_STATUS_KIND_REREGISTERED 5

/**
 * The registration ended: `etcd_registry_unregister` or `etcd_registry_close` was called, or a
 * newer registration of the same node on the same registry replaced it (the key then stays,
 * owned by the newer one). Always the last event of a registration, never dropped, and
 * delivered: to a callback before unregister/close return, to the pull queue queued before
 * they return.
 */
#define ETCD_REGISTRY_STATUS_KIND_UNREGISTERED 6

/**
 * The info given to `etcd_registry_update` is in etcd (`lease_id` is set). Several updates
 * made before one put could land (etcd down, or quick succession) give one UPDATED, for the
 * newest. Does not change the state.
 */
#define ETCD_REGISTRY_STATUS_KIND_UPDATED 7

/**
 * A node appeared. The first events of a watch are one ADDED per node present when it started.
 */
#define ETCD_REGISTRY_WATCH_KIND_ADDED 1

/**
 * A node's info changed.
 */
#define ETCD_REGISTRY_WATCH_KIND_UPDATED 2

/**
 * A node disappeared (unregistered, or its lease expired); `info_json` is its last info.
 */
#define ETCD_REGISTRY_WATCH_KIND_REMOVED 3

/**
 * The watch missed history (etcd compacted it while disconnected, or etcd's history is not
 * the one it followed: its data lost or restored from an older snapshot), re-listed the
 * service and sent the
 * difference as ADDED/UPDATED/REMOVED just before this event. `node_name` and `info_json` are
 * NULL.
 */
#define ETCD_REGISTRY_WATCH_KIND_RESYNCED 4

/**
 * A status event of a registration: read `event->status`.
 */
#define ETCD_REGISTRY_EVENT_TYPE_STATUS 1

/**
 * A watch event: read `event->watch`.
 */
#define ETCD_REGISTRY_EVENT_TYPE_WATCH 2

/**
 * No logs at all.
 */
#define ETCD_REGISTRY_LOG_OFF 0

/**
 * Errors: something failed that the library cannot repair by itself.
 */
#define ETCD_REGISTRY_LOG_ERROR 1

/**
 * Warnings: failures the library retries (etcd down, keep-alive lost …).
 */
#define ETCD_REGISTRY_LOG_WARN 2

/**
 * Notable events (lease expired and replaced, watch resynced …).
 */
#define ETCD_REGISTRY_LOG_INFO 3

/**
 * Details useful when debugging.
 */
#define ETCD_REGISTRY_LOG_DEBUG 4

/**
 * Everything.
 */
#define ETCD_REGISTRY_LOG_TRACE 5

/**
 * Not registered yet: the first attempt is under way or being retried.
 */
#define ETCD_REGISTRY_STATE_REGISTERING 1

/**
 * The key is in etcd and its lease is kept alive.
 */
#define ETCD_REGISTRY_STATE_REGISTERED 2

/**
 * The key was registered, then the lease or the connection was lost; retrying.
 */
#define ETCD_REGISTRY_STATE_RETRYING 3

/**
 * Ended: replaced by a newer registration of the same node, and its UNREGISTERED not delivered
 * yet (once it has been, the id is forgotten and calls given it return NOT_FOUND).
 */
#define ETCD_REGISTRY_STATE_UNREGISTERED 4

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The library's version, e.g. "0.1.0". Static storage; never NULL.
 */
const char *etcd_registry_version(void);

/**
 * Creates a configuration with the defaults. Free it with `etcd_registry_config_free`.
 *
 * `*out_config` is written only on success.
 */
etcd_registry_status etcd_registry_config_new(struct etcd_registry_config **out_config);

/**
 * Frees a configuration. NULL is allowed (and does nothing).
 */
void etcd_registry_config_free(struct etcd_registry_config *config);

/**
 * Replaces the endpoints with a comma-separated list, e.g. "10.0.0.1:2379,10.0.0.2:2379".
 * Each is `host:port`, `http://host:port` or `https://host:port` (TLS); spaces around items
 * and empty items are ignored. INVALID_ARGUMENT when the list holds no endpoint. Endpoints
 * are checked in detail by `etcd_registry_connect`.
 */
etcd_registry_status etcd_registry_config_set_endpoints(struct etcd_registry_config *config,
                                                        const char *endpoints);

/**
 * Appends one endpoint (`host:port`, `http://host:port` or `https://host:port`).
 * INVALID_ARGUMENT when it is empty or malformed (the check `etcd_registry_connect` makes).
 */
etcd_registry_status etcd_registry_config_add_endpoint(struct etcd_registry_config *config,
                                                       const char *endpoint);

/**
 * Sets the prefix of every key: nodes live at `<base_path>/<service>/<node>` (joined and
 * cleaned like Go's `path.Join`, so it interoperates with go.lumeweb.com/etcd-registry).
 * Default "/services". An empty string is allowed (keys then start with the service name).
 */
etcd_registry_status etcd_registry_config_set_base_path(struct etcd_registry_config *config,
                                                        const char *base_path);

/**
 * Sets the credentials for an etcd with authentication enabled. `password` may be NULL (an
 * empty password). A NULL or empty `username` removes the credentials.
 */
etcd_registry_status etcd_registry_config_set_credentials(struct etcd_registry_config *config,
                                                          const char *username,
                                                          const char *password);

/**
 * Sets the timeout of connecting and of each etcd call, in milliseconds (default 10000).
 * INVALID_ARGUMENT for 0 or above 100 years.
 */
etcd_registry_status etcd_registry_config_set_timeout_ms(struct etcd_registry_config *config,
                                                         uint64_t timeout_ms);

/**
 * Sets the retry delays of registrations and watches after a failure: `min_ms` doubling up to
 * `max_ms` (defaults 1000 and 30000), each shortened by up to 20 % at random. Retries never
 * stop. INVALID_ARGUMENT unless 0 < min_ms <= max_ms <= 100 years.
 */
etcd_registry_status etcd_registry_config_set_backoff_ms(struct etcd_registry_config *config,
                                                         uint64_t min_ms,
                                                         uint64_t max_ms);

/**
 * Sets the worker count (1 to 64) of the library's one global runtime. It only takes effect if
 * the runtime has not started yet, i.e. before the first `etcd_registry_connect` of the process;
 * later it is ignored (with a warning in the log). Without it, the environment variable
 * `ETCD_REGISTRY_THREADS` decides, else 1 (more for a process that watches services of tens of
 * thousands of nodes: their updates are decoded on a worker).
 */
etcd_registry_status etcd_registry_config_set_runtime_threads(struct etcd_registry_config *config,
                                                              uint32_t threads);

/**
 * Turns TLS on with PEM files: the CA that signed etcd's certificate (NULL: the system's
 * roots), and for mutual TLS the client certificate and its key (both or neither). Replaces
 * the CA and client certificate set before; keeps the server name. All three NULL (and no
 * server name) turns TLS off again, unless an endpoint is `https://`.
 *
 * With TLS on, endpoints are `host:port` or `https://host:port` (not `http://`); an
 * `https://` endpoint alone turns TLS on with the system roots. The files are read and checked by
 * `etcd_registry_connect`: a missing file, a file without a certificate or key, a key that
 * does not fit the certificate give INVALID_ARGUMENT with the file's name (never retried).
 * A failed handshake later (wrong CA, host name mismatch, expired certificate, client
 * certificate refused or missing) gives ETCD_REGISTRY_STATUS_TLS. The files are read again for
 * each new connection: a certificate renewed on disk is used from the next connection on
 * (files that cannot be used as they are leave the last good ones in use, with a warning).
 */
etcd_registry_status etcd_registry_config_set_tls_files(struct etcd_registry_config *config,
                                                        const char *ca_file,
                                                        const char *cert_file,
                                                        const char *key_file);

/**
 * Like `etcd_registry_config_set_tls_files`, with the PEM documents in memory: `ca`/`ca_len`
 * (NULL: the system's roots), `cert`/`cert_len` and `key`/`key_len` (both or neither, NULL for
 * none). A NULL buffer must come with a length of 0 (else `NULL_POINTER`). The bytes are copied;
 * they need not be NUL-terminated. Errors never quote the key.
 */
etcd_registry_status etcd_registry_config_set_tls_pem(struct etcd_registry_config *config,
                                                      const uint8_t *ca,
                                                      size_t ca_len,
                                                      const uint8_t *cert,
                                                      size_t cert_len,
                                                      const uint8_t *key,
                                                      size_t key_len);

/**
 * Checks etcd's certificate against `name` instead of the endpoint's host (for endpoints
 * given by IP address); turns TLS on (with the system roots unless a CA is set). NULL or ""
 * removes it.
 */
etcd_registry_status etcd_registry_config_set_tls_server_name(struct etcd_registry_config *config,
                                                              const char *name);

/**
 * Takes the next queued event of this registry's registrations and watches made with a NULL
 * callback, in order per registration/watch, waiting up to `timeout_ms` (0: do not wait;
 * `ETCD_REGISTRY_WAIT_FOREVER`: no limit). TIMEOUT when none came in time; CLOSED once the
 * registry is closed (a waiting call returns CLOSED as soon as `etcd_registry_close` runs on
 * another thread). `*out_event` is written only on success; free it with
 * `etcd_registry_event_free`. Several threads may wait at once; each event goes to one of them.
 * A timeout other than 0 is an INVALID_ARGUMENT inside a callback (status, watch, `_async` or
 * log), where the wait could never end.
 */
etcd_registry_status etcd_registry_next_event(struct etcd_registry *registry,
                                              uint64_t timeout_ms,
                                              struct etcd_registry_event **out_event);

/**
 * Writes to `*out_fd` a file descriptor that turns readable whenever `etcd_registry_next_event`
 * has something to return at once, for programs that wait in a poll loop (poll, epoll, an
 * event loop, Go's netpoller) instead of in a blocked thread. The library signals it each time
 * the pull queue goes from empty to holding an event, and once when the registry is closed;
 * when an event is already waiting, it is readable at once. When it is readable, read it (8
 * bytes; ignore what they say: an eventfd on Linux, a pipe elsewhere), then take events with
 * `etcd_registry_next_event(registry, 0, &event)` until it returns TIMEOUT (the queue is
 * empty: an event queued later signals again) or CLOSED. Only the pull queue signals: events of
 * registrations and watches made with a callback go to their callback.
 *
 * The descriptor is the registry's, non-blocking and close-on-exec, the same on every call:
 * do not close it (it stays open until `etcd_registry_free`); `dup` it to own a copy.
 * CLOSED after close.
 */
etcd_registry_status etcd_registry_event_fd(struct etcd_registry *registry, int *out_fd);

/**
 * Writes to `*out_count` how many status events were dropped because their consumer fell 1024
 * events behind (a watch's events are merged, never dropped; see Backpressure in the header's
 * top comment): for `id` 0, or the id of a
 * registration or watch made with a NULL callback, the pull queue's count; for one made with a
 * callback, that callback's count. NOT_FOUND for an unknown id or one that has ended
 * (unregistered, or replaced by a newer registration of its node and its UNREGISTERED
 * delivered), CLOSED after close.
 */
etcd_registry_status etcd_registry_dropped_events(struct etcd_registry *registry,
                                                  uint64_t id,
                                                  uint64_t *out_count);

/**
 * Frees an event from `etcd_registry_next_event`. NULL is allowed.
 */
void etcd_registry_event_free(struct etcd_registry_event *event);

/**
 * Creates a registry from `config` (which is copied: free it whenever you like). Checks the
 * configuration but does not dial: etcd may be down now; every operation connects when it needs
 * to, and registrations retry until it is up. Starts the library's global runtime on first use.
 *
 * INVALID_ARGUMENT for a bad configuration (no endpoint, malformed endpoint, TLS files …).
 * `*out_registry` is written only on success; free it with `etcd_registry_free`.
 */
etcd_registry_status etcd_registry_connect(const struct etcd_registry_config *config,
                                           struct etcd_registry **out_registry);

/**
 * Lists a service's nodes in one etcd request (an unknown service gives an empty list). Blocks
 * until etcd answers or the configured timeout passes (TIMEOUT / CONNECTION).
 * `*out_node_list` is written only on success; free it with `etcd_registry_node_list_free`.
 */
etcd_registry_status etcd_registry_list(struct etcd_registry *registry,
                                        const char *service,
                                        struct etcd_registry_node_list **out_node_list);

/**
 * Lists a service like `etcd_registry_list`, without blocking: the same request, whose result
 * goes to `callback` instead. For hosts that wait for I/O in an event loop (Go's netpoller,
 * epoll, libuv) rather than in a blocked thread.
 *
 * On OK, `callback` is called exactly once, on a library runtime thread, possibly before this
 * function returns: with the node list, or with the error `etcd_registry_list` would have
 * returned (an invalid service name, TIMEOUT, CONNECTION, CLOSED if the registry is closed
 * meanwhile …). It must return quickly and make no blocking library call (those fail there
 * with INVALID_ARGUMENT); `user_data` must stay valid until it has run, even past
 * `etcd_registry_close` and `etcd_registry_free`. On any other status the callback is never
 * called (NULL pointers, a closed registry).
 */
etcd_registry_status etcd_registry_list_async(struct etcd_registry *registry,
                                              const char *service,
                                              etcd_registry_list_callback callback,
                                              void *user_data);

/**
 * The names of the services under the base path that have at least one node, sorted
 * (bytewise) and without duplicates, as they appear in keys (a '/' given at registration reads
 * as '-'). One etcd request for keys only: no values are transferred. Blocks until etcd answers
 * or the configured timeout passes (TIMEOUT / CONNECTION). `*out_services` is written only on
 * success; free it with `etcd_registry_string_list_free`.
 */
etcd_registry_status etcd_registry_services(struct etcd_registry *registry,
                                            struct etcd_registry_string_list **out_services);

/**
 * `etcd_registry_services` without blocking, as `etcd_registry_list_async` is to
 * `etcd_registry_list`: on OK, `callback` is called exactly once, on a library runtime thread
 * (possibly before this returns), with the names or the error the blocking call would have
 * returned; the same rules for the callback and `user_data`. On any other status (NULL
 * pointers, a closed registry) the callback is never called.
 */
etcd_registry_status etcd_registry_services_async(struct etcd_registry *registry,
                                                  etcd_registry_services_callback callback,
                                                  void *user_data);

/**
 * Copies the etcd endpoint that calls and keep-alives go to now (a URL, e.g.
 * "http://10.0.0.1:2379") into `buffer` (of `capacity` bytes), truncated if needed and always
 * NUL-terminated when `capacity > 0`, like `snprintf`; `*out_len` gets the length of the whole
 * endpoint in bytes (without the NUL): `capacity` or more means it was truncated. `buffer` may
 * be NULL when `capacity` is 0, to ask for the length. It changes when that member fails or
 * stops answering and another one takes over. Does not block and does not reach etcd; allowed
 * after `etcd_registry_close` (it then names the member last used).
 */
etcd_registry_status etcd_registry_active_endpoint(const struct etcd_registry *registry,
                                                   char *buffer,
                                                   size_t capacity,
                                                   size_t *out_len);

/**
 * Closes the registry: stops the watches, revokes the leases (which deletes every registered key
 * at once), delivers UNREGISTERED to every registration (the last call of its callback, or
 * queued for `etcd_registry_next_event`, which then returns what is queued and CLOSED), and
 * returns when etcd has answered or the timeout passed (never failing because etcd is
 * unreachable: a warning is logged and the keys expire with their leases); once it returns, no callback of this
 * registry is running or will be called. Idempotent: a second close, from any
 * thread, waits until the first has finished and no callback of this registry runs, then
 * returns OK (from inside a callback it returns at once, also from one delivered nested inside
 * that first close). Every other call on a closed registry returns CLOSED. Allowed from inside a callback. The
 * handle stays valid until `etcd_registry_free`. In a child process after fork(), closing or
 * freeing a handle created by the parent does nothing: the registrations stay the parent's.
 */
etcd_registry_status etcd_registry_close(struct etcd_registry *registry);

/**
 * Closes the registry if it is still open (as `etcd_registry_close`, ignoring errors) and frees
 * it. NULL is allowed. Must be the last call on the handle: no other thread may be inside a
 * call on it (e.g. `etcd_registry_next_event` — close first, which makes such calls return).
 * Once it returns, no callback of this registry is running or will be called.
 *
 * From a callback delivered nested inside an `etcd_registry_close` or
 * `etcd_registry_unregister` of this registry made on the callback thread (e.g. the
 * UNREGISTERED that a close made from another callback delivers), the handle is still in use
 * by that call: free then only marks it and returns at once. The outermost such call frees it
 * as it returns, as free does (closing it first, if an unregister was the call); until then
 * it goes on delivering what is due, e.g. the UNREGISTERED of the other registrations. As
 * after any free, the handle must not be used again, by the callbacks that free returns into
 * neither.
 *
 * Not meant to be called from an `_async` callback or the log callback (a library runtime
 * thread, where it cannot wait for etcd): there it logs an error, stops every status and
 * watch callback of the registry without delivering their UNREGISTERED (waiting for a call
 * that is running to return), and lets the close — revoking the leases — finish in the
 * background. Close the registry from another thread (or a status or watch callback) first.
 */
void etcd_registry_free(struct etcd_registry *registry);

/**
 * Forwards the library's log messages of `max_level` and more severe to `callback`; a NULL
 * callback or `ETCD_REGISTRY_LOG_OFF` turns forwarding off. Without a callback the library
 * logs nothing anywhere. Messages from the library's dependencies (gRPC, HTTP/2) are forwarded
 * at WARN and ERROR only.
 *
 * The callback may be called from any thread (the library's runtime threads, the callback
 * thread, or a thread of yours inside a library call), and from several threads at once: make
 * it thread-safe and keep it short. The library holds none of its locks while calling it. It
 * should not call into the library (such calls work, but their logs are dropped; and blocking
 * calls fail with INVALID_ARGUMENT on runtime threads). Once this function returns, the
 * previous callback is not running and will not be called again.
 *
 * INVALID_ARGUMENT for an unknown level or when called from inside the log callback.
 */
etcd_registry_status etcd_registry_set_log_callback(etcd_registry_log_callback callback,
                                                    etcd_registry_log_level max_level,
                                                    void *user_data);

/**
 * The number of nodes; 0 for a NULL list.
 */
size_t etcd_registry_node_list_len(const struct etcd_registry_node_list *list);

/**
 * All nodes at once, as an array of `etcd_registry_node_list_len(list)` entries sorted by name,
 * each with its name and its info entries (sorted by key), every string with its length: the
 * fastest way to read a whole list, and the exact one (a name, key or value may hold NUL
 * characters, which the C-string accessors cannot show). NULL when `list` is NULL or empty. The
 * array, the info arrays and their strings are owned by the list and valid until
 * `etcd_registry_node_list_free`; nothing is promised about where they lie in memory.
 *
 * ```c
 * const etcd_registry_node_entry *nodes = etcd_registry_node_list_entries(list);
 * for (size_t i = 0; i < etcd_registry_node_list_len(list); i++)
 *     for (size_t j = 0; j < nodes[i].info_len; j++)
 *         printf("%.*s %.*s=%.*s\n", (int)nodes[i].name_len, nodes[i].name,
 *                (int)nodes[i].info[j].key_len, nodes[i].info[j].key,
 *                (int)nodes[i].info[j].value_len, nodes[i].info[j].value);
 * ```
 */
const struct etcd_registry_node_entry *etcd_registry_node_list_entries(const struct etcd_registry_node_list *list);

/**
 * The name of node `index` as a C string, or NULL when `list` is NULL or `index` is out of
 * range. (A name with a NUL character reads cut short here; the entries have its length.)
 */
const char *etcd_registry_node_list_name(const struct etcd_registry_node_list *list, size_t index);

/**
 * The info of node `index` as a JSON object of strings, a convenience made by the same encoder
 * that writes values to etcd: the bytes Go's `json.Marshal` writes for the map (sorted keys, e.g.
 * `{"address":"10.0.0.5:8080"}`, `{}` when it is empty), `null` when the node has no info object
 * at all (its value in etcd was empty, `null` or not a JSON object: what Go's library reads as
 * a nil map), or NULL when `list` is NULL or `index` is out of range.
 */
const char *etcd_registry_node_list_info_json(const struct etcd_registry_node_list *list,
                                              size_t index);

/**
 * One info value of node `index` as a C string (e.g. for key "address"), or NULL when the node
 * has no such key, `index` is out of range, or an argument is NULL or not UTF-8. A value with a
 * NUL character reads cut short here (the entries have its length), and a key with one cannot
 * be asked for.
 */
const char *etcd_registry_node_list_info_value(const struct etcd_registry_node_list *list,
                                               size_t index,
                                               const char *key);

/**
 * Frees a node list and every string it handed out. NULL is allowed.
 */
void etcd_registry_node_list_free(struct etcd_registry_node_list *list);

/**
 * Registers `node` under `service` with the info `info`, an array of `info_len` key/value
 * entries (see `etcd_registry_info_entry`: bytes with lengths, NUL and non-UTF-8 bytes allowed,
 * each key given once and not empty), on a lease of `ttl_ms` milliseconds (rounded up to whole
 * seconds; every registration of the same TTL shares one lease). The value stored is exactly
 * what Go's `json.Marshal` writes for the same `map[string]string`.
 *
 * An empty info (`info` NULL or not, `info_len` 0) is stored as `{}`. No info object at all is
 * asked for explicitly, with `info_len` `ETCD_REGISTRY_NO_INFO` (and `info` NULL): the value is
 * then stored empty, as Go's library stores a nil map.
 *
 * ```c
 * etcd_registry_info_entry info[] = {{"address", 7, "10.0.0.5:8080", 13}};
 * etcd_registry_register(reg, "api", "node-1", info, 1, 10000, NULL, NULL, &id);
 * etcd_registry_register(reg, "api", "node-2", NULL, 0, 10000, NULL, NULL, &id);  // {}
 * etcd_registry_register(reg, "api", "node-3", NULL, ETCD_REGISTRY_NO_INFO, 10000, NULL, NULL,
 *                        &id);  // no info object: an empty value
 * ```
 *
 * Returns at once: the registration proceeds in the background, retrying with backoff until it
 * succeeds, then keeps the lease alive and re-registers after any loss, until unregistered or
 * closed. The key is `<base_path>/<service>/<node>`, a '/' inside a name becoming '-' (as the
 * Go library does).
 *
 * Status events go to `callback` with `user_data` on the library's callback thread; with a
 * NULL callback they are queued for `etcd_registry_next_event` instead (see the header's top
 * comment). The first event may come before this function has returned: events carry the
 * registration id. Registering a node this registry already holds replaces the older
 * registration, which gets UNREGISTERED (see `etcd_registry_unregister`) and whose id is
 * forgotten once that has been delivered.
 *
 * INVALID_ARGUMENT for an empty service or node name, `ttl_ms` 0, an empty or repeated info
 * key, or info too large for etcd; NULL_POINTER for a NULL `info` with `info_len` > 0 (other
 * than `ETCD_REGISTRY_NO_INFO`) or a NULL key/value pointer with a length > 0; INVALID_UTF8
 * for a name that is not UTF-8; CLOSED after `etcd_registry_close`. `*out_registration_id`
 * (never 0) is written only on success.
 */
etcd_registry_status etcd_registry_register(struct etcd_registry *registry,
                                            const char *service,
                                            const char *node,
                                            const struct etcd_registry_info_entry *info,
                                            size_t info_len,
                                            uint64_t ttl_ms,
                                            etcd_registry_status_callback callback,
                                            void *user_data,
                                            uint64_t *out_registration_id);

/**
 * Checks what `etcd_registry_register` would be given, as it checks it and with the same status
 * and message, and registers nothing: OK when `etcd_registry_register` with these arguments
 * would accept them. For a caller that must refuse bad arguments without registering, e.g. a
 * binding whose call was cancelled before it began. The size of the info is checked against
 * this registry's key, whose base path counts.
 */
etcd_registry_status etcd_registry_check_register(const struct etcd_registry *registry,
                                                  const char *service,
                                                  const char *node,
                                                  const struct etcd_registry_info_entry *info,
                                                  size_t info_len,
                                                  uint64_t ttl_ms);

/**
 * `etcd_registry_register` with the info as JSON, a convenience: `info_json` is a JSON object of
 * strings such as `{"address":"10.0.0.5:8080"}` (NULL for an empty one, stored as `{}`; `null`
 * for no info object at all, stored as an empty value). It is parsed and then stored by the
 * same encoder, so the value in etcd is what `etcd_registry_register` writes for the same
 * strings. INVALID_ARGUMENT also for info that is not a JSON object of strings, or that gives a
 * key twice (as for entries: neither value would be kept silently).
 */
etcd_registry_status etcd_registry_register_json(struct etcd_registry *registry,
                                                 const char *service,
                                                 const char *node,
                                                 const char *info_json,
                                                 uint64_t ttl_ms,
                                                 etcd_registry_status_callback callback,
                                                 void *user_data,
                                                 uint64_t *out_registration_id);

/**
 * Replaces the info of a registration with `info`, `info_len` entries as
 * `etcd_registry_register` takes them (`info_len` 0: `{}`): the key is put again on the same lease with one put,
 * without unregistering. Returns at once, like `etcd_registry_register`: the put goes through
 * the registration's background task, and a `ETCD_REGISTRY_STATUS_KIND_UPDATED` status event
 * follows once it has landed (watchers see one `ETCD_REGISTRY_WATCH_KIND_UPDATED`). While etcd
 * is down the new info is kept and put when it is back; it is never lost. Updates of one
 * registration apply in the order they were made: after concurrent updates, or several during
 * an outage, etcd ends with the last one (intermediate ones may be skipped). Does not block, so
 * it may be called from any callback.
 *
 * INVALID_ARGUMENT for an empty or repeated key, info too large for etcd, or
 * `ETCD_REGISTRY_NO_INFO` (no info object is for registering); NULL_POINTER as for
 * `etcd_registry_register`; NOT_FOUND when `registration_id` is not a registration of this
 * registry (unknown, unregistered, or replaced by a newer registration of the same node);
 * CLOSED after `etcd_registry_close`.
 */
etcd_registry_status etcd_registry_update(struct etcd_registry *registry,
                                          uint64_t registration_id,
                                          const struct etcd_registry_info_entry *info,
                                          size_t info_len);

/**
 * `etcd_registry_update` with the info as JSON, a convenience: `info_json` is a JSON object of
 * strings, as `etcd_registry_register_json` takes it (pass "{}" for none). INVALID_ARGUMENT also
 * for info that is not a JSON object of strings (`null` included: no info object is for
 * registering) or that gives a key twice; NULL_POINTER for a NULL `info_json`; INVALID_UTF8.
 */
etcd_registry_status etcd_registry_update_json(struct etcd_registry *registry,
                                               uint64_t registration_id,
                                               const char *info_json);

/**
 * Unregisters: deletes the key at once, stops keeping it alive, and revokes the lease when no
 * other registration uses it. UNREGISTERED is the registration's last event: once this returns
 * it has been delivered to the callback (which is not running and is never called again, so
 * `user_data` may be freed) or queued for `etcd_registry_next_event`. From inside a callback,
 * the remaining events are delivered nested before it returns. Blocks until etcd answers or
 * the configured timeout passes.
 *
 * Shutdown rule (the same in every language): it never fails because etcd is unreachable.
 * When etcd cannot be reached within the timeout, it logs a warning and returns OK; the key
 * disappears when its lease expires (within the TTL), or, when other nodes of the registry
 * keep that lease alive, is deleted as soon as etcd answers again. A registration none of
 * whose puts was sent yet (etcd unreachable ever since it was registered) returns at once:
 * etcd holds nothing of it, and no put of it follows.
 *
 * A registration replaced by a newer registration of the same node has ended already: this
 * deletes nothing (the key is the newer one's), waits until its UNREGISTERED has been
 * delivered as above, and returns OK.
 *
 * NOT_FOUND when `registration_id` is not a registration of this registry (unknown, already
 * unregistered, or replaced and its UNREGISTERED already delivered); CLOSED after
 * `etcd_registry_close`; AUTH (or another error) only when etcd answered and refused the
 * delete — the registration is gone from the library all the same.
 */
etcd_registry_status etcd_registry_unregister(struct etcd_registry *registry,
                                              uint64_t registration_id);

/**
 * Unregisters like `etcd_registry_unregister`, without blocking: the registration is taken
 * from the registry at once (a second unregister of it is NOT_FOUND), and the delete and
 * revoke go on in the library, whose result goes to `callback`. For hosts that wait in an
 * event loop (Go's netpoller, epoll, libuv) rather than in a blocked thread, e.g. thousands of
 * registrations ended at once while etcd is slow.
 *
 * On OK, `callback` is called exactly once, on a library runtime thread, possibly before this
 * function returns, with what `etcd_registry_unregister` would have returned (OK when etcd
 * could not be reached: the shutdown rule). By then UNREGISTERED has been delivered to the
 * registration's status callback (which is not running and is never called again) or queued
 * for `etcd_registry_next_event`. `callback` must return quickly and make no blocking library
 * call (those fail there with INVALID_ARGUMENT); `user_data` must stay valid until it has run,
 * even past `etcd_registry_close` and `etcd_registry_free`. On any other status (NULL
 * pointers, CLOSED, NOT_FOUND) the callback is never called and nothing changes.
 */
etcd_registry_status etcd_registry_unregister_async(struct etcd_registry *registry,
                                                    uint64_t registration_id,
                                                    etcd_registry_done_callback callback,
                                                    void *user_data);

/**
 * Waits up to `timeout_ms` until the registration has been registered once. Returns OK at once
 * if it has been; fails at once with the error of the last failed attempt (e.g. AUTH,
 * CONNECTION) if attempts failed and none succeeded yet — retries go on in the background; with
 * TIMEOUT when the time runs out; with CLOSED when the registration ended first.
 * NOT_FOUND for an unknown id. Do not call it from a callback with a long timeout: it holds up
 * every other callback meanwhile.
 */
etcd_registry_status etcd_registry_wait_registered(struct etcd_registry *registry,
                                                   uint64_t registration_id,
                                                   uint64_t timeout_ms);

/**
 * Writes where the registration stands now (`ETCD_REGISTRY_STATE_*`) to
 * `*out_state`. NOT_FOUND for an unknown id, CLOSED after close. Does not block.
 */
etcd_registry_status etcd_registry_registration_state(struct etcd_registry *registry,
                                                      uint64_t registration_id,
                                                      etcd_registry_state *out_state);

/**
 * Writes the etcd lease the registration's key is attached to now to `*out_lease_id`, or 0
 * while it is not registered. NOT_FOUND for an unknown id, CLOSED after close. Does not block.
 */
etcd_registry_status etcd_registry_registration_lease_id(struct etcd_registry *registry,
                                                         uint64_t registration_id,
                                                         int64_t *out_lease_id);

/**
 * The message of the last failed call on the calling thread, or "" when the last
 * status-returning call on this thread succeeded. Never NULL. It does not repeat the status
 * (`etcd_registry_status_name` gives that), e.g. "node name must not be empty".
 *
 * The string belongs to the library and stays valid until the next status-returning call on
 * the same thread; copy it if you need it longer (or use `etcd_registry_last_error_copy`).
 * Thread-local: hosts whose code can move between OS threads between two calls (Go) must read
 * it in the same native call as the failing function, or use the copy variant from that call.
 */
const char *etcd_registry_last_error_message(void);

/**
 * Copies the last error message of the calling thread into `buffer` (of `capacity` bytes),
 * truncated if needed and always NUL-terminated when `capacity > 0`, like `snprintf`.
 *
 * Returns the length of the full message in bytes (without the NUL): a return value of
 * `capacity` or more means the copy was truncated. `buffer` may be NULL when `capacity` is 0,
 * to ask for the length. Does not change the last error.
 */
size_t etcd_registry_last_error_copy(char *buffer, size_t capacity);

/**
 * A short lowercase name of a status ("ok", "timeout", "not found" …), or "unknown" for a
 * number this version does not know. Static storage; never NULL.
 */
const char *etcd_registry_status_name(uint32_t status);

/**
 * The number of strings; 0 for a NULL list.
 */
size_t etcd_registry_string_list_len(const struct etcd_registry_string_list *list);

/**
 * String `index` (NUL-terminated UTF-8), or NULL when `list` is NULL or `index` is out of
 * range. A NUL character inside the text (possible only in keys other programs wrote) reads
 * as U+FFFD.
 */
const char *etcd_registry_string_list_get(const struct etcd_registry_string_list *list,
                                          size_t index);

/**
 * Frees a string list and every string it handed out. NULL is allowed.
 */
void etcd_registry_string_list_free(struct etcd_registry_string_list *list);

/**
 * Watches a service: lists it (failing with CONNECTION/TIMEOUT if etcd cannot be reached now),
 * then follows every change, resuming after disconnects and re-listing after compaction, until
 * `etcd_registry_unwatch` or close. The first events are one ADDED per node present.
 *
 * Events go to `callback` with `user_data` on the library's callback thread; with a NULL
 * callback they are queued for `etcd_registry_next_event`. The first events may come before
 * this function has returned: events carry the watch id. `*out_watch_id` (never 0) is written
 * only on success.
 */
etcd_registry_status etcd_registry_watch(struct etcd_registry *registry,
                                         const char *service,
                                         etcd_registry_watch_callback callback,
                                         void *user_data,
                                         uint64_t *out_watch_id);

/**
 * Watches a service like `etcd_registry_watch`, without blocking on its first listing: the
 * watch is made on a library runtime thread, and `started` is called exactly once (possibly
 * before this returns) with `started_user_data` and the watch id, or with the error
 * `etcd_registry_watch` would have returned (CONNECTION/TIMEOUT, an invalid service name,
 * CLOSED if the registry was closed meanwhile: no watch is left then). The watch's events go
 * to `callback` (or the pull queue with a NULL callback) as with `etcd_registry_watch`; they
 * carry the id and may come before `started` is called. `started` must return quickly and
 * make no blocking library call; `started_user_data` must stay valid until it has run, even
 * past `etcd_registry_close` and `etcd_registry_free`. On any other status (NULL pointers, a
 * closed registry) `started` is never called and no watch is made.
 */
etcd_registry_status etcd_registry_watch_async(struct etcd_registry *registry,
                                               const char *service,
                                               etcd_registry_watch_callback callback,
                                               void *user_data,
                                               etcd_registry_watch_started_callback started,
                                               void *started_user_data);

/**
 * Stops a watch. Once it returns, the watch's callback is not running and will never be called
 * again, so `user_data` may be freed; allowed from inside that callback. Does not block on etcd.
 * NOT_FOUND for an unknown (or already stopped) id, CLOSED after close.
 */
etcd_registry_status etcd_registry_unwatch(struct etcd_registry *registry, uint64_t watch_id);

/**
 * The live node set of a watch now (what its events have built up so far), as a node list.
 * Does not talk to etcd. NOT_FOUND for an unknown id, CLOSED after close. `*out_node_list` is
 * written only on success; free it with `etcd_registry_node_list_free`.
 */
etcd_registry_status etcd_registry_watch_nodes(struct etcd_registry *registry,
                                               uint64_t watch_id,
                                               struct etcd_registry_node_list **out_node_list);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* ETCD_REGISTRY_H */
