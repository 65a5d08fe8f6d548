package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// Entry is a host's entry in the fleet's nodes bucket (key: its node id),
// renewed by its bridge every third of the node TTL; the bucket's TTL
// removes the entry of a host that stopped renewing it.
type Entry struct {
	Node    string `json:"node"`
	Version string `json:"version,omitempty"`
	NodeStats
	// BridgePID is the process running the host's bridge, and Since when
	// it took over (Unix ms).
	BridgePID int   `json:"bridge_pid"`
	Since     int64 `json:"since"`
	// Joined is the bucket revision at which this run of the host joined
	// the fleet (0 in the entry that creates it: its own revision).
	Joined uint64 `json:"joined,omitempty"`
}

// known is another host as this host's bridge knows it.
type known struct {
	joined   uint64
	lastSeen time.Time
}

// nodeEntries keeps this host's entry and announces the other hosts joining
// and leaving on this host's bus. A host's join is named by the bucket
// revision that created its entry: the zone keeps the highest announced, so
// a bridge taking over announces only the hosts that joined since.
func (f *Fleet) nodeEntries(ctx context.Context) error {
	kv, err := f.nodes(ctx)
	if err != nil {
		return err
	}
	joined, rev, err := f.register(ctx, kv)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watching %s: %w", f.cfg.nodesBucket(), err)
	}
	defer w.Stop()
	renew := time.NewTicker(f.cfg.NodeTTL / 3)
	defer renew.Stop()
	sweep := time.NewTicker(max(f.cfg.NodeTTL/20, 50*time.Millisecond))
	defer sweep.Stop()
	hosts := map[string]known{}
	// This host's own renewals come back through the watch every third of
	// the TTL: a watch silent for two thirds of it is broken (its consumer
	// went with a server), and the part starts over with a new one rather
	// than see every host leave.
	heard := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-renew.C:
			if rev, err = kv.Update(ctx, f.cfg.Node, f.entry(joined), rev); err != nil {
				// Gone (the TTL passed while NATS was away) or changed: this
				// host joins again, and the others see it join.
				f.log.Warn("fleet: this host's entry expired or changed: joining again", zap.String("fleet", f.cfg.Name), zap.Error(err))
				if joined, rev, err = f.register(ctx, kv); err != nil {
					return err
				}
			}
		case <-sweep.C:
			if time.Since(heard) > 2*f.cfg.NodeTTL/3 {
				return errors.New("the nodes watch went silent")
			}
			for n, k := range hosts {
				if time.Since(k.lastSeen) > f.cfg.NodeTTL {
					delete(hosts, n)
					f.left(n, "expired")
				}
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("nodes watch ended")
			}
			heard = time.Now()
			if e == nil || e.Key() == f.cfg.Node {
				continue
			}
			n := e.Key()
			if len(n) > events.MaxNodeLen || !tokenRE.MatchString(n) {
				continue // not a host's entry: node ids are tokens
			}
			if e.Operation() != jetstream.KeyValuePut {
				if _, ok := hosts[n]; ok {
					delete(hosts, n)
					f.left(n, "stopped")
				}
				continue
			}
			var en Entry
			if json.Unmarshal(e.Value(), &en) != nil {
				continue
			}
			// A host joins at a revision of the bucket before its entry's
			// current one: a larger "joined" is not believed (it would
			// raise NodesSeen past every later join, for good).
			j := en.Joined
			if j == 0 || j > e.Revision() {
				j = e.Revision()
			}
			en.Node, en.Joined = n, j
			k, ok := hosts[n]
			if ok && k.joined != j {
				f.left(n, "rejoined")
				ok = false
			}
			if !ok && j > f.fa.NodesSeen.Load() {
				f.fa.NodesSeen.Store(j)
				f.log.Info("fleet: a host joined", zap.String("fleet", f.cfg.Name), zap.String("node", n))
				f.post(EventNodeJoined, en)
			}
			seen := time.Now()
			if c := e.Created(); c.Before(seen) && !ok {
				seen = c // a replayed entry is as fresh as its last renewal
			}
			hosts[n] = known{joined: j, lastSeen: seen}
		}
	}
}

func (f *Fleet) left(node, why string) {
	f.log.Info("fleet: a host left", zap.String("fleet", f.cfg.Name), zap.String("node", node), zap.String("reason", why))
	f.post(EventNodeLeft, map[string]string{"node": node, "reason": why})
}

// register creates this host's entry, or continues the one its previous
// bridge kept; it returns the join revision and the entry's revision.
func (f *Fleet) register(ctx context.Context, kv jetstream.KeyValue) (joined, rev uint64, err error) {
	if e, err := kv.Get(ctx, f.cfg.Node); err == nil {
		var en Entry
		if json.Unmarshal(e.Value(), &en) == nil {
			joined = en.Joined
			if joined == 0 {
				joined = e.Revision()
			}
			if rev, err = kv.Update(ctx, f.cfg.Node, f.entry(joined), e.Revision()); err == nil {
				return joined, rev, nil
			}
		}
	}
	_ = kv.Delete(ctx, f.cfg.Node)
	rev, err = kv.Create(ctx, f.cfg.Node, f.entry(0))
	if err != nil {
		return 0, 0, fmt.Errorf("creating this host's entry in %s: %w", f.cfg.nodesBucket(), err)
	}
	return rev, rev, nil
}

func (f *Fleet) entry(joined uint64) []byte {
	en := Entry{Node: f.cfg.Node, Version: f.cfg.Version, BridgePID: f.pid, Since: f.fa.Since.Load() / 1e6, Joined: joined}
	if f.cfg.Stats != nil {
		en.NodeStats = f.cfg.Stats()
	}
	b, _ := json.Marshal(en)
	return b
}
