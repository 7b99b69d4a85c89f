package etcdregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"
)

const updateTTL = 10 * time.Second

// eventsUntilMarker registers marker under service on r (the same TTL as the node under test,
// so its put comes after every put asked for before it) and returns the watch events before
// the marker's WatchAdded: every event the earlier calls caused, without sleeping.
func eventsUntilMarker(t *testing.T, r *EtcdRegistry, w *Watch, service string) []WatchEvent {
	t.Helper()
	if _, err := r.Register(t.Context(), service, Node{Name: "marker"}, updateTTL); err != nil {
		t.Fatal(err)
	}
	var seen []WatchEvent
	timeout := time.After(waitLimit)
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended before the marker; saw %+v", seen)
			}
			if ev.Type == WatchAdded && ev.Node.Name == "marker" {
				return seen
			}
			seen = append(seen, ev)
		case <-timeout:
			t.Fatalf("no marker came; saw %+v", seen)
		}
	}
}

// storedInfo is the node's value in etcd, read by the harness.
func storedInfo(t *testing.T, h *harness, key string) string {
	t.Helper()
	return h.getPrefix(t, key)[key]
}

func TestUpdatePutsOnceOnTheSameLease(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	g, err := r.Register(t.Context(), service, Node{Name: "n1", Info: map[string]string{"v": "1"}}, updateTTL)
	if err != nil {
		t.Fatal(err)
	}
	registered := waitStatus(t, g.Events(), StatusRegistered)
	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitWatch(t, w, WatchAdded, "n1")

	if err := g.Update(map[string]string{"v": "2", "zone": "b"}); err != nil {
		t.Fatal(err)
	}
	updated := waitStatus(t, g.Events(), StatusUpdated)
	if updated.LeaseID != registered.LeaseID || updated.Kind.String() != "updated" {
		t.Fatalf("updated event %+v after %+v", updated, registered)
	}
	if got := storedInfo(t, shared, "/services/"+service+"/n1"); got != `{"v":"2","zone":"b"}` {
		t.Fatalf("etcd holds %q", got)
	}
	if g.LeaseID() != registered.LeaseID || g.State() != StateRegistered {
		t.Fatalf("lease %x state %v after the update", g.LeaseID(), g.State())
	}
	seen := eventsUntilMarker(t, r, w, service)
	if len(seen) != 1 || seen[0].Type != WatchUpdated ||
		!maps.Equal(seen[0].Node.Info, map[string]string{"v": "2", "zone": "b"}) {
		t.Fatalf("want exactly one updated event, saw %+v", seen)
	}
}

func TestUpdateWhileEtcdIsDownLandsWhenItReturns(t *testing.T) {
	h := newHarness(t)
	cfg := Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	watcher, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	g, err := r.Register(t.Context(), "svc", Node{Name: "n1", Info: map[string]string{"v": "1"}}, updateTTL)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)
	w, err := watcher.WatchService(t.Context(), "svc")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitWatch(t, w, WatchAdded, "n1")

	h.do(t, "stop 0")
	waitStatus(t, g.Events(), StatusKeepAliveLost)
	for _, v := range []string{"2", "3"} {
		if err := g.Update(map[string]string{"v": v}); err != nil { // returns at once
			t.Fatal(err)
		}
	}
	h.do(t, "start 0")
	back := waitStatus(t, g.Events(), StatusReregistered)
	// The next event: the re-registration carried the last update.
	select {
	case ev := <-g.Events():
		if ev.Kind != StatusUpdated || ev.LeaseID != back.LeaseID {
			t.Fatalf("after %+v: %+v", back, ev)
		}
	case <-time.After(waitLimit):
		t.Fatal("no updated event")
	}
	if got := storedInfo(t, h, "/services/svc/n1"); got != `{"v":"3"}` {
		t.Fatalf("etcd holds %q", got)
	}
	var last WatchEvent
	for _, ev := range eventsUntilMarker(t, r, w, "svc") {
		if ev.Node.Info["v"] == "2" {
			t.Fatalf("the watcher saw the intermediate update: %+v", ev)
		}
		if ev.Node.Name == "n1" {
			last = ev
		}
	}
	if last.Node.Info["v"] != "3" {
		t.Fatalf("the watcher's last event for n1: %+v", last)
	}
}

func TestConcurrentUpdatesEndWithTheLastOne(t *testing.T) {
	const writers, each = 4, 25
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	g, err := r.Register(t.Context(), service, Node{Name: "n1", Info: map[string]string{"w": "-"}}, updateTTL)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)
	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitWatch(t, w, WatchAdded, "n1")

	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range each {
				errs <- g.Update(map[string]string{"w": fmt.Sprint(i), "seq": fmt.Sprintf("%03d", seq)})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := eventsUntilMarker(t, r, w, service)
	if len(seen) == 0 {
		t.Fatal("no updated event")
	}
	final := seen[len(seen)-1].Node.Info
	if final["seq"] != fmt.Sprintf("%03d", each-1) {
		t.Fatalf("the final value is not a writer's last update: %v", final)
	}
	want, _ := json.Marshal(final)
	if got := storedInfo(t, shared, "/services/"+service+"/n1"); got != string(want) {
		t.Fatalf("etcd holds %q, the watcher ended with %v", got, final)
	}
	last := map[string]string{}
	for _, ev := range seen {
		if ev.Type != WatchUpdated {
			t.Fatalf("unexpected %+v", ev)
		}
		writer, seq := ev.Node.Info["w"], ev.Node.Info["seq"]
		if seq <= last[writer] {
			t.Fatalf("writer %s reordered: %s after %s", writer, seq, last[writer])
		}
		last[writer] = seq
	}
}

func TestUpdateRejectsBadInput(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	g, err := r.Register(t.Context(), service, Node{Name: "n1", Info: map[string]string{"v": "1"}}, updateTTL)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)
	for name, info := range map[string]map[string]string{
		"empty key": {"": "x"},
		"too large": {"big": strings.Repeat("x", 2<<20)},
	} {
		if err := g.Update(info); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got := storedInfo(t, shared, "/services/"+service+"/n1"); got != `{"v":"1"}` {
		t.Fatalf("etcd holds %q after refused updates", got)
	}
	if err := g.Unregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := g.Update(map[string]string{"v": "2"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Unregister: %v", err)
	}
	other, err := r.Register(t.Context(), service, Node{Name: "n2"}, updateTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := other.Update(map[string]string{"v": "2"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
