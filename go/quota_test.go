package etcdregistry

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// etcd out of space (its database at --quota-backend-bytes, the NOSPACE alarm raised): a node
// that cannot be written fails with ErrResourceExhausted and keeps retrying; what is registered
// stays; once an operator has freed space and disarmed the alarm, the node lands.
func TestEtcdOutOfSpaceIsResourceExhaustedUntilFixed(t *testing.T) {
	h := newHarness(t, "--quota-backend-bytes", fmt.Sprint(16<<20))
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	first, err := r.Register(t.Context(), "svc", Node{Name: "a"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, first.Events(), StatusRegistered)

	big := strings.Repeat("x", 1_000_000)
	var refusal error
	for filled := 0; refusal == nil; filled++ {
		if filled == 100 {
			t.Fatal("etcd took 100 MB with a 16 MiB quota")
		}
		_, refusal = h.try(fmt.Sprintf("put /fill/%d %s", filled, big))
	}
	if !strings.Contains(refusal.Error(), "database space exceeded") {
		t.Fatalf("etcd refused the fill with %v", refusal)
	}

	g, err := r.Register(t.Context(), "svc", Node{Name: "b"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	failed := waitStatus(t, g.Events(), StatusFailed)
	var e *Error
	if !errors.Is(failed.Err, ErrResourceExhausted) || !errors.As(failed.Err, &e) ||
		e.Code != CodeResourceExhausted || !strings.Contains(e.Message, "database space exceeded") {
		t.Fatalf("failed event %+v", failed)
	}
	if err := recvErr(t, g.Errors()); !errors.Is(err, ErrResourceExhausted) {
		t.Fatalf("error channel: %v", err)
	}
	waitStatus(t, g.Events(), StatusRetrying)
	if nodes, err := r.GetServiceNodes("svc"); err != nil || !slices.Equal(nodeNames(nodes), []string{"a"}) {
		t.Fatalf("while etcd is full: %v, %v", nodes, err)
	}

	// The operator's fix: free the space, compact, defragment, disarm the alarm.
	h.do(t, "delete-prefix /fill/")
	h.do(t, "compact")
	h.do(t, "etcdctl defrag")
	h.do(t, "etcdctl alarm disarm")
	waitStatus(t, g.Events(), StatusRegistered)
	eventually(t, "both nodes listed", func() bool {
		nodes, err := r.GetServiceNodes("svc")
		names := nodeNames(nodes)
		slices.Sort(names)
		return err == nil && slices.Equal(names, []string{"a", "b"})
	})
}
