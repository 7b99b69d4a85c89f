package etcdregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewEtcdRegistryRejectsBadArguments(t *testing.T) {
	cases := []struct {
		name      string
		endpoints []string
		timeout   time.Duration
	}{
		{"no endpoints", nil, time.Second},
		{"NUL in endpoint", []string{"127.0.0.1:2379\x00"}, time.Second},
		{"malformed endpoint", []string{"http://[::1"}, time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := NewEtcdRegistry(c.endpoints, "/services", "", "", c.timeout)
			if err == nil {
				r.Close()
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error %v does not match ErrInvalidArgument", err)
			}
		})
	}
}

func TestNewEtcdRegistryDoesNotDial(t *testing.T) {
	// Nothing listens there: creating the registry must still work.
	r, err := NewEtcdRegistry([]string{unusedAddress(t)}, "/services", "", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close without any registration: %v", err)
	}
}

// unusedAddress is a loopback address nothing listens on (the port was free a moment ago).
func unusedAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestRegisterNodeRejectsBadInput(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	ctx := context.Background()
	node := Node{Name: "n1"}
	cases := []struct {
		name    string
		ctx     context.Context
		service string
		node    Node
		ttl     time.Duration
	}{
		{"empty service", ctx, "", node, time.Minute},
		{"empty node name", ctx, "svc", Node{}, time.Minute},
		{"zero ttl", ctx, "svc", node, 0},
		{"negative ttl", ctx, "svc", node, -time.Second},
		{"nil context", nil, "svc", node, time.Minute},
		{"NUL in name", ctx, "svc", Node{Name: "a\x00b"}, time.Minute},
		{"ttl beyond etcd's maximum", ctx, "svc", node, time.Duration(math.MaxInt64)},
		{"info larger than etcd accepts", ctx, "svc", Node{Name: "n1", Info: map[string]string{"big": strings.Repeat("x", 2<<20)}}, time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			done, errs, err := r.RegisterNode(c.ctx, c.service, c.node, c.ttl)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("got %v, want an error matching ErrInvalidArgument", err)
			}
			if done != nil || errs != nil {
				t.Fatal("channels returned with an error")
			}
		})
	}
	// The largest Go duration reaches the library as itself (it used to overflow on rounding).
	if _, _, err := r.RegisterNode(ctx, "svc", node, time.Duration(math.MaxInt64)); err == nil ||
		!strings.Contains(err.Error(), "ttl 9223372036.85") {
		t.Errorf("a TTL of math.MaxInt64: %v", err)
	}
	if _, err := r.GetServiceNodes(""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("GetServiceNodes(\"\"): got %v, want ErrInvalidArgument", err)
	}
	if err := r.UnregisterNode(ctx, "", "n1"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("UnregisterNode with empty service: %v", err)
	}
	if _, err := r.WatchService(ctx, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("WatchService(\"\"): %v", err)
	}
}

func TestRegisterListAndKeyLayout(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	info := map[string]string{"version": "1.0.0", "address": "10.0.0.5:8080"}
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "node1", Info: info}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)

	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{{Name: "node1", Info: info}}
	if !reflect.DeepEqual(nodes, want) {
		t.Fatalf("listed %+v, want %+v", nodes, want)
	}
	// The old library's layout: <base>/<service>/<node> holding the info as JSON.
	kv := shared.getPrefix(t, "/services/"+service+"/")
	var stored map[string]string
	if err := json.Unmarshal([]byte(kv["/services/"+service+"/node1"]), &stored); err != nil {
		t.Fatalf("stored value %q: %v", kv, err)
	}
	if !reflect.DeepEqual(stored, info) {
		t.Fatalf("stored %v, want %v", stored, info)
	}
}

// Values written by other programs are read exactly, whatever they hold: NUL characters,
// U+FFFD, non-ASCII, no info at all; a value that is not an object keeps its node listed.
func TestGetServiceNodesReadsEveryValueExactly(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	values := map[string]string{
		"a-plain": `{"address":"10.0.0.5:8080","version":"1.0.0"}`,
		"b-empty": ``,
		"c-nul":   `{"k":"v\u0000w","x\u0000":"y"}`,
		"d-utf8":  `{"é":"☃ \ufffd","zone":"eu"}`,
		"e-array": `[1,2]`,
		"f-num":   `{"port":8080}`,
		"g-space": ` { "a" : "b" } `,
	}
	for name, value := range values {
		shared.do(t, "put /services/"+service+"/"+name+" "+value)
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{
		{Name: "a-plain", Info: map[string]string{"address": "10.0.0.5:8080", "version": "1.0.0"}},
		{Name: "b-empty", Info: nil},
		{Name: "c-nul", Info: map[string]string{"k": "v\x00w", "x\x00": "y"}},
		{Name: "d-utf8", Info: map[string]string{"é": "☃ \ufffd", "zone": "eu"}},
		{Name: "e-array", Info: nil},
		{Name: "f-num", Info: map[string]string{"port": "8080"}},
		{Name: "g-space", Info: map[string]string{"a": "b"}},
	}
	slices.Reverse(want) // descending key order, as the original lists
	if !reflect.DeepEqual(nodes, want) {
		t.Fatalf("listed %q\nwant     %q", nodes, want)
	}
}

func TestGetServiceNodesOfUnknownServiceIsEmpty(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	nodes, err := r.GetServiceNodes(serviceName(t))
	if err != nil {
		t.Fatal(err)
	}
	if nodes == nil || len(nodes) != 0 {
		t.Fatalf("got %#v, want an empty slice", nodes)
	}
}

// Services names every service with a node under the base path, once each, sorted; a '/' in a
// service name reads as '-', as in its keys. A base path of its own keeps other tests out.
func TestServices(t *testing.T) {
	base := "/" + serviceName(t)
	r, err := NewEtcdRegistry(shared.endpoints, base, "", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	names, err := r.Services()
	if err != nil {
		t.Fatal(err)
	}
	if names == nil || len(names) != 0 {
		t.Fatalf("no service registered yet: got %#v, want an empty slice", names)
	}
	for _, reg := range []struct{ service, node string }{{"web", "b"}, {"web", "a"}, {"db/main", "x"}} {
		done, errs, err := r.RegisterNode(t.Context(), reg.service, Node{Name: reg.node}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
	}
	names, err = r.Services()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"db-main", "web"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("Services() = %q, want %q", names, want)
	}
}

// ActiveEndpoint names the member in use as a URL without dialing it; after Close, nothing.
func TestActiveEndpoint(t *testing.T) {
	r, err := NewEtcdRegistry([]string{"127.0.0.1:9"}, "/services", "", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.ActiveEndpoint(); got != "http://127.0.0.1:9" {
		t.Fatalf("ActiveEndpoint() = %q, want http://127.0.0.1:9", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.ActiveEndpoint(); got != "" {
		t.Fatalf("ActiveEndpoint() after Close = %q, want empty", got)
	}
	// A name longer than the first buffer the package offers the library.
	long := strings.Repeat(strings.Repeat("a", 60)+".", 4) + "example"
	r = newRegistry(t, []string{long + ":2379"})
	if got, want := r.ActiveEndpoint(), "http://"+long+":2379"; got != want {
		t.Fatalf("ActiveEndpoint() = %q, want %q", got, want)
	}
}

func TestConcurrentRegisterAndList(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	var wg sync.WaitGroup
	failures := make(chan error, 10)
	for i := range 5 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("node-%d", i)
			done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: name, Info: map[string]string{"i": fmt.Sprint(i)}}, 30*time.Second)
			if err != nil {
				failures <- err
				return
			}
			select {
			case <-done:
			case err := <-errs:
				failures <- fmt.Errorf("%s: %w", name, err)
			case <-time.After(waitLimit):
				failures <- fmt.Errorf("%s: not registered in time", name)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := r.GetServiceNodes(service); err != nil {
				failures <- err
			}
		}()
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"node-4", "node-3", "node-2", "node-1", "node-0"} // descending, as the original
	if got := nodeNames(nodes); !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	for _, n := range nodes {
		if n.Info["i"] != strings.TrimPrefix(n.Name, "node-") {
			t.Fatalf("node %s has info %v", n.Name, n.Info)
		}
	}
}

func TestHundredSequentialRegistrations(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	var want []string
	for i := range 100 {
		name := fmt.Sprintf("node-%03d", i)
		want = append(want, name)
		done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: name}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(want) // listed in descending key order, as the original
	if got := nodeNames(nodes); !slices.Equal(got, want) {
		t.Fatalf("listed %d nodes %v, want the 100 registered", len(got), got)
	}
}

func TestCancelUnregistersAtOnce(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	ctx, cancel := context.WithCancel(context.Background())
	done, errs, err := r.RegisterNode(ctx, service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	key := "/services/" + service + "/node1"
	if _, ok := shared.getPrefix(t, key)[key]; !ok {
		t.Fatal("key missing after registration")
	}

	cancel()
	if all := rangeErrs(t, errs); len(all) != 0 { // closed without a value, as the original
		t.Fatalf("error channel got %v, want none before it closes", all)
	}
	// The key is gone at once, long before its 30 s lease would expire.
	if kv := shared.getPrefix(t, "/services/"+service+"/"); len(kv) != 0 {
		t.Fatalf("keys left after cancel: %v", kv)
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil || len(nodes) != 0 {
		t.Fatalf("listed %v, %v after cancel", nodes, err)
	}
}

func TestAlreadyCancelledContext(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done, errs, err := r.RegisterNode(ctx, service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, errs); err != context.Canceled {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	select {
	case <-done:
		t.Fatal("done closed for a cancelled context")
	default:
	}
	if kv := shared.getPrefix(t, "/services/"+service+"/"); len(kv) != 0 {
		t.Fatalf("keys: %v", kv)
	}
}

// Bad arguments are an error even with a context that has already ended (which registers
// nothing): the same error as with a live one, the info's size included.
func TestRegisterRejectsBadInputWithAnEndedContext(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	node := Node{Name: "n1"}
	cases := []struct {
		name    string
		service string
		node    Node
		ttl     time.Duration
	}{
		{"empty service", "", node, time.Minute},
		{"blank node name", "svc", Node{Name: " "}, time.Minute},
		{"node name ..", "svc", Node{Name: ".."}, time.Minute},
		{"zero ttl", "svc", node, 0},
		{"negative ttl", "svc", node, -time.Second},
		{"NUL in name", "svc", Node{Name: "a\x00b"}, time.Minute},
		{"ttl beyond etcd's maximum", "svc", node, time.Duration(math.MaxInt64)},
		{"empty info key", "svc", Node{Name: "n1", Info: map[string]string{"": "x"}}, time.Minute},
		{"info too large for etcd", "svc", Node{Name: "n1", Info: map[string]string{"blob": strings.Repeat("x", 2<<20)}}, time.Minute},
		{"node name too long for etcd, no info", "svc", Node{Name: strings.Repeat("n", 1<<20)}, time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, live := r.RegisterNode(context.Background(), c.service, c.node, c.ttl)
			done, errs, err := r.RegisterNode(ended, c.service, c.node, c.ttl)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("got %v, want an error matching ErrInvalidArgument", err)
			}
			if live == nil || err.Error() != live.Error() {
				t.Errorf("with an ended context %q, with a live one %v", err, live)
			}
			if done != nil || errs != nil {
				t.Fatal("channels returned with an error")
			}
		})
	}
}

// The context ends while etcd is down, so the first registration lands (when etcd is back)
// after it ended: done stays open, ctx.Err() is sent and no key is left.
func TestContextEndsBeforeFirstRegistration(t *testing.T) {
	h := newHarness(t)
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	h.do(t, "stop 0")
	ctx, cancel := context.WithCancel(context.Background())
	g, err := r.Register(ctx, "svc", Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, g.Errors()); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("first error %v, want a failed attempt", err)
	}
	cancel()
	h.do(t, "start 0")
	for err := range drain(g.Errors(), g.Events()) {
		if err == context.Canceled {
			break
		}
	}
	select {
	case <-g.Done():
		t.Fatal("done closed after ctx ended")
	default:
	}
	if g.State() != StateUnregistered {
		t.Fatalf("state %v", g.State())
	}
	if kv := h.getPrefix(t, "/services/"); len(kv) != 0 {
		t.Fatalf("keys left: %v", kv)
	}
}

// drain yields the errors of errs until the registration's events channel is closed.
func drain(errs <-chan error, events <-chan StatusEvent) func(func(error) bool) {
	return func(yield func(error) bool) {
		for range events {
		}
		for {
			select {
			case err, ok := <-errs:
				if !ok || !yield(err) {
					return
				}
			default:
				return
			}
		}
	}
}

// A server that accepts connections and never answers: the first attempt fails after the
// 1 s timeout with an error matching context.DeadlineExceeded.
func TestUnreachableEndpointTimesOut(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // never accepts: the kernel completes the handshake, nobody answers
	r, err := NewEtcdRegistry([]string{l.Addr().String()}, "/services", "", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, errs, err := r.RegisterNode(ctx, "svc", Node{Name: "node1"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		checkDeadlineExceeded(t, err)
	case <-done:
		t.Fatal("registered with a server that never answers")
	case <-time.After(waitLimit):
		t.Fatal("no error came")
	}
	_, err = r.GetServiceNodes("svc")
	checkDeadlineExceeded(t, err)
	cancel()
	for err := range drain(errs, r.mustRegistration(t, "svc", "node1").Events()) {
		if err == context.Canceled {
			return
		}
	}
	t.Fatal("context.Canceled not sent")
}

func checkDeadlineExceeded(t *testing.T, err error) {
	t.Helper()
	t.Logf("error: %v", err)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v does not match context.DeadlineExceeded and ErrTimeout", err)
	}
	if !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("error text %q does not say context deadline exceeded", err)
	}
}

// mustRegistration finds the live registration of a node (test helper).
func (r *EtcdRegistry) mustRegistration(t *testing.T, service, node string) *Registration {
	t.Helper()
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	g := r.h.registrations[keyOf(service, node)]
	if g == nil {
		t.Fatalf("no registration of %s/%s", service, node)
	}
	return g
}

// With a 1 ms timeout etcd cannot answer in time: every failure is a timeout, and the
// registration keeps retrying until its context ends.
func TestOneMillisecondTimeout(t *testing.T) {
	r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	service := serviceName(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, errs, err := r.RegisterNode(ctx, service, Node{Name: "node1"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		checkDeadlineExceeded(t, err)
	case <-done:
		t.Log("etcd answered within 1 ms")
	case <-time.After(waitLimit):
		t.Fatal("nothing happened")
	}
	if _, err := r.GetServiceNodes(service); err != nil {
		checkDeadlineExceeded(t, err)
	}
}

func TestCredentialsAgainstServerWithoutAuth(t *testing.T) {
	r, err := NewEtcdRegistry(shared.endpoints, "/services", "username", "password", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	service := serviceName(t)
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	nodes, err := r.GetServiceNodes(service)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("listed %v, %v", nodes, err)
	}
}

func TestAuthentication(t *testing.T) {
	h := newHarness(t)
	h.do(t, "enable-auth root rootpw")

	wrong, err := NewEtcdRegistry(h.endpoints, "/services", "root", "wrong", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, errs, err := wrong.RegisterNode(ctx, "svc", Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = recvErr(t, errs)
	t.Logf("error: %v", err)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("got %v, want an authentication error", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeAuth {
		t.Fatalf("errors.As: %#v", e)
	}
	if _, err := wrong.GetServiceNodes("svc"); !errors.Is(err, ErrAuth) {
		t.Fatalf("list with wrong password: %v", err)
	}

	right := newRegistryWithCredentials(t, h.endpoints, "root", "rootpw")
	done, errs, err := right.RegisterNode(t.Context(), "svc", Node{Name: "node2"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	nodes, err := right.GetServiceNodes("svc")
	if err != nil || !slices.Equal(nodeNames(nodes), []string{"node2"}) {
		t.Fatalf("listed %v, %v", nodes, err)
	}
}

func newRegistryWithCredentials(t *testing.T, endpoints []string, user, password string) *EtcdRegistry {
	t.Helper()
	r, err := NewEtcdRegistry(endpoints, "/services", user, password, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestUseAfterClose(t *testing.T) {
	r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	service := serviceName(t)
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := recvErr(t, errs); !errors.Is(err, ErrClosed) {
		t.Fatalf("registration ended with %v, want ErrClosed", err)
	}
	// Close revoked the lease: the key is gone at once.
	if kv := shared.getPrefix(t, "/services/"+service+"/"); len(kv) != 0 {
		t.Fatalf("keys left after Close: %v", kv)
	}
	for range w.Events() { // closed by Close
	}
	checks := map[string]error{}
	_, _, checks["RegisterNode"] = r.RegisterNode(t.Context(), service, Node{Name: "n"}, time.Minute)
	_, checks["GetServiceNodes"] = r.GetServiceNodes(service)
	_, checks["Services"] = r.Services()
	checks["UnregisterNode"] = r.UnregisterNode(t.Context(), service, "node1")
	_, checks["WatchService"] = r.WatchService(t.Context(), service)
	_, checks["Watch.Nodes"] = w.Nodes()
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: got %v, want ErrClosed", name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Watch.Close after Close: %v", err)
	}
}

func TestConcurrentClose(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	var regs []<-chan error
	for i := range 3 {
		done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: fmt.Sprint(i)}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
		regs = append(regs, errs)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(2)
		go func() { defer wg.Done(); _ = r.Close() }()
		go func() { defer wg.Done(); _, _ = r.GetServiceNodes(service) }()
	}
	wg.Wait()
	for _, errs := range regs {
		if err := recvErr(t, errs); !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", err)
		}
	}
	if kv := shared.getPrefix(t, "/services/"+service+"/"); len(kv) != 0 {
		t.Fatalf("keys left after Close: %v", kv)
	}
}

func TestUnregisterNode(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	if err := r.UnregisterNode(t.Context(), service, "node1"); err != nil {
		t.Fatal(err)
	}
	if kv := shared.getPrefix(t, "/services/"+service+"/"); len(kv) != 0 {
		t.Fatalf("keys left: %v", kv)
	}
	if err := recvErr(t, errs); !errors.Is(err, ErrUnregistered) || !errors.Is(err, ErrClosed) {
		t.Fatalf("registration ended with %v, want ErrUnregistered", err)
	}
	if err := r.UnregisterNode(t.Context(), service, "node1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second UnregisterNode: %v, want ErrNotFound", err)
	}
	if err := r.UnregisterNode(t.Context(), service, "never-registered"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UnregisterNode of an unknown node: %v, want ErrNotFound", err)
	}
}

func TestRegistrationEventsStateAndUnregister(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	g, err := r.Register(t.Context(), service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ev := waitStatus(t, g.Events(), StatusRegistered)
	if ev.LeaseID == 0 || ev.Service != service || ev.Node != "node1" {
		t.Fatalf("registered event %+v", ev)
	}
	<-g.Done()
	if g.State() != StateRegistered || g.LeaseID() != ev.LeaseID {
		t.Fatalf("state %v lease %x, want registered on %x", g.State(), g.LeaseID(), ev.LeaseID)
	}
	if err := g.Unregister(t.Context()); err != nil {
		t.Fatal(err)
	}
	last := waitStatus(t, g.Events(), StatusUnregistered)
	if !errors.Is(last.Err, ErrUnregistered) {
		t.Fatalf("last event %+v", last)
	}
	if _, ok := <-g.Events(); ok {
		t.Fatal("events not closed after unregistered")
	}
	if g.State() != StateUnregistered || g.LeaseID() != 0 {
		t.Fatalf("state %v lease %d after unregister", g.State(), g.LeaseID())
	}
	if err := g.Unregister(t.Context()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Unregister: %v", err)
	}
}

// Without the library's event descriptor (out of descriptors) the dispatcher waits inside the
// library instead: events still arrive, and Close still ends it.
func TestEventsArriveWhenTheDispatcherWaitsInTheLibrary(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	r.h.waitInLibrary = true // before the first registration starts the dispatcher
	service := serviceName(t)
	g, err := r.Register(t.Context(), service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)
	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	waitWatch(t, w, WatchAdded, "node1")
	shared.do(t, "put /services/"+service+"/external {}")
	waitWatch(t, w, WatchAdded, "external")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if last := waitStatus(t, g.Events(), StatusUnregistered); !errors.Is(last.Err, ErrClosed) {
		t.Fatalf("last event %+v", last)
	}
}

// Each registry's event descriptor, and the copy the dispatcher polls, are closed with it.
func TestClosedRegistriesLeaveNoDescriptorOpen(t *testing.T) {
	openFDs := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("cannot count descriptors: %v", err)
		}
		return len(entries)
	}
	service := serviceName(t)
	round := func() {
		r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		g, err := r.Register(t.Context(), service, Node{Name: "n"}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, g.Done(), g.Errors())
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	round() // the first one sets up what stays (the library's runtime, its poller)
	// No collection meanwhile: a file's finalizer would close what was left open.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	before := openFDs()
	for range 20 {
		round()
	}
	// Connections are dropped by the library's tasks just after Close returns.
	deadline := time.Now().Add(waitLimit)
	for openFDs() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := openFDs(); after > before {
		t.Fatalf("%d descriptors open after 20 registries were closed, %d before", after, before)
	}
}

func TestRegisteringAgainReplaces(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	first, err := r.Register(t.Context(), service, Node{Name: "node1", Info: map[string]string{"v": "1"}}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, first.Done(), first.Errors())
	second, err := r.Register(t.Context(), service, Node{Name: "node1", Info: map[string]string{"v": "2"}}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, second.Done(), second.Errors())
	if err := recvErr(t, first.Errors()); !errors.Is(err, ErrReplaced) {
		t.Fatalf("first registration ended with %v, want ErrReplaced", err)
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil || len(nodes) != 1 || nodes[0].Info["v"] != "2" {
		t.Fatalf("listed %v, %v", nodes, err)
	}
	// UnregisterNode reaches the newer registration.
	if err := r.UnregisterNode(t.Context(), service, "node1"); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, second.Errors()); !errors.Is(err, ErrUnregistered) {
		t.Fatalf("second registration ended with %v", err)
	}
}

// Of two registrations of one node made at once, the library keeps the later; UnregisterNode
// must reach that one, whichever goroutine returned last.
func TestRegisteringOneNodeFromTwoGoroutinesLeavesTheKeptOneReachable(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	for round := range 100 {
		var regs [2]*Registration
		var wg sync.WaitGroup
		for i := range regs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g, err := r.Register(t.Context(), service, Node{Name: "n", Info: map[string]string{"i": strconv.Itoa(i)}}, 30*time.Second)
				if err != nil {
					t.Error(err)
				}
				regs[i] = g
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		var kept *Registration
		select {
		case err := <-regs[0].Errors():
			kept = regs[1]
			if !errors.Is(err, ErrReplaced) {
				t.Fatalf("round %d: %v, want ErrReplaced", round, err)
			}
		case err := <-regs[1].Errors():
			kept = regs[0]
			if !errors.Is(err, ErrReplaced) {
				t.Fatalf("round %d: %v, want ErrReplaced", round, err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("round %d: neither registration was replaced", round)
		}
		if err := r.UnregisterNode(t.Context(), service, "n"); err != nil {
			t.Fatalf("round %d: UnregisterNode: %v", round, err)
		}
		if err := recvErr(t, kept.Errors()); !errors.Is(err, ErrUnregistered) {
			t.Fatalf("round %d: the kept registration ended with %v, want ErrUnregistered", round, err)
		}
	}
	if nodes, err := r.GetServiceNodes(service); err != nil || len(nodes) != 0 {
		t.Fatalf("listed %v, %v after every round was unregistered", nodes, err)
	}
}

// A '/' in a name is a '-' in etcd: "a/b" and "a-b" are one node, and UnregisterNode takes
// either spelling, as listed or as registered.
func TestNamesWithSlashesAreTheNodesListed(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	first, err := r.Register(t.Context(), service, Node{Name: "a/b"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, first.Done(), first.Errors())
	nodes, err := r.GetServiceNodes(service)
	if err != nil || !slices.Equal(nodeNames(nodes), []string{"a-b"}) {
		t.Fatalf("listed %v, %v; want a-b", nodes, err)
	}
	if err := r.UnregisterNode(t.Context(), service, "a-b"); err != nil {
		t.Fatalf("UnregisterNode by the listed name: %v", err)
	}
	if err := recvErr(t, first.Errors()); !errors.Is(err, ErrUnregistered) {
		t.Fatalf("ended with %v, want ErrUnregistered", err)
	}

	second, err := r.Register(t.Context(), service, Node{Name: "a-b"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, second.Done(), second.Errors())
	third, err := r.Register(t.Context(), service, Node{Name: "a/b"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, third.Done(), third.Errors())
	if err := recvErr(t, second.Errors()); !errors.Is(err, ErrReplaced) {
		t.Fatalf("a-b ended with %v, want ErrReplaced by a/b", err)
	}
	if err := r.UnregisterNode(t.Context(), service, "a/b"); err != nil {
		t.Fatalf("UnregisterNode by the registered name: %v", err)
	}
	if err := recvErr(t, third.Errors()); !errors.Is(err, ErrUnregistered) {
		t.Fatalf("ended with %v, want ErrUnregistered", err)
	}
}

func TestWatchService(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "a", Info: map[string]string{"v": "1"}}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)

	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	added := waitWatch(t, w, WatchAdded, "a") // present when the watch started
	if added.Node.Info["v"] != "1" || added.Revision == 0 || added.Service != service {
		t.Fatalf("added event %+v", added)
	}

	ctxB, cancelB := context.WithCancel(context.Background())
	doneB, errsB, err := r.RegisterNode(ctxB, service, Node{Name: "b"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, doneB, errsB)
	waitWatch(t, w, WatchAdded, "b")

	// The same node registered again with new info: updated.
	doneA2, errsA2, err := r.RegisterNode(t.Context(), service, Node{Name: "a", Info: map[string]string{"v": "2"}}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, doneA2, errsA2)
	if ev := waitWatch(t, w, WatchUpdated, "a"); ev.Node.Info["v"] != "2" {
		t.Fatalf("updated event %+v", ev)
	}

	cancelB()
	removed := waitWatch(t, w, WatchRemoved, "b")
	if removed.Revision <= added.Revision {
		t.Fatalf("revisions do not grow: %d then %d", added.Revision, removed.Revision)
	}
	nodes, err := w.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Name != "a" || nodes[0].Info["v"] != "2" {
		t.Fatalf("live set %+v", nodes)
	}

	// A key written by someone else is seen too.
	shared.do(t, "put /services/"+service+"/external {\"x\":\"y\"}")
	if ev := waitWatch(t, w, WatchAdded, "external"); ev.Node.Info["x"] != "y" {
		t.Fatalf("external node %+v", ev)
	}
	shared.do(t, "delete /services/"+service+"/external")
	waitWatch(t, w, WatchRemoved, "external")

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for range w.Events() { // closed
	}
	if _, err := w.Nodes(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Nodes after Close: %v", err)
	}
}

func TestWatchEndsWithItsContext(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := r.WatchService(ctx, serviceName(t))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range w.Events() {
	}
	if _, err := w.Nodes(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Nodes after cancel: %v", err)
	}
}

// etcd killed and restarted under a registration: the status events report the lost
// keep-alive and the retries, then the re-registration, and the node is listed again.
func TestRecoversFromEtcdRestart(t *testing.T) {
	h := newHarness(t)
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g, err := r.Register(t.Context(), "svc", Node{Name: "localhost:50000"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)

	h.do(t, "kill 0")
	lost := waitStatus(t, g.Events(), StatusKeepAliveLost)
	if lost.Err == nil {
		t.Fatalf("keep-alive lost without an error: %+v", lost)
	}
	retrying := waitStatus(t, g.Events(), StatusRetrying)
	if retrying.Attempt < 1 || retrying.Delay <= 0 || retrying.Err == nil {
		t.Fatalf("retrying event %+v", retrying)
	}
	eventually(t, "the state is retrying", func() bool { return g.State() == StateRetrying })

	h.do(t, "start 0")
	back := waitStatus(t, g.Events(), StatusReregistered)
	if back.LeaseID == 0 {
		t.Fatalf("reregistered event %+v", back)
	}
	eventually(t, "the node is listed again", func() bool {
		nodes, err := r.GetServiceNodes("svc")
		return err == nil && slices.Equal(nodeNames(nodes), []string{"localhost:50000"})
	})
	if g.State() != StateRegistered {
		t.Fatalf("state %v after re-registration", g.State())
	}
	// errChan is for failures before the first registration only.
	select {
	case err := <-g.Errors():
		t.Fatalf("error channel got %v after the first registration", err)
	default:
	}
}

// A registration keeps its registry alive: dropping every reference to the registry does not
// end it, and its context still unregisters it. Then nothing references the registry any more,
// and its finalizer closes it.
func TestRegistrationKeepsRegistryAliveThenFinalizerClosesIt(t *testing.T) {
	service := serviceName(t)
	ctx, cancel := context.WithCancel(context.Background())
	h, done, errs := func() (*handle, <-chan struct{}, <-chan error) {
		r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		done, errs, err := r.RegisterNode(ctx, service, Node{Name: "node1"}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return r.h, done, errs // the handle does not keep the EtcdRegistry reachable
	}()
	waitDone(t, done, errs)
	for range 3 {
		runtime.GC()
	}
	key := "/services/" + service + "/node1"
	if _, ok := shared.getPrefix(t, key)[key]; !ok || h.isClosed() {
		t.Fatal("registration gone after GC")
	}
	cancel()
	if all := rangeErrs(t, errs); len(all) != 0 {
		t.Fatalf("error channel got %v, want none before it closes", all)
	}
	if kv := shared.getPrefix(t, key); len(kv) != 0 {
		t.Fatalf("key left: %v", kv)
	}
	eventually(t, "the finalizer closes the registry", func() bool {
		runtime.GC()
		return h.isClosed()
	})
}

// An unreferenced registry whose watch has stopped is closed by its finalizer.
func TestFinalizerClosesUnreachableRegistry(t *testing.T) {
	h := func() *handle {
		r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// Use it, so the pulling goroutine runs too.
		w, err := r.WatchService(context.Background(), serviceName(t))
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		return r.h
	}()
	eventually(t, "the registry is finalized", func() bool {
		runtime.GC()
		return h.isClosed()
	})
	// The close finishes (the pulling goroutine leaves, the C registry is freed).
	eventually(t, "the registry is freed", func() bool {
		h.life.RLock()
		defer h.life.RUnlock()
		return h.ptr == nil
	})
}

// A nil or zero-value EtcdRegistry, Registration or Watch (not made by this package) gives an
// error matching ErrInvalidArgument, or reports an ended registration or stopped watch: never
// a panic, not even in a goroutine the caller cannot recover.
func TestNilAndZeroValuesAreErrorsNotPanics(t *testing.T) {
	ctx := context.Background()
	invalid := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: got %v, want an error matching ErrInvalidArgument", what, err)
		}
	}
	for name, r := range map[string]*EtcdRegistry{"nil": nil, "zero": {}} {
		_, err := r.Register(ctx, "svc", Node{Name: "n"}, time.Minute)
		invalid(name+" Register", err)
		_, _, err = r.RegisterNode(ctx, "svc", Node{Name: "n"}, time.Minute)
		invalid(name+" RegisterNode", err)
		invalid(name+" UnregisterNode", r.UnregisterNode(ctx, "svc", "n"))
		_, err = r.GetServiceNodes("svc")
		invalid(name+" GetServiceNodes", err)
		_, err = r.Services()
		invalid(name+" Services", err)
		_, err = r.WatchService(ctx, "svc")
		invalid(name+" WatchService", err)
		if e := r.ActiveEndpoint(); e != "" {
			t.Errorf("%s ActiveEndpoint: %q", name, e)
		}
		invalid(name+" Close", r.Close())
	}
	for name, g := range map[string]*Registration{"nil": nil, "zero": {}} {
		invalid(name+" Unregister", g.Unregister(ctx))
		invalid(name+" Update", g.Update(map[string]string{"a": "1"}))
		if g.State() != StateUnregistered || g.LeaseID() != 0 || g.Dropped() != 0 {
			t.Errorf("%s: state %v, lease %d, dropped %d", name, g.State(), g.LeaseID(), g.Dropped())
		}
		if g.Service() != "" || g.NodeName() != "" || g.Done() != nil {
			t.Errorf("%s: service %q, node %q, done %v", name, g.Service(), g.NodeName(), g.Done())
		}
		for range g.Events() {
			t.Errorf("%s: an event", name)
		}
		for err := range g.Errors() {
			t.Errorf("%s: an error %v", name, err)
		}
	}
	for name, w := range map[string]*Watch{"nil": nil, "zero": {}} {
		_, err := w.Nodes()
		invalid(name+" watch Nodes", err)
		invalid(name+" watch Close", w.Close())
		if w.Service() != "" || w.Dropped() != 0 {
			t.Errorf("%s watch: service %q", name, w.Service())
		}
		for range w.Events() {
			t.Errorf("%s: a watch event", name)
		}
	}
}
