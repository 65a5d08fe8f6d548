package ipc

import (
	"errors"
	"math"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/internal/goid"
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
	if c.open {
		return errors.New("ipc already started")
	}
	owners.Lock()
	c.handoff = c.ring.Tail()
	if prev := owners.m[c.z.Path()]; prev != nil {
		prev.skipLo.Store(c.handoff)
		prev.skipHi.Store(math.MaxUint64)
		c.prev = prev
	}
	owners.m[c.z.Path()] = c
	owners.Unlock()
	c.rd = c.ring.NewReader(c.handoff)
	pid := uint64(c.o.PID)
	c.rd.SetFilter(func(kind uint32, aux uint64) bool { return kind == RecordKind && (aux == 0 || aux == pid) })
	c.rd.SetBell(Bell)
	if i := c.slot.Load(); i >= 0 {
		c.rd.SetWorker(c.z.Worker(int(i)))
	}
	if c.o.WaitMax > 0 {
		c.rd.SetWaitMax(c.o.WaitMax)
	}
	if c.o.Spin > 0 {
		c.rd.SetSpin(c.o.Spin)
	}
	c.publish(c.handoff)
	c.open = true
	go c.loop()
	return nil
}

func (c *IPC) publish(next uint64) {
	c.next.Store(next)
	if i := c.slot.Load(); i >= 0 {
		c.z.Worker(int(i)).AlertCursor.Store(next + 1)
	}
}

// Close stops delivery. If this IPC handled the process's alerts while an
// older one still runs (a rolled-back reload), the older one takes them
// back from where this one stopped.
func (c *IPC) Close() error {
	c.state.Lock()
	defer c.state.Unlock()
	if !c.open {
		return nil
	}
	c.open = false
	c.stop.Store(true)
	c.rd.Interrupt()
	<-c.done
	owners.Lock()
	defer owners.Unlock()
	if owners.m[c.z.Path()] == c {
		delete(owners.m, c.z.Path())
		if p := c.prev; p != nil && !p.stop.Load() {
			owners.m[c.z.Path()] = p
			p.rewind.Store(c.rd.Next() + 1)
			p.rd.Interrupt()
		}
	}
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

func (c *IPC) loop() {
	defer close(c.done)
	c.loopGID.Store(goid.Get())
	if p := c.prev; p != nil {
		// FIFO across the hand-off: the old worker finishes first.
		for !c.stop.Load() && !p.stop.Load() && p.next.Load() < c.handoff {
			time.Sleep(100 * time.Microsecond)
		}
		c.prev = nil
	}
	a := &Alert{c: c}
	for !c.stop.Load() {
		if v := c.rewind.Swap(0); v != 0 {
			c.rd.Seek(v - 1)
			c.skipLo.Store(math.MaxUint64)
		}
		rec, st := c.rd.Read(time.Second)
		switch st {
		case zone.Got:
			if lo := c.skipLo.Load(); rec.Seq >= lo && rec.Seq < c.skipHi.Load() {
				break // a newer worker of this process handles it
			}
			c.deliver(rec, a)
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

// sweep removes blob files older than a minute, now and then, when idle.
func (c *IPC) sweep() {
	if now := time.Now(); now.Sub(c.swept) > 15*time.Second {
		c.swept = now
		c.z.SweepBlobs(time.Minute, now)
	}
}

func (c *IPC) deliver(rec zone.Record, a *Alert) {
	b := rec.Data
	if len(b) < 2 || b[1] == 0 || int(b[1]) > MaxNameLen || 2+int(b[1]) > len(b) || b[0]&^flagBlob != 0 {
		c.log.Error("skipping a malformed alert record", zap.Uint64("seq", rec.Seq), zap.Uint32("pid", rec.PID))
		return
	}
	n := int(b[1])
	*a = Alert{Name: string(b[2 : 2+n]), Data: b[2+n:], Sender: int(rec.PID), SenderGeneration: int(rec.Gen), Broadcast: rec.Aux == 0, Seq: rec.Seq, c: c}
	if b[0]&flagBlob != 0 {
		data, err := c.z.ReadBlob(string(a.Data), MaxDataLen)
		if err != nil {
			c.st.lost.Add(1)
			c.log.Error("alert lost: its blob cannot be read", zap.String("name", a.Name), zap.Int("sender", a.Sender), zap.Error(err))
			return
		}
		a.Data = data
	}
	c.st.received.Add(1)
	c.st.bytesReceived.Add(uint64(len(a.Data)))
	h := (*c.handlers.Load())[a.Name]
	if h == nil {
		if f := c.fallback.Load(); f != nil {
			h = *f
		}
	}
	if h == nil {
		c.st.unhandled.Add(1)
		return
	}
	c.current.Store(a)
	defer c.current.Store(nil)
	defer func() {
		if p := recover(); p != nil {
			c.st.panics.Add(1)
			c.log.Error("alert handler panicked", zap.String("name", a.Name), zap.Int("sender", a.Sender), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
		}
	}()
	h(a)
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
