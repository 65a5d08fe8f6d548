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
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// joinMargin is how long before its join a new host's first bridge takes
// the fleet's events from.
const joinMargin = time.Second

// minJoinTime is the least join time taken as one (2020-01-01, Unix ns):
// the word holding it holds a stream sequence otherwise.
const minJoinTime = 1577836800 * uint64(time.Second)

// testHookInbound and testHookInboundInfo, set by tests, run as the
// inbound side starts and once it has read the stream's info.
var testHookInbound, testHookInboundInfo func(context.Context, *Fleet)

// inbound posts the other hosts' events into this host's ring, in the
// stream's order, each exactly once. The position of record is the zone:
// the ring record of a remote event carries its stream sequence and is
// what commits it here, and the fleet area's InApplied follows it. A bridge
// taking over starts after the higher of the two, so an event posted just
// before its predecessor died is neither lost nor posted again. An ordered
// consumer reads the stream from there: no server-side ack state can fall
// out of step with the ring, and no redelivery after an ack timeout can
// reorder events.
func (f *Fleet) inbound(ctx context.Context) error {
	if testHookInbound != nil {
		testHookInbound(ctx, f)
	}
	st, err := f.stream(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", f.cfg.Stream(), err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", f.cfg.Stream(), err)
	}
	if testHookInboundInfo != nil {
		testHookInboundInfo(ctx, f)
	}
	epoch := uint64(info.Created.UnixNano())
	if prev := f.fa.StreamEpoch.Load(); prev != 0 && prev != epoch {
		f.log.Warn("fleet: the stream was created again: applying it from its start", zap.String("stream", f.cfg.Stream()))
		f.fa.InApplied.Store(0)
		f.fa.StreamEpoch.Store(epoch)
	}
	// Until this host first has its place in the stream (StreamEpoch 0),
	// InApplied holds when it joined the fleet (initArea): its first
	// bridge takes the fleet's events from then on, however late the
	// stream answers (a cluster electing its leaders, NATS away) and
	// whichever process holds the lease by then.
	first := f.fa.StreamEpoch.Load() == 0
	var joined time.Time
	applied := f.fa.InApplied.Load()
	if first {
		joined = time.Unix(0, f.fa.Since.Load())
		// Not a time: a zone from before the join time was kept, or a
		// process died between position's two stores (a sequence).
		if applied >= minJoinTime {
			joined = time.Unix(0, int64(applied))
		}
		applied = 0
	}
	sc, err := f.bus.ScanRemote(epoch, 2*time.Second)
	if err != nil {
		return err
	}
	if sc.LastStreamSeq > applied {
		// Remote events of this stream are in the ring already (the area
		// was started afresh for another node name, say): on from them.
		applied = sc.LastStreamSeq
		first = false
	}
	origins := sc.Origins
	if fs := info.State.FirstSeq; !first && info.State.Msgs > 0 && fs > applied+1 {
		f.lostIn(fs-applied-1, applied+1)
		applied = fs - 1
	}
	cc := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.cfg.eventsFilter()},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    applied + 1,
		// One try to make the consumer again (its server gone, say), then
		// this part starts over from the zone's position, with its own
		// bounded requests, rather than the client retrying for ever.
		MaxResetAttempts: 1,
	}
	if first {
		// A margin for the host's clock and the servers' being apart: a
		// few events from just before the join are applied rather than
		// any after it lost.
		start := joined.Add(-joinMargin)
		cc.DeliverPolicy, cc.OptStartSeq, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, 0, &start
	} else if err := f.position(applied, epoch); err != nil {
		return err
	}
	cons, err := f.js.OrderedConsumer(ctx, f.cfg.Stream(), cc)
	if err != nil {
		return fmt.Errorf("consumer on %s: %w", f.cfg.Stream(), err)
	}
	// A stream deleted and made again since the Info above would be read
	// from the old one's place, under the old one's epoch: start over,
	// and the next round applies the new one from its start.
	if again, err := st.Info(ctx); err != nil {
		return fmt.Errorf("stream %s: %w", f.cfg.Stream(), err)
	} else if uint64(again.Created.UnixNano()) != epoch {
		return fmt.Errorf("stream %s: created again while its consumer was made", f.cfg.Stream())
	}
	if first {
		// The server picked the first message at or after the start time:
		// what precedes it counts as applied.
		ci := cons.CachedInfo()
		if ci == nil {
			return fmt.Errorf("consumer on %s: no consumer info to start from", f.cfg.Stream())
		}
		applied = ci.Delivered.Stream
		if err := f.position(applied, epoch); err != nil {
			return err
		}
	}
	// A pull expiring every 5s with heartbeats every 2s: a consumer lost
	// with its server is noticed (missed heartbeats) and made again.
	it, err := cons.Messages(jetstream.PullMaxMessages(4096), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(2*time.Second))
	if err != nil {
		return fmt.Errorf("consumer on %s: %w", f.cfg.Stream(), err)
	}
	defer it.Stop()
	for ctx.Err() == nil {
		// No timeout of our own: each Next restarts the heartbeat check,
		// so short waits would hide a consumer lost with its server.
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("reading %s: %w", f.cfg.Stream(), err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("reading %s: %w", f.cfg.Stream(), err)
		}
		s := md.Sequence.Stream
		if s <= applied {
			continue
		}
		if s > applied+1 {
			f.lostIn(s-applied-1, applied+1)
		}
		if err := f.apply(ctx, m.Subject(), m.Data(), epoch, s, origins); err != nil {
			return err
		}
		applied = s
		f.fa.InApplied.Store(s)
		f.fa.InLag.Store(md.NumPending)
	}
	return ctx.Err()
}

// position records where the inbound side stands: the last sequence
// applied of the stream of that epoch. A bridge that lost its lease
// meanwhile leaves that to its successor.
func (f *Fleet) position(applied, epoch uint64) error {
	if !f.owned() {
		return errNotOwner
	}
	f.fa.InApplied.Store(applied)
	f.fa.StreamEpoch.Store(epoch)
	return nil
}

// apply posts one stream message into the ring, unless it is this host's
// own event (already here), malformed, of a source this host does not
// take, or out of its host's chain: a copy this host applied already, or
// one whose predecessor it has not applied yet (its host publishes it again
// after the predecessor). origins is where each host's events stand here.
func (f *Fleet) apply(ctx context.Context, subject string, body []byte, epoch, s uint64, origins map[string]events.Origin) error {
	m, err := decode(body)
	if err == nil {
		err = f.check(subject, &m)
	}
	if err != nil {
		if n := f.malformed.Add(1); n&(n-1) == 0 {
			f.log.Error("fleet: skipping a malformed message", zap.String("stream", f.cfg.Stream()), zap.Uint64("stream_seq", s), zap.Uint64("so_far", n))
		}
		return nil
	}
	if m.node == f.cfg.Node {
		return nil
	}
	if !f.cfg.Crosses(m.source) {
		// Not a source this host takes from the fleet (its sources differ
		// from the poster's, or a reserved one sent by something else).
		f.skipped.Add(1)
		return nil
	}
	if o, ok := origins[m.node]; ok && o.Zone == m.zone {
		if m.seq <= o.Seq {
			return nil // applied already: a copy published again
		}
		if m.prev > o.Seq {
			f.outOfOrder.Add(1)
			return nil
		}
	}
	r := events.Remote{Node: m.node, StreamEpoch: epoch, StreamSeq: s, PID: m.pid, Generation: m.gen, Time: m.time, OriginZone: m.zone, OriginSeq: m.seq}
	for backoff := time.Millisecond; ; backoff = min(2*backoff, 100*time.Millisecond) {
		// The last check before the post: a bridge that was silent so long
		// that another took over must not post what the other one posts.
		if !f.owned() {
			return errNotOwner
		}
		_, err := f.bus.PostRemote(m.source, m.event, m.data, m.json, m.unique, r)
		if err == nil {
			f.fa.Applied.Add(1)
			origins[m.node] = events.Origin{Zone: m.zone, Seq: m.seq}
			return nil
		}
		if !errors.Is(err, zone.ErrRingBusy) && !errors.Is(err, events.ErrBlobQuota) {
			f.fa.InLost.Add(1)
			origins[m.node] = events.Origin{Zone: m.zone, Seq: m.seq} // the chain goes on past it
			f.log.Error("fleet: a remote event could not be posted on this host", zap.String("node", m.node), zap.Uint64("stream_seq", s), zap.Error(err))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// check refuses what decode cannot see: a message published on another
// host's subject than the one it names (a host could otherwise speak for
// another, and stop its events here with a forged sequence; with it,
// per-host publish permissions confine each host to its own subject), a
// node id, name or key outside the rules, and data flagged JSON that is
// not.
func (f *Fleet) check(subject string, m *message) error {
	if !tokenRE.MatchString(m.node) || subject != f.cfg.eventsPrefix()+m.node {
		return errBadMessage
	}
	if events.CheckName("source", m.source) != nil || events.CheckName("event", m.event) != nil || (m.unique != "" && events.CheckName("unique key", m.unique) != nil) {
		return errBadMessage
	}
	if m.json && !json.Valid(m.data) {
		return errBadMessage
	}
	return nil
}

// lostIn counts stream messages this host will never apply: the stream
// dropped them (max_age, max_bytes) before this host read them.
func (f *Fleet) lostIn(n, from uint64) {
	f.fa.InLost.Add(n)
	f.log.Error("fleet: the stream dropped events before this host applied them", zap.String("stream", f.cfg.Stream()), zap.Uint64("from", from), zap.Uint64("count", n))
	f.post(EventLost, map[string]any{"direction": "in", "count": n, "from": from})
}
