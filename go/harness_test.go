package etcdregistry

// The tests talk to real etcd servers run by the shared harness (tests/harness, the
// etcd-harness program): `etcd-harness serve` prints one JSON line with the endpoints, then
// takes one command per stdin line and answers each with one JSON line. TestMain starts one
// cluster for the tests that leave it as they found it; tests that break it (kill, auth) start
// their own.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type harness struct {
	cmd       *exec.Cmd
	mu        sync.Mutex // one command at a time
	stdin     io.WriteCloser
	stdout    *bufio.Reader
	endpoints []string
	tls       map[string]string // PEM paths by name (ca, client_cert, …) when started with --tls
}

// shared is the cluster of TestMain.
var shared *harness

func harnessBinary() string {
	if bin := os.Getenv("ETCD_HARNESS_BIN"); bin != "" {
		return bin
	}
	return filepath.Join("..", "target", "debug", "etcd-harness")
}

func startHarness(args ...string) (*harness, error) {
	bin := harnessBinary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("etcd-harness not found at %s (build it: cargo build -p etcd-harness, or set ETCD_HARNESS_BIN): %w", bin, err)
	}
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &harness{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
	line, err := h.stdout.ReadString('\n')
	if err != nil {
		h.stop()
		return nil, fmt.Errorf("etcd-harness did not start: %w", err)
	}
	var hello struct {
		OK        bool              `json:"ok"`
		Error     string            `json:"error"`
		Endpoints []string          `json:"endpoints"`
		TLS       map[string]string `json:"tls"`
	}
	if err := json.Unmarshal([]byte(line), &hello); err != nil || !hello.OK {
		h.stop()
		return nil, fmt.Errorf("etcd-harness did not start: %q %v", line, err)
	}
	h.endpoints = hello.Endpoints
	h.tls = hello.TLS
	return h, nil
}

// newHarness starts a cluster of the test's own, stopped when the test ends.
func newHarness(t *testing.T, args ...string) *harness {
	t.Helper()
	h, err := startHarness(args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	_ = h.stdin.Close() // EOF shuts the harness down
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
}

// do sends one command and returns its value; a failed command fails the test.
func (h *harness) do(t *testing.T, command string) json.RawMessage {
	t.Helper()
	value, err := h.try(command)
	if err != nil {
		t.Fatal(err)
	}
	return value
}

// try sends one command and returns its value, or the harness's error.
func (h *harness) try(command string) (json.RawMessage, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	name, _, _ := strings.Cut(command, " ")
	if _, err := io.WriteString(h.stdin, command+"\n"); err != nil {
		return nil, fmt.Errorf("harness %q: %v", name, err)
	}
	line, err := h.stdout.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("harness %q: %v", name, err)
	}
	var reply struct {
		OK    bool            `json:"ok"`
		Error string          `json:"error"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal([]byte(line), &reply); err != nil {
		return nil, fmt.Errorf("harness %q: bad reply %q: %v", name, line, err)
	}
	if !reply.OK {
		return nil, fmt.Errorf("harness %q: %s", name, reply.Error)
	}
	return reply.Value, nil
}

// getPrefix is etcd's content under prefix, read by the harness (not through the package).
func (h *harness) getPrefix(t *testing.T, prefix string) map[string]string {
	t.Helper()
	var pairs [][2]string
	if err := json.Unmarshal(h.do(t, "get-prefix "+prefix), &pairs); err != nil {
		t.Fatal(err)
	}
	kv := map[string]string{}
	for _, p := range pairs {
		kv[p[0]] = p[1]
	}
	return kv
}

func TestMain(m *testing.M) {
	var err error
	shared, err = startHarness()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// For the examples (example_test.go), which read the endpoints as a program would.
	os.Setenv("ETCD_ENDPOINTS", strings.Join(shared.endpoints, ","))
	code := m.Run()
	shared.stop()
	os.Exit(code)
}

// ---------------------------------------------------------------- helpers of the tests

const waitLimit = 30 * time.Second // an upper bound for anything to happen; never a measure

var serviceCounter atomic.Int64

// serviceName is a service no other test uses.
func serviceName(t *testing.T) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return fmt.Sprintf("%s-%d", strings.ToLower(name), serviceCounter.Add(1))
}

// newRegistry connects to endpoints with base path /services, closed when the test ends.
func newRegistry(t *testing.T, endpoints []string) *EtcdRegistry {
	t.Helper()
	r, err := NewEtcdRegistry(endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// waitDone waits for the first registration, failing on an error.
func waitDone(t *testing.T, done <-chan struct{}, errs <-chan error) {
	t.Helper()
	select {
	case <-done:
	case err := <-errs:
		t.Fatalf("registration failed: %v", err)
	case <-time.After(waitLimit):
		t.Fatal("not registered in time")
	}
}

func recvErr(t *testing.T, errs <-chan error) error {
	t.Helper()
	select {
	case err := <-errs:
		return err
	case <-time.After(waitLimit):
		t.Fatal("no error came")
		return nil
	}
}

// rangeErrs ranges over errs as a caller would, and returns the errors once the loop ends.
func rangeErrs(t *testing.T, errs <-chan error) []error {
	t.Helper()
	got := make(chan []error, 1)
	go func() {
		var all []error
		for err := range errs {
			all = append(all, err)
		}
		got <- all
	}()
	select {
	case all := <-got:
		return all
	case <-time.After(waitLimit):
		t.Fatal("for err := range errChan did not end")
		return nil
	}
}

// waitStatus reads status events until one of kind comes, returning it.
func waitStatus(t *testing.T, events <-chan StatusEvent, kind StatusKind) StatusEvent {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("status events ended before %v", kind)
			}
			if ev.Kind == kind {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v status event came", kind)
		}
	}
}

// waitWatch reads watch events until one matches.
func waitWatch(t *testing.T, w *Watch, typ WatchEventType, node string) WatchEvent {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended before %v %s", typ, node)
			}
			if ev.Type == typ && ev.Node.Name == node {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v event for %s came", typ, node)
		}
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func nodeNames(nodes []Node) []string {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return names
}
