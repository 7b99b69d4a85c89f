package etcdregistry

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// headerConstants reads every integer #define and enum member ETCD_REGISTRY_* of the C header,
// and the string #defines.
func headerConstants(t *testing.T) (ints map[string]int64, strs map[string]string) {
	t.Helper()
	text, err := os.ReadFile("../include/etcd_registry.h")
	if err != nil {
		t.Fatal(err)
	}
	ints, strs = map[string]int64{}, map[string]string{}
	define := regexp.MustCompile(`(?m)^#define (ETCD_REGISTRY_[A-Z0-9_]+) (\S+)\s*$`)
	for _, m := range define.FindAllStringSubmatch(string(text), -1) {
		if s, err := strconv.Unquote(m[2]); err == nil && strings.HasPrefix(m[2], `"`) {
			strs[m[1]] = s
		} else if n, err := strconv.ParseInt(m[2], 10, 64); err == nil {
			ints[m[1]] = n
		}
	}
	member := regexp.MustCompile(`(?m)^\s+(ETCD_REGISTRY_[A-Z0-9_]+) = (\d+),`)
	for _, m := range member.FindAllStringSubmatch(string(text), -1) {
		n, _ := strconv.ParseInt(m[2], 10, 64)
		ints[m[1]] = n
	}
	return ints, strs
}

// TestConstantsAreTheHeaders pins every Go name that mirrors a C constant to the header's
// value: it fails when one of them differs (or the header no longer has it).
func TestConstantsAreTheHeaders(t *testing.T) {
	ints, strs := headerConstants(t)
	want := map[string]int64{
		"ETCD_REGISTRY_STATUS_KIND_REGISTERED":     int64(StatusRegistered),
		"ETCD_REGISTRY_STATUS_KIND_FAILED":         int64(StatusFailed),
		"ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST": int64(StatusKeepAliveLost),
		"ETCD_REGISTRY_STATUS_KIND_RETRYING":       int64(StatusRetrying),
		"ETCD_REGISTRY_STATUS_KIND_REREGISTERED":   int64(StatusReregistered),
		"ETCD_REGISTRY_STATUS_KIND_UNREGISTERED":   int64(StatusUnregistered),
		"ETCD_REGISTRY_STATUS_KIND_UPDATED":        int64(StatusUpdated),
		"ETCD_REGISTRY_WATCH_KIND_ADDED":           int64(WatchAdded),
		"ETCD_REGISTRY_WATCH_KIND_UPDATED":         int64(WatchUpdated),
		"ETCD_REGISTRY_WATCH_KIND_REMOVED":         int64(WatchRemoved),
		"ETCD_REGISTRY_WATCH_KIND_RESYNCED":        int64(WatchResynced),
		"ETCD_REGISTRY_STATE_REGISTERING":          int64(StateRegistering),
		"ETCD_REGISTRY_STATE_REGISTERED":           int64(StateRegistered),
		"ETCD_REGISTRY_STATE_RETRYING":             int64(StateRetrying),
		"ETCD_REGISTRY_STATE_UNREGISTERED":         int64(StateUnregistered),
		"ETCD_REGISTRY_STATUS_OK":                  statusOK,
		"ETCD_REGISTRY_STATUS_INVALID_ARGUMENT":    statusInvalidArgument,
		"ETCD_REGISTRY_STATUS_NULL_POINTER":        statusNullPointer,
		"ETCD_REGISTRY_STATUS_CONNECTION":          statusConnection,
		"ETCD_REGISTRY_STATUS_TIMEOUT":             statusTimeout,
		"ETCD_REGISTRY_STATUS_AUTH":                statusAuth,
		"ETCD_REGISTRY_STATUS_NOT_FOUND":           statusNotFound,
		"ETCD_REGISTRY_STATUS_CLOSED":              statusClosed,
		"ETCD_REGISTRY_STATUS_PANIC":               statusPanic,
		"ETCD_REGISTRY_STATUS_INTERNAL":            statusInternal,
		"ETCD_REGISTRY_STATUS_INVALID_UTF8":        statusInvalidUTF8,
		"ETCD_REGISTRY_STATUS_TLS":                 statusTLS,
		"ETCD_REGISTRY_STATUS_RESOURCE_EXHAUSTED":  statusResourceExhausted,
		"ETCD_REGISTRY_LOG_OFF":                    logOff,
		"ETCD_REGISTRY_LOG_ERROR":                  logError,
		"ETCD_REGISTRY_LOG_WARN":                   logWarn,
		"ETCD_REGISTRY_LOG_INFO":                   logInfo,
		"ETCD_REGISTRY_LOG_DEBUG":                  logDebug,
		"ETCD_REGISTRY_LOG_TRACE":                  logTrace,
		"ETCD_REGISTRY_DEFAULT_TIMEOUT_MS":         DefaultTimeout.Milliseconds(),
		"ETCD_REGISTRY_DEFAULT_BACKOFF_MIN_MS":     DefaultBackoffMin.Milliseconds(),
		"ETCD_REGISTRY_DEFAULT_BACKOFF_MAX_MS":     DefaultBackoffMax.Milliseconds(),
		"ETCD_REGISTRY_MAX_TTL_SECS":               int64(MaxTTL / time.Second),
	}
	for name, goValue := range want {
		cValue, ok := ints[name]
		if !ok {
			t.Errorf("%s is not in the header", name)
		} else if cValue != goValue {
			t.Errorf("%s: the header says %d, Go %d", name, cValue, goValue)
		}
	}
	if strs["ETCD_REGISTRY_DEFAULT_BASE_PATH"] != DefaultBasePath {
		t.Errorf("ETCD_REGISTRY_DEFAULT_BASE_PATH: the header says %q, Go %q",
			strs["ETCD_REGISTRY_DEFAULT_BASE_PATH"], DefaultBasePath)
	}
	// Every status (error code), status kind, watch kind and state of the header has a Go name.
	for name := range ints {
		if strings.HasPrefix(name, "ETCD_REGISTRY_STATUS_") || strings.HasPrefix(name, "ETCD_REGISTRY_WATCH_KIND_") ||
			strings.HasPrefix(name, "ETCD_REGISTRY_STATE_") {
			if _, ok := want[name]; !ok {
				t.Errorf("%s has no Go name", name)
			}
		}
	}
}
