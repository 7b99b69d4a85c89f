package etcdregistry

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// captureHandler keeps every record it is given.
type captureHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *captureHandler) WithGroup(string) slog.Handler            { return h }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}

func (h *captureHandler) find(match func(slog.Record) bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.records {
		if match(r) {
			return true
		}
	}
	return false
}

func attr(r slog.Record, key string) string {
	value := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			value = a.Value.String()
			return false
		}
		return true
	})
	return value
}

// Credentials given to an etcd without authentication are dropped with a warning, which
// reaches the slog logger with the library's module as "target".
func TestLogsGoToSlog(t *testing.T) {
	capture := &captureHandler{}
	if err := SetLogger(slog.New(capture)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = SetLogger(nil) })
	r := newRegistryWithCredentials(t, shared.endpoints, "someone", "secret")
	done, errs, err := r.RegisterNode(t.Context(), serviceName(t), Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	eventually(t, "a warning is logged", func() bool {
		return capture.find(func(r slog.Record) bool {
			return r.Level == slog.LevelWarn && strings.HasPrefix(attr(r, "target"), "etcd_registry")
		})
	})
	if !capture.find(func(r slog.Record) bool { return r.Level < slog.LevelInfo }) {
		t.Error("no debug or trace record, though the handler wants every level")
	}

	// Off: nothing more arrives.
	if err := SetLogger(nil); err != nil {
		t.Fatal(err)
	}
	capture.mu.Lock()
	n := len(capture.records)
	capture.mu.Unlock()
	if _, err := r.GetServiceNodes("svc"); err != nil {
		t.Fatal(err)
	}
	capture.mu.Lock()
	defer capture.mu.Unlock()
	if len(capture.records) != n {
		t.Fatalf("%d records after SetLogger(nil)", len(capture.records)-n)
	}
}

// levelHandler wants only records of min and above.
type levelHandler struct {
	captureHandler
	min slog.Level
}

func (h *levelHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.min }

func TestLoggerLevelFiltersInTheLibrary(t *testing.T) {
	capture := &levelHandler{min: slog.LevelWarn}
	if err := SetLogger(slog.New(capture)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = SetLogger(nil) })
	r := newRegistry(t, shared.endpoints)
	done, errs, err := r.RegisterNode(t.Context(), serviceName(t), Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	if capture.find(func(r slog.Record) bool { return r.Level < slog.LevelWarn }) {
		t.Fatal("records below warn were forwarded")
	}
}

// panicHandler panics on every record.
type panicHandler struct{ calls atomic.Int64 }

func (h *panicHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *panicHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *panicHandler) WithGroup(string) slog.Handler            { return h }
func (h *panicHandler) Handle(context.Context, slog.Record) error {
	h.calls.Add(1)
	panic("handler bug")
}

// A panicking handler loses its messages but neither crashes the process nor disturbs the
// library: the trampoline recovers.
func TestPanickingLogHandlerIsContained(t *testing.T) {
	h := &panicHandler{}
	if err := SetLogger(slog.New(h)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = SetLogger(nil) })
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	eventually(t, "the handler is called", func() bool { return h.calls.Load() > 0 })
	nodes, err := r.GetServiceNodes(service)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("listed %v, %v", nodes, err)
	}
}

// blockingHandler blocks in Handle until release is closed, once entered is signalled.
type blockingHandler struct {
	entered chan struct{}
	release chan struct{}
	calls   atomic.Int64
}

func (h *blockingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *blockingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *blockingHandler) WithGroup(string) slog.Handler            { return h }
func (h *blockingHandler) Handle(context.Context, slog.Record) error {
	h.calls.Add(1)
	select {
	case h.entered <- struct{}{}:
	default:
	}
	<-h.release
	return nil
}

// A log handler that blocks (a full stderr pipe, a stalled network sink) holds up nothing of
// the library: while it blocks, calls are answered and registrations land.
func TestABlockedLogHandlerHoldsUpNothing(t *testing.T) {
	h := &blockingHandler{entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := SetLogger(slog.New(h)); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			close(h.release)
			released = true
		}
	}
	t.Cleanup(func() { release(); _ = SetLogger(nil) })
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	// Credentials given to an etcd without authentication: a warning, in which the handler
	// blocks.
	other := newRegistryWithCredentials(t, shared.endpoints, "someone", "secret")
	go func() { _, _ = other.GetServiceNodes(service) }()
	select {
	case <-h.entered:
	case <-time.After(waitLimit):
		t.Fatal("the handler was never called")
	}

	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	done, errs, err := r.RegisterNode(ctx, service, Node{Name: "node1"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, errs)
	nodes, err := r.GetServiceNodesContext(ctx, service)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("listed %v, %v while the log handler blocks", nodes, err)
	}

	release()
	if err := SetLogger(nil); err != nil {
		t.Fatal(err)
	}
}

// SetLogger does not wait for a handler blocked in a record: it returns, records logged since
// go to the new logger, and the previous one gets none after the one it was blocked in.
func TestSetLoggerDoesNotWaitForABlockedHandler(t *testing.T) {
	h := &blockingHandler{entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := SetLogger(slog.New(h)); err != nil {
		t.Fatal(err)
	}
	release := sync.OnceFunc(func() { close(h.release) })
	t.Cleanup(func() { release(); _ = SetLogger(nil) })
	service := serviceName(t)
	// Credentials given to an etcd without authentication: a warning, in which the handler
	// blocks.
	other := newRegistryWithCredentials(t, shared.endpoints, "someone", "secret")
	go func() { _, _ = other.GetServiceNodes(service) }()
	select {
	case <-h.entered:
	case <-time.After(waitLimit):
		t.Fatal("the handler was never called")
	}

	capture := &captureHandler{}
	switched := make(chan error, 1)
	go func() { switched <- SetLogger(slog.New(capture)) }()
	select {
	case err := <-switched:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("SetLogger waits for the handler blocked in a record")
	}
	release()
	// More records: they reach the new logger (so the old one's record is done with).
	again := newRegistryWithCredentials(t, shared.endpoints, "someone", "secret")
	if _, err := again.GetServiceNodes(service); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new logger gets records", func() bool {
		return capture.find(func(r slog.Record) bool {
			return r.Level == slog.LevelWarn && strings.HasPrefix(attr(r, "target"), "etcd_registry")
		})
	})
	if calls := h.calls.Load(); calls != 1 {
		t.Fatalf("the previous logger was called %d times, want only the record it was blocked in", calls)
	}
}

// gatedHandler holds its first record until released, and keeps every record after it.
type gatedHandler struct {
	captureHandler
	first   sync.Once
	release chan struct{}
}

func (h *gatedHandler) Handle(ctx context.Context, r slog.Record) error {
	h.first.Do(func() { <-h.release })
	return h.captureHandler.Handle(ctx, r)
}

// Records that find the queue full while the handler is held up are dropped, and counted: the
// handler gets a warning with their count before the next record.
func TestRecordsDroppedWhileTheHandlerIsHeldUpAreCounted(t *testing.T) {
	h := &gatedHandler{release: make(chan struct{})}
	if err := SetLogger(slog.New(h)); err != nil {
		t.Fatal(err)
	}
	released := sync.OnceFunc(func() { close(h.release) })
	t.Cleanup(func() { released(); _ = SetLogger(nil) })
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	// Each node of a TTL of its own is the first of its lease, which logs (at debug level) its
	// grant and its registration: nodes until the queue is full and records dropped.
	ttl := 10
	eventually(t, "records dropped", func() bool {
		for range 50 {
			ttl++
			if _, err := r.Register(t.Context(), service, Node{Name: strconv.Itoa(ttl)}, time.Duration(ttl)*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		return logDropped.Load() > 0
	})
	dropped := logDropped.Load()
	released()
	eventually(t, "the warning with the count", func() bool {
		return h.find(func(r slog.Record) bool {
			if !strings.Contains(r.Message, "records dropped") {
				return false
			}
			n, err := strconv.ParseUint(attr(r, "dropped"), 10, 64)
			return err == nil && n >= dropped
		})
	})
}
