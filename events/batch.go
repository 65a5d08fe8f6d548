package events

import (
	"errors"
	"fmt"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// MaxBatch is the most events one PostBatch takes.
const MaxBatch = 10000

// BatchItem is one event of a PostBatch: its source, name and data (as for
// Post: []byte or string as bytes, json.RawMessage as JSON, anything else
// encoded as JSON).
type BatchItem struct {
	Source, Event string
	Data          any
}

// PostBatch posts the items as consecutive events, in their order, with
// nothing of another poster between them, and returns the sequence
// numbers of the first and the last. It is all or nothing as far as the
// bus decides: every item is checked (names, data, size) before any is
// written, and none is visible before all are written. Run-once keys are
// not taken in batches (a duplicate could not be undone): post those one
// at a time. A record of the batch that readers abandoned meanwhile (this
// process stalled past their wait_max) is lost as a gap, counted by them,
// and the error says so.
func (b *Bus) PostBatch(items []BatchItem) (first, last uint64, err error) {
	first, last, err = b.postBatch(items)
	if err == nil || errors.Is(err, zone.ErrAbandoned) || errors.Is(err, zone.ErrOverwritten) {
		b.runHooks() // the batch is in the ring, in part at least
	}
	if err != nil {
		b.st.postErrors.Add(1)
		return 0, 0, fmt.Errorf("failed posting a batch of %d events; %w", len(items), err)
	}
	b.st.posted.Add(uint64(len(items)))
	return first, last, nil
}

func (b *Bus) postBatch(items []BatchItem) (uint64, uint64, error) {
	if len(items) == 0 {
		return 0, 0, invalid("the batch is empty")
	}
	if len(items) > MaxBatch {
		return 0, 0, invalid("the batch has %d events, the limit is %d", len(items), MaxBatch)
	}
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		return 0, 0, ErrClosed
	}
	encs := make([]encoded, len(items))
	for i, it := range items {
		if err := validName("source", it.Source); err != nil {
			return 0, 0, fmt.Errorf("event %d: %w", i, err)
		}
		if err := validName("event", it.Event); err != nil {
			return 0, 0, fmt.Errorf("event %d: %w", i, err)
		}
		body, isJSON, err := payload(it.Data)
		if err != nil {
			return 0, 0, fmt.Errorf("event %d: %w", i, err)
		}
		if int64(len(body)) > b.o.MaxPayload {
			return 0, 0, fmt.Errorf("event %d: %w: %d bytes, the limit is %d", i, ErrTooLarge, len(body), b.o.MaxPayload)
		}
		encs[i] = encoded{source: it.Source, event: it.Event, payload: body}
		if isJSON {
			encs[i].flags |= flagJSON
		}
	}
	// Large payloads go to blob files first; any failure removes those
	// already written, and nothing is posted.
	var blobs []string
	undo := func() {
		for _, name := range blobs {
			b.z.RemoveBlob(name)
		}
	}
	for i := range encs {
		if len(encs[i].payload) <= b.inline {
			continue
		}
		name, err := b.z.PutBlob(encs[i].payload)
		if err != nil {
			undo()
			return 0, 0, fmt.Errorf("event %d: %w", i, b.blobFailed(err))
		}
		b.st.blobsWritten.Add(1)
		blobs = append(blobs, name)
		encs[i].flags |= flagBlob
		encs[i].payload = []byte(name)
	}
	meta := zone.Meta{Kind: RecordKind, PID: uint32(b.o.PID), Gen: uint32(b.o.Generation)}
	entries := make([]zone.Entry, len(encs))
	for i := range encs {
		entries[i] = zone.Entry{Meta: meta, Parts: [][]byte{encs[i].header(nil), encs[i].payload}}
	}
	first, err := b.ring.WriteBatch(entries)
	if err != nil && !errors.Is(err, zone.ErrAbandoned) && !errors.Is(err, zone.ErrOverwritten) {
		undo() // nothing was posted
		return 0, 0, err
	}
	b.wakeReaders(first, first+uint64(len(items))-1)
	return first, first + uint64(len(items)) - 1, err
}
