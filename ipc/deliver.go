package ipc

import (
	"errors"
	"math"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// owners is, per zone file, the IPC of this process that handles its
// alerts: the newest started one. When a reload starts a new worker, the
// new IPC takes over at a sequence number (the hand-off): the old one
// handles the alerts before it, the new one those from it on, and starts
// only once the old one is past the hand-off, so that FIFO per sender holds
// across the reload and nothing is lost or handled twice.
var owners = struct {
	sync.Mutex
	m map[string]*IPC
}{m: map[string]*IPC{}}

// SetWorkerSlot names this worker's slot in the zone's worker table, where
// the IPC publishes how far it has read (for senders' backpressure).
func (c *IPC) SetWorkerSlot(i int) { c.slot.Store(int64(i)) }

// Start takes over this process's alerts and begins delivery.
func (c *IPC) Start() error {
	c.state.Lock()
	defer c.state.Unlock()
	if c.open || c.stop.Load() {
		return errors.New("ipc already started, or closed (an IPC cannot be restarted)")
	}
	c.rd = c.ring.NewReader(0)
	pid := uint64(c.o.PID)
	c.rd.SetFilter(func(kind uint32, aux uint64) bool { return kind == RecordKind && (aux == 0 || aux == pid) })
	c.rd.SetBell(Bell)
	c.rd.SetTarget(uint32(pid))
	if c.o.WaitMax > 0 {
		c.rd.SetWaitMax(c.o.WaitMax)
	}
	if c.o.Spin > 0 {
		c.rd.SetSpin(c.o.Spin)
	}
	owners.Lock()
	prev := owners.m[c.z.Path()]
	if prev != nil {
		// The hand-off point is taken under the old loop's skip lock, so
		// that every record is either before it (the old worker's) or after
		// it (this one's), never both.
		// This worker also inherits the old one's waits for the workers
		// that handed back to it while a handler of theirs still ran:
		// the old one may have nothing to handle before the hand-off,
		// and this one must not get ahead of those handlers either.
		prev.skipMu.Lock()
		c.handoff = c.ring.Tail()
		prev.windows = append(prev.windows, window{lo: c.handoff, hi: math.MaxUint64, by: c})
		c.awaits = prev.openAwaitsLocked()
		prev.skipMu.Unlock()
	} else {
		c.handoff = c.ring.Tail()
	}
	c.prev = prev
	c.rd.Seek(c.handoff)
	owners.m[c.z.Path()] = c
	owners.Unlock()
	c.publish(c.handoff)
	c.open = true
	go c.loop(prev)
	return nil
}

// passed reports whether the loop is done with every record before seq:
// it has handled them (its published next is at or past seq) and no rewind
// is pending, after which it would read again from further back. Both are
// judged under skipMu, under which the loop takes a rewind and publishes
// where it rewound to, so that a next published before a rewind is never
// taken for one after it.
func (c *IPC) passed(seq uint64) bool {
	c.skipMu.Lock()
	defer c.skipMu.Unlock()
	return !c.rewind && c.next.Load() >= seq
}

// resumeAt is where a newer worker takes over from this stopped one: its
// next, or where a rewind it did not take would have sent it back to.
func (c *IPC) resumeAt() uint64 {
	c.skipMu.Lock()
	defer c.skipMu.Unlock()
	n := c.next.Load()
	if c.rewind && c.rewindTo < n {
		n = c.rewindTo
	}
	return n
}

// openAwaitsLocked returns the awaited delivery goroutines that have not
// ended yet, and forgets the others. Call under skipMu.
func (c *IPC) openAwaitsLocked() []chan struct{} {
	kept := c.awaits[:0]
	for _, d := range c.awaits {
		select {
		case <-d:
		default:
			kept = append(kept, d)
		}
	}
	clear(c.awaits[len(kept):])
	c.awaits = kept
	return append([]chan struct{}(nil), kept...)
}

// await waits for the delivery goroutines ds to end; false when this IPC
// was closed first.
func (c *IPC) await(ds []chan struct{}) bool {
	for _, d := range ds {
		select {
		case <-d:
		case <-c.quit:
			return false
		}
	}
	return true
}

// publish makes next known to a newer worker of this process and, while
// the IPC is open, to senders (the slot's cursor). Once stopped, the
// cursor stays as Close left it: a Close that did not wait for a running
// handler has already cleared it, and the loop must not set it again.
func (c *IPC) publish(next uint64) {
	c.next.Store(next)
	if i := c.slot.Load(); i >= 0 && !c.stop.Load() {
		c.z.Worker(int(i)).AlertCursor.Store(next + 1)
	}
}

// Close stops delivery. If this IPC handled the process's alerts while an
// older one still runs (a rolled-back reload), the older one takes them
// back from where this one stopped, once this one's handler (if one runs)
// has returned. No handler starts after Close returns.
// When no handler runs, Close waits for the delivery goroutine to end; while
// one runs, Close does not wait for it, so that a handler may close its own
// IPC (directly, or by reloading Caddy's config, which stops its worker):
// that handler, or one running when another goroutine closes, finishes
// after Close has returned, and its sends fail with ErrClosed once the
// endpoint is detached.
func (c *IPC) Close() error {
	c.state.Lock()
	defer c.state.Unlock()
	if !c.open {
		return nil
	}
	c.open = false
	c.stop.Store(true)
	close(c.quit)
	c.rd.Interrupt()
	c.changes.Notify() // pollers waiting on Changed look again (and find the IPC closed)
	// While a handler runs (Close may be called from it: nothing tells
	// which goroutine calls), the loop ends when the handler returns,
	// without reading on: where it stopped is already known. Otherwise the
	// caller is not a handler, and waits for the loop to end.
	if !c.handlerRunning() {
		<-c.done
	}
	owners.Lock()
	defer owners.Unlock()
	for _, o := range owners.m {
		if o.prev == c {
			o.prev = nil // keep no chain of old endpoints alive
		}
	}
	if owners.m[c.z.Path()] == c {
		delete(owners.m, c.z.Path())
		if p := c.prev; p != nil && !p.stop.Load() {
			// A rolled-back reload: the older worker handles again what
			// comes after where this one stopped. Its window for this
			// worker closes there, and it re-reads from there if it is
			// already past (a pending rewind further back is kept).
			//
			// The hand-back happens at once, but this worker's loop may
			// not have ended: Close does not wait while a handler runs
			// (it may be that handler calling), so the handler of the
			// record just before stop may still be running. The older
			// worker used to start on stop right away, and its handler
			// of stop could finish before this one's of stop-1: two
			// alerts handled out of order at the hand-back (TestHandOff,
			// rollback: "alert N+1 handled at position N", about one run
			// in 20). So the older worker gets this loop's done channel
			// (and whatever this loop itself still waited for) to wait
			// on before it starts another handler, under the same lock
			// as the new end of the window, so that it cannot handle a
			// record past stop without seeing it.
			owners.m[c.z.Path()] = p
			stop := c.rd.Next()
			c.skipMu.Lock()
			awaits := append(c.openAwaitsLocked(), c.done)
			c.skipMu.Unlock()
			p.skipMu.Lock()
			p.awaits = append(p.awaits, awaits...)
			for i := range p.windows {
				if p.windows[i].by == c {
					p.windows[i].hi = stop
				}
			}
			if !p.rewind || stop < p.rewindTo {
				p.rewindTo = stop
			}
			p.rewind = true
			p.skipMu.Unlock()
			p.rd.Interrupt()
		}
	}
	c.prev = nil
	if i := c.slot.Load(); i >= 0 {
		c.z.Worker(int(i)).AlertCursor.Store(0)
	}
	return nil
}

// Detach ends every use of the zone by this endpoint (after Close): sends
// fail with ErrClosed from then on, so the zone may be unmapped.
func (c *IPC) Detach() {
	c.dmu.Lock()
	c.detached = true
	c.dmu.Unlock()
}

func (c *IPC) loop(prev *IPC) {
	defer close(c.done)
	if p := prev; p != nil {
		// FIFO across the hand-off: the old worker finishes first. If it
		// stops short of the hand-off, this one takes over from where it
		// stopped.
	wait:
		for !c.stop.Load() && !p.passed(c.handoff) {
			select {
			case <-p.done:
				if n := p.resumeAt(); n < c.handoff {
					c.rd.Seek(n)
				}
				break wait
			case <-c.quit:
				break wait
			case <-time.After(100 * time.Microsecond):
			}
		}
	}
	for !c.stop.Load() {
		rec, st := c.rd.Read(time.Second)
		c.skipMu.Lock()
		if c.rewind {
			// A newer worker stopped (a rolled-back reload); its window now
			// ends where it stopped. If this reader is past that point, seek
			// back to it (the record just read is read again); else go on.
			// Where it rewound to is published under the lock too: a newer
			// worker waiting for this one (passed) must not take the next
			// published before the rewind for how far this one has come.
			c.rewind = false
			if c.rewindTo < c.rd.Next() {
				c.rd.Seek(c.rewindTo)
				c.publish(c.rewindTo)
				c.skipMu.Unlock()
				continue
			}
		}
		skip := st == zone.Got && c.skippedLocked(rec.Seq)
		var awaits []chan struct{}
		if st == zone.Got && !skip {
			awaits = c.openAwaitsLocked()
		}
		c.skipMu.Unlock()
		if len(awaits) > 0 && !c.await(awaits) {
			// Closed while a newer worker that handed back to this one
			// still ran a handler: rec is not handled here, and whoever
			// takes over goes on from it.
			c.rd.Seek(rec.Seq)
			c.publish(rec.Seq)
			break
		}
		switch st {
		case zone.Got:
			if !skip { // else a newer worker of this process handles it
				c.deliver(rec)
			}
			if c.changes.Watched() {
				c.changes.Notify()
			}
		case zone.Overrun, zone.Gap:
			c.st.lost.Add(rec.Lost)
			c.log.Warn("alerts may have been lost", zap.Uint64("from", rec.Seq), zap.Uint64("count", rec.Lost), zap.Stringer("reason", st))
		}
		c.publish(c.rd.Next())
		if st == zone.Empty {
			c.sweep()
		}
	}
}

// skippedLocked reports whether seq is a newer worker's to handle, and
// forgets the windows this reader is past. Call under skipMu.
func (c *IPC) skippedLocked(seq uint64) bool {
	kept := c.windows[:0]
	in := false
	for _, w := range c.windows {
		if seq >= w.lo && seq < w.hi {
			in = true
		}
		if w.hi > seq {
			kept = append(kept, w)
		}
	}
	clear(c.windows[len(kept):])
	c.windows = kept
	return in
}

// sweep removes blob files older than a minute, now and then, when idle.
func (c *IPC) sweep() {
	if now := time.Now(); now.Sub(c.swept) > 15*time.Second {
		c.swept = now
		c.z.SweepBlobs(time.Minute, now)
	}
}

func (c *IPC) deliver(rec zone.Record) {
	b := rec.Data
	if len(b) < 2 || b[1] == 0 || int(b[1]) > MaxNameLen || 2+int(b[1]) > len(b) || b[0]&^flagBlob != 0 {
		c.log.Error("skipping a malformed alert record", zap.Uint64("seq", rec.Seq), zap.Uint32("pid", rec.PID))
		return
	}
	n := int(b[1])
	a := &Alert{Name: string(b[2 : 2+n]), Data: b[2+n:], Sender: int(rec.PID), SenderGeneration: int(rec.Gen), ToAll: rec.Aux == 0, Seq: rec.Seq, c: c}
	// The handler first: an alert nobody handles never has its blob opened.
	h := (*c.handlers.Load())[a.Name]
	if h == nil {
		if f := c.fallback.Load(); f != nil {
			h = *f
		}
	}
	var obs Observer
	if o := c.observer.Load(); o != nil && (*o).Wants(a.Name) {
		obs = *o
	}
	if h == nil && obs == nil {
		c.st.received.Add(1)
		c.st.unhandled.Add(1)
		if b[0]&flagBlob == 0 {
			c.st.bytesReceived.Add(uint64(len(a.Data)))
		}
		return
	}
	if b[0]&flagBlob != 0 {
		data, err := c.z.ReadBlob(string(a.Data), MaxDataLen)
		if err != nil {
			c.st.lost.Add(1)
			c.st.blobErrors.Add(1)
			fields := []zap.Field{zap.String("name", a.Name), zap.Int("sender", a.Sender), zap.Uint64("seq", a.Seq), zap.Error(err)}
			var be *zone.BlobError
			if errors.As(err, &be) {
				fields = append(fields, zap.String("path", be.Path))
			}
			c.log.Error("alert lost: its blob file cannot be read", fields...)
			return
		}
		a.Data = data
	}
	c.st.received.Add(1)
	c.st.bytesReceived.Add(uint64(len(a.Data)))
	c.runMu.Lock()
	c.inHandler = true
	c.runMu.Unlock()
	defer func() {
		c.runMu.Lock()
		c.inHandler = false
		c.runMu.Unlock()
	}()
	defer func() {
		if p := recover(); p != nil {
			c.st.panics.Add(1)
			c.log.Error("alert handler panicked", zap.String("name", a.Name), zap.Int("sender", a.Sender), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
		}
	}()
	if obs != nil {
		c.observe(obs, a)
	}
	if h != nil {
		h(a)
	}
}

// observe gives a to the observer, a panic recovered and counted apart
// from the handler's, so that the handler runs whatever the observer does.
func (c *IPC) observe(o Observer, a *Alert) {
	defer func() {
		if p := recover(); p != nil {
			c.st.panics.Add(1)
			c.log.Error("alert observer panicked", zap.String("name", a.Name), zap.Int("sender", a.Sender), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
		}
	}()
	o.Alert(a)
}

// handlerRunning reports whether a handler runs on the delivery goroutine.
func (c *IPC) handlerRunning() bool {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	return c.inHandler
}

// Discarded counts the alerts addressed to pid (not broadcasts) that its
// worker, whose alerts cursor was cursor (as published in its worker slot),
// never read: call it when that worker is found crashed. Nothing is kept
// for a dead process; this only counts what it will never handle.
func Discarded(z *zone.Zone, pid int, cursor uint64) uint64 {
	if cursor == 0 {
		return 0
	}
	return z.Ring().CountFor(cursor-1, func(kind uint32, aux uint64) bool {
		return kind == RecordKind && aux == uint64(pid)
	})
}
