package workermgr

import (
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// NodeInfo is the node area of a zone, as read now.
type NodeInfo struct {
	State            string    `json:"state"`
	Epoch            uint32    `json:"epoch"`
	StartedAt        time.Time `json:"started_at"`
	StoppedAt        time.Time `json:"stopped_at,omitzero"`
	Starts           uint64    `json:"starts"`
	WorkerStarts     uint64    `json:"worker_starts"`
	Reloads          uint64    `json:"reloads"`
	Exits            uint64    `json:"exits"`
	Crashes          uint64    `json:"crashes"`
	MissedHeartbeats uint64    `json:"missed_heartbeats"`
	RingGaps         uint64    `json:"ring_gaps"`
	AlertsDiscarded  uint64    `json:"alerts_discarded"`
	// SegmentsReclaimed counts ring segments taken back from writer
	// processes that died holding them.
	SegmentsReclaimed uint64 `json:"segments_reclaimed"`
}

// WorkerInfo is one entry of the worker table, as read now.
type WorkerInfo struct {
	ID         string    `json:"id"`
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	Slot       int       `json:"slot"`
	Nonce      uint64    `json:"nonce"`
	StartedAt  time.Time `json:"started_at"`
	// HeartbeatAgeMs is how long ago the worker last stamped its heartbeat.
	HeartbeatAgeMs int64 `json:"heartbeat_age_ms"`
	// State is live, hung, exited, crashed, or dead (a live entry whose
	// process is gone and that no worker has reaped yet).
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	ExitedAt time.Time `json:"exited_at,omitzero"`
	Missed   uint32    `json:"missed_heartbeats"`
	// Lag is how many ring records the live worker has yet to read.
	Lag uint64 `json:"lag"`
}

var nodeStates = map[uint32]string{zone.NodeNever: "never_started", zone.NodeRunning: "running", zone.NodeStopped: "stopped"}

var workerStates = map[uint32]string{
	zone.WorkerLive: "live", zone.WorkerExited: "exited", zone.WorkerCrashed: "crashed", zone.WorkerHung: "hung",
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Snapshot reads the node area and the worker table without taking the
// node lock (it changes nothing), probing the liveness of live entries.
// Entries of the current node epoch are listed, live ones first.
func Snapshot(z *zone.Zone) (NodeInfo, []WorkerInfo) {
	n := z.Node()
	ni := NodeInfo{
		State: nodeStates[n.State.Load()], Epoch: n.Epoch.Load(),
		StartedAt: unixTime(n.StartedAt.Load()), StoppedAt: unixTime(n.StoppedAt.Load()),
		Starts: n.Starts.Load(), WorkerStarts: n.WorkerStarts.Load(), Reloads: n.Reloads.Load(),
		Exits: n.Exits.Load(), Crashes: n.Crashes.Load(), MissedHeartbeats: n.MissedHeartbeats.Load(),
		RingGaps: n.Gaps.Load(), AlertsDiscarded: n.AlertsDiscarded.Load(), SegmentsReclaimed: n.Reclaimed.Load(),
	}
	if ni.State == "" {
		ni.State = "unknown"
	}
	now := time.Now().UnixNano()
	tail := z.Ring().Tail()
	var live, ended []WorkerInfo
	for i := 0; i < z.Workers(); i++ {
		s := z.Worker(i)
		st := s.State.Load()
		if st == zone.WorkerFree {
			continue
		}
		pid, gen := int(s.PID.Load()), int(s.Generation.Load())
		wi := WorkerInfo{
			ID: WorkerID(gen, pid), PID: pid, Generation: gen, Slot: i, Nonce: s.Nonce.Load(),
			StartedAt: unixTime(s.StartedAt.Load()), HeartbeatAgeMs: (now - s.Heartbeat.Load()) / 1e6,
			State: workerStates[st], ExitedAt: unixTime(s.ExitedAt.Load()), Missed: s.Missed.Load(),
		}
		if r := Reason(s.Reason.Load()); r != ReasonNone {
			wi.Reason = r.String()
		}
		if wi.State == "" {
			wi.State = "unknown"
		}
		if st == zone.WorkerLive || st == zone.WorkerHung {
			if c := s.Cursor.Load(); c < tail {
				wi.Lag = tail - c
			}
			if alive, err := z.WorkerAlive(i); err == nil && !alive {
				wi.State = "dead"
			}
			live = append(live, wi)
			continue
		}
		wi.HeartbeatAgeMs = 0
		ended = append(ended, wi)
	}
	return ni, append(live, ended...)
}
