package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/pprof"
	"sync"
	"testing"
	"time"
)

// A service that ends many registrations at once (their shared context cancelled, as at
// shutdown) while etcd is slow does not get an OS thread per unregistration waiting for etcd:
// they wait parked, as lists do. Once etcd answers, every key is deleted and every
// registration ends, its error channel closed (without a value: done was closed).
func TestUnregistrationsWaitingForEtcdTakeNoThreadEach(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("unregistrations wait in the netpoller only on Linux (eventfd); elsewhere they block in C")
	}
	h, r, service := oneNodeOnOwnEtcd(t)

	const nodes = 64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	regs := make([]*Registration, nodes)
	errChans := make([]<-chan error, nodes)
	for i := range regs {
		g, err := r.Register(ctx, service, Node{Name: fmt.Sprintf("m%d", i)}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		regs[i], errChans[i] = g, g.Errors()
		waitDone(t, g.Done(), errChans[i])
	}
	threads := pprof.Lookup("threadcreate")
	before := threads.Count()
	resume := pause(t, h)
	cancel()
	eventually(t, "every unregistration waits for etcd", func() bool {
		return goroutinesIn(".(*Registration).unregister(") == nodes
	})
	if grew := threads.Count() - before; grew >= nodes/4 {
		t.Errorf("%d OS threads made for %d unregistrations waiting for etcd", grew, nodes)
	}
	resume()
	for i, errs := range errChans {
		if all := rangeErrs(t, errs); len(all) != 0 {
			t.Errorf("m%d ended with %v, want no error", i, all)
		}
		if s := regs[i].State(); s != StateUnregistered {
			t.Errorf("m%d: state %v after its end", i, s)
		}
	}
	eventually(t, "only n1 is left in etcd", func() bool {
		nodes, err := r.GetServiceNodes(service)
		return err == nil && len(nodes) == 1 && nodes[0].Name == "n1"
	})
}

// Close while unregistrations are still waiting for etcd: every registration still ends, with
// its error channel closed (without a value: its context ended after done was closed, and
// before Close).
func TestCloseWhileUnregistrationsWaitForEtcd(t *testing.T) {
	h := newHarness(t)
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	service := serviceName(t)
	const nodes = 16
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errChans := make([]<-chan error, nodes)
	for i := range errChans {
		g, err := r.Register(ctx, service, Node{Name: fmt.Sprintf("m%d", i)}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		errChans[i] = g.Errors()
		waitDone(t, g.Done(), errChans[i])
	}
	resume := pause(t, h)
	cancel()
	eventually(t, "every unregistration waits for etcd", func() bool {
		return goroutinesIn(".(*Registration).unregister(") == nodes
	})
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	eventually(t, "Close waits for etcd too", func() bool { return goroutinesIn(".(*handle).close(") == 1 })
	resume()
	select {
	case <-closed:
	case <-time.After(waitLimit):
		t.Fatal("Close did not return")
	}
	for i, errs := range errChans {
		if all := rangeErrs(t, errs); len(all) != 0 {
			t.Errorf("m%d ended with %v, want no error", i, all)
		}
	}
}

// A registration whose context is cancelled before it ever reached etcd (etcd silent since
// it was registered) ends at once, however long the registry's timeout: nothing of it is in
// etcd to delete. Its node does not appear once etcd answers again.
func TestCancellingARegistrationThatNeverReachedEtcdEndsAtOnce(t *testing.T) {
	h := newHarness(t)
	r, service := registryOn(t, h)
	resume := pause(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, err := r.Register(ctx, service, Node{Name: "n1"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	// Within waitLimit: the registry's timeout is twice as long.
	if err := recvErr(t, g.Errors()); !errors.Is(err, context.Canceled) {
		t.Errorf("ended with %v, want context.Canceled", err)
	}
	if s := g.State(); s != StateUnregistered {
		t.Errorf("state %v after its end", s)
	}
	resume()
	// Registered after, on the same TTL: its lease's task has dealt with n1 first.
	g2, err := r.Register(context.Background(), service, Node{Name: "n2"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, g2.Done(), g2.Errors())
	nodes, err := r.GetServiceNodes(service)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "n2" {
		t.Errorf("nodes %v (error %v), want n2 alone", nodes, err)
	}
}

// Unregister right after cancelling the registration's context returns nil, however the
// context's own unregistration races with it (found by review: ErrNotFound when the context
// had claimed the end first, though the registration had not ended when Unregister was
// called). Each of the two ways to unregister, 100 times.
func TestUnregisterRightAfterCancellingItsContextIsNil(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	for i := range 200 {
		ctx, cancel := context.WithCancel(context.Background())
		g, err := r.Register(ctx, service, Node{Name: "n1"}, 10*time.Second)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		waitDone(t, g.Done(), g.Errors())
		cancel()
		how := "Unregister"
		if i%2 == 0 {
			err = g.Unregister(context.Background())
		} else {
			how = "UnregisterNode"
			err = r.UnregisterNode(context.Background(), service, "n1")
		}
		if err != nil {
			t.Fatalf("round %d: %s right after cancel: %v, want nil", i, how, err)
		}
	}
	if kv := shared.getPrefix(t, "/services/"+service+"/"); len(kv) != 0 {
		t.Fatalf("keys left: %v", kv)
	}
}

// Unregister and UnregisterNode called while Close is under way (waiting for a paused etcd),
// after the library has closed: Close ends the registrations, so both report ErrClosed, as do
// their error channels and last events (found by review: the Unregister's claim won, the
// library refused its unregister with CLOSED, and each reported ErrUnregistered and nil).
func TestUnregisterDuringCloseReportsErrClosed(t *testing.T) {
	h := newHarness(t)
	r, service := registryOn(t, h)
	regs := make([]*Registration, 2)
	for i := range regs {
		g, err := r.Register(context.Background(), service, Node{Name: fmt.Sprintf("n%d", i)}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, g.Done(), g.Errors())
		regs[i] = g
	}
	resume := pause(t, h)
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	eventually(t, "the library is closed", func() bool {
		err := r.h.use("state", func(p *cRegistry) error {
			_, err := cRegistrationState(p, regs[0].id)
			return err
		})
		return isCode(err, CodeClosed)
	})
	results := make(chan error, 2)
	go func() { results <- regs[0].Unregister(context.Background()) }()
	go func() { results <- r.UnregisterNode(context.Background(), service, "n1") }()
	for _, g := range regs {
		eventually(t, "the unregistrations have begun", func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.x != nil && g.x.reason != nil
		})
	}
	resume()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close did not return")
	}
	for range regs {
		select {
		case err := <-results:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("unregistering during Close returned %v, want ErrClosed", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("unregistering during Close did not return")
		}
	}
	// ErrClosed itself: ErrUnregistered matches ErrClosed too.
	for i, g := range regs {
		if all := rangeErrs(t, g.Errors()); len(all) != 1 || all[0] != ErrClosed {
			t.Errorf("n%d ended with %v, want ErrClosed", i, all)
		}
		if ev := waitStatus(t, g.Events(), StatusUnregistered); ev.Err != ErrClosed {
			t.Errorf("n%d: last event's error %v, want ErrClosed", i, ev.Err)
		}
	}
}

// As above, with Close all done between Unregister's claim and its call to the library, which
// then refuses it: the StatusUnregistered that Close queued for the registration waits for that
// answer, and the registration ends with ErrClosed.
func TestUnregisterAnsweredAfterCloseReportsErrClosed(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	g, err := r.Register(context.Background(), service, Node{Name: "n1"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, g.Done(), g.Errors())
	claimed, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	testHookUnregistering = func(h *Registration) {
		if h == g {
			close(claimed)
			<-release
		}
	}
	defer func() { testHookUnregistering = nil }()
	result := make(chan error, 1)
	go func() { result <- g.Unregister(context.Background()) }()
	select {
	case <-claimed:
	case <-time.After(waitLimit):
		t.Fatal("Unregister did not claim the end")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	releaseOnce.Do(func() { close(release) })
	select {
	case err := <-result:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Unregister returned %v, want ErrClosed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Unregister did not return")
	}
	if all := rangeErrs(t, g.Errors()); len(all) != 1 || all[0] != ErrClosed {
		t.Errorf("ended with %v, want ErrClosed", all)
	}
	if ev := waitStatus(t, g.Events(), StatusUnregistered); ev.Err != ErrClosed {
		t.Errorf("last event's error %v, want ErrClosed", ev.Err)
	}
}
