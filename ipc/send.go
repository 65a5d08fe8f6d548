package ipc

import (
	"fmt"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

const flagBlob = 1

// alert record payload: u8 flags, u8 name length N (1..254), N name bytes,
// then the data, or with flagBlob the blob file's name.

func validate(name string, data []byte) error {
	if name == "" {
		return fmt.Errorf("%w: alert name cannot be empty", ErrInvalid)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: alert name length cannot exceed %d, was %d", ErrInvalid, MaxNameLen, len(name))
	}
	if int64(len(data)) > MaxDataLen {
		return fmt.Errorf("%w: alert data length cannot exceed %d, was %d", ErrTooLarge, int64(MaxDataLen), len(data))
	}
	return nil
}

// Send sends an alert to the process pid (this one included), to be handled
// by its newest worker. It returns once the alert is in the ring; the
// handler runs later, on the receiver's delivery goroutine, even for an
// alert to oneself (ngx_lua_ipc runs those inside send).
//
// Send is for callers outside this IPC's handlers: it waits for every
// receiver that lags, this process's own worker included. A handler sends
// with the Alert it received (Alert.Send, Alert.Broadcast, Alert.Reply).
func (c *IPC) Send(pid int, name string, data []byte) error {
	return c.sendCounted(pid, name, data, false)
}

func (c *IPC) sendCounted(pid int, name string, data []byte, inHandler bool) error {
	if err := c.send(pid, name, data, inHandler); err != nil {
		c.st.errors.Add(1)
		return err
	}
	c.st.sent.Add(1)
	c.st.bytesSent.Add(uint64(len(data)))
	return nil
}

// Broadcast sends an alert to every process of the node, this one
// included. Like Send, it is for callers outside this IPC's handlers.
func (c *IPC) Broadcast(name string, data []byte) error {
	return c.broadcastCounted(name, data, false)
}

func (c *IPC) broadcastCounted(name string, data []byte, inHandler bool) error {
	if err := c.send(0, name, data, inHandler); err != nil {
		c.st.errors.Add(1)
		return err
	}
	c.st.broadcasts.Add(1)
	c.st.bytesSent.Add(uint64(len(data)))
	return nil
}

// send writes one alert; inHandler says that the caller runs inside one
// of this IPC's handlers (see scan).
func (c *IPC) send(pid int, name string, data []byte, inHandler bool) error {
	c.dmu.RLock()
	defer c.dmu.RUnlock()
	if c.detached {
		return ErrClosed
	}
	if err := validate(name, data); err != nil {
		return err
	}
	if pid < 0 {
		return NoWorkerError{PID: pid}
	}
	if err := c.admit(pid, inHandler); err != nil {
		return err
	}
	blob := ""
	if len(data) > c.o.InlineLimit {
		var err error
		if blob, err = c.z.PutBlob(data); err != nil {
			return c.blobFailed(err)
		}
	}
	return c.write(pid, name, data, blob)
}

// write puts an alert on the ring: data inline, or the name of the blob
// that holds it; the blob is removed when that fails.
func (c *IPC) write(pid int, name string, data []byte, blob string) error {
	var head [2 + MaxNameLen]byte
	head[1] = byte(len(name))
	n := 2 + copy(head[2:], name)
	payload := data
	if blob != "" {
		head[0] = flagBlob
		payload = []byte(blob)
	}
	meta := zone.Meta{Kind: RecordKind, PID: uint32(c.o.PID), Gen: uint32(c.o.Generation), Aux: uint64(pid), Bell: Bell}
	if pid != 0 {
		meta.Wake = zone.TargetBit(uint32(pid)) // only the addressee's readers wake
	}
	for attempt := 0; ; attempt++ {
		_, err := c.ring.Write(meta, head[:n], payload)
		if err == zone.ErrAbandoned && attempt < 3 {
			continue
		}
		if err != nil && blob != "" {
			c.z.RemoveBlob(blob)
		}
		return err
	}
}

// admit checks that pid (0: every process) has a live worker and that its
// receivers are not too far behind, waiting for them under the Block
// policy; inHandler says that the caller runs inside one of this IPC's
// handlers (see scan). A check holds for 50ms and while the ring stays under the bound
// it computed, so a busy sender pays two atomic loads and a map lookup.
func (c *IPC) admit(pid int, inHandler bool) error {
	r := c.ring
	now := time.Now()
	c.bmu.Lock()
	b, ok := c.bounds[bkey{pid, inHandler}]
	c.bmu.Unlock()
	if ok && now.Sub(b.at) < 50*time.Millisecond && r.Tail() < b.tail && r.DataTail() < b.data {
		return nil
	}
	deadline := time.Time{}
	for {
		found, slowest, lagRec, lagBytes := c.scan(pid, inHandler)
		if pid != 0 && !found {
			return NoWorkerError{PID: pid}
		}
		// In bytes, a receiver is held to: a quarter of the data area can
		// still be written before its next record is overwritten.
		maxBytes := r.DataSize() / 4 * 3
		if lagRec <= c.o.MaxLag && lagBytes <= maxBytes {
			c.bmu.Lock()
			if len(c.bounds) > 1024 {
				clear(c.bounds)
			}
			c.bounds[bkey{pid, inHandler}] = bound{tail: r.Tail() + (c.o.MaxLag - lagRec), data: r.DataTail() + (maxBytes - lagBytes), at: now}
			c.bmu.Unlock()
			return nil
		}
		if c.o.Overflow == Drop {
			c.st.dropped.Add(1)
			return fmt.Errorf("%w: process %d is %d alerts behind (limit %d); alert dropped", ErrReceiverSlow, slowest, lagRec, c.o.MaxLag)
		}
		if deadline.IsZero() {
			deadline = now.Add(c.o.SendTimeout)
			c.st.waits.Add(1)
			if i := c.slot.Load(); i >= 0 && inHandler {
				ws := c.z.Worker(int(i))
				ws.SendWaiting.Store(1)
				defer ws.SendWaiting.Store(0)
			}
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%w: process %d stayed %d alerts behind (limit %d) for %v", ErrReceiverSlow, slowest, lagRec, c.o.MaxLag, c.o.SendTimeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// bkey keys the cached bounds: a sender inside a handler leaves out
// receivers that others wait for, so its bound is its own.
type bkey struct {
	pid       int
	inHandler bool
}

type bound struct {
	tail, data uint64
	at         time.Time
}

// scan looks at the worker table: whether pid (0: any process) has a live
// worker, and the largest lag among all alert receivers. Every record
// moves every reader, so a send to one process can overrun another: the
// lag of all of them counts. Hung workers are left out (they would hold
// every sender for the whole timeout), and so is the caller's own worker
// when it sends from one of its handlers (it cannot read on meanwhile):
// handler says so, as the Alert's methods do.
func (c *IPC) scan(pid int, handler bool) (found bool, slowest int, lagRec, lagBytes uint64) {
	var minCur uint64
	self := int64(-1)
	if handler {
		self = c.slot.Load()
	}
	for i := 0; i < c.z.Workers(); i++ {
		s := c.z.Worker(i)
		st := s.State.Load()
		if st != zone.WorkerLive && st != zone.WorkerHung {
			continue
		}
		p := int(s.PID.Load())
		if pid == 0 || p == pid {
			found = true
		}
		cur := s.AlertCursor.Load()
		// A receiver whose handler waits in a send is not waited for by a
		// sender that is itself in a handler: two handlers would each wait
		// out the send timeout. Other senders wait for it as for anyone.
		if cur == 0 || st == zone.WorkerHung || int64(i) == self || (handler && s.SendWaiting.Load() != 0) {
			continue // no alerts receiver, hung, the caller itself, or waiting on another
		}
		if minCur == 0 || cur < minCur {
			minCur, slowest = cur, p
		}
	}
	// The slowest receiver lags most in records and in bytes alike (its
	// records include every later one's): one walk of the segments.
	if minCur != 0 {
		lagRec, lagBytes = c.ring.Lag(minCur - 1)
	}
	return found, slowest, lagRec, lagBytes
}
