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
	"strings"
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
	// Time is when the event was committed to the ring (local: posted);
	// for a remote event, when it was posted on its host.
	Time time.Time
	// Node is, for an event posted on another host of a fleet and brought
	// here by the fleet bridge, that host's node id; "" for this host's
	// events. PID and Generation are then the poster's on that host.
	Node string
	// StreamSeq is a remote event's sequence in the fleet's stream; 0 for
	// this host's events.
	StreamSeq uint64
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
	flagRemote = 1 << 3
	flagsKnown = flagJSON | flagUnique | flagBlob | flagRemote
)

// MaxNodeLen bounds a fleet node id.
const MaxNodeLen = 64

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
//	with flagRemote (an event from another host of a fleet), then:
//	…   u64  stream epoch (the fleet stream's creation time, Unix ns)
//	…   u64  stream sequence
//	…   u32  poster's pid on its host
//	…   u32  poster's generation
//	…   i64  when it was posted, Unix ns
//	…   i64  its host's zone creation time, Unix ns (names that zone)
//	…   u64  its sequence on its host's ring
//	…   u8   node id length N (1..MaxNodeLen)
//	…   N    node id
//	…        data, or with flagBlob the blob file's name
const encHeader = 16

// maxEncHeader bounds an encoded event's header with every field at its longest.
const maxEncHeader = encHeader + 3*MaxNameLen + remoteFixed + MaxNodeLen

// remoteFixed is the size of the fixed part of the remote fields.
const remoteFixed = 8 + 8 + 4 + 4 + 8 + 8 + 8 + 1

// Remote is where an event from another host of a fleet comes from.
type Remote struct {
	// Node is the origin host's node id (1..MaxNodeLen bytes).
	Node string
	// StreamEpoch and StreamSeq name the fleet stream message it came in.
	StreamEpoch, StreamSeq uint64
	// PID and Generation are the poster's on its host.
	PID, Generation uint32
	// Time is when it was posted on its host, Unix ns.
	Time int64
	// OriginZone names its host's zone (the zone's creation time, Unix
	// ns) and OriginSeq is its sequence on that zone's ring: the fleet
	// bridge keeps each host's events in that order, once.
	OriginZone int64
	OriginSeq  uint64
}

type encoded struct {
	flags   byte
	source  string
	event   string
	unique  string
	slot    uint32
	token   uint64
	remote  Remote // with flagRemote
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
	dst = append(dst, e.unique...)
	if e.flags&flagRemote == 0 {
		return dst
	}
	r := &e.remote
	dst = binary.LittleEndian.AppendUint64(dst, r.StreamEpoch)
	dst = binary.LittleEndian.AppendUint64(dst, r.StreamSeq)
	dst = binary.LittleEndian.AppendUint32(dst, r.PID)
	dst = binary.LittleEndian.AppendUint32(dst, r.Generation)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.Time))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.OriginZone))
	dst = binary.LittleEndian.AppendUint64(dst, r.OriginSeq)
	dst = append(dst, byte(len(r.Node)))
	return append(dst, r.Node...)
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
	if s == 0 || ev == 0 || e.flags&^flagsKnown != 0 || (u != 0) != (e.flags&flagUnique != 0) || encHeader+s+ev+u > len(b) {
		return encoded{}, errBadRecord
	}
	p := encHeader
	e.source = string(b[p : p+s])
	p += s
	e.event = string(b[p : p+ev])
	p += ev
	e.unique = string(b[p : p+u])
	p += u
	if e.flags&flagRemote != 0 {
		if p+remoteFixed > len(b) {
			return encoded{}, errBadRecord
		}
		r := &e.remote
		r.StreamEpoch = binary.LittleEndian.Uint64(b[p:])
		r.StreamSeq = binary.LittleEndian.Uint64(b[p+8:])
		r.PID = binary.LittleEndian.Uint32(b[p+16:])
		r.Generation = binary.LittleEndian.Uint32(b[p+20:])
		r.Time = int64(binary.LittleEndian.Uint64(b[p+24:]))
		r.OriginZone = int64(binary.LittleEndian.Uint64(b[p+32:]))
		r.OriginSeq = binary.LittleEndian.Uint64(b[p+40:])
		n := int(b[p+48])
		p += remoteFixed
		if n == 0 || n > MaxNodeLen || p+n > len(b) {
			return encoded{}, errBadRecord
		}
		r.Node = string(b[p : p+n])
		p += n
	}
	e.payload = b[p:]
	return e, nil
}

// Matches reports whether a source or event name matches a pattern: the
// name itself, or a prefix ending in '*' ("chat.*", "*" for every name).
func Matches(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}
