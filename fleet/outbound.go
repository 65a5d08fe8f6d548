package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// pending is a publish awaiting its ack.
type pending struct {
	seq  uint64
	size int
	fut  jetstream.PubAckFuture
}

// maxInflightBytes bounds the bytes of the publishes awaiting their ack.
const maxInflightBytes = 64 << 20

// outbound publishes the events posted on this host, from the zone's
// outbound cursor on, in ring order, each naming the one published before
// it. The cursor moves only past acknowledged events, so a bridge taking
// over (or this one after a failed publish) publishes again, from the first
// unacknowledged event on, what may not have arrived. A publish lost in
// flight while later ones were stored (a stream leader dying with it) thus
// comes again after them, followed by new copies of those later ones: the
// receivers apply only copies whose predecessor they applied, so every host
// sees this host's events in its order, once.
func (f *Fleet) outbound(ctx context.Context) error {
	if _, err := f.stream(ctx); err != nil {
		return fmt.Errorf("stream %s: %w", f.cfg.Stream(), err)
	}
	// Publishes are pipelined on one connection, which the server stores in
	// order. After a reconnect nothing more is published on the new one
	// while older publishes may still be unsettled: the part starts again
	// (after keep's backoff) from the first unacknowledged event, and the
	// receivers' chain check drops what arrives twice.
	conn := f.nc.Stats().Reconnects
	// Each message names the event published before it; this run's copies
	// get ids of their own (see the wire format).
	prev := f.fa.OutPrev.Load()
	run := strconv.FormatUint(f.token&0xffffff, 16) + "-" + strconv.FormatUint(f.outRuns.Add(1), 10)
	fl := events.NewFollower(f.z, f.fa.OutNext.Load())
	fl.SetBlobRefs(true) // a blob is read only when it fits in a message
	subject := f.cfg.eventSubject()
	zoneID := f.z.CreatedAt().UnixNano()
	prefix := f.cfg.Node + "." + strconv.FormatInt(zoneID, 10) + "."
	var q []pending
	var inflight int // bytes
	var buf []byte
	var lost lossReport
	defer lost.flush(f)
	maxPayload := int(f.nc.MaxPayload())
	defer func() { f.fa.OutPending.Store(uint64(len(q))) }()
	// ack settles the oldest publish; it waits at most wait for it.
	ack := func(wait time.Duration) (bool, error) {
		var timeout <-chan time.Time
		if wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-q[0].fut.Ok():
		case err := <-q[0].fut.Err():
			return false, fmt.Errorf("publish of event %d: %w", q[0].seq, err)
		case <-ctx.Done():
			return false, ctx.Err()
		default:
			if wait == 0 {
				return false, nil
			}
			select {
			case <-q[0].fut.Ok():
			case err := <-q[0].fut.Err():
				return false, fmt.Errorf("publish of event %d: %w", q[0].seq, err)
			case <-ctx.Done():
				return false, ctx.Err()
			case <-timeout:
				return false, nil
			}
		}
		f.fa.OutPrev.Store(q[0].seq)
		f.fa.OutNext.Store(q[0].seq + 1)
		f.fa.Published.Add(1)
		inflight -= q[0].size
		q = q[1:]
		return true, nil
	}
	for ctx.Err() == nil {
		for len(q) > 0 {
			ok, err := ack(0)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
		}
		f.fa.OutPending.Store(uint64(len(q)))
		if len(q) >= f.cfg.MaxInflight || inflight >= maxInflightBytes {
			if _, err := ack(time.Second); err != nil {
				return err
			}
			continue
		}
		wait := 100 * time.Millisecond
		if len(q) > 0 {
			wait = 0
		}
		ev, loss, ok := fl.Next(wait)
		if !ok {
			if end := loss.From + loss.Count; loss.Count > 0 && loss.Reason == "overrun" && end > f.lostUpTo {
				// Counted once: after a failed publish this bridge reads the
				// same stretch again from its cursor.
				from := max(loss.From, f.lostUpTo)
				f.lostUpTo = end
				f.fa.OutLost.Add(end - from)
				lost.add(from, end-from)
			}
			if loss.Count == 0 || lost.due() {
				lost.flush(f)
			}
			if len(q) == 0 {
				if f.fa.OutNext.Load() != fl.NextSeq() {
					f.fa.OutNext.Store(fl.NextSeq())
				}
			} else if loss.Count == 0 {
				if _, err := ack(20 * time.Millisecond); err != nil {
					return err
				}
			}
			continue
		}
		if ev.Node != "" || !f.cfg.Crosses(ev.Source) {
			if len(q) == 0 {
				f.fa.OutNext.Store(fl.NextSeq())
			}
			continue
		}
		if ev.Blob != nil && ev.Blob.Size <= int64(maxPayload) {
			data, err := readBlob(ev.Blob)
			if err != nil {
				f.log.Warn("fleet: an event's payload is gone before it was published", zap.Uint64("seq", ev.Seq), zap.Error(err))
				f.fa.OutLost.Add(1)
				if len(q) == 0 {
					f.fa.OutNext.Store(fl.NextSeq())
				}
				continue
			}
			ev.Data, ev.Blob = data, nil
		}
		m := message{json: ev.JSON, source: ev.Source, event: ev.Name, unique: ev.Unique, node: f.cfg.Node,
			pid: uint32(ev.PID), gen: uint32(ev.Generation), time: ev.Time.UnixNano(), seq: ev.Seq, zone: zoneID, prev: prev, data: ev.Data}
		buf = m.encode(buf[:0])
		if ev.Blob != nil || len(buf) > maxPayload-256 {
			if n := f.tooLarge.Add(1); n&(n-1) == 0 {
				f.log.Warn("fleet: event larger than the NATS max_payload stays on this host", zap.String("fleet", f.cfg.Name),
					zap.String("source", ev.Source), zap.String("event", ev.Name), zap.Int("bytes", len(buf)), zap.Int("max_payload", maxPayload), zap.Uint64("so_far", n))
			}
			if len(q) == 0 {
				f.fa.OutNext.Store(fl.NextSeq())
			}
			continue
		}
		if !f.owned() {
			return errNotOwner
		}
		if f.nc.Stats().Reconnects != conn {
			return errors.New("reconnected to NATS: publishing again from the first unacknowledged event")
		}
		msg := &nats.Msg{Subject: subject, Data: append([]byte(nil), buf...), Header: nats.Header{}}
		fut, err := f.js.PublishMsgAsync(msg, jetstream.WithMsgID(prefix+strconv.FormatUint(ev.Seq, 10)+"."+run),
			jetstream.WithRetryAttempts(0)) // a retry of one publish alone could land after the next
		if err != nil {
			return fmt.Errorf("publish of event %d: %w", ev.Seq, err)
		}
		q = append(q, pending{seq: ev.Seq, size: len(msg.Data), fut: fut})
		prev = ev.Seq
		inflight += len(msg.Data)
	}
	return ctx.Err()
}

func readBlob(b *events.Blob) ([]byte, error) {
	r, err := b.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data := make([]byte, b.Size)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", b.Name, err)
	}
	return data, nil
}

// lossReport gathers the outbound losses into one log line and one
// fleet_lost event per second at most: each is itself a ring record, and a
// report per loss would overrun a small ring further.
type lossReport struct {
	from, count uint64
	since       time.Time
}

func (l *lossReport) add(from, n uint64) {
	if l.count == 0 {
		l.from, l.since = from, time.Now()
	}
	l.count += n
}

func (l *lossReport) due() bool { return l.count > 0 && time.Since(l.since) >= time.Second }

func (l *lossReport) flush(f *Fleet) {
	if l.count == 0 {
		return
	}
	f.log.Error("fleet: the ring overran the outbound cursor: events lost to the fleet", zap.String("fleet", f.cfg.Name), zap.Uint64("from", l.from), zap.Uint64("count", l.count))
	f.post(EventLost, map[string]any{"direction": "out", "count": l.count, "from": l.from})
	*l = lossReport{}
}
