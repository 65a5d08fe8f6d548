package fleet

import (
	"context"
	"encoding/json"
	"sort"
	"time"
)

// MaxListedNodes bounds the hosts Status lists.
const MaxListedNodes = 1000

// Status is what GET /ipcbus/fleet answers.
type Status struct {
	Name      string       `json:"name"`
	Node      string       `json:"node"`
	Connected bool         `json:"connected"`
	Server    string       `json:"server,omitempty"`
	Stream    string       `json:"stream"`
	Bridge    BridgeStatus `json:"bridge"`
	Out       OutStatus    `json:"out"`
	In        InStatus     `json:"in"`
	Nodes     []NodeStatus `json:"nodes"`
	// NodesError tells why Nodes is empty when the bucket could not be read.
	NodesError string `json:"nodes_error,omitempty"`
}

// BridgeStatus names the process running the host's bridge (PID 0: none).
type BridgeStatus struct {
	PID   int       `json:"pid"`
	Since time.Time `json:"since,omitzero"`
}

// OutStatus counts this host's events on their way to the fleet.
type OutStatus struct {
	// Published counts events published and acknowledged.
	Published uint64 `json:"published"`
	// Pending counts publishes awaiting their ack.
	Pending uint64 `json:"pending"`
	// Lost counts events the ring overran before they were published.
	Lost uint64 `json:"lost"`
	// TooLarge counts events over the NATS max_payload, left on this host
	// (counted by this process).
	TooLarge uint64 `json:"too_large"`
}

// InStatus counts the other hosts' events applied here.
type InStatus struct {
	// Started tells this host has its place in the fleet's stream: from
	// then on it applies every event published after its bridge first took
	// the lease. False while the first bridge has not reached the stream.
	Started bool `json:"started"`
	// Applied counts remote events posted on this host.
	Applied uint64 `json:"applied"`
	// Lag is the stream messages not yet applied, as last seen.
	Lag uint64 `json:"lag"`
	// Lost counts messages the stream dropped before this host applied them.
	Lost uint64 `json:"lost"`
	// StreamSeq is the last stream sequence applied.
	StreamSeq uint64 `json:"stream_seq"`
	// OutOfOrder counts copies dropped because their predecessor from the
	// same host had not been applied yet; that host publishes them again
	// (counted by this process).
	OutOfOrder uint64 `json:"out_of_order"`
}

// NodeStatus is one host of the fleet, from its entry.
type NodeStatus struct {
	Entry
	// LastSeen is when its entry was last renewed (the NATS server's clock).
	LastSeen time.Time `json:"last_seen"`
}

// Status reports the fleet as this host sees it: the counters from the
// zone (whichever process runs the bridge) and the hosts from the nodes
// bucket, read now (bounded by ctx).
func (f *Fleet) Status(ctx context.Context) Status {
	st := f.Counters()
	if !st.Connected {
		st.NodesError = "not connected to NATS"
		return st
	}
	f.listNodes(ctx, &st)
	return st
}

// Counters is Status without the hosts: no request to NATS.
func (f *Fleet) Counters() Status {
	st := Status{Name: f.cfg.Name, Node: f.cfg.Node, Connected: f.nc.IsConnected(), Stream: f.cfg.Stream(), Nodes: []NodeStatus{}}
	if st.Connected {
		st.Server = f.nc.ConnectedUrlRedacted()
	}
	if f.fa.Owner.Load() != 0 {
		st.Bridge = BridgeStatus{PID: int(f.fa.OwnerPID.Load()), Since: time.Unix(0, f.fa.Since.Load())}
	}
	st.Out = OutStatus{Published: f.fa.Published.Load(), Pending: f.fa.OutPending.Load(), Lost: f.fa.OutLost.Load(), TooLarge: f.tooLarge.Load()}
	st.In = InStatus{Started: f.fa.StreamEpoch.Load() != 0, Applied: f.fa.Applied.Load(), Lag: f.fa.InLag.Load(), Lost: f.fa.InLost.Load(), OutOfOrder: f.outOfOrder.Load()}
	if st.In.Started { // before, the word holds the join time
		st.In.StreamSeq = f.fa.InApplied.Load()
	}
	return st
}

// listNodes reads the hosts from the nodes bucket into st.
func (f *Fleet) listNodes(ctx context.Context, st *Status) {
	kv, err := f.nodes(ctx)
	if err != nil {
		st.NodesError = err.Error()
		return
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		st.NodesError = err.Error()
		return
	}
	defer lister.Stop()
	for k := range lister.Keys() {
		if len(st.Nodes) >= MaxListedNodes {
			break
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var ns NodeStatus
		if json.Unmarshal(e.Value(), &ns.Entry) != nil {
			continue
		}
		ns.LastSeen = e.Created()
		st.Nodes = append(st.Nodes, ns)
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Node < st.Nodes[j].Node })
}
