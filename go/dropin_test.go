package etcdregistry

// Drop-in behaviour: where go.lumeweb.com/etcd-registry and this package must agree (issue 14).
// What lands in etcd is read back with etcd's own Go client, not through this package.

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// nativeClient is etcd's own Go client on the shared cluster, closed when the test ends.
func nativeClient(t *testing.T) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: shared.endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nativeGet(t *testing.T, c *clientv3.Client, key string) (value []byte, found bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false
	}
	return resp.Kvs[0].Value, true
}

func nativePut(t *testing.T, c *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}

// 1. A call that cannot reach etcd waits for its timeout, then fails with a deadline error
// that says which endpoint and why.
func TestDropInUnreachableEtcdIsADeadlineErrorNamingTheCause(t *testing.T) {
	addr := unusedAddress(t) // a closed port: connection refused
	const timeout = time.Second
	r, err := NewEtcdRegistry([]string{addr}, "/services", "", "", timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkUnreachable := func(what string, err error) {
		t.Helper()
		checkDeadlineExceeded(t, err)
		for _, want := range []string{"http://" + addr, "connection refused"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("%s: error %q does not say %q", what, err, want)
			}
		}
	}
	start := time.Now()
	_, err = r.GetServiceNodes("svc")
	if elapsed := time.Since(start); elapsed < timeout {
		t.Fatalf("GetServiceNodes gave up after %v, before its timeout of %v: %v", elapsed, timeout, err)
	}
	checkUnreachable("GetServiceNodes", err)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, errs, err := r.RegisterNode(ctx, "svc", Node{Name: "n1"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		checkUnreachable("RegisterNode", err)
	case <-done:
		t.Fatal("registered against a closed port")
	case <-time.After(waitLimit):
		t.Fatal("no error came")
	}
}

// 2. errChan is closed after the last error of a registration, however it ends; a context
// that ends after done was closed closes it without a value, as the original does (its loop
// returns from the wait between refreshes without sending).
func TestDropInErrChanIsClosedWhenTheRegistrationEnds(t *testing.T) {
	register := func(t *testing.T, r *EtcdRegistry, ctx context.Context, service string) <-chan error {
		t.Helper()
		done, errs, err := r.RegisterNode(ctx, service, Node{Name: "n1"}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
		return errs
	}
	lastIs := func(t *testing.T, all []error, want error) {
		t.Helper()
		if len(all) == 0 || !errors.Is(all[len(all)-1], want) {
			t.Fatalf("errors before the close %v, want the last to be %v", all, want)
		}
	}

	t.Run("context cancelled after done", func(t *testing.T) {
		r := newRegistry(t, shared.endpoints)
		ctx, cancel := context.WithCancel(context.Background())
		errs := register(t, r, ctx, serviceName(t))
		cancel()
		if all := rangeErrs(t, errs); len(all) != 0 {
			t.Fatalf("errors before the close %v, want none", all)
		}
	})
	t.Run("unregistered", func(t *testing.T) {
		r := newRegistry(t, shared.endpoints)
		service := serviceName(t)
		errs := register(t, r, t.Context(), service)
		if err := r.UnregisterNode(t.Context(), service, "n1"); err != nil {
			t.Fatal(err)
		}
		lastIs(t, rangeErrs(t, errs), ErrUnregistered)
	})
	t.Run("registry closed", func(t *testing.T) {
		r := newRegistry(t, shared.endpoints)
		errs := register(t, r, t.Context(), serviceName(t))
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		lastIs(t, rangeErrs(t, errs), ErrClosed)
	})
	t.Run("context ended before registering", func(t *testing.T) {
		r := newRegistry(t, shared.endpoints)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, errs, err := r.RegisterNode(ctx, serviceName(t), Node{Name: "n1"}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		lastIs(t, rangeErrs(t, errs), context.Canceled)
	})
}

// 3. and 6. GetServiceNodes lists in descending key order, and every key below the service is
// a node named by the rest of its key.
func TestDropInListingOrderAndKeysBelowANode(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	c := nativeClient(t)
	service := serviceName(t)
	for _, name := range []string{"b", "a", "c"} {
		done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: name, Info: map[string]string{"n": name}}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
	}
	nativePut(t, c, "/services/"+service+"/b/deep", `{"n":"b/deep"}`)
	nativePut(t, c, "/services/"+service+"/sub/x/y", `{"n":"sub/x/y"}`)

	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
		if n.Info["n"] != n.Name {
			t.Fatalf("node %q has info %v", n.Name, n.Info)
		}
	}
	// What the original lists: etcd's own descending order, names trimmed of the prefix.
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	resp, err := c.Get(ctx, "/services/"+service+"/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, kv := range resp.Kvs {
		want = append(want, strings.TrimPrefix(string(kv.Key), "/services/"+service+"/"))
	}
	if !slices.Equal(names, want) || !slices.Equal(want, []string{"sub/x/y", "c", "b/deep", "b", "a"}) {
		t.Fatalf("listed %q, etcd's descending order is %q", names, want)
	}
}

// 5. The value is exactly what json.Marshal writes for the map: same bytes, not just the same
// JSON.
func TestDropInValueBytesAreJSONMarshals(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	c := nativeClient(t)
	service := serviceName(t)
	rng := rand.New(rand.NewPCG(14, 5))
	// Pieces that Go's encoder treats specially, and ordinary ones.
	pieces := []string{"a", "Z", "0", " ", "<", ">", "&", "\"", "\\", "/", "\n", "\r", "\t", "\b",
		"\f", "\x00", "\x01", "\x1f", "\x7f", "é", "日本", "😀", "\u2028", "\u2029", "\ufffd",
		"\u00a0", "\u200b", "'", "=", "+", "%", "{", "}", "[", "]", ":", ",",
		// Not UTF-8: json.Marshal writes \ufffd for each invalid byte.
		"\xff", "\xfe", "\xe2\x80", "\xed\xa0\x80", "\xc0\x80", "\xf4\x90\x80\x80"}
	randomString := func(max int) string {
		var b strings.Builder
		for range rng.IntN(max + 1) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	maps := []map[string]string{
		{},
		{"address": "10.0.0.5:8080", "version": "1.0.0"},
		{"html": "<a href=\"x\">&amp;</a>", "sep": "line\u2028para\u2029"},
		{"ctl": "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x1f\x7f"},
		{"bad\xffkey": "bad\xe2\x80value", "nul\x00": "\x00"},
	}
	for range 60 {
		m := map[string]string{}
		for range rng.IntN(6) {
			key := randomString(6)
			if key == "" {
				key = "k"
			}
			m[key] = randomString(12)
		}
		maps = append(maps, m)
	}
	for i, info := range maps {
		name := "n" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: name, Info: info}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
		want, err := json.Marshal(info)
		if err != nil {
			t.Fatal(err)
		}
		got, found := nativeGet(t, c, "/services/"+service+"/"+name)
		if !found {
			t.Fatalf("node %s not in etcd", name)
		}
		if string(got) != string(want) {
			t.Fatalf("info %q\nstored  %q\nMarshal %q", info, got, want)
		}
		if !utf8.Valid(got) {
			t.Fatalf("stored value %q is not UTF-8", got)
		}
	}
	// And read back as Go reads the stored value: as given, with U+FFFD for invalid bytes.
	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != len(maps) {
		t.Fatalf("listed %d nodes, want %d", len(nodes), len(maps))
	}
	for _, n := range nodes {
		i := int(n.Name[1]-'a')*26 + int(n.Name[2]-'a')
		if want := readBack(t, maps[i]); !reflect.DeepEqual(n.Info, want) {
			t.Fatalf("node %s read back as %q, registered %q, want %q", n.Name, n.Info, maps[i], want)
		}
	}
}

// 7. The constructor accepts what the original accepts: a timeout of 0 or below (the default
// then) and empty entries among the endpoints.
func TestDropInConstructorAcceptsWhatTheOriginalAccepts(t *testing.T) {
	for _, c := range []struct {
		name      string
		endpoints []string
		timeout   time.Duration
	}{
		{"zero timeout", shared.endpoints, 0},
		{"negative timeout", shared.endpoints, -time.Second},
		{"empty endpoint among others", append([]string{"", "  "}, shared.endpoints...), time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := NewEtcdRegistry(c.endpoints, "/services", "", "", c.timeout)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			service := serviceName(t)
			done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "n1"}, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			waitDone(t, done, errs)
			nodes, err := r.GetServiceNodes(service)
			if err != nil || len(nodes) != 1 {
				t.Fatalf("listed %v, %v", nodes, err)
			}
		})
	}
}

// 8. Only empty endpoint entries: accepted, as etcd's Go client accepts them; each call then
// fails as it does there, with a deadline error once the timeout has passed, and a registration
// reports failed attempts without ever succeeding.
func TestDropInOnlyEmptyEndpointsFailEachCall(t *testing.T) {
	// What the original does under the hood: clientv3 takes the list, then a call times out.
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"", "  "}, DialTimeout: time.Second})
	if err != nil {
		t.Fatalf("clientv3 refused only empty endpoints: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = c.Get(ctx, "/services/x")
	cancel()
	c.Close()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("clientv3 Get: %v, want a deadline error", err)
	}

	r, err := NewEtcdRegistry([]string{"", "  "}, "/services", "", "", time.Second)
	if err != nil {
		t.Fatalf("NewEtcdRegistry refused only empty endpoints: %v", err)
	}
	defer r.Close()
	if _, err := r.GetServiceNodes("api"); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("GetServiceNodes: %v, want a deadline error", err)
	}
	done, errs, err := r.RegisterNode(t.Context(), "api", Node{Name: "n1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, errs); err == nil {
		t.Fatal("a registration against no endpoint reported no error")
	}
	select {
	case <-done:
		t.Fatal("registered without any endpoint")
	default:
	}
}

// 4. A nil Info is stored as an empty value, an empty one as {}; listed, an empty value, null
// or a value that is not an object is a nil Info, {} an empty map.
func TestDropInNilInfo(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	c := nativeClient(t)
	service := serviceName(t)
	prefix := "/services/" + service + "/"
	for _, n := range []Node{{Name: "nil-info"}, {Name: "empty-info", Info: map[string]string{}}} {
		done, errs, err := r.RegisterNode(t.Context(), service, n, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, done, errs)
	}
	if got, found := nativeGet(t, c, prefix+"nil-info"); !found || len(got) != 0 {
		t.Fatalf("nil Info stored as %q (found %v), want an empty value", got, found)
	}
	if got, _ := nativeGet(t, c, prefix+"empty-info"); string(got) != "{}" {
		t.Fatalf("empty Info stored as %q, want {}", got)
	}
	nativePut(t, c, prefix+"null", "null")
	nativePut(t, c, prefix+"string", `"text"`)
	nativePut(t, c, prefix+"garbage", "not json")
	nodes, err := r.GetServiceNodes(service)
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{
		{Name: "string"}, {Name: "null"}, {Name: "nil-info"}, {Name: "garbage"},
		{Name: "empty-info", Info: map[string]string{}},
	}
	if !reflect.DeepEqual(nodes, want) {
		t.Fatalf("listed %#v\nwant   %#v", nodes, want)
	}
}
