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
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
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
	if d <= 0 {
		return 0 // the library refuses a zero TTL with its own message
	}
	ms := uint64(d / time.Millisecond) // not (d + 999µs) / 1ms: that overflows near the maximum
	if d%time.Millisecond != 0 {
		ms++
	}
	return ms
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

func cRegister(p *C.etcd_registry, service, node string, info map[string]string, ttl time.Duration) (uint64, error) {
	const op = "register"
	cs, err := cStrings(op, service, node)
	if err != nil {
		return 0, err
	}
	defer freeCStrings(cs)
	entries, n, block := cInfo(info)
	defer C.free(block)
	var id C.uint64_t
	var msg *C.char
	status := C.goer_register(p, cs[0], cs[1], entries, n, C.uint64_t(durationMs(ttl)), &id, &msg)
	if err := cResult(op, status, msg); err != nil {
		return 0, err
	}
	return uint64(id), nil
}

// cCheckRegister checks Register's arguments as cRegister's call checks them, registering
// nothing.
func cCheckRegister(p *C.etcd_registry, service, node string, info map[string]string, ttl time.Duration) error {
	const op = "register"
	cs, err := cStrings(op, service, node)
	if err != nil {
		return err
	}
	defer freeCStrings(cs)
	entries, n, block := cInfo(info)
	defer C.free(block)
	var msg *C.char
	return cResult(op, C.goer_check_register(p, cs[0], cs[1], entries, n, C.uint64_t(durationMs(ttl)), &msg), msg)
}

func cUpdate(p *C.etcd_registry, id uint64, info map[string]string) error {
	if info == nil {
		info = map[string]string{} // an update always stores an object: nil is {}
	}
	entries, n, block := cInfo(info)
	defer C.free(block)
	var msg *C.char
	return cResult("update", C.goer_update(p, C.uint64_t(id), entries, n, &msg), msg)
}

// noInfo is ETCD_REGISTRY_NO_INFO (SIZE_MAX): register a node without info object.
const noInfo = C.size_t(C.ETCD_REGISTRY_NO_INFO)

// cInfo copies info into one C allocation, the entries followed by their bytes (C may not
// keep Go pointers, and entries in Go memory pointing at Go strings would break cgo's rules).
// Keys and values go as bytes with lengths: NUL and invalid UTF-8 reach the library as they
// are, and its encoder writes what json.Marshal writes. A nil map is no info object (stored as
// an empty value, as the original stores it). Free block with C.free (nil is fine).
func cInfo(info map[string]string) (entries *C.etcd_registry_info_entry, n C.size_t, block unsafe.Pointer) {
	if info == nil {
		return nil, noInfo, nil
	}
	if len(info) == 0 {
		return nil, 0, nil
	}
	size := 0
	for k, v := range info {
		size += len(k) + len(v)
	}
	head := uintptr(len(info)) * unsafe.Sizeof(C.etcd_registry_info_entry{})
	block = C.malloc(C.size_t(head + uintptr(size)))
	list := unsafe.Slice((*C.etcd_registry_info_entry)(block), len(info))
	data := unsafe.Slice((*byte)(unsafe.Add(block, head)), size)
	at := 0
	put := func(s string) (*C.char, C.size_t) {
		start := unsafe.Add(block, head+uintptr(at))
		at += copy(data[at:], s)
		return (*C.char)(start), C.size_t(len(s))
	}
	i := 0
	for k, v := range info {
		list[i].key, list[i].key_len = put(k)
		list[i].value, list[i].value_len = put(v)
		i++
	}
	return &list[0], C.size_t(len(info)), block
}

// cStartUnregister starts the unregistration of id in the library and returns a wait for its
// result, which may be called after the registry's lock is let go: the library answers even past
// close and free. Without an eventfd the unregistration is made here, blocking in C, and the wait
// gives its result.
func cStartUnregister(p *C.etcd_registry, id uint64) (wait func() error, err error) {
	var msg *C.char
	call := getCall()
	if call == nil {
		err := cResult(unregisterLabel, C.goer_unregister(p, C.uint64_t(id), &msg), msg)
		return func() error { return err }, nil
	}
	if err := cResult(unregisterLabel, C.goer_unregister_async(p, C.uint64_t(id), call.c, &msg), msg); err != nil {
		putCall(call)
		return nil, err
	}
	return func() error {
		if err := call.wait(context.Background(), unregisterLabel); err != nil {
			return err
		}
		status, text := call.c.status, call.c.err
		putCall(call)
		return cResult(unregisterLabel, status, text)
	}, nil
}

// cDroppedEvents is how many events the pull queue has dropped because it was not read fast
// enough (etcd_registry_dropped_events with id 0).
func cDroppedEvents(p *C.etcd_registry) (uint64, error) {
	var n C.uint64_t
	var msg *C.char
	if err := cResult("dropped events", C.goer_dropped_events(p, 0, &n, &msg), msg); err != nil {
		return 0, err
	}
	return uint64(n), nil
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

// cListStart starts listing a service, for cList to wait for: its answer comes even past
// the registry's close and free, so the wait needs no hold on the registry. No call and no
// error where there is no eventfd (see cListInC).
func cListStart(p *C.etcd_registry, service string) (*asyncCall, error) {
	const op = "list"
	cs, err := cStrings(op, service)
	if err != nil {
		return nil, err
	}
	defer freeCStrings(cs)
	call := getCall()
	if call == nil {
		return nil, nil
	}
	var msg *C.char
	if err := cResult(op, C.goer_list_async(p, cs[0], call.c, &msg), msg); err != nil {
		putCall(call)
		return nil, err
	}
	return call, nil
}

// cListInC lists a service blocking in C, for up to the registry's timeout.
func cListInC(p *C.etcd_registry, service string) ([]Node, error) {
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

// cList waits for the list call started by cListStart. When ctx ends first, it returns
// ctx.Err() at once; the library's answer, when it comes, is freed unread.
func cList(ctx context.Context, call *asyncCall) ([]Node, error) {
	const op = "list"
	if err := call.wait(ctx, op); err != nil {
		return nil, err
	}
	status, list, text := call.c.status, call.c.list, call.c.err
	putCall(call)
	if err := cResult(op, status, text); err != nil {
		return nil, err
	}
	return takeNodeList(list), nil
}

// wait parks in the netpoller until the library's callback has written the call (nil), or ctx
// ends first: then it returns ctx.Err(), and a goroutine takes the call over, frees its answer
// when it comes and only then reuses the call.
func (call *asyncCall) wait(ctx context.Context, op string) error {
	// When ctx ends, a read deadline in the past wakes the read.
	var stop func() bool
	var cut chan struct{}
	if ctx.Done() != nil {
		cut = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			_ = call.file.SetReadDeadline(time.Unix(1, 0))
			close(cut)
		})
	}
	var buf [8]byte
	_, err := call.file.Read(buf[:])
	if stop != nil && !stop() {
		// ctx ended: wait until the deadline is set before clearing it (or before the call is
		// reused with it).
		<-cut
		if clearErr := call.file.SetReadDeadline(time.Time{}); clearErr != nil && err == nil {
			err = clearErr
		}
	}
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		go abandonCall(call)
		return ctx.Err()
	case err != nil:
		// Not expected of an open eventfd. The callback may still come and write the call,
		// so it is not reused (nor freed), and its eventfd stays open (strand).
		strand(call)
		return errorOfStatus(op, uint32(statusInternal), "waiting for the library's answer: "+err.Error())
	}
	return nil
}

// abandonCall waits for the answer of a call its caller stopped waiting for, frees it and puts
// the call back for reuse.
func abandonCall(call *asyncCall) {
	var buf [8]byte
	if _, err := call.file.Read(buf[:]); err != nil {
		strand(call) // as in wait: the call is not reused
		return
	}
	if call.abandoned != nil {
		call.abandoned(call.c)
	}
	if call.c.list != nil {
		C.etcd_registry_node_list_free(call.c.list)
	}
	if call.c.names != nil {
		C.etcd_registry_string_list_free(call.c.names)
	}
	if call.c.err != nil {
		C.free(unsafe.Pointer(call.c.err))
	}
	putCall(call)
}

// stranded holds the calls whose eventfd could not be read (not expected of an open eventfd):
// the library's callback may still come, write the goer_call and signal its eventfd, and
// whether it has come cannot be told. Unreachable, the call's *os.File would be finalized,
// closing the eventfd, and the callback would write into a closed descriptor or one reused for
// something else since. So they are kept, for good: the goer_call (C memory) and the eventfd
// are leaked, which is the safe side for something that should never happen.
var stranded struct {
	mu    sync.Mutex
	calls []*asyncCall
}

func strand(call *asyncCall) {
	stranded.mu.Lock()
	stranded.calls = append(stranded.calls, call)
	stranded.mu.Unlock()
}

// untilDone runs call, which may wait for etcd inside C, and returns its result, or ctx.Err()
// as soon as ctx ends (answered false): the call then goes on in its goroutine, and its result
// goes to abandoned (if not nil) when it comes. A ctx that cannot end costs no goroutine.
func untilDone[T any](ctx context.Context, call func() (T, error), abandoned func(T, error)) (v T, answered bool, err error) {
	if ctx.Done() == nil {
		v, err = call()
		return v, true, err
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, true, r.err
	case <-ctx.Done():
		if abandoned != nil {
			go func() {
				r := <-done
				abandoned(r.v, r.err)
			}()
		}
		return v, false, ctx.Err()
	}
}

// asyncCall is a C goer_call and a pollable copy of its eventfd: a list or an unregistration
// waits for its result in Go's netpoller, like clientv3's calls wait for their socket, instead
// of in an OS thread blocked in C (which Go's scheduler would hand its P away from, waking
// threads; thousands of calls waiting for etcd at once would take a thread each, up to Go's
// limit of 10 000, which ends the process).
type asyncCall struct {
	c    *C.goer_call
	file *os.File
	// abandoned, when set, is run with the answer of a call its caller stopped waiting for,
	// before the answer is freed (a watch made meanwhile is stopped).
	abandoned func(answer *C.goer_call)
}

// asyncCalls keeps a few idle asyncCalls for reuse; unavailable is set when eventfds cannot
// be had here (lists and unregistrations then block in C).
var asyncCalls struct {
	mu          sync.Mutex
	idle        []*asyncCall
	unavailable bool
}

const maxIdleCalls = 16

func getCall() *asyncCall {
	asyncCalls.mu.Lock()
	if n := len(asyncCalls.idle); n > 0 {
		call := asyncCalls.idle[n-1]
		asyncCalls.idle = asyncCalls.idle[:n-1]
		asyncCalls.mu.Unlock()
		return call
	}
	unavailable := asyncCalls.unavailable
	asyncCalls.mu.Unlock()
	if unavailable {
		return nil
	}
	c := C.goer_call_new()
	if c == nil {
		asyncCalls.mu.Lock()
		asyncCalls.unavailable = runtime.GOOS != "linux"
		asyncCalls.mu.Unlock()
		return nil
	}
	// os polls a non-blocking descriptor (the eventfd is made so) in the netpoller.
	return &asyncCall{c: c, file: os.NewFile(uintptr(c.fd), "etcd-registry call")}
}

func putCall(call *asyncCall) {
	call.abandoned = nil
	asyncCalls.mu.Lock()
	if len(asyncCalls.idle) < maxIdleCalls {
		asyncCalls.idle = append(asyncCalls.idle, call)
		asyncCalls.mu.Unlock()
		return
	}
	asyncCalls.mu.Unlock()
	call.file.Close() // closes the eventfd
	C.free(unsafe.Pointer(call.c))
}

// cServices lists the services, waiting for etcd in the netpoller. When ctx can end, a call
// still waiting for etcd then returns ctx.Err() at once; the library's answer, when it comes, is
// freed unread. made is false, and no call is made, where there is no eventfd: then
// cServicesInC blocks instead.
// cServicesStart starts listing the services, for cServices to wait for (as cListStart); no
// call and no error where there is no eventfd (see cServicesInC).
func cServicesStart(p *C.etcd_registry) (*asyncCall, error) {
	call := getCall()
	if call == nil {
		return nil, nil
	}
	var msg *C.char
	if err := cResult("services", C.goer_services_async(p, call.c, &msg), msg); err != nil {
		putCall(call)
		return nil, err
	}
	return call, nil
}

// cServices waits for the call started by cServicesStart, as cList does.
func cServices(ctx context.Context, call *asyncCall) ([]string, error) {
	const op = "services"
	if err := call.wait(ctx, op); err != nil {
		return nil, err
	}
	status, list, text := call.c.status, call.c.names, call.c.err
	putCall(call)
	if err := cResult(op, status, text); err != nil {
		return nil, err
	}
	return takeStringList(list), nil
}

// cServicesInC lists the services blocking in C, for up to the registry's timeout.
func cServicesInC(p *C.etcd_registry) ([]string, error) {
	var list *C.etcd_registry_string_list
	var msg *C.char
	if err := cResult("services", C.goer_services(p, &list, &msg), msg); err != nil {
		return nil, err
	}
	return takeStringList(list), nil
}

func takeStringList(list *C.etcd_registry_string_list) []string {
	defer C.etcd_registry_string_list_free(list)
	names := make([]string, int(C.etcd_registry_string_list_len(list)))
	for i := range names {
		names[i] = C.GoString(C.etcd_registry_string_list_get(list, C.size_t(i)))
	}
	return names
}

func cActiveEndpoint(p *C.etcd_registry) (string, error) {
	buf := make([]byte, 128)
	for {
		var n C.size_t
		var msg *C.char
		status := C.goer_active_endpoint(p, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n, &msg)
		if err := cResult("active endpoint", status, msg); err != nil {
			return "", err
		}
		if int(n) < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, int(n)+1) // truncated: again with room for all of it
	}
}

// cStartWatch starts a watch (events to the pull queue) without blocking on its first
// listing and returns a wait for its id, which may be called after the registry's lock is let
// go. When ctx ends first, the wait returns ctx.Err(), and abandoned runs with the library's
// answer when it comes. Nil (and no error) where there is no eventfd: then cWatch blocks.
func cStartWatch(p *C.etcd_registry, service string, abandoned func(id uint64, err error)) (wait func(ctx context.Context) (uint64, error), err error) {
	const op = "watch"
	cs, err := cStrings(op, service)
	if err != nil {
		return nil, err
	}
	defer freeCStrings(cs)
	call := getCall()
	if call == nil {
		return nil, nil
	}
	var msg *C.char
	if err := cResult(op, C.goer_watch_async(p, cs[0], call.c, &msg), msg); err != nil {
		putCall(call)
		return nil, err
	}
	call.abandoned = func(answer *C.goer_call) {
		var err error
		if answer.status != C.ETCD_REGISTRY_STATUS_OK {
			err = errorOfStatus(op, uint32(answer.status), "")
		}
		abandoned(uint64(answer.watch_id), err)
	}
	return func(ctx context.Context) (uint64, error) {
		if err := call.wait(ctx, op); err != nil {
			return 0, err
		}
		status, id, text := call.c.status, call.c.watch_id, call.c.err
		putCall(call)
		if err := cResult(op, status, text); err != nil {
			return 0, err
		}
		return uint64(id), nil
	}, nil
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
// through its flat entry array: two native calls for the whole list, none per node.
func takeNodeList(list *C.etcd_registry_node_list) []Node {
	defer C.etcd_registry_node_list_free(list)
	n := int(C.etcd_registry_node_list_len(list))
	nodes := make([]Node, n)
	if n == 0 {
		return nodes
	}
	for i, e := range unsafe.Slice(C.etcd_registry_node_list_entries(list), n) {
		nodes[i] = Node{
			Name: goStringN(e.name, e.name_len),
			Info: goInfo(e.info, e.info_len, bool(e.info_absent)),
		}
	}
	return nodes
}

// goInfo copies info entries into a map: nil for no info object (an empty value, null, not an
// object: as the original reads it), an empty map for {}. Strings are read with their lengths
// (no strlen, NUL kept), all of them copied into one allocation.
func goInfo(info *C.etcd_registry_info_entry, n C.size_t, absent bool) map[string]string {
	if absent {
		return nil
	}
	entries := unsafe.Slice(info, int(n))
	out := make(map[string]string, len(entries))
	if len(entries) == 0 {
		return out
	}
	size := 0
	for _, e := range entries {
		size += int(e.key_len) + int(e.value_len)
	}
	buf := make([]byte, 0, size)
	for _, e := range entries {
		buf = append(buf, cBytes(e.key, e.key_len)...)
		buf = append(buf, cBytes(e.value, e.value_len)...)
	}
	all := unsafe.String(unsafe.SliceData(buf), len(buf)) // buf is never written again
	at := 0
	next := func(n C.size_t) string {
		s := all[at : at+int(n)]
		at += int(n)
		return s
	}
	for _, e := range entries {
		key := next(e.key_len)
		out[key] = next(e.value_len)
	}
	return out
}

// cBytes is a view of n bytes at p (owned by the library: copy before it is freed).
func cBytes(p *C.char, n C.size_t) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}

// goStringN copies n bytes at p into a Go string.
func goStringN(p *C.char, n C.size_t) string {
	return string(cBytes(p, n))
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
// cEventFD is the registry's event descriptor (readable when an event waits), the library's:
// never closed here.
func cEventFD(p *C.etcd_registry) (int, error) {
	var fd C.int
	var msg *C.char
	if err := cResult("event fd", C.goer_event_fd(p, &fd, &msg), msg); err != nil {
		return -1, err
	}
	return int(fd), nil
}

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
			Node:     Node{Name: goStringN(w.node_name, w.node_name_len), Info: goInfo(w.info, w.info_len, bool(w.info_absent))},
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
