package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestErrorsMatchTheirKind(t *testing.T) {
	for status, want := range map[uint32]error{
		statusInvalidArgument: ErrInvalidArgument,
		statusInvalidUTF8:     ErrInvalidArgument,
		statusConnection:      ErrConnection,
		statusTimeout:         ErrTimeout,
		statusAuth:            ErrAuth,
		statusNotFound:        ErrNotFound,
		statusClosed:          ErrClosed,
		statusPanic:           ErrInternal,
		statusNullPointer:     ErrInternal,
		statusInternal:        ErrInternal,
		99:                    ErrInternal, // a status newer than this package
	} {
		err := fmt.Errorf("wrapped: %w", errorOfStatus("op", status, "message"))
		if !errors.Is(err, want) {
			t.Errorf("status %d: %v does not match %v", status, err, want)
		}
		for _, other := range sentinels {
			if other != want && errors.Is(err, other) {
				t.Errorf("status %d: %v also matches %v", status, err, other)
			}
		}
		if errors.Is(err, context.DeadlineExceeded) != (want == ErrTimeout) {
			t.Errorf("status %d: context.DeadlineExceeded match is wrong", status)
		}
		var e *Error
		if !errors.As(err, &e) || e.Op != "op" || e.Message != "message" {
			t.Errorf("status %d: errors.As gave %#v", status, e)
		}
	}
	if errorOfStatus("op", statusOK, "") != nil {
		t.Error("OK is an error")
	}
}

func TestErrorTexts(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{errorOfStatus("list", statusTimeout, "listing nodes did not finish within 1s (context deadline exceeded)"),
			"etcdregistry: list: listing nodes did not finish within 1s (context deadline exceeded)"},
		{errorOfStatus("list", statusTimeout, "too slow"), "etcdregistry: list: context deadline exceeded: too slow"},
		{errorOfStatus("register", statusAuth, "invalid password"), "etcdregistry: register: authentication: invalid password"},
		{errorOfStatus("keep-alive", statusConnection, "error reading from connection"),
			"etcdregistry: keep-alive: connection: error reading from connection"},
		{ErrClosed, "etcdregistry: closed"},
		{ErrReplaced, "etcdregistry: closed: replaced by a newer registration of the same node"},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	if !errors.Is(ErrReplaced, ErrClosed) || !errors.Is(ErrUnregistered, ErrClosed) || errors.Is(ErrUnregistered, ErrReplaced) {
		t.Error("ErrReplaced / ErrUnregistered do not match as documented")
	}
}
