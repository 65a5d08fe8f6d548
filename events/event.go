// Package events is the ordered events bus of caddy-ipcbus: what
// lua-resty-worker-events gives nginx workers, on the zone's shared-memory
// ring. Every worker of a node handles every shared event, in the same
// total order (the ring's sequence numbers), pushed to it through a futex
// doorbell rather than polled. It knows nothing of Caddy.
package events

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event is what a handler gets. Data is only valid during the handler call:
// copy it to keep it.
type Event struct {
	// Seq is the event's ring sequence number; 0 for local events.
	Seq uint64
	// Source and Name are what the event was posted with.
	Source string
	Name   string
	// Data is the payload exactly as posted: the bytes given, or the JSON
	// encoding of the value given.
	Data []byte
	// Blob is set, with Data nil, when the event comes from RangeRefs or a
	// Follower with BlobRefs and its payload is in a blob file: read it
	// with Blob.Open. Handlers never get one.
	Blob *Blob
	// JSON reports whether Data holds JSON (a value was posted, or json.RawMessage).
	JSON bool
	// Value is the value given to PostLocal, by reference; nil for shared events.
	Value any
	// PID and Generation identify the poster's worker; both 0 for local events.
	PID        int
	Generation int
	// Local reports an event from PostLocal (this worker only, no sender).
	Local bool
	// Unique is the run-once key, if any.
	Unique string
	// Time is when the event was committed to the ring (local: posted).
	Time time.Time
}

// Decode unmarshals a JSON payload into v.
func (e *Event) Decode(v any) error {
	if e.Local && e.Value != nil {
		return fmt.Errorf("event %s/%s is local; use its Value", e.Source, e.Name)
	}
	return json.Unmarshal(e.Data, v)
}

// Record kinds on the zone ring that belong to the events bus.
const (
	// RecordKind marks an event record on the ring.
	RecordKind = 1
)

// Flags of an encoded event.
const (
	flagJSON   = 1 << 0
	flagUnique = 1 << 1
	flagBlob   = 1 << 2
)

// MaxNameLen bounds source and event names (they are length-prefixed by a byte).
const MaxNameLen = 255

// encoded event, on the ring:
//
//	0   u8   flags (flagJSON, flagUnique, flagBlob)
//	1   u8   source length S (1..255)
//	2   u8   event length E (1..255)
//	3   u8   unique key length U (0..255; 0 unless flagUnique)
//	4   u32  unique slot (flagUnique), else 0
//	8   u64  unique token (flagUnique), else 0
//	16  S    source
//	…   E    event
//	…   U    unique key
//	…        data, or with flagBlob the blob file's name
const encHeader = 16

type encoded struct {
	flags   byte
	source  string
	event   string
	unique  string
	slot    uint32
	token   uint64
	payload []byte // data or blob name
}

func (e *encoded) header(dst []byte) []byte {
	var h [encHeader]byte
	h[0], h[1], h[2], h[3] = e.flags, byte(len(e.source)), byte(len(e.event)), byte(len(e.unique))
	binary.LittleEndian.PutUint32(h[4:], e.slot)
	binary.LittleEndian.PutUint64(h[8:], e.token)
	dst = append(dst, h[:]...)
	dst = append(dst, e.source...)
	dst = append(dst, e.event...)
	return append(dst, e.unique...)
}

var errBadRecord = errors.New("malformed event record")

// decode parses an event record written by another process, trusting
// nothing: every length is checked against the record. The strings are
// copied; payload aliases b.
func decode(b []byte) (encoded, error) {
	if len(b) < encHeader {
		return encoded{}, errBadRecord
	}
	e := encoded{flags: b[0], slot: binary.LittleEndian.Uint32(b[4:]), token: binary.LittleEndian.Uint64(b[8:])}
	s, ev, u := int(b[1]), int(b[2]), int(b[3])
	if s == 0 || ev == 0 || e.flags&^(flagJSON|flagUnique|flagBlob) != 0 || (u != 0) != (e.flags&flagUnique != 0) || encHeader+s+ev+u > len(b) {
		return encoded{}, errBadRecord
	}
	p := encHeader
	e.source = string(b[p : p+s])
	p += s
	e.event = string(b[p : p+ev])
	p += ev
	e.unique = string(b[p : p+u])
	p += u
	e.payload = b[p:]
	return e, nil
}
