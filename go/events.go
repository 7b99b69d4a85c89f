package etcdregistry

import "time"

// Node is one registered instance of a service: a name unique within the service and free
// string information (address, version …).
//
// A nil Info is stored as an empty value, an empty non-nil one as {}, as the original stores
// them; listed, a node whose value is empty, null or not a JSON object has a nil Info.
type Node struct {
	Name string
	Info map[string]string
}

// StatusKind says what happened to a registration. The registration state machine, the same
// in every language of this library:
//
//	Register ─► registering ──► registered ◄────────────────┐
//	              │  ▲              │ keep-alive lost         │ re-registered
//	      failed, │  │ retrying     ▼                         │
//	     retrying └──┘           retrying ────────────────────┘
//	any state ── ctx ends / Unregister / Close / replaced ──► unregistered (the last event)
type StatusKind int

// The kinds of StatusEvent (their numbers are the C library's).
const (
	// StatusRegistered: the key was put for the first time, its keep-alive running and (for a
	// new lease) the watch of its keys open (LeaseID is set).
	StatusRegistered StatusKind = cStatusRegistered
	// StatusFailed: the first attempt failed before any registration (Err); Retrying follows.
	StatusFailed StatusKind = cStatusFailed
	// StatusKeepAliveLost: a registered node lost its keep-alive: etcd down, partitioned, the
	// lease expired or was revoked (Err). Retrying follows.
	StatusKeepAliveLost StatusKind = cStatusKeepAliveLost
	// StatusRetrying: the next attempt comes after Delay (Attempt counts from 1; Err says why).
	StatusRetrying StatusKind = cStatusRetrying
	// StatusReregistered: the key is back after a loss (LeaseID: the old lease if it survived).
	StatusReregistered StatusKind = cStatusReregistered
	// StatusUnregistered: the registration ended; always the last event. Err is the error the
	// registration's error channel got (ctx.Err(), ErrUnregistered, ErrClosed, ErrReplaced).
	StatusUnregistered StatusKind = cStatusUnregistered
	// StatusUpdated: the info given to Update is in etcd (LeaseID is set). Several updates made
	// before one put could land (etcd down, or quick succession) give one StatusUpdated, for
	// the newest. It does not change the state.
	StatusUpdated StatusKind = cStatusUpdated
)

func (k StatusKind) String() string {
	switch k {
	case StatusRegistered:
		return "registered"
	case StatusFailed:
		return "failed"
	case StatusKeepAliveLost:
		return "keepalive_lost"
	case StatusRetrying:
		return "retrying"
	case StatusReregistered:
		return "reregistered"
	case StatusUnregistered:
		return "unregistered"
	case StatusUpdated:
		return "updated"
	default:
		return "unknown"
	}
}

// op names the step whose failure an event reports, for the error's Op.
func (k StatusKind) op() string {
	if k == StatusKeepAliveLost {
		return "keep-alive"
	}
	return "register"
}

// StatusEvent is one change of a registration, in order.
type StatusEvent struct {
	Kind    StatusKind
	Service string
	Node    string
	Attempt int           // Retrying: 1 for the first retry after a failure
	Delay   time.Duration // Retrying: time until that attempt
	Err     error         // Failed, KeepAliveLost, Retrying: why (an *Error); Unregistered: how it ended
	LeaseID int64         // Registered, Reregistered, Updated: the etcd lease of the key
}

// State is where a registration stands.
type State int

// Registration states.
const (
	StateRegistering  State = cStateRegistering  // not registered yet: the first attempt is under way or retried
	StateRegistered   State = cStateRegistered   // the key is in etcd and its lease is kept alive
	StateRetrying     State = cStateRetrying     // registered once, then lost; retrying
	StateUnregistered State = cStateUnregistered // ended (ctx, Unregister, Close, or replaced)
)

func (s State) String() string {
	switch s {
	case StateRegistering:
		return "registering"
	case StateRegistered:
		return "registered"
	case StateRetrying:
		return "retrying"
	case StateUnregistered:
		return "unregistered"
	default:
		return "unknown"
	}
}

// WatchEventType says how a watched service changed.
type WatchEventType int

// The kinds of WatchEvent (their numbers are the C library's).
const (
	// WatchAdded: a node appeared. A watch starts with one Added per node present.
	WatchAdded WatchEventType = cWatchAdded
	// WatchUpdated: a node's info changed.
	WatchUpdated WatchEventType = cWatchUpdated
	// WatchRemoved: a node disappeared (unregistered or expired); Node.Info is its last info.
	WatchRemoved WatchEventType = cWatchRemoved
	// WatchResynced: the watch missed history (compacted while disconnected, or etcd's history
	// is not the one it followed: its data lost or restored from an older snapshot), re-listed
	// the service and sent the difference as Added/Updated/Removed just before. Node is empty.
	WatchResynced WatchEventType = cWatchResynced
)

func (t WatchEventType) String() string {
	switch t {
	case WatchAdded:
		return "added"
	case WatchUpdated:
		return "updated"
	case WatchRemoved:
		return "removed"
	case WatchResynced:
		return "resynced"
	default:
		return "unknown"
	}
}

// WatchEvent is one change of a watched service.
type WatchEvent struct {
	Type     WatchEventType
	Service  string
	Node     Node  // the node concerned; empty for Resynced
	Revision int64 // the etcd revision of the change
}
