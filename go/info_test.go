package etcdregistry

import (
	"encoding/json"
	"errors"
	"maps"
	"testing"
	"time"
)

// readBack is what a Go program reads from the value json.Marshal writes for info: the map
// itself when its strings are UTF-8, with U+FFFD for each invalid byte otherwise.
func readBack(t *testing.T, info map[string]string) map[string]string {
	t.Helper()
	b, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]string
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Info crosses to the library as bytes with lengths and comes back the same way: NUL bytes
// survive in keys and values, invalid UTF-8 is stored as json.Marshal writes it (the escape
// \ufffd per byte) and read back as U+FFFD, through listing, watch events, the watch's node set
// and Update.
func TestInfoBytesRoundTrip(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	c := nativeClient(t)
	service := serviceName(t)
	first := map[string]string{
		"nul\x00key": "a\x00b",
		"bad\xff":    "x\xe2\x80y\xed\xa0\x80",
		"html":       "<&>\u2028",
		"empty":      "",
	}
	second := map[string]string{"v\x00": "2\xc0\x80", "é": "日本"}

	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	g, err := r.Register(t.Context(), service, Node{Name: "n1", Info: first}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)
	want, _ := json.Marshal(first)
	if got, _ := nativeGet(t, c, "/services/"+service+"/n1"); string(got) != string(want) {
		t.Fatalf("stored %q\nMarshal %q", got, want)
	}
	if ev := waitWatch(t, w, WatchAdded, "n1"); !maps.Equal(ev.Node.Info, readBack(t, first)) {
		t.Fatalf("watch event info %q, want %q", ev.Node.Info, readBack(t, first))
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil || len(nodes) != 1 || !maps.Equal(nodes[0].Info, readBack(t, first)) {
		t.Fatalf("listed %q (%v), want info %q", nodes, err, readBack(t, first))
	}

	if err := g.Update(second); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusUpdated)
	want, _ = json.Marshal(second)
	if got, _ := nativeGet(t, c, "/services/"+service+"/n1"); string(got) != string(want) {
		t.Fatalf("updated to %q\nMarshal %q", got, want)
	}
	if ev := waitWatch(t, w, WatchUpdated, "n1"); !maps.Equal(ev.Node.Info, readBack(t, second)) {
		t.Fatalf("watch event info %q, want %q", ev.Node.Info, readBack(t, second))
	}
	live, err := w.Nodes()
	if err != nil || len(live) != 1 || !maps.Equal(live[0].Info, readBack(t, second)) {
		t.Fatalf("live set %q (%v)", live, err)
	}

	// Update(nil) stores an empty object; an empty key is refused.
	if err := g.Update(nil); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusUpdated)
	if got, _ := nativeGet(t, c, "/services/"+service+"/n1"); string(got) != "{}" {
		t.Fatalf("Update(nil) stored %q", got)
	}
	if err := g.Update(map[string]string{"": "v"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty key: %v", err)
	}
}
