package events

import (
	"bytes"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Range reads, without waiting and without running handlers, the events the
// ring still holds from sequence since on, at most limit of them. It
// returns them (their Data copied), the sequence to ask for next, and how
// many events after since the ring no longer holds (or whose poster never
// committed them). It is how pollers that are not workers (the admin API,
// HTTP long-polls) read the bus.
func (b *Bus) Range(since uint64, limit int) ([]Event, uint64, uint64) {
	rd := b.ring.NewReader(since)
	rd.SetWaitMax(b.o.WaitMax)
	rd.SetFilter(onlyEvents)
	var out []Event
	var lost uint64
	for len(out) < limit {
		rec, st := rd.TryRead()
		switch st {
		case zone.Got:
			if rec.Kind != RecordKind {
				continue
			}
			ev, ok := b.decodeRecord(rec)
			if !ok {
				lost++
				continue
			}
			ev.Data = bytes.Clone(ev.Data)
			out = append(out, ev)
			continue
		case zone.Overrun, zone.Gap:
			lost += rec.Lost
			continue
		}
		break // Empty, or the next event is still being written
	}
	return out, rd.Next(), lost
}
