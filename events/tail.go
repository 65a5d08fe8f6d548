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
	return b.RangeFunc(since, limit, nil)
}

// RangeFunc is Range keeping only the events for which keep(source, name)
// is true (nil keeps all); the others are skipped before their payload is
// read. After Detach it returns nothing.
func (b *Bus) RangeFunc(since uint64, limit int, keep func(source, name string) bool) ([]Event, uint64, uint64) {
	return b.rangeEvents(since, limit, keep, false)
}

// RangeRefs is RangeFunc giving an event whose payload is in a blob file
// (over 64 KiB) as a reference to stream from: Blob set (its name and
// size) and Data nil, the file opened only to check it is there (a blob
// removed meanwhile counts as lost, as with RangeFunc). Inline payloads
// come as with RangeFunc. It is how HTTP pages and streams read the bus
// without holding a large payload whole.
func (b *Bus) RangeRefs(since uint64, limit int, keep func(source, name string) bool) ([]Event, uint64, uint64) {
	return b.rangeEvents(since, limit, keep, true)
}

func (b *Bus) rangeEvents(since uint64, limit int, keep func(source, name string) bool, refs bool) ([]Event, uint64, uint64) {
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		return nil, since, 0
	}
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
			e, ok := b.decodeFields(rec)
			if !ok {
				lost++
				continue
			}
			if keep != nil && !keep(e.source, e.event) {
				continue
			}
			if refs && e.flags&flagBlob != 0 {
				blob, ok := b.blobRef(rec, e)
				if !ok {
					lost++
					continue
				}
				ev := b.event(rec, e, nil)
				ev.Blob = blob
				out = append(out, ev)
				continue
			}
			data, ok := b.payloadOf(rec, e)
			if !ok {
				lost++
				continue
			}
			ev := b.event(rec, e, data)
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
