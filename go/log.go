package etcdregistry

// The library never prints. SetLogger forwards its log messages to a *slog.Logger: the C
// library calls goer_log_trampoline (log_trampoline.c) on its own threads, one call at a time,
// with a runtime/cgo.Handle of the logger as user data, and the trampoline calls
// goEtcdRegistryLog below. A Go pointer never crosses into C.

/*
#include <stdint.h>
*/
import "C"

import (
	"context"
	"log/slog"
	"runtime/cgo"
	"sync"
)

// LevelTrace is the slog level of the library's trace messages (below slog.LevelDebug).
const LevelTrace = slog.LevelDebug - 4

var logMu sync.Mutex     // serializes SetLogger
var logHandle cgo.Handle // the installed logger's handle, 0 when none

// SetLogger forwards the library's log messages, process-wide, to logger; nil turns forwarding
// off (the default). Each message is logged at the matching slog level (trace below debug)
// with a "target" attribute naming the library's module. Only the levels logger is enabled for
// are forwarded, as decided when SetLogger is called. The logger's handler is called from the
// library's threads and must not call into this package.
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
	}
	if err := cSetLog(level, uintptr(handle)); err != nil {
		if handle != 0 {
			handle.Delete()
		}
		return err
	}
	// Once the library has switched, the previous callback is not running and never will.
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
	// A panic must not unwind into the library's thread: a broken handler loses the message.
	defer func() { _ = recover() }()
	logger, ok := cgo.Handle(handle).Value().(*slog.Logger)
	if !ok {
		return
	}
	logger.Log(context.Background(), slogLevel(uint32(level)), C.GoString(message),
		slog.String("target", C.GoString(target)))
}
