package grpcresolver_test

// The tests talk to real etcd servers run by the shared harness (tests/harness, the
// etcd-harness program), as the etcdregistry tests do (go/harness_test.go has the protocol):
// `etcd-harness serve` prints one JSON line with the endpoints, then answers one command per
// stdin line with one JSON line. Each test starts its own cluster.

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type harness struct {
	cmd       *exec.Cmd
	mu        sync.Mutex // one command at a time
	stdin     io.WriteCloser
	stdout    *bufio.Reader
	endpoints []string
}

func harnessBinary() string {
	if bin := os.Getenv("ETCD_HARNESS_BIN"); bin != "" {
		return bin
	}
	return filepath.Join("..", "..", "target", "debug", "etcd-harness")
}

// newHarness starts an etcd of the test's own, stopped when the test ends.
func newHarness(t *testing.T) *harness {
	t.Helper()
	bin := harnessBinary()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("etcd-harness not found at %s (build it: cargo build -p etcd-harness, or set ETCD_HARNESS_BIN): %v", bin, err)
	}
	cmd := exec.Command(bin, "serve")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &harness{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
	t.Cleanup(h.stop)
	line, err := h.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("etcd-harness did not start: %v", err)
	}
	var hello struct {
		OK        bool     `json:"ok"`
		Endpoints []string `json:"endpoints"`
	}
	if err := json.Unmarshal([]byte(line), &hello); err != nil || !hello.OK {
		t.Fatalf("etcd-harness did not start: %q %v", line, err)
	}
	h.endpoints = hello.Endpoints
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

// do sends one command and fails the test unless it succeeds.
func (h *harness) do(t *testing.T, command string) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := io.WriteString(h.stdin, command+"\n"); err != nil {
		t.Fatalf("harness %q: %v", command, err)
	}
	line, err := h.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("harness %q: %v", command, err)
	}
	var reply struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(line), &reply); err != nil || !reply.OK {
		t.Fatalf("harness %q: %q %v", command, line, err)
	}
}
