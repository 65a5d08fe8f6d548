package events

import (
	"bytes"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Follower reads the events of a zone as they are posted without being a
// worker: it runs no handlers, takes no run-once event (it shows them),
// and works on a zone attached read-only, so a command line tool can
// follow the bus of running processes (`caddy ipcbus tail`).
type Follower struct {
	z          *zone.Zone
	rd         *zone.Reader
	maxPayload int64
	refs       bool
}

// SetBlobRefs makes Next give an event whose payload is in a blob file as
// a reference (Event.Blob, Data nil) to stream from, the file opened only
// to check it is there, instead of reading it whole.
func (f *Follower) SetBlobRefs(on bool) { f.refs = on }

// NewFollower follows the events of z from sequence since (the ring's
// Tail for "from now"; an older one reads what the ring still holds).
func NewFollower(z *zone.Zone, since uint64) *Follower {
	rd := z.Ring().NewReader(since)
	rd.SetFilter(onlyEvents)
	return &Follower{z: z, rd: rd, maxPayload: MaxPayloadLimit}
}

// Next waits at most timeout for the next event. It returns the event
// (ok true), or a loss (Count > 0: events the ring no longer holds, whose
// poster never committed them, or whose payload is gone), or neither when
// the timeout passed.
func (f *Follower) Next(timeout time.Duration) (ev Event, loss Loss, ok bool) {
	deadline := time.Now().Add(timeout)
	for {
		rec, st := f.rd.Read(time.Until(deadline))
		switch st {
		case zone.Got:
			e, err := decode(rec.Data)
			if err != nil {
				return Event{}, Loss{From: rec.Seq, Count: 1, Reason: "malformed"}, false
			}
			data := e.payload
			var blob *Blob
			if e.flags&flagBlob != 0 && f.refs {
				bf, size, err := f.z.OpenBlob(string(e.payload), f.maxPayload)
				if err != nil {
					return Event{}, Loss{From: rec.Seq, Count: 1, Reason: "gap"}, false
				}
				bf.Close()
				blob, data = &Blob{Name: string(e.payload), Size: size, z: f.z, max: f.maxPayload}, nil
			} else if e.flags&flagBlob != 0 {
				if data, err = f.z.ReadBlob(string(e.payload), f.maxPayload); err != nil {
					return Event{}, Loss{From: rec.Seq, Count: 1, Reason: "gap"}, false
				}
			}
			ev := makeEvent(rec, e, bytes.Clone(data))
			ev.Blob = blob
			return ev, Loss{}, true
		case zone.Overrun:
			return Event{}, Loss{From: rec.Seq, Count: rec.Lost, Reason: "overrun"}, false
		case zone.Gap:
			return Event{}, Loss{From: rec.Seq, Count: rec.Lost, Reason: "gap"}, false
		}
		if !time.Now().Before(deadline) {
			return Event{}, Loss{}, false
		}
	}
}

// NextSeq is the sequence of the next event the follower reads.
func (f *Follower) NextSeq() uint64 { return f.rd.Next() }
