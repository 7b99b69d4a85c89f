package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"
)

// goroutinesIn counts the goroutines whose stack holds a call of fn (e.g. ".cList(").
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			count++
		}
	}
	return count
}

// oneNodeOnOwnEtcd starts an etcd of the test's own (to pause), and a registry whose calls
// wait for it longer than the test does, holding node n1 (info a=1) of a new service.
func oneNodeOnOwnEtcd(t *testing.T) (*harness, *EtcdRegistry, string) {
	t.Helper()
	h := newHarness(t)
	r, service := registryOn(t, h)
	g, err := r.Register(context.Background(), service, Node{Name: "n1", Info: map[string]string{"a": "1"}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, g.Done(), g.Errors())
	return h, r, service
}

// registryOn is a registry of h's etcd whose calls wait up to twice waitLimit (past any
// test's deadline), closed at the test's end, and a service name of the test's own.
func registryOn(t *testing.T, h *harness) (*EtcdRegistry, string) {
	t.Helper()
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * waitLimit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, serviceName(t)
}

// pause pauses the harness's member 0 (SIGSTOP); the returned func resumes it, and so does
// the test's end if it has not.
func pause(t *testing.T, h *harness) (resume func()) {
	t.Helper()
	h.do(t, "pause 0")
	var once sync.Once
	resume = func() { once.Do(func() { h.do(t, "resume 0") }) }
	t.Cleanup(resume)
	return resume
}

// wantCanceled takes n results of calls whose context was cancelled: each must match
// context.Canceled, and come without etcd answering.
func wantCanceled(t *testing.T, what string, results <-chan error, n int) {
	t.Helper()
	for range n {
		select {
		case err := <-results:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s: got %v, want context.Canceled", what, err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("%s went on waiting for etcd after its context ended", what)
		}
	}
}

// Lists (and services calls, and watches making their first listing) waiting for etcd park
// their goroutines, as clientv3's calls do: a service that lists from many goroutines while
// etcd is slow does not get an OS thread per waiting call. Then every one of them returns the
// nodes once etcd answers.
func TestListsWaitingForEtcdTakeNoThreadEach(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("lists wait in the netpoller only on Linux (eventfd); elsewhere they block in C")
	}
	h, r, service := oneNodeOnOwnEtcd(t)

	const callers = 96 // a third each list, ask for the services, watch
	threads := pprof.Lookup("threadcreate")
	before := threads.Count()
	resume := pause(t, h)
	results := make(chan error, callers)
	for i := range callers {
		go func() {
			if i%3 == 2 {
				w, err := r.WatchService(context.Background(), service)
				if err == nil {
					var nodes []Node
					if nodes, err = w.Nodes(); err == nil && (len(nodes) != 1 || nodes[0].Name != "n1") {
						err = fmt.Errorf("watched %v", nodes)
					}
					_ = w.Close()
				}
				results <- err
				return
			}
			if i%3 == 1 {
				names, err := r.Services()
				if err == nil && (len(names) != 1 || names[0] != service) {
					err = fmt.Errorf("services %v", names)
				}
				results <- err
				return
			}
			nodes, err := r.GetServiceNodes(service)
			if err == nil && (len(nodes) != 1 || nodes[0].Name != "n1" || nodes[0].Info["a"] != "1") {
				err = fmt.Errorf("listed %v", nodes)
			}
			results <- err
		}()
	}
	eventually(t, "every call waits for etcd", func() bool {
		return goroutinesIn(".cList(") == callers/3 && goroutinesIn(".cServices(") == callers/3 &&
			goroutinesIn(".startWatch(") == callers/3
	})
	if grew := threads.Count() - before; grew >= callers/4 {
		t.Errorf("%d OS threads made for %d calls waiting for etcd", grew, callers)
	}
	resume()
	for range callers {
		select {
		case err := <-results:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(waitLimit):
			t.Fatal("a call did not return after etcd resumed")
		}
	}
}

// A list bounded by a context returns ctx.Err() once the context ends, while etcd still has not
// answered; the list's answer, when it comes, does not disturb the lists after it.
func TestGetServiceNodesContextEndsWhileEtcdIsPaused(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("a list is cut short by its context only on Linux (eventfd)")
	}
	h, r, service := oneNodeOnOwnEtcd(t)

	resume := pause(t, h)
	const callers = 4
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan error, callers)
	for range callers {
		go func() {
			nodes, err := r.GetServiceNodesContext(ctx, service)
			if err == nil {
				err = fmt.Errorf("listed %v while etcd is paused", nodes)
			}
			results <- err
		}()
	}
	eventually(t, "every list waits for etcd", func() bool { return goroutinesIn(".cList(") == callers })
	cancel()
	wantCanceled(t, "a list", results, callers)
	resume()

	// The abandoned lists' calls are reused once their answers came: every later list, with a
	// context or without, gets the node.
	for i := range 3 * maxIdleCalls {
		lctx, lcancel := context.WithTimeout(context.Background(), waitLimit)
		nodes, err := r.GetServiceNodesContext(lctx, service)
		lcancel()
		if err != nil || len(nodes) != 1 || nodes[0].Name != "n1" {
			t.Fatalf("list %d after resuming: %v, %v", i, nodes, err)
		}
		if nodes, err = r.GetServiceNodes(service); err != nil || len(nodes) != 1 {
			t.Fatalf("list %d after resuming: %v, %v", i, nodes, err)
		}
	}

	if _, err := r.GetServiceNodesContext(nil, service); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("nil context: got %v, want ErrInvalidArgument", err)
	}
	if _, err := r.GetServiceNodesContext(ctx, service); !errors.Is(err, context.Canceled) {
		t.Errorf("ended context: got %v, want context.Canceled", err)
	}
}

// A watch whose first listing waits for a paused etcd returns ctx.Err() once its context
// ends. The watch the library makes when etcd answers is stopped, and the registry's other
// watches and events go on.
func TestWatchServiceReturnsWhenItsContextEnds(t *testing.T) {
	h, r, service := oneNodeOnOwnEtcd(t)
	resume := pause(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() {
		w, err := r.WatchService(ctx, service)
		if err == nil {
			_ = w.Close()
			err = errors.New("the watch started while etcd is paused")
		}
		result <- err
	}()
	eventually(t, "the watch waits for etcd", func() bool { return goroutinesIn(".startWatch(") == 1 })
	cancel()
	wantCanceled(t, "WatchService", result, 1)
	resume()

	w, err := r.WatchService(context.Background(), service)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	g, err := r.Register(context.Background(), service, Node{Name: "n2"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, g.Done(), g.Errors())
	var seen []string
	for len(seen) < 2 {
		select {
		case ev := <-w.Events():
			seen = append(seen, ev.Type.String()+" "+ev.Node.Name)
		case <-time.After(waitLimit):
			t.Fatalf("the new watch saw %v, want added n1 and added n2", seen)
		}
	}
	if seen[0] != "added n1" || seen[1] != "added n2" {
		t.Errorf("the new watch saw %v, want [added n1 added n2]", seen)
	}
	eventually(t, "the abandoned watch is stopped", func() bool { return goroutinesIn(".startWatch.func") == 0 })
}

// ServicesContext returns ctx.Err() once its context ends while etcd has not answered, and
// lists the services once etcd is back.
func TestServicesContextEndsWhileEtcdIsPaused(t *testing.T) {
	h, r, service := oneNodeOnOwnEtcd(t)
	resume := pause(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan error, 1)
	go func() {
		names, err := r.ServicesContext(ctx)
		if err == nil {
			err = fmt.Errorf("listed services %v while etcd is paused", names)
		}
		results <- err
	}()
	eventually(t, "the call waits for etcd", func() bool { return goroutinesIn(".cServices(") == 1 })
	cancel()
	wantCanceled(t, "ServicesContext", results, 1)
	resume()

	lctx, lcancel := context.WithTimeout(context.Background(), waitLimit)
	defer lcancel()
	names, err := r.ServicesContext(lctx)
	if err != nil || len(names) != 1 || names[0] != service {
		t.Errorf("after resuming: %v, %v; want [%s]", names, err, service)
	}
	if _, err := r.ServicesContext(nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("nil context: got %v, want ErrInvalidArgument", err)
	}
	if _, err := r.ServicesContext(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ended context: got %v, want context.Canceled", err)
	}
}

// withoutEventfds makes the calls of the test wait inside C, as they do where there is no
// eventfd (not Linux), until the test ends: none is made, and the idle ones are set aside.
func withoutEventfds(t *testing.T) {
	asyncCalls.mu.Lock()
	idle, unavailable := asyncCalls.idle, asyncCalls.unavailable
	asyncCalls.idle, asyncCalls.unavailable = nil, true
	asyncCalls.mu.Unlock()
	t.Cleanup(func() {
		asyncCalls.mu.Lock()
		asyncCalls.idle = append(asyncCalls.idle, idle...)
		asyncCalls.unavailable = unavailable
		asyncCalls.mu.Unlock()
	})
}

// Where there is no eventfd, ServicesContext returns ctx.Err() at once while its call goes on
// in C; Close then waits for that call to leave the library before freeing the registry (it
// used to free it under the call).
func TestCloseAfterServicesContextEndedWaitsForItsCallWithoutEventfd(t *testing.T) {
	withoutEventfds(t)
	h := newHarness(t)
	// No registration: closing has no lease to revoke, so it does not wait for etcd itself.
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * waitLimit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if _, err := r.Services(); err != nil {
		t.Fatal(err)
	}
	resume := pause(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan error, 1)
	go func() {
		names, err := r.ServicesContext(ctx)
		if err == nil {
			err = fmt.Errorf("listed services %v while etcd is paused", names)
		}
		results <- err
	}()
	const inC = "._Cfunc_goer_services("
	eventually(t, "the call waits for etcd in C", func() bool { return goroutinesIn(inC) == 1 })
	cancel()
	wantCanceled(t, "ServicesContext", results, 1)

	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	// Either Close is done, and then no call may be left in the library, or it waits for the
	// call: then it ends once etcd answers it.
	eventually(t, "Close returns or waits for the call", func() bool {
		select {
		case err := <-closed:
			closed <- err
			return true
		default:
			return goroutinesIn(".(*handle).close(") == 1 && goroutinesIn(inC) == 1
		}
	})
	select {
	case <-closed:
		t.Log("Close returned while etcd was paused")
		if goroutinesIn(inC) != 0 {
			t.Fatal("Close freed the registry while a services call was still inside the library")
		}
		return
	default:
	}
	t.Log("Close waits for the call in C")
	resume()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close did not return once etcd answered")
	}
	if n := goroutinesIn(inC); n != 0 {
		t.Fatalf("%d services calls inside the library after Close returned", n)
	}
}

// Where there is no eventfd, GetServiceNodesContext still returns ctx.Err() once its context
// ends, as ServicesContext does: the list goes on in C in a goroutine of its own (found by
// review: it blocked in C whatever its context, up to the registry's timeout). The endpoint
// is unreachable, so only the library's timeout, 3 s, would end the list.
func TestGetServiceNodesContextWithoutEventfdEndsWithItsContext(t *testing.T) {
	withoutEventfds(t)
	r, err := New(Config{Endpoints: []string{unusedAddress(t)}, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // waits for the list to leave C
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	results := make(chan error, 1)
	go func() {
		nodes, err := r.GetServiceNodesContext(ctx, "svc")
		if err == nil {
			err = fmt.Errorf("listed %v from an unreachable endpoint", nodes)
		}
		results <- err
	}()
	select {
	case err := <-results:
		// The context's own error: the library's timeout also matches DeadlineExceeded.
		if err != context.DeadlineExceeded {
			t.Fatalf("got %v, want the context's context.DeadlineExceeded", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("GetServiceNodesContext did not return")
	}
}

// Close does not wait for a list or a services call still waiting for etcd, and the calls made
// meanwhile return ErrClosed instead of waiting behind it (found by review: Close waited for
// them up to the registry's timeout, and so did every call made during it, whatever its ctx).
// The calls in flight end on their own once the library answers them.
func TestCloseDoesNotWaitForCallsInFlight(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("a list waits outside C only on Linux (eventfd)")
	}
	h := newHarness(t)
	r, service := registryOn(t, h)
	if _, err := r.GetServiceNodes(service); err != nil { // connected
		t.Fatal(err)
	}
	resume := pause(t, h)
	results := make(chan error, 2)
	go func() {
		_, err := r.GetServiceNodes(service)
		results <- err
	}()
	go func() {
		_, err := r.Services()
		results <- err
	}()
	eventually(t, "both calls wait for etcd", func() bool {
		return goroutinesIn(".cList(") == 1 && goroutinesIn(".cServices(") == 1
	})

	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close waited for the calls in flight")
	}
	if _, err := r.GetServiceNodes(service); !errors.Is(err, ErrClosed) {
		t.Fatalf("a list after Close: %v, want ErrClosed", err)
	}
	if ep := r.ActiveEndpoint(); ep != "" {
		t.Fatalf("ActiveEndpoint after Close: %q", ep)
	}

	resume()
	for range 2 {
		select {
		case <-results:
		case <-time.After(waitLimit):
			t.Fatal("a call in flight at Close never returned")
		}
	}
}
