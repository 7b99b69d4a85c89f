package etcdregistry

// Every call into the C library goes through this file: C types stay here, the rest of the
// package sees Go values. The header's rules (include/etcd_registry.h) that matter here:
// out-parameters are written only on success; strings handed out live until the list or event
// is freed (so they are copied before); the last error message is thread-local (so shims.h
// copies it inside the same native call).

/*
#include <stdlib.h>
#include "shims.h"
*/
import "C"

import (
	"encoding/json"
	"strings"
	"time"
	"unsafe"
)

// cRegistry is the library's opaque registry handle, for the files that hold one.
type cRegistry = C.etcd_registry

// cResult turns a status and the message copied by the shim into an error, freeing the copy.
func cResult(op string, status C.etcd_registry_status, msg *C.char) error {
	if msg != nil {
		defer C.free(unsafe.Pointer(msg))
	}
	if status == statusOK {
		return nil
	}
	text := ""
	if msg != nil {
		text = C.GoString(msg)
	}
	return errorOfStatus(op, uint32(status), text)
}

// cStrings converts Go strings to C strings; free them with freeCStrings. A NUL byte inside
// one would silently cut it short in C, so it is an invalid argument instead.
func cStrings(op string, values ...string) ([]*C.char, error) {
	for _, v := range values {
		if strings.IndexByte(v, 0) >= 0 {
			return nil, invalidArgument(op, "strings must not contain NUL bytes")
		}
	}
	out := make([]*C.char, len(values))
	for i, v := range values {
		out[i] = C.CString(v)
	}
	return out, nil
}

func freeCStrings(values []*C.char) {
	for _, v := range values {
		C.free(unsafe.Pointer(v))
	}
}

// durationMs is d in whole milliseconds, rounded up (the library counts milliseconds).
func durationMs(d time.Duration) uint64 {
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}

// cConnect builds a configuration from cfg (already validated) and creates the registry. It
// does not dial.
func cConnect(cfg Config) (*C.etcd_registry, error) {
	const op = "new registry"
	var config *C.etcd_registry_config
	var msg *C.char
	if err := cResult(op, C.goer_config_new(&config, &msg), msg); err != nil {
		return nil, err
	}
	defer C.etcd_registry_config_free(config)

	for _, endpoint := range cfg.Endpoints {
		cs, err := cStrings(op, endpoint)
		if err != nil {
			return nil, err
		}
		status := C.goer_config_add_endpoint(config, cs[0], &msg)
		freeCStrings(cs)
		if err := cResult(op, status, msg); err != nil {
			return nil, err
		}
	}
	cs, err := cStrings(op, cfg.BasePath, cfg.Username, cfg.Password)
	if err != nil {
		return nil, err
	}
	defer freeCStrings(cs)
	if err := cResult(op, C.goer_config_set_base_path(config, cs[0], &msg), msg); err != nil {
		return nil, err
	}
	if cfg.Username != "" {
		if err := cResult(op, C.goer_config_set_credentials(config, cs[1], cs[2], &msg), msg); err != nil {
			return nil, err
		}
	}
	if cfg.Timeout > 0 {
		status := C.goer_config_set_timeout_ms(config, C.uint64_t(durationMs(cfg.Timeout)), &msg)
		if err := cResult(op, status, msg); err != nil {
			return nil, err
		}
	}
	if cfg.BackoffMin > 0 || cfg.BackoffMax > 0 {
		status := C.goer_config_set_backoff_ms(config, C.uint64_t(durationMs(cfg.BackoffMin)),
			C.uint64_t(durationMs(cfg.BackoffMax)), &msg)
		if err := cResult(op, status, msg); err != nil {
			return nil, err
		}
	}
	if cfg.TLS != nil {
		if err := cSetTLS(op, config, cfg.TLS); err != nil {
			return nil, err
		}
	}
	var registry *C.etcd_registry
	if err := cResult(op, C.goer_connect(config, &registry, &msg), msg); err != nil {
		return nil, err
	}
	return registry, nil
}

// cSetTLS hands the TLS settings to the library, which reads and checks them at connect.
func cSetTLS(op string, config *C.etcd_registry_config, t *TLS) error {
	var msg *C.char
	if t.usesPEM() {
		// C copies the bytes during the call; cgo pins them for its duration.
		ptr := func(b []byte) *C.uint8_t {
			if b == nil {
				return nil
			}
			if len(b) == 0 {
				b = []byte{0} // a non-NULL pointer to zero bytes
			}
			return (*C.uint8_t)(unsafe.Pointer(&b[0]))
		}
		status := C.goer_config_set_tls_pem(config, ptr(t.CAPEM), C.size_t(len(t.CAPEM)),
			ptr(t.CertPEM), C.size_t(len(t.CertPEM)), ptr(t.KeyPEM), C.size_t(len(t.KeyPEM)), &msg)
		if err := cResult(op, status, msg); err != nil {
			return err
		}
	} else if t.usesFiles() {
		cs, err := cStrings(op, t.CAFile, t.CertFile, t.KeyFile)
		if err != nil {
			return err
		}
		defer freeCStrings(cs)
		orNil := func(i int, v string) *C.char {
			if v == "" {
				return nil
			}
			return cs[i]
		}
		status := C.goer_config_set_tls_files(config, orNil(0, t.CAFile), orNil(1, t.CertFile),
			orNil(2, t.KeyFile), &msg)
		if err := cResult(op, status, msg); err != nil {
			return err
		}
	}
	if t.ServerName != "" {
		cs, err := cStrings(op, t.ServerName)
		if err != nil {
			return err
		}
		defer freeCStrings(cs)
		if err := cResult(op, C.goer_config_set_tls_server_name(config, cs[0], &msg), msg); err != nil {
			return err
		}
	}
	return nil
}

func cRegister(p *C.etcd_registry, service, node, infoJSON string, ttl time.Duration) (uint64, error) {
	const op = "register"
	cs, err := cStrings(op, service, node, infoJSON)
	if err != nil {
		return 0, err
	}
	defer freeCStrings(cs)
	var id C.uint64_t
	var msg *C.char
	status := C.goer_register(p, cs[0], cs[1], cs[2], C.uint64_t(durationMs(ttl)), &id, &msg)
	if err := cResult(op, status, msg); err != nil {
		return 0, err
	}
	return uint64(id), nil
}

func cUpdate(p *C.etcd_registry, id uint64, infoJSON string) error {
	const op = "update"
	cs, err := cStrings(op, infoJSON)
	if err != nil {
		return err
	}
	defer freeCStrings(cs)
	var msg *C.char
	return cResult(op, C.goer_update(p, C.uint64_t(id), cs[0], &msg), msg)
}

func cUnregister(p *C.etcd_registry, id uint64) error {
	var msg *C.char
	return cResult("unregister", C.goer_unregister(p, C.uint64_t(id), &msg), msg)
}

func cRegistrationState(p *C.etcd_registry, id uint64) (State, error) {
	var state C.etcd_registry_state
	var msg *C.char
	if err := cResult("registration state", C.goer_registration_state(p, C.uint64_t(id), &state, &msg), msg); err != nil {
		return 0, err
	}
	switch state {
	case C.ETCD_REGISTRY_STATE_REGISTERING:
		return StateRegistering, nil
	case C.ETCD_REGISTRY_STATE_REGISTERED:
		return StateRegistered, nil
	case C.ETCD_REGISTRY_STATE_RETRYING:
		return StateRetrying, nil
	default:
		return StateUnregistered, nil
	}
}

func cRegistrationLeaseID(p *C.etcd_registry, id uint64) (int64, error) {
	var lease C.int64_t
	var msg *C.char
	if err := cResult("lease id", C.goer_registration_lease_id(p, C.uint64_t(id), &lease, &msg), msg); err != nil {
		return 0, err
	}
	return int64(lease), nil
}

func cList(p *C.etcd_registry, service string) ([]Node, error) {
	const op = "list"
	cs, err := cStrings(op, service)
	if err != nil {
		return nil, err
	}
	defer freeCStrings(cs)
	var list *C.etcd_registry_node_list
	var msg *C.char
	if err := cResult(op, C.goer_list(p, cs[0], &list, &msg), msg); err != nil {
		return nil, err
	}
	return takeNodeList(list), nil
}

func cWatch(p *C.etcd_registry, service string) (uint64, error) {
	const op = "watch"
	cs, err := cStrings(op, service)
	if err != nil {
		return 0, err
	}
	defer freeCStrings(cs)
	var id C.uint64_t
	var msg *C.char
	if err := cResult(op, C.goer_watch(p, cs[0], &id, &msg), msg); err != nil {
		return 0, err
	}
	return uint64(id), nil
}

func cUnwatch(p *C.etcd_registry, id uint64) error {
	var msg *C.char
	return cResult("unwatch", C.goer_unwatch(p, C.uint64_t(id), &msg), msg)
}

func cWatchNodes(p *C.etcd_registry, id uint64) ([]Node, error) {
	var list *C.etcd_registry_node_list
	var msg *C.char
	if err := cResult("watch nodes", C.goer_watch_nodes(p, C.uint64_t(id), &list, &msg), msg); err != nil {
		return nil, err
	}
	return takeNodeList(list), nil
}

// takeNodeList copies a node list into Go values and frees it. Never nil. The list is read
// through its flat entry array: two native calls for the whole list, none per node, and one
// copy per node (the library lays a node's name, keys and values out one after the other).
func takeNodeList(list *C.etcd_registry_node_list) []Node {
	defer C.etcd_registry_node_list_free(list)
	n := int(C.etcd_registry_node_list_len(list))
	nodes := make([]Node, n)
	if n == 0 {
		return nodes
	}
	for i, e := range unsafe.Slice(C.etcd_registry_node_list_entries(list), n) {
		nodes[i] = nodeOfEntry(list, i, &e)
	}
	return nodes
}

// nodeOfEntry copies node i of a list: its strings in one piece, then cut at the NULs.
func nodeOfEntry(list *C.etcd_registry_node_list, i int, e *C.etcd_registry_node_entry) Node {
	infoLen := int(e.info_len)
	base := unsafe.Pointer(e.name)
	last := base // the node's last string: its last value, or its name
	if infoLen > 0 {
		last = unsafe.Pointer(unsafe.Slice(e.info, infoLen)[infoLen-1].value)
	}
	span := int(uintptr(last) - uintptr(base))
	for *(*byte)(unsafe.Add(base, span)) != 0 {
		span++
	}
	all := strings.Clone(unsafe.String((*byte)(base), span))
	// A NUL character in the info is U+FFFD in the entries; the JSON form has it exactly.
	exact := !strings.Contains(all, "\uFFFD")
	next := func() string {
		cut := strings.IndexByte(all, 0)
		if cut < 0 {
			s := all
			all = ""
			return s
		}
		s := all[:cut]
		all = all[cut+1:]
		return s
	}
	node := Node{Name: next()}
	if infoLen == 0 {
		// No info object (an empty value, null, not an object) is a nil map, as the original
		// reads it; an empty object an empty map.
		if goString(C.etcd_registry_node_list_info_json(list, C.size_t(i))) != "null" {
			node.Info = map[string]string{}
		}
		return node
	}
	node.Info = make(map[string]string, infoLen)
	for j := 0; j < infoLen; j++ {
		key, value := next(), next()
		node.Info[key] = value
	}
	if !exact && infoLen > 0 {
		node.Info = decodeInfo(goString(C.etcd_registry_node_list_info_json(list, C.size_t(i))))
	}
	return node
}

// cClose closes the registry (see the header's shutdown order); the handle stays valid.
func cClose(p *C.etcd_registry) error {
	var msg *C.char
	return cResult("close", C.goer_close(p, &msg), msg)
}

// cFree frees the registry: the last call on it.
func cFree(p *C.etcd_registry) {
	C.etcd_registry_free(p)
}

// pulled is one event taken from the registry's pull queue, copied into Go values.
type pulled struct {
	watch  bool   // a watch event (else a status event)
	id     uint64 // registration or watch id
	status StatusEvent
	event  WatchEvent
}

// waitForever is ETCD_REGISTRY_WAIT_FOREVER: next_event waits until an event or close.
const waitForever = ^uint64(0)

// cNextEvent takes the next queued event. The error is the library's: ErrTimeout when none
// came in time, ErrClosed once the registry is closed.
func cNextEvent(p *C.etcd_registry, timeoutMs uint64) (pulled, error) {
	var ev *C.etcd_registry_event
	var msg *C.char
	if err := cResult("next event", C.goer_next_event(p, C.uint64_t(timeoutMs), &ev, &msg), msg); err != nil {
		return pulled{}, err
	}
	defer C.etcd_registry_event_free(ev)
	if ev.event_type == C.ETCD_REGISTRY_EVENT_TYPE_WATCH {
		w := &ev.watch
		out := WatchEvent{
			Type:     WatchEventType(w.kind),
			Service:  goString(w.service),
			Node:     Node{Name: goString(w.node_name), Info: decodeInfo(goString(w.info_json))},
			Revision: int64(w.revision),
		}
		if out.Type == WatchResynced {
			out.Node = Node{}
		}
		return pulled{watch: true, id: uint64(w.watch_id), event: out}, nil
	}
	s := &ev.status
	out := StatusEvent{
		Kind:    StatusKind(s.kind),
		Service: goString(s.service),
		Node:    goString(s.node),
		Attempt: int(s.attempt),
		Delay:   time.Duration(s.delay_ms) * time.Millisecond,
		LeaseID: int64(s.lease_id),
	}
	if s.error_status != statusOK {
		out.Err = errorOfStatus(out.Kind.op(), uint32(s.error_status), goString(s.error_message))
	}
	return pulled{id: uint64(s.registration_id), status: out}, nil
}

// cSetLog installs the log trampoline with handle as its user data, or turns forwarding off
// for logOff. Once it returns, the previous callback is not running and will not run again.
func cSetLog(maxLevel uint32, handle uintptr) error {
	var msg *C.char
	return cResult("set logger", C.goer_set_log(C.etcd_registry_log_level(maxLevel), C.uintptr_t(handle), &msg), msg)
}

// goString is C.GoString that maps NULL to "".
func goString(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

// encodeInfo is the info as the library takes it: a JSON object of strings, or null for a nil
// map (stored as an empty value, as the original stores it).
func encodeInfo(info map[string]string) string {
	if info == nil {
		return "null"
	}
	if len(info) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(info) // a map[string]string always marshals
	return string(b)
}

// decodeInfo reads the library's JSON object of strings; nil for null (a node without info
// object). Listing a large service
// decodes one object per node, so the compact form the library writes (no whitespace, and
// usually no escapes) is read directly; anything else goes through encoding/json.
func decodeInfo(s string) map[string]string {
	if info, ok := decodePlainObject(s); ok {
		return info
	}
	if s == "null" {
		return nil
	}
	info := map[string]string{}
	if s != "" {
		_ = json.Unmarshal([]byte(s), &info) // the library hands out valid objects of strings
	}
	return info
}

// decodePlainObject parses {"k":"v",...} with no whitespace and no escape sequences; ok is
// false for anything else.
func decodePlainObject(s string) (map[string]string, bool) {
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' || strings.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	info := make(map[string]string, 4)
	if s == "{}" {
		return info, true
	}
	i := 1
	readString := func() (string, bool) {
		if i >= len(s) || s[i] != '"' {
			return "", false
		}
		end := strings.IndexByte(s[i+1:], '"')
		if end < 0 {
			return "", false
		}
		v := s[i+1 : i+1+end]
		i += end + 2
		return v, true
	}
	for {
		key, ok := readString()
		if !ok || i >= len(s) || s[i] != ':' {
			return nil, false
		}
		i++
		value, ok := readString()
		if !ok || i >= len(s) {
			return nil, false
		}
		info[key] = value
		switch s[i] {
		case '}':
			return info, i == len(s)-1
		case ',':
			i++
		default:
			return nil, false
		}
	}
}
