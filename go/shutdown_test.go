package etcdregistry

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The shutdown rule: with etcd stopped, Unregister and Close return nil (after trying within
// the timeout); the registration ends all the same, and the keys expire with their lease once
// etcd is back.
func TestUnregisterAndCloseWhileEtcdIsStopped(t *testing.T) {
	h := newHarness(t)
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first, err := r.Register(ctx, "svc", Node{Name: "n1"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	second, err := r.Register(ctx, "svc", Node{Name: "n2"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, first.Done(), first.Errors())
	waitDone(t, second.Done(), second.Errors())

	h.do(t, "stop 0")
	if err := first.Unregister(ctx); err != nil {
		t.Fatalf("Unregister with etcd stopped: %v", err)
	}
	if first.State() != StateUnregistered {
		t.Fatalf("state after Unregister: %v", first.State())
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close with etcd stopped: %v", err)
	}
	if err := r.UnregisterNode(ctx, "svc", "n2"); !errors.Is(err, ErrClosed) {
		t.Fatalf("UnregisterNode after Close: %v", err)
	}
	h.do(t, "start 0")
	eventually(t, "the keys to expire with their lease", func() bool {
		return len(h.getPrefix(t, "/services/svc/")) == 0
	})
}
