package grpcresolver_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
	"github.com/etcd-registry/etcd-registry/go/grpcresolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"
)

const waitLimit = 30 * time.Second // an upper bound for anything to happen; never a measure

const roundRobin = `{"loadBalancingConfig":[{"round_robin":{}}]}`

func newRegistry(t *testing.T, h *harness) *etcdregistry.EtcdRegistry {
	t.Helper()
	reg, err := etcdregistry.New(etcdregistry.Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

func newBuilder(t *testing.T, reg *etcdregistry.EtcdRegistry, opts ...grpcresolver.Option) *grpcresolver.Builder {
	t.Helper()
	b, err := grpcresolver.NewBuilder(reg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// register registers a node and waits until it is in etcd.
func register(t *testing.T, reg *etcdregistry.EtcdRegistry, service, name string, info map[string]string) *etcdregistry.Registration {
	t.Helper()
	g, err := reg.Register(t.Context(), service, etcdregistry.Node{Name: name, Info: info}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Done():
	case err := <-g.Errors():
		t.Fatalf("registering %s: %v", name, err)
	case <-time.After(waitLimit):
		t.Fatalf("%s not registered in time", name)
	}
	return g
}

func unregister(t *testing.T, g *etcdregistry.Registration) {
	t.Helper()
	if err := g.Unregister(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// startServer runs a real gRPC server (with grpc's health service) on a free loopback port;
// it is stopped when the test ends.
func startServer(t *testing.T) (*grpc.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return s, l.Addr().String()
}

func newClient(t *testing.T, b *grpcresolver.Builder, service string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(b.Scheme()+":///"+service,
		grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(roundRobin))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// call makes one health check (failing fast, as calls do by default) and returns the address
// of the server that answered.
func call(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	return p.Addr.String(), nil
}

func mustCall(t *testing.T, conn *grpc.ClientConn) string {
	t.Helper()
	addr, err := call(t.Context(), conn)
	if err != nil {
		t.Fatalf("call failed: %v", err)
	}
	return addr
}

// waitServedBy calls until every one of addrs has answered at least once. Every call must
// succeed.
func waitServedBy(t *testing.T, conn *grpc.ClientConn, addrs ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, a := range addrs {
		missing[a] = true
	}
	deadline := time.Now().Add(waitLimit)
	for len(missing) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no call reached %v", missing)
		}
		delete(missing, mustCall(t, conn))
	}
}

// waitNotServedBy calls until the client has dropped addr: round_robin cycles through the
// ready servers in order, so `window` calls in a row (at least twice the number of servers)
// that all miss addr mean it is out of the rotation. Every call must succeed.
func waitNotServedBy(t *testing.T, conn *grpc.ClientConn, addr string, window int) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for misses := 0; misses < window; {
		if time.Now().After(deadline) {
			t.Fatalf("calls still reach %s", addr)
		}
		if mustCall(t, conn) == addr {
			misses = 0
		} else {
			misses++
		}
	}
}

// servedBy is the set of servers that answer n calls in a row.
func servedBy(t *testing.T, conn *grpc.ClientConn, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		got[mustCall(t, conn)]++
	}
	return got
}

// A client keeps working while servers come and go: its calls reach every registered server,
// never fail, leave a server that unregisters, reach one that registers, and follow a node
// whose address changes.
func TestClientFollowsServersComingAndGoing(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	const service = "greeter"
	servers := map[string]*grpc.Server{}
	regs := map[string]*etcdregistry.Registration{}
	addrs := map[string]string{}
	for _, name := range []string{"node1", "node2", "node3"} {
		s, addr := startServer(t)
		servers[name], addrs[name] = s, addr
		regs[name] = register(t, reg, service, name, map[string]string{"address": addr})
	}
	conn := newClient(t, newBuilder(t, reg), service)

	// Every server gets calls.
	waitServedBy(t, conn, addrs["node1"], addrs["node2"], addrs["node3"])

	// node1 leaves: it stops (finishing its calls) and unregisters. Calls keep succeeding on
	// the others, and none reaches node1 any more.
	servers["node1"].GracefulStop()
	unregister(t, regs["node1"])
	waitNotServedBy(t, conn, addrs["node1"], 6)
	if got := servedBy(t, conn, 20); got[addrs["node2"]] == 0 || got[addrs["node3"]] == 0 || len(got) != 2 {
		t.Fatalf("after node1 left, calls went to %v, want node2 %s and node3 %s", got, addrs["node2"], addrs["node3"])
	}

	// node4 joins: it starts receiving calls.
	s4, addr4 := startServer(t)
	servers["node4"], addrs["node4"] = s4, addr4
	regs["node4"] = register(t, reg, service, "node4", map[string]string{"address": addr4})
	waitServedBy(t, conn, addr4)

	// node2 moves to a new server (re-registered under the same name with a new address):
	// traffic moves from its old server to the new one, and the old one can then stop.
	_, moved := startServer(t)
	register(t, reg, service, "node2", map[string]string{"address": moved})
	waitServedBy(t, conn, moved)
	waitNotServedBy(t, conn, addrs["node2"], 6)
	servers["node2"].GracefulStop()
	got := servedBy(t, conn, 30)
	want := []string{addrs["node3"], addr4, moved}
	if len(got) != len(want) {
		t.Fatalf("calls went to %v, want %v", got, want)
	}
	for _, a := range want {
		if got[a] == 0 {
			t.Fatalf("calls went to %v, none to %s", got, a)
		}
	}
}

// A server that dies without unregistering (here: stopped at once) is skipped by round_robin
// until its key goes; calls made after it is gone from etcd all succeed on the others.
func TestClientSurvivesServerCrash(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	const service = "crashy"
	s1, addr1 := startServer(t)
	_, addr2 := startServer(t)
	g1 := register(t, reg, service, "node1", map[string]string{"address": addr1})
	register(t, reg, service, "node2", map[string]string{"address": addr2})
	conn := newClient(t, newBuilder(t, reg), service)
	waitServedBy(t, conn, addr1, addr2)

	s1.Stop() // closes its connections at once, like a crash
	// A call racing with the crash may fail; once the client has seen the connection drop,
	// every call goes to node2.
	deadline := time.Now().Add(waitLimit)
	for ok := 0; ok < 5; {
		if time.Now().After(deadline) {
			t.Fatal("calls did not settle on node2")
		}
		if addr, err := call(t.Context(), conn); err == nil && addr == addr2 {
			ok++
		} else {
			ok = 0
		}
	}
	unregister(t, g1) // what the lease's expiry would do later
	if got := servedBy(t, conn, 10); got[addr2] != 10 {
		t.Fatalf("calls went to %v, want all to node2 %s", got, addr2)
	}
}

// recordingConn is the gRPC side of a resolver, recording what the resolver reports, so that
// a test reads the exact states (resolver.ClientConn is meant to be embedded this way).
type recordingConn struct {
	resolver.ClientConn
	states chan resolver.State
	errs   chan error
}

func newRecordingConn() *recordingConn {
	return &recordingConn{states: make(chan resolver.State, 100), errs: make(chan error, 100)}
}

func (c *recordingConn) UpdateState(s resolver.State) error {
	c.states <- s
	return nil
}

func (c *recordingConn) ReportError(err error) { c.errs <- err }

func (c *recordingConn) nextState(t *testing.T) resolver.State {
	t.Helper()
	select {
	case s := <-c.states:
		return s
	case err := <-c.errs:
		t.Fatalf("resolver reported %v", err)
	case <-time.After(waitLimit):
		t.Fatal("no resolver state came")
	}
	return resolver.State{}
}

func (c *recordingConn) nextError(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.errs:
		return err
	case <-time.After(waitLimit):
		t.Fatal("the resolver reported no error")
		return nil
	}
}

func build(t *testing.T, b *grpcresolver.Builder, target string, cc resolver.ClientConn) resolver.Resolver {
	t.Helper()
	r, err := b.Build(parseTarget(t, target), cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func parseTarget(t *testing.T, target string) resolver.Target {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	return resolver.Target{URL: *u}
}

// checkState checks the addresses of a state, in order, and that each address and its
// endpoint carry the node.
func checkState(t *testing.T, s resolver.State, want ...etcdregistry.Node) {
	t.Helper()
	if len(s.Addresses) != len(want) || len(s.Endpoints) != len(want) {
		t.Fatalf("state has %d addresses, %d endpoints: %v; want %d", len(s.Addresses), len(s.Endpoints), s.Addresses, len(want))
	}
	for i, n := range want {
		a, e := s.Addresses[i], s.Endpoints[i]
		if a.Addr != n.Info["address"] && a.Addr != n.Info["grpc"] {
			t.Fatalf("address %d is %q, want that of %v", i, a.Addr, n)
		}
		if len(e.Addresses) != 1 || e.Addresses[0].Addr != a.Addr {
			t.Fatalf("endpoint %d is %v, want %s", i, e.Addresses, a.Addr)
		}
		for what, attrs := range map[string]*attributes.Attributes{"address": a.Attributes, "endpoint": e.Attributes} {
			got, ok := grpcresolver.NodeOf(attrs)
			if !ok || !reflect.DeepEqual(got, n) {
				t.Fatalf("%s %d carries node %v (%v), want %v", what, i, got, ok, n)
			}
		}
	}
}

// The resolver gives the nodes with an address, sorted by name, each with its info, and a
// new state after each change.
func TestResolverStates(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	const service = "states"
	a := etcdregistry.Node{Name: "a", Info: map[string]string{"address": "127.0.0.1:1001", "version": "1"}}
	noAddr := etcdregistry.Node{Name: "b", Info: map[string]string{"version": "1"}}
	otherKey := etcdregistry.Node{Name: "c", Info: map[string]string{"grpc": "127.0.0.1:1003"}}
	// Addresses gRPC could only fail to dial are skipped too; a unix socket is an address.
	noPort := etcdregistry.Node{Name: "e", Info: map[string]string{"address": "10.0.0.5"}}
	url := etcdregistry.Node{Name: "f", Info: map[string]string{"address": "http://10.0.0.6:80/"}}
	socket := etcdregistry.Node{Name: "g", Info: map[string]string{"address": "unix:///run/g.sock"}}
	for _, n := range []etcdregistry.Node{a, noAddr, otherKey, noPort, url, socket} {
		register(t, reg, service, n.Name, n.Info)
	}

	cc := newRecordingConn()
	build(t, newBuilder(t, reg), "etcd-registry:///"+service, cc)
	// b has no address, c's is under another key, e's and f's are not host:port.
	checkState(t, cc.nextState(t), a, socket)
	waitWarning(t, `service "states": node "b" is skipped: its info has no "address"`)
	waitWarning(t, `service "states": node "c" is skipped`)
	waitWarning(t, `service "states": node "e" is skipped: its "address", "10.0.0.5", is not host:port`)
	waitWarning(t, `service "states": node "f" is skipped: its "address", "http://10.0.0.6:80/", is not host:port`)

	d := etcdregistry.Node{Name: "d", Info: map[string]string{"address": "127.0.0.1:1004"}}
	gd := register(t, reg, service, d.Name, d.Info)
	checkState(t, cc.nextState(t), a, d, socket)

	a.Info = map[string]string{"address": "127.0.0.1:1001", "version": "2"}
	register(t, reg, service, a.Name, a.Info) // replaces a's registration: its info changes
	checkState(t, cc.nextState(t), a, d, socket)

	unregister(t, gd)
	checkState(t, cc.nextState(t), a, socket)

	// Another info key; the opaque form of the target.
	cc2 := newRecordingConn()
	build(t, newBuilder(t, reg, grpcresolver.WithAddressKey("grpc")), "etcd-registry:"+service, cc2)
	checkState(t, cc2.nextState(t), otherKey)

	// A service without nodes resolves to no address at once (calls fail fast rather than
	// wait for a node).
	cc3 := newRecordingConn()
	build(t, newBuilder(t, reg), "etcd-registry:///nobody-here", cc3)
	checkState(t, cc3.nextState(t))
}

// While etcd cannot be reached, the resolver reports the error to the client and retries;
// once etcd is back, the nodes come.
func TestResolverReportsEtcdDown(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	n := etcdregistry.Node{Name: "n1", Info: map[string]string{"address": "127.0.0.1:1001"}}
	register(t, reg, "svc", n.Name, n.Info)
	h.do(t, "stop 0")

	cc := newRecordingConn()
	build(t, newBuilder(t, reg), "etcd-registry:///svc", cc)
	err := cc.nextError(t)
	if !errors.Is(err, etcdregistry.ErrConnection) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reported %v, want a connection error or a timeout", err)
	}
	if !strings.Contains(err.Error(), `"svc"`) {
		t.Fatalf("reported %q, which does not name the service", err)
	}
	h.do(t, "start 0")
	deadline := time.After(waitLimit)
	for {
		select {
		case s := <-cc.states:
			checkState(t, s, n)
			return
		case <-cc.errs: // more failed attempts before etcd was back
		case <-deadline:
			t.Fatal("no state after etcd came back")
		}
	}
}

// What a gRPC client sees of it: calls made while etcd is down fail at once with the error,
// and once etcd is back they reach the server.
func TestClientWhileEtcdDown(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	_, addr := startServer(t)
	register(t, reg, "svc", "n1", map[string]string{"address": addr})
	h.do(t, "stop 0")
	conn := newClient(t, newBuilder(t, reg), "svc")
	_, err := call(t.Context(), conn)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `watching service "svc"`) {
		t.Fatalf("call with etcd down: %v; want Unavailable, saying why", err)
	}
	h.do(t, "start 0")
	deadline := time.Now().Add(waitLimit)
	for {
		got, err := call(t.Context(), conn)
		if err == nil {
			if got != addr {
				t.Fatalf("call reached %s, want %s", got, addr)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls still fail after etcd came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // a poll interval, not a wait for something
	}
}

// Closing the registry ends resolution with an error matching ErrClosed; Close of the
// resolver returns at once afterwards.
func TestResolverAfterRegistryClose(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	cc := newRecordingConn()
	r := build(t, newBuilder(t, reg), "etcd-registry:///svc", cc)
	checkState(t, cc.nextState(t))
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cc.nextError(t); !errors.Is(err, etcdregistry.ErrClosed) {
		t.Fatalf("reported %v, want ErrClosed", err)
	}
	r.Close()

	// A resolver built on a closed registry reports the same.
	cc2 := newRecordingConn()
	build(t, newBuilder(t, reg), "etcd-registry:///svc", cc2)
	if err := cc2.nextError(t); !errors.Is(err, etcdregistry.ErrClosed) {
		t.Fatalf("reported %v, want ErrClosed", err)
	}
}

// After Close, the client hears nothing more from the resolver.
func TestResolverCloseStopsUpdates(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	cc := newRecordingConn()
	r, err := newBuilder(t, reg).Build(parseTarget(t, "etcd-registry:///svc"), cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkState(t, cc.nextState(t))
	r.Close()
	register(t, reg, "svc", "n1", map[string]string{"address": "127.0.0.1:1001"})
	// A resolver still running would report n1 now; the registry's own watch proves the
	// event went out.
	w, err := reg.WatchService(t.Context(), "svc")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-w.Events():
	case <-time.After(waitLimit):
		t.Fatal("no event")
	}
	select {
	case s := <-cc.states:
		t.Fatalf("state after Close: %v", s)
	case err := <-cc.errs:
		t.Fatalf("error after Close: %v", err)
	default:
	}
}

func TestNewBuilderRejectsBadArguments(t *testing.T) {
	reg, err := etcdregistry.NewEtcdRegistry([]string{"127.0.0.1:1"}, "/services", "", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cases := []struct {
		name string
		reg  *etcdregistry.EtcdRegistry
		opts []grpcresolver.Option
	}{
		{"nil registry", nil, nil},
		{"empty scheme", reg, []grpcresolver.Option{grpcresolver.WithScheme("")}},
		{"upper-case scheme", reg, []grpcresolver.Option{grpcresolver.WithScheme("Etcd")}},
		{"scheme starting with a digit", reg, []grpcresolver.Option{grpcresolver.WithScheme("1etcd")}},
		{"scheme with a colon", reg, []grpcresolver.Option{grpcresolver.WithScheme("etcd:x")}},
		{"empty address key", reg, []grpcresolver.Option{grpcresolver.WithAddressKey("")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := grpcresolver.NewBuilder(c.reg, c.opts...); !errors.Is(err, etcdregistry.ErrInvalidArgument) {
				t.Fatalf("got %v, want an error matching ErrInvalidArgument", err)
			}
		})
	}
	b, err := grpcresolver.NewBuilder(reg, grpcresolver.WithScheme("etcd-b"))
	if err != nil || b.Scheme() != "etcd-b" {
		t.Fatalf("scheme %q, %v", b.Scheme(), err)
	}
}

// A target without a service, with an authority, or naming a service the library refuses, is
// refused with a clear error.
func TestBadTargets(t *testing.T) {
	reg, err := etcdregistry.NewEtcdRegistry([]string{"127.0.0.1:1"}, "/services", "", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	// The resolver refuses what the library refuses.
	for _, service := range []string{" ", ".", "..", "a\x00"} {
		if _, err := reg.WatchService(t.Context(), service); !errors.Is(err, etcdregistry.ErrInvalidArgument) {
			t.Errorf("WatchService(%q): got %v, want ErrInvalidArgument", service, err)
		}
	}
	b := newBuilder(t, reg)
	for target, want := range map[string]string{
		"etcd-registry:///":           "names no service",
		"etcd-registry://host/my-svc": "has an authority",
		// Names the library refuses to watch (checked below): not retried for ever.
		"etcd-registry:///%20":  "is not a service name",
		"etcd-registry:///.":    "is not a service name",
		"etcd-registry:///..":   "is not a service name",
		"etcd-registry:///a%00": "is not a service name",
	} {
		if _, err := b.Build(parseTarget(t, target), newRecordingConn(), resolver.BuildOptions{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error saying %q", target, err, want)
		}
		// Through gRPC: the call fails with it.
		conn, err := grpc.NewClient(target, grpc.WithResolvers(b), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: NewClient: %v", target, err)
			}
			continue
		}
		_, err = call(t.Context(), conn)
		conn.Close()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: call got %v, want an error saying %q", target, err, want)
		}
	}
}

// Another scheme and another info key, through a real client.
func TestCustomSchemeAndAddressKey(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	_, addr := startServer(t)
	register(t, reg, "svc", "n1", map[string]string{"grpc": addr, "address": "127.0.0.1:1"})
	b := newBuilder(t, reg, grpcresolver.WithScheme("etcd-b"), grpcresolver.WithAddressKey("grpc"))
	conn := newClient(t, b, "svc") // etcd-b:///svc
	if got := servedBy(t, conn, 3); got[addr] != 3 {
		t.Fatalf("calls went to %v, want %s", got, addr)
	}
}

// gRPC closes the resolver of a client left idle and builds a new one at its next call: made
// while etcd is down, that call still reaches the server, through the nodes last known.
func TestClientBackFromIdleWhileEtcdDown(t *testing.T) {
	backFromIdleWhileEtcdDown(t, 2*time.Second, 10*time.Second)
}

// The same when the registry's timeout is longer than the call's deadline: the watch waits
// for etcd up to that timeout, but the resolver gives the nodes last known meanwhile, so the
// call does not wait for it.
func TestClientBackFromIdleWhileEtcdDownLongTimeout(t *testing.T) {
	backFromIdleWhileEtcdDown(t, 20*time.Second, 5*time.Second)
}

func backFromIdleWhileEtcdDown(t *testing.T, registryTimeout, callDeadline time.Duration) {
	h := newHarness(t)
	reg, err := etcdregistry.New(etcdregistry.Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: registryTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	_, addr := startServer(t)
	register(t, reg, "svc", "n1", map[string]string{"address": addr})
	conn, err := grpc.NewClient("etcd-registry:///svc",
		grpc.WithResolvers(newBuilder(t, reg)),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithIdleTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if got := mustCall(t, conn); got != addr {
		t.Fatalf("call reached %s, want %s", got, addr)
	}
	deadline := time.Now().Add(waitLimit)
	for conn.GetState() != connectivity.Idle {
		if time.Now().After(deadline) {
			t.Fatalf("the client did not go idle: %v", conn.GetState())
		}
		time.Sleep(50 * time.Millisecond) // a poll interval, not a wait for something
	}
	h.do(t, "stop 0")
	ctx, cancel := context.WithTimeout(t.Context(), callDeadline)
	defer cancel()
	got, err := call(ctx, conn)
	if err != nil || got != addr {
		t.Fatalf("call after idle with etcd down: %q, %v; want %s", got, err, addr)
	}
	h.do(t, "start 0")
}

// ResolveNow cuts short the wait after a failed attempt: once etcd is back, the client asking
// gets the nodes without waiting for the next attempt (here 10 minutes away).
func TestResolveNowRetriesAtOnce(t *testing.T) {
	grpcresolver.SetRetryDelays(t, 10*time.Minute, 10*time.Minute) // far beyond waitLimit
	h := newHarness(t)
	reg := newRegistry(t, h)
	n := etcdregistry.Node{Name: "n1", Info: map[string]string{"address": "127.0.0.1:1001"}}
	register(t, reg, "svc", n.Name, n.Info)
	h.do(t, "stop 0")

	cc := newRecordingConn()
	r := build(t, newBuilder(t, reg), "etcd-registry:///svc", cc)
	cc.nextError(t) // the first attempt failed; the next one is 10 minutes away
	h.do(t, "start 0")
	deadline := time.After(waitLimit)
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for {
		r.ResolveNow(resolver.ResolveNowOptions{}) // as gRPC does when a connection fails
		select {
		case s := <-cc.states:
			checkState(t, s, n)
			return
		case <-cc.errs: // an attempt made before etcd was ready
		case <-poll.C:
		case <-deadline:
			t.Fatal("no state after etcd came back, despite ResolveNow")
		}
	}
}

// A node without an address is warned about once, however often it changes, and the warning
// names its info keys but not their values (which may be secrets).
func TestSkippedNodeWarnedOnce(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	const service = "warn-once"
	logged := len(grpcWarnings.String()) // what was logged before (this test run again, -count)
	a := etcdregistry.Node{Name: "a", Info: map[string]string{"address": "127.0.0.1:1000"}}
	ga := register(t, reg, service, a.Name, a.Info)
	cc := newRecordingConn()
	build(t, newBuilder(t, reg), "etcd-registry:///"+service, cc)
	checkState(t, cc.nextState(t), a)

	var g *etcdregistry.Registration
	for i := range 4 {
		info := map[string]string{"version": strconv.Itoa(i), "token": "s3cret-" + strconv.Itoa(i)}
		if g == nil {
			g = register(t, reg, service, "no-address", info)
		} else {
			update(t, g, info)
		}
		// a changes after it in etcd: the state with a's change comes once the resolver has
		// seen the change of no-address.
		a.Info = map[string]string{"address": "127.0.0.1:" + strconv.Itoa(1001+i)}
		update(t, ga, a.Info)
		checkState(t, cc.nextState(t), a)
	}
	var warnings []string
	for line := range strings.Lines(grpcWarnings.String()[logged:]) {
		if strings.Contains(line, `service "warn-once": node "no-address"`) {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d warnings about no-address, want 1:\n%s", len(warnings), strings.Join(warnings, ""))
	}
	if !strings.Contains(warnings[0], `["token" "version"]`) || strings.Contains(warnings[0], "s3cret") {
		t.Fatalf("warning %q: want the info keys, sorted, and no value", warnings[0])
	}
}

// update changes a registration's info and waits until it is in etcd.
func update(t *testing.T, g *etcdregistry.Registration, info map[string]string) {
	t.Helper()
	events := g.Events()
	if err := g.Update(info); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(waitLimit)
	for {
		select {
		case ev := <-events:
			if ev.Kind == etcdregistry.StatusUpdated {
				return
			}
			if ev.Kind == etcdregistry.StatusUnregistered {
				t.Fatalf("registration of %s ended: %v", g.NodeName(), ev.Err)
			}
		case <-deadline:
			t.Fatalf("update of %s not in etcd in time", g.NodeName())
		}
	}
}
