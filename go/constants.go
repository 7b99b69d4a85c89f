package etcdregistry

// The numbers and defaults this package shares with the C library, read from its header
// (include/etcd_registry.h) rather than written again here. constants_test.go pins every
// exported name that mirrors one of them to the header.

/*
#include "shims.h"
*/
import "C"

import "time"

// Statuses of the C library (etcd_registry_status).
const (
	statusOK                = C.ETCD_REGISTRY_STATUS_OK
	statusInvalidArgument   = C.ETCD_REGISTRY_STATUS_INVALID_ARGUMENT
	statusNullPointer       = C.ETCD_REGISTRY_STATUS_NULL_POINTER
	statusConnection        = C.ETCD_REGISTRY_STATUS_CONNECTION
	statusTimeout           = C.ETCD_REGISTRY_STATUS_TIMEOUT
	statusAuth              = C.ETCD_REGISTRY_STATUS_AUTH
	statusNotFound          = C.ETCD_REGISTRY_STATUS_NOT_FOUND
	statusClosed            = C.ETCD_REGISTRY_STATUS_CLOSED
	statusPanic             = C.ETCD_REGISTRY_STATUS_PANIC
	statusInternal          = C.ETCD_REGISTRY_STATUS_INTERNAL
	statusInvalidUTF8       = C.ETCD_REGISTRY_STATUS_INVALID_UTF8
	statusTLS               = C.ETCD_REGISTRY_STATUS_TLS
	statusResourceExhausted = C.ETCD_REGISTRY_STATUS_RESOURCE_EXHAUSTED
)

// Log levels of the library (ETCD_REGISTRY_LOG_*).
const (
	logOff   = C.ETCD_REGISTRY_LOG_OFF
	logError = C.ETCD_REGISTRY_LOG_ERROR
	logWarn  = C.ETCD_REGISTRY_LOG_WARN
	logInfo  = C.ETCD_REGISTRY_LOG_INFO
	logDebug = C.ETCD_REGISTRY_LOG_DEBUG
	logTrace = C.ETCD_REGISTRY_LOG_TRACE
)

// Kinds of status events, watch events and registration states, for the exported StatusKind,
// WatchEventType and State constants (events.go).
const (
	cStatusRegistered    = C.ETCD_REGISTRY_STATUS_KIND_REGISTERED
	cStatusFailed        = C.ETCD_REGISTRY_STATUS_KIND_FAILED
	cStatusKeepAliveLost = C.ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST
	cStatusRetrying      = C.ETCD_REGISTRY_STATUS_KIND_RETRYING
	cStatusReregistered  = C.ETCD_REGISTRY_STATUS_KIND_REREGISTERED
	cStatusUnregistered  = C.ETCD_REGISTRY_STATUS_KIND_UNREGISTERED
	cStatusUpdated       = C.ETCD_REGISTRY_STATUS_KIND_UPDATED

	cWatchAdded    = C.ETCD_REGISTRY_WATCH_KIND_ADDED
	cWatchUpdated  = C.ETCD_REGISTRY_WATCH_KIND_UPDATED
	cWatchRemoved  = C.ETCD_REGISTRY_WATCH_KIND_REMOVED
	cWatchResynced = C.ETCD_REGISTRY_WATCH_KIND_RESYNCED

	cStateRegistering  = C.ETCD_REGISTRY_STATE_REGISTERING
	cStateRegistered   = C.ETCD_REGISTRY_STATE_REGISTERED
	cStateRetrying     = C.ETCD_REGISTRY_STATE_RETRYING
	cStateUnregistered = C.ETCD_REGISTRY_STATE_UNREGISTERED
)

// The library's defaults (the core's, through the header).
const (
	// DefaultTimeout bounds connecting and each etcd call when Config.Timeout is 0.
	DefaultTimeout = time.Duration(C.ETCD_REGISTRY_DEFAULT_TIMEOUT_MS) * time.Millisecond
	// DefaultBackoffMin is the first retry delay when Config.BackoffMin is 0.
	DefaultBackoffMin = time.Duration(C.ETCD_REGISTRY_DEFAULT_BACKOFF_MIN_MS) * time.Millisecond
	// DefaultBackoffMax is the cap of the retry delay when Config.BackoffMax is 0.
	DefaultBackoffMax = time.Duration(C.ETCD_REGISTRY_DEFAULT_BACKOFF_MAX_MS) * time.Millisecond
	// DefaultBasePath is the key prefix the library's other bindings default to.
	DefaultBasePath = C.ETCD_REGISTRY_DEFAULT_BASE_PATH
	// MaxTTL is etcd's largest lease TTL; a larger TTL is an invalid argument.
	MaxTTL = time.Duration(C.ETCD_REGISTRY_MAX_TTL_SECS) * time.Second
)
