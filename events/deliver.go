package events

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/internal/goid"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// loop is the worker's delivery goroutine: it sleeps on the zone doorbell,
// reads the ring in order, and runs the handlers of each event; local
// events and Poll barriers come through b.local.
func (b *Bus) loop() {
	defer close(b.done)
	b.loopGID.Store(goid.Get())
	var ev Event
	// owed counts the records handled since the last wake-up of the
	// waiters that their posters did not wake them for: they are woken
	// once for what is ready at once, at most wakeBatch records late.
	owed := 0
	var owedSince time.Time
	for !b.stop.Load() {
		b.runLocal()
		rec, st := b.rd.Read(time.Second)
		switch st {
		case zone.Got:
			b.deliver(rec, &ev)
		case zone.Overrun, zone.Gap:
			b.lost(rec, st)
		}
		next := b.rd.Next()
		if prev := b.handled.Load(); next != prev {
			b.handled.Store(next)
			if b.o.OnCursor != nil {
				b.o.OnCursor(next)
			}
			// Not for an event this process posted: its poster wakes them.
			if own := st == zone.Got && prev+1 == next && b.woken[rec.Seq%uint64(len(b.woken))].Load() == rec.Seq+1; !own {
				if owed++; owed == 1 {
					owedSince = time.Now()
				}
			}
		}
		if owed > 0 && (owed >= wakeBatch || !b.rd.Pending() || time.Since(owedSince) >= wakeDelay) {
			owed = 0
			b.runHooks()
			if b.changes.Watched() {
				b.changes.Notify()
				// Let the woken readers run on this P now: the next Read
				// spins before it sleeps, and would hold them up until
				// another thread woke to steal them.
				runtime.Gosched()
			}
		}
		if st == zone.Empty {
			b.sweep()
		}
	}
}

// wakeBatch is the most records the delivery goroutine reads on before it
// wakes the waiters, while more are ready at once: a burst from other
// processes costs a stream one write per batch, not one per event.
// wakeDelay bounds the time it may take to do so: slow handlers of the
// following events do not hold up the streams for longer.
const (
	wakeBatch = 64
	wakeDelay = time.Millisecond
)

// runLocal handles the queued local events and releases the barriers
// whose target has been handled.
func (b *Bus) runLocal() {
	if !b.localWork.Load() {
		return // the common case, without taking the lock
	}
	b.mu.Lock()
	items := b.local
	b.local = nil
	b.mu.Unlock()
	for i := range items {
		it := &items[i]
		if it.barrier != nil {
			b.mu.Lock()
			b.barriers = append(b.barriers, barrier{target: it.ev.Seq, done: it.barrier})
			b.mu.Unlock()
			continue
		}
		b.dispatch(&it.ev)
	}
	next := b.rd.Next()
	b.mu.Lock()
	kept := b.barriers[:0]
	for _, br := range b.barriers {
		if next >= br.target {
			close(br.done)
		} else {
			kept = append(kept, br)
		}
	}
	b.barriers = kept
	b.localWork.Store(len(b.local) > 0 || len(b.barriers) > 0)
	b.mu.Unlock()
}

// deliver decodes one ring record and dispatches it.
func (b *Bus) deliver(rec zone.Record, ev *Event) {
	if rec.Kind != RecordKind {
		return
	}
	e, ok := b.decodeFields(rec)
	if !ok {
		return
	}
	if e.flags&flagUnique != 0 && (e.flags&flagRemote != 0 || !b.z.TakeUnique(zone.UniqueTicket{Slot: e.slot, Token: e.token})) {
		// A remote run-once event ran on its own host: here it is only shown.

		b.st.uniqueSkipped.Add(1)
		return
	}
	data, ok := b.payloadOf(rec, e)
	if !ok {
		b.lost(zone.Record{Seq: rec.Seq, Lost: 1}, zone.Gap)
		return
	}
	*ev = b.event(rec, e, data)
	b.st.delivered.Add(1)
	b.dispatch(ev)
}

func (b *Bus) decodeFields(rec zone.Record) (encoded, bool) {
	e, err := decode(rec.Data)
	if err != nil {
		b.st.malformed.Add(1)
		b.log.Error("skipping a malformed event record", zap.Uint64("seq", rec.Seq), zap.Uint32("pid", rec.PID))
		return encoded{}, false
	}
	return e, true
}

// payloadOf returns the event's data, reading its blob file if it has one.
func (b *Bus) payloadOf(rec zone.Record, e encoded) ([]byte, bool) {
	if e.flags&flagBlob == 0 {
		return e.payload, true
	}
	name := string(e.payload)
	data, err := b.z.ReadBlob(name, b.o.MaxPayload)
	if err != nil {
		b.blobLost(rec, e, name, err)
		return nil, false
	}
	b.st.blobsRead.Add(1)
	return data, true
}

func (b *Bus) event(rec zone.Record, e encoded, data []byte) Event { return makeEvent(rec, e, data) }

// makeEvent is the Event of a decoded record; a remote event carries its
// poster and posting time on its own host.
func makeEvent(rec zone.Record, e encoded, data []byte) Event {
	ev := Event{
		Seq: rec.Seq, Source: e.source, Name: e.event, Data: data,
		JSON: e.flags&flagJSON != 0, PID: int(rec.PID), Generation: int(rec.Gen),
		Unique: e.unique, Time: time.Unix(0, rec.Time),
	}
	if e.flags&flagRemote != 0 {
		r := &e.remote
		ev.Node, ev.StreamSeq = r.Node, r.StreamSeq
		ev.PID, ev.Generation, ev.Time = int(r.PID), int(r.Generation), time.Unix(0, r.Time)
	}
	return ev
}

// lost records events this worker will never handle: a log line, a
// counter, and a local "lost" event for handlers.
func (b *Bus) lost(rec zone.Record, st zone.Status) {
	l := Loss{From: rec.Seq, Count: rec.Lost, Reason: "overrun"}
	if st == zone.Gap {
		l.Reason = "gap"
		b.st.lostGap.Add(rec.Lost)
	} else {
		b.st.lostOverrun.Add(rec.Lost)
	}
	b.log.Warn("events lost", zap.Uint64("from", l.From), zap.Uint64("count", l.Count), zap.String("reason", l.Reason))
	data, _ := json.Marshal(l)
	ev := Event{Source: Source, Name: EventLost, Data: data, JSON: true, Value: l, Local: true, Time: time.Now()}
	b.dispatch(&ev)
}

// sweep removes old blob files now and then, when the bus is idle.
func (b *Bus) sweep() {
	now := time.Now()
	if now.Sub(b.lastTick) < b.o.BlobTTL/4 {
		return
	}
	b.lastTick = now
	b.z.SweepBlobs(b.o.BlobTTL, now)
}

// dispatch runs the handlers for ev: catch-all first, then those of its
// source, then those of its source and name, each level in registration
// order. A panicking handler is logged with its stack and the others run.
func (b *Bus) dispatch(ev *Event) {
	r := b.reg.Load()
	for _, h := range r.all {
		b.call(h, ev)
	}
	if len(r.bySource) > 0 {
		for _, h := range r.bySource[ev.Source] {
			b.call(h, ev)
		}
	}
	if len(r.byEvent) > 0 {
		for _, h := range r.byEvent[sourceEvent{ev.Source, ev.Name}] {
			b.call(h, ev)
		}
	}
}

func (b *Bus) call(h *entry, ev *Event) {
	b.st.calls.Add(1)
	b.handling.Store(true)
	defer func() {
		b.handling.Store(false)
		if p := recover(); p != nil {
			b.st.panics.Add(1)
			b.log.Error("event handler panicked", zap.String("source", ev.Source), zap.String("event", ev.Name),
				zap.Uint64("seq", ev.Seq), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
		}
	}()
	h.fn(ev)
}
