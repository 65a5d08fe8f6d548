package ipc

import (
	"bytes"
	"os"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// AlertRef is an alert as Range reads it from the ring, for pollers: an
// alert to this process or to every process, whoever handles it.
type AlertRef struct {
	// Seq is the alert's sequence number on the zone's ring.
	Seq uint64
	// Name is the alert's name.
	Name string
	// Data is the alert's data (a copy), nil when it is in a blob file.
	Data []byte
	// Blob names the blob file holding the data, "" when Data holds it;
	// Size is the data's length either way.
	Blob string
	Size int64
	// Sender is the sending process's pid, SenderGeneration its worker's.
	Sender           int
	SenderGeneration int
	// ToAll reports an alert sent to every process (Broadcast).
	ToAll bool
	// Time is when the alert was written to the ring.
	Time time.Time
}

// Tail is the sequence number the next record written by anyone will get:
// "now", for pollers that start from now. 0 once detached.
func (c *IPC) Tail() uint64 {
	c.dmu.RLock()
	defer c.dmu.RUnlock()
	if c.detached {
		return 0
	}
	return c.ring.Tail()
}

// Range reads the alerts to this process (and broadcasts) from since on,
// at most limit, keeping those whose name keep accepts (nil keeps all),
// without waiting and without handling them: a poller's view of the
// ring, next to (and independent of) the worker's delivery. It returns
// them, the sequence to read next, and how many alerts and records the
// ring no longer held (an overrun or a writer that died mid-record) or
// that were malformed. A blob alert comes as its file's name and size;
// its file is opened with OpenBlob. After Detach it returns nothing.
func (c *IPC) Range(since uint64, limit int, keep func(name string) bool) ([]AlertRef, uint64, uint64) {
	c.dmu.RLock()
	defer c.dmu.RUnlock()
	if c.detached {
		return nil, since, 0
	}
	pid := uint64(c.o.PID)
	rd := c.ring.NewReader(since)
	if c.o.WaitMax > 0 {
		rd.SetWaitMax(c.o.WaitMax)
	}
	rd.SetFilter(func(kind uint32, aux uint64) bool { return kind == RecordKind && (aux == 0 || aux == pid) })
	var out []AlertRef
	var lost uint64
	for len(out) < limit {
		rec, st := rd.TryRead()
		switch st {
		case zone.Got:
			if rec.Kind != RecordKind || (rec.Aux != 0 && rec.Aux != pid) {
				continue
			}
			b := rec.Data
			if len(b) < 2 || b[1] == 0 || int(b[1]) > MaxNameLen || 2+int(b[1]) > len(b) || b[0]&^flagBlob != 0 {
				lost++
				continue
			}
			n := int(b[1])
			name := string(b[2 : 2+n])
			if keep != nil && !keep(name) {
				continue
			}
			a := AlertRef{Seq: rec.Seq, Name: name, Sender: int(rec.PID), SenderGeneration: int(rec.Gen), ToAll: rec.Aux == 0, Time: time.Unix(0, rec.Time)}
			if b[0]&flagBlob != 0 {
				a.Blob = string(b[2+n:])
				f, size, err := c.z.OpenBlob(a.Blob, MaxDataLen)
				if err != nil {
					lost++ // removed (its minute is up) or not a blob
					continue
				}
				f.Close()
				a.Size = size
			} else {
				a.Data = bytes.Clone(b[2+n:])
				a.Size = int64(len(a.Data))
			}
			out = append(out, a)
			continue
		case zone.Overrun, zone.Gap:
			lost += rec.Lost
			continue
		}
		break // Empty, or the next record is still being written
	}
	return out, rd.Next(), lost
}

// OpenBlob opens the blob file of an alert from Range; the caller closes
// it. It fails when the file was removed meanwhile, or has another size.
func (c *IPC) OpenBlob(a *AlertRef) (*os.File, error) {
	f, size, err := c.z.OpenBlob(a.Blob, MaxDataLen)
	if err != nil {
		return nil, err
	}
	if size != a.Size {
		f.Close()
		return nil, &zone.BlobError{Op: "opening", Path: a.Blob, Err: errSizeChanged}
	}
	return f, nil
}

// Changed returns a channel closed when the delivery goroutine has read
// another alert to this process (or a broadcast), or the IPC closes: take
// it before Range, wait on it after an empty Range.
func (c *IPC) Changed() <-chan struct{} { return c.changes.Changed() }

// Closed reports whether Close was called.
func (c *IPC) Closed() bool { return c.stop.Load() }
