package etcdregistry

// The library never prints. SetLogger forwards its log messages to a *slog.Logger: the C
// library calls goer_log_trampoline (log_trampoline.c) on any thread, maybe several at once
// (the header's rule), with a runtime/cgo.Handle of the logger as user data, and the trampoline
// calls goEtcdRegistryLog below, which is safe for that (it touches only a channel and an
// atomic count). A Go pointer never crosses into C.
//
// goEtcdRegistryLog only queues the record: a goroutine of its own hands it to the logger. The
// library's threads run its keep-alives and calls, which a slow or blocked handler (a full
// stderr pipe, a stalled network sink) must not hold up. A record that finds the queue full is
// dropped and counted; the count is logged before the next record.

/*
#include <stdint.h>
*/
import "C"

import (
	"context"
	"log/slog"
	"runtime/cgo"
	"sync"
	"sync/atomic"
)

// LevelTrace is the slog level of the library's trace messages (below slog.LevelDebug).
const LevelTrace = slog.LevelDebug - 4

var logMu sync.Mutex     // serializes SetLogger
var logHandle cgo.Handle // the installed logger's handle, 0 when none

// logQueueLen is how many records wait for the logger before more are dropped.
const logQueueLen = 1024

// logRecord is a library record waiting for the logger of the handle it came with.
type logRecord struct {
	handle          uintptr
	logger          *slog.Logger
	level           slog.Level
	message, target string
}

var (
	logQueue     = make(chan logRecord, logQueueLen)
	logCurrent   atomic.Uintptr // the handle whose records are delivered; 0: none
	logDropped   atomic.Uint64  // records dropped since the last one delivered
	logDrainOnce sync.Once
)

// drainLogs hands the queued records to their loggers, for ever: records of a logger replaced
// since they were queued are dropped. The logger is looked at just before each call, and no
// lock is held during the call, so SetLogger never waits for a handler: once it has returned,
// only a call already decided on (the record being handed over then) may still reach the
// previous logger.
func drainLogs() {
	for r := range logQueue {
		if r.handle != logCurrent.Load() {
			continue
		}
		if n := logDropped.Swap(0); n > 0 {
			deliver(r.logger, slog.LevelWarn, "library log records dropped: the log handler was too slow",
				"etcd_registry", slog.Uint64("dropped", n))
			if r.handle != logCurrent.Load() {
				continue // replaced while the warning was handled
			}
		}
		deliver(r.logger, r.level, r.message, r.target)
	}
}

// deliver logs one record; a panic of the handler loses it, and nothing else.
func deliver(logger *slog.Logger, level slog.Level, message, target string, attrs ...any) {
	defer func() { _ = recover() }()
	logger.Log(context.Background(), level, message, append([]any{slog.String("target", target)}, attrs...)...)
}

// SetLogger forwards the library's log messages, process-wide, to logger; nil turns forwarding
// off (the default). Each message is logged at the matching slog level (trace below debug)
// with a "target" attribute naming the library's module. Only the levels logger is enabled for
// are forwarded, as decided when SetLogger is called. The logger's handler is called on a
// goroutine of this package, one record at a time, in order, and must not call into this
// package. A handler that is slow or blocks holds up nothing of the library, SetLogger
// included: up to 1024 records wait for it, later ones are dropped (a warning with their count
// comes before the next record logged). Once SetLogger returns, the previous logger gets no new
// record and records still queued for it are dropped; SetLogger does not wait for a call
// already under way, so the one record being handed to the previous logger then (a handler
// blocked in it, say) may still be in, or about to enter, its handler.
func SetLogger(logger *slog.Logger) error {
	logMu.Lock()
	defer logMu.Unlock()
	level := uint32(logOff)
	if logger != nil {
		level = maxLibraryLevel(logger)
	}
	var handle cgo.Handle
	if level != logOff {
		handle = cgo.NewHandle(logger)
		logDrainOnce.Do(func() { go drainLogs() })
	}
	logCurrent.Store(uintptr(handle))
	if err := cSetLog(level, uintptr(handle)); err != nil {
		logCurrent.Store(uintptr(logHandle))
		if handle != 0 {
			handle.Delete()
		}
		return err
	}
	// Once the library has switched, the previous callback is not running and never will, and
	// drainLogs hands the previous logger no record it has not already decided on.
	logDropped.Store(0)
	if logHandle != 0 {
		logHandle.Delete()
	}
	logHandle = handle
	return nil
}

// maxLibraryLevel is the most verbose library level logger wants.
func maxLibraryLevel(logger *slog.Logger) uint32 {
	ctx := context.Background()
	for _, l := range []struct {
		slog    slog.Level
		library uint32
	}{
		{LevelTrace, logTrace},
		{slog.LevelDebug, logDebug},
		{slog.LevelInfo, logInfo},
		{slog.LevelWarn, logWarn},
		{slog.LevelError, logError},
	} {
		if logger.Enabled(ctx, l.slog) {
			return l.library
		}
	}
	return logOff
}

func slogLevel(level uint32) slog.Level {
	switch level {
	case logError:
		return slog.LevelError
	case logWarn:
		return slog.LevelWarn
	case logInfo:
		return slog.LevelInfo
	case logDebug:
		return slog.LevelDebug
	default:
		return LevelTrace
	}
}

//export goEtcdRegistryLog
func goEtcdRegistryLog(level C.uint32_t, target, message *C.char, handle C.uintptr_t) {
	// A panic must not unwind into the library's thread.
	defer func() { _ = recover() }()
	logger, ok := cgo.Handle(handle).Value().(*slog.Logger)
	if !ok {
		return
	}
	r := logRecord{
		handle:  uintptr(handle),
		logger:  logger,
		level:   slogLevel(uint32(level)),
		message: C.GoString(message),
		target:  C.GoString(target),
	}
	select {
	case logQueue <- r:
	default:
		logDropped.Add(1)
	}
}
