// Package workermgr tracks the workers of a node in the zone's worker table:
// join, heartbeat, leave, and the reaping of workers that crashed or hung,
// with lua-resty-worker-manager's callbacks and counts. It knows nothing of
// Caddy.
package workermgr

import (
	"fmt"
	"strconv"
	"time"
)

// Reason says why a worker exited.
type Reason uint32

// Exit reasons. ReasonAuto lets Leave choose between reload, rollback and
// unload from the process's other workers.
const (
	ReasonNone     Reason = 0
	ReasonReload   Reason = 1 // a newer generation of the same process took over
	ReasonShutdown Reason = 2 // the process is exiting
	ReasonUnload   Reason = 3 // the config was unloaded, the process goes on without a worker
	ReasonCrash    Reason = 4 // found dead without having left (its liveness lock was gone)
	ReasonHung     Reason = 5 // alive but silent for longer than dead_after
	ReasonRollback Reason = 6 // a failed config load stopped this newer worker; the older one goes on
	ReasonAuto     Reason = 255
)

var reasonNames = map[Reason]string{
	ReasonNone: "", ReasonReload: "reload", ReasonShutdown: "shutdown", ReasonUnload: "unload",
	ReasonCrash: "crash", ReasonHung: "hung", ReasonRollback: "rollback", ReasonAuto: "auto",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText is the reason's name.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Count is one of worker-manager's counts. As there, an absent count (the
// generation has no entry at all) is not the same as zero.
type Count struct {
	N       int
	Present bool
}

func present(n int) Count { return Count{N: n, Present: true} }

// String is the number, or "nil" when absent.
func (c Count) String() string {
	if !c.Present {
		return "nil"
	}
	return strconv.Itoa(c.N)
}

// MarshalJSON is the number, or null when absent.
func (c Count) MarshalJSON() ([]byte, error) {
	if !c.Present {
		return []byte("null"), nil
	}
	return []byte(strconv.Itoa(c.N)), nil
}

// Kind is what happened.
type Kind int

// Event kinds.
const (
	// NodeStarted: the first worker joined a zone with no live worker.
	NodeStarted Kind = iota + 1
	// WorkerStarted: a worker joined.
	WorkerStarted
	// WorkerExited: a worker left (Reason says why).
	WorkerExited
	// WorkerCrashed: another worker was found dead (its process died
	// without leaving) or hung (alive, no heartbeat for dead_after).
	WorkerCrashed
	// WorkerRecovered: a worker marked hung sent a heartbeat again.
	WorkerRecovered
	// NodeStopped: the last worker of the node left.
	NodeStopped
)

var kindNames = map[Kind]string{
	NodeStarted: "node_started", WorkerStarted: "worker_started", WorkerExited: "worker_exited",
	WorkerCrashed: "worker_crashed", WorkerRecovered: "worker_recovered", NodeStopped: "node_stopped",
}

// MarshalText is the kind's name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Event is a lifecycle event, given to Config.OnEvent under the node lock.
//
// The counts map worker-manager's (id, n_prev, n_mine, n_next) onto
// processes that number their own generations:
//   - Prev: live workers of the event's process with an older generation;
//     absent when that process never had one.
//   - Mine: live workers of the node, the event's worker included (1 at a
//     start: the first worker of the node; 1 at an exit: the last one).
//   - Next: live workers of the event's process with a newer generation;
//     absent when it never had one (so present at an exit means a reload).
//
// The plain facts are there too, so nobody has to decode counts.
type Event struct {
	Kind       Kind   `json:"kind"`
	ID         string `json:"id"`
	PID        int    `json:"pid"`
	Generation int    `json:"generation"`
	// Slot is the worker's index in the zone's worker table.
	Slot int   `json:"slot"`
	Prev Count `json:"n_prev"`
	Mine Count `json:"n_mine"`
	Next Count `json:"n_next"`
	// Reason is set for WorkerExited and WorkerCrashed.
	Reason Reason `json:"reason,omitzero"`
	// Reload is set when a worker starts while an older worker of its process
	// lives, and when a worker exits because a newer one took over.
	Reload bool `json:"reload,omitempty"`
	// NodeEpoch is the node start this event belongs to.
	NodeEpoch uint32    `json:"node_epoch"`
	Time      time.Time `json:"time"`
}

// WorkerID formats a worker id as worker-manager does: "<generation>-<pid>".
func WorkerID(gen, pid int) string { return fmt.Sprintf("%d-%d", gen, pid) }
