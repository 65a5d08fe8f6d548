package fleet

import (
	"encoding/binary"
	"errors"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// A fleet message's body, as published to the stream (little-endian):
//
//	0   u8   wire version (wireVersion)
//	1   u8   flags: 1 the data is JSON, 2 a run-once event
//	2   u8   source length S (1..255)
//	3   u8   event length E (1..255)
//	4   u8   unique key length U (0..255; 0 unless a run-once event)
//	5   u8   node id length N (1..64)
//	6   u16  reserved, zero
//	8   u32  poster's pid on its host
//	12  u32  poster's generation
//	16  i64  when it was posted, Unix ns
//	24  u64  its sequence on its host's ring
//	32  i64  its host's zone creation time, Unix ns (names that zone: a
//	         zone made again numbers its ring from 1 again)
//	40  u64  prev: the ring sequence of the event its host published
//	         before it (0: none known). A host applies a host's events only
//	         in this chain; a copy whose predecessor it has not applied
//	         yet is dropped, since its host publishes it again after the
//	         predecessor (see outbound).
//	48  S    source
//	…   E    event
//	…   U    unique key
//	…   N    node id
//	…        data, the payload exactly as posted
//
// The message id (the Nats-Msg-Id header JetStream de-duplicates by) is
// "<node>.<zone creation time ns>.<ring sequence>.<publisher run>": a
// publish repeated within a run is dropped by JetStream; a run publishing
// again what an earlier run may have published makes new copies, which the
// receivers' chain check drops.
const (
	wireVersion = 1
	wireHeader  = 48

	wireJSON   = 1
	wireUnique = 2
)

// message is one fleet event.
type message struct {
	json   bool
	source string
	event  string
	unique string
	node   string
	pid    uint32
	gen    uint32
	time   int64
	seq    uint64
	zone   int64
	prev   uint64
	data   []byte
}

func (m *message) encode(dst []byte) []byte {
	var h [wireHeader]byte
	h[0] = wireVersion
	if m.json {
		h[1] |= wireJSON
	}
	if m.unique != "" {
		h[1] |= wireUnique
	}
	h[2], h[3], h[4], h[5] = byte(len(m.source)), byte(len(m.event)), byte(len(m.unique)), byte(len(m.node))
	binary.LittleEndian.PutUint32(h[8:], m.pid)
	binary.LittleEndian.PutUint32(h[12:], m.gen)
	binary.LittleEndian.PutUint64(h[16:], uint64(m.time))
	binary.LittleEndian.PutUint64(h[24:], m.seq)
	binary.LittleEndian.PutUint64(h[32:], uint64(m.zone))
	binary.LittleEndian.PutUint64(h[40:], m.prev)
	dst = append(dst, h[:]...)
	dst = append(dst, m.source...)
	dst = append(dst, m.event...)
	dst = append(dst, m.unique...)
	dst = append(dst, m.node...)
	return append(dst, m.data...)
}

var errBadMessage = errors.New("malformed fleet message")

// decode parses a message published by another host, trusting nothing.
// data aliases b.
func decode(b []byte) (message, error) {
	if len(b) < wireHeader || b[0] != wireVersion || b[1]&^(wireJSON|wireUnique) != 0 || b[6] != 0 || b[7] != 0 {
		return message{}, errBadMessage
	}
	s, e, u, n := int(b[2]), int(b[3]), int(b[4]), int(b[5])
	if s == 0 || e == 0 || n == 0 || n > events.MaxNodeLen || (u != 0) != (b[1]&wireUnique != 0) || wireHeader+s+e+u+n > len(b) {
		return message{}, errBadMessage
	}
	m := message{
		json: b[1]&wireJSON != 0,
		pid:  binary.LittleEndian.Uint32(b[8:]), gen: binary.LittleEndian.Uint32(b[12:]),
		time: int64(binary.LittleEndian.Uint64(b[16:])), seq: binary.LittleEndian.Uint64(b[24:]),
		zone: int64(binary.LittleEndian.Uint64(b[32:])), prev: binary.LittleEndian.Uint64(b[40:]),
	}
	p := wireHeader
	m.source, p = string(b[p:p+s]), p+s
	m.event, p = string(b[p:p+e]), p+e
	m.unique, p = string(b[p:p+u]), p+u
	m.node, p = string(b[p:p+n]), p+n
	m.data = b[p:]
	return m, nil
}
