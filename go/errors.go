package etcdregistry

import (
	"context"
	"errors"
	"strings"
)

// Code is the kind of an *Error: what went wrong, independent of the message text.
type Code int

// The kinds of errors, one per status of the C library (codeOfStatus maps them).
const (
	// CodeInvalidArgument: an unusable argument (empty name, TTL <= 0, bad endpoint, a string
	// with a NUL byte or invalid UTF-8 …).
	CodeInvalidArgument Code = iota + 1
	// CodeConnection: the connection broke during a call. etcd unreachable for a whole call
	// is a timeout (CodeTimeout), whose message names the endpoint and the cause.
	CodeConnection
	// CodeTimeout: an etcd operation did not finish within the timeout. Such errors also
	// match context.DeadlineExceeded.
	CodeTimeout
	// CodeAuth: etcd rejected the credentials or a permission.
	CodeAuth
	// CodeNotFound: no such registration or watch (never existed, or already ended).
	CodeNotFound
	// CodeClosed: the registry (or the registration or watch) is closed.
	CodeClosed
	// CodeInternal: an unexpected answer from etcd, or a bug in the library.
	CodeInternal
	// CodeTLS: the TLS handshake with etcd failed (wrong CA, host name mismatch, expired
	// certificate, client certificate refused or missing). Such errors also match
	// ErrConnection.
	CodeTLS
	// CodeResourceExhausted: etcd refused for lack of a resource: its database is full (the
	// NOSPACE alarm, "database space exceeded", until an operator frees space and disarms it)
	// or it is overloaded ("too many requests"). A registration refused so keeps retrying and
	// lands once etcd accepts writes again.
	CodeResourceExhausted
)

// String is the text every error of this kind carries: "context deadline exceeded" for
// timeouts (the text of context.DeadlineExceeded), "authentication" for auth failures.
func (c Code) String() string {
	switch c {
	case CodeInvalidArgument:
		return "invalid argument"
	case CodeConnection:
		return "connection"
	case CodeTimeout:
		return context.DeadlineExceeded.Error()
	case CodeAuth:
		return "authentication"
	case CodeNotFound:
		return "not found"
	case CodeClosed:
		return "closed"
	case CodeTLS:
		return "tls"
	case CodeResourceExhausted:
		return "resource exhausted"
	default:
		return "internal"
	}
}

// Error is every error this package returns, except the ctx.Err() of a caller's context.
// Use errors.Is with the Err* sentinels (or context.DeadlineExceeded for timeouts), or
// errors.As to read Code, Op and Message.
type Error struct {
	Code    Code   // what kind of failure
	Op      string // the operation, e.g. "register", "list"; empty for sentinels
	Message string // the library's description, without the kind; may be empty
}

func (e *Error) Error() string {
	s := "etcdregistry: "
	if e.Op != "" {
		s += e.Op + ": "
	}
	// The kind always shows, once: the library's timeout messages already end with it.
	switch kind := e.Code.String(); {
	case e.Message == "":
		s += kind
	case e.Code == CodeTimeout && strings.Contains(e.Message, kind):
		s += e.Message
	default:
		s += kind + ": " + e.Message
	}
	return s
}

// Is reports whether target is the sentinel of e's kind, or context.DeadlineExceeded for a
// timeout.
func (e *Error) Is(target error) bool {
	if target == context.DeadlineExceeded {
		return e.Code == CodeTimeout
	}
	t, ok := target.(*Error)
	if ok && e.Code == CodeTLS && t == sentinels[CodeConnection] {
		return true
	}
	return ok && t == sentinels[e.Code]
}

// Sentinel errors, one per Code: errors.Is(err, ErrTimeout) holds for every timeout.
var (
	ErrInvalidArgument   error = &Error{Code: CodeInvalidArgument}
	ErrConnection        error = &Error{Code: CodeConnection}
	ErrTimeout           error = &Error{Code: CodeTimeout}
	ErrAuth              error = &Error{Code: CodeAuth}
	ErrNotFound          error = &Error{Code: CodeNotFound}
	ErrClosed            error = &Error{Code: CodeClosed}
	ErrInternal          error = &Error{Code: CodeInternal}
	ErrTLS               error = &Error{Code: CodeTLS}
	ErrResourceExhausted error = &Error{Code: CodeResourceExhausted}
)

// How a registration can end without its context ending; sent on its error channel. Both
// also match ErrClosed.
var (
	// ErrUnregistered: UnregisterNode or Registration.Unregister ended the registration.
	ErrUnregistered error = &Error{Code: CodeClosed, Message: "unregistered"}
	// ErrReplaced: a newer registration of the same node on the same registry took over the
	// key (which stays in etcd).
	ErrReplaced error = &Error{Code: CodeClosed, Message: "replaced by a newer registration of the same node"}
)

var sentinels = map[Code]*Error{
	CodeInvalidArgument:   ErrInvalidArgument.(*Error),
	CodeConnection:        ErrConnection.(*Error),
	CodeTimeout:           ErrTimeout.(*Error),
	CodeAuth:              ErrAuth.(*Error),
	CodeNotFound:          ErrNotFound.(*Error),
	CodeClosed:            ErrClosed.(*Error),
	CodeInternal:          ErrInternal.(*Error),
	CodeTLS:               ErrTLS.(*Error),
	CodeResourceExhausted: ErrResourceExhausted.(*Error),
}

// The C library statuses (statusOK …) are read from the header in constants.go.

// codeOfStatus is the one place that maps the C library's statuses to Codes.
func codeOfStatus(status uint32) Code {
	switch status {
	case statusInvalidArgument, statusInvalidUTF8:
		return CodeInvalidArgument
	case statusConnection:
		return CodeConnection
	case statusTimeout:
		return CodeTimeout
	case statusAuth:
		return CodeAuth
	case statusNotFound:
		return CodeNotFound
	case statusClosed:
		return CodeClosed
	case statusTLS:
		return CodeTLS
	case statusResourceExhausted:
		return CodeResourceExhausted
	default: // NULL pointer (a bug here), panic, internal, codes newer than this package
		return CodeInternal
	}
}

// errorOfStatus is the error of a failed C call, or nil for OK.
func errorOfStatus(op string, status uint32, message string) error {
	if status == statusOK {
		return nil
	}
	return &Error{Code: codeOfStatus(status), Op: op, Message: message}
}

func invalidArgument(op, message string) error {
	return &Error{Code: CodeInvalidArgument, Op: op, Message: message}
}

// notMade is the error of a method called on a nil or zero-value EtcdRegistry, Registration or
// Watch (one not made by this package): an error matching ErrInvalidArgument, not a panic.
func notMade(op, what string) error {
	return invalidArgument(op, what+" was not made by this package (a nil or zero value)")
}

// closedEvents and closedErrors stand for the channels of a Registration or Watch not made by
// this package: a reader ranging over them ends at once.
var (
	closedEvents      = func() chan StatusEvent { c := make(chan StatusEvent); close(c); return c }()
	closedErrors      = func() chan error { c := make(chan error); close(c); return c }()
	closedWatchEvents = func() chan WatchEvent { c := make(chan WatchEvent); close(c); return c }()
)

func closedError(op string) error {
	return &Error{Code: CodeClosed, Op: op, Message: "registry is closed"}
}

// isCode reports whether err is an *Error of the given kind.
func isCode(err error, code Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
