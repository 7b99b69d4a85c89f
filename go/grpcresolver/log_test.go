package grpcresolver_test

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/grpclog"
)

// grpcWarnings collects what gRPC (and so the resolver) logs at warning level and above; grpc
// allows replacing its logger only before it is used, hence init.
var grpcWarnings lockedBuffer

func init() {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, &grpcWarnings, &grpcWarnings))
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitWarning waits until grpc's log has a line containing every one of parts.
func waitWarning(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		for line := range strings.Lines(grpcWarnings.String()) {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}
			if found {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning with %q in grpc's log:\n%s", parts, grpcWarnings.String())
		}
		time.Sleep(50 * time.Millisecond) // a poll interval
	}
}
