package zone

import (
	"errors"
	"fmt"
	"time"
	"unsafe"
)

// The ring is a multi-writer broadcast log in the zone. Writers reserve a
// sequence number and a stretch of the data area with one fetch-add each,
// claim the sequence's index slot, copy the payload, and commit by setting
// the slot's state word last. Readers keep their own cursor, read a record
// only once its slot says "committed" for their sequence, copy it out, and
// then check that neither the slot nor the data was reused meanwhile (a
// seqlock). Nothing a writer does waits for a reader: a reader that falls a
// whole ring behind finds newer sequences in its slots and counts exactly how
// many it skipped. A writer that dies after reserving leaves its slot
// uncommitted; after WaitMax a reader marks the slot abandoned, which every
// other reader then skips too, and which makes a late commit fail.

// Errors a writer can get.
var (
	// ErrTooLarge is returned for a payload over the ring's record limit.
	ErrTooLarge = errors.New("record too large for the ring")
	// ErrAbandoned is returned when readers gave up waiting for this write
	// (the writer stalled longer than their WaitMax): the record was not
	// delivered, and the writer may write it again.
	ErrAbandoned = errors.New("ring record abandoned by readers before it was committed")
	// ErrOverwritten is returned when the ring wrapped past the record
	// before it was committed.
	ErrOverwritten = errors.New("ring record overwritten before it was committed")
)

// DefaultWaitMax is how long a reader waits for a reserved record to be
// committed before it skips it as a gap.
const DefaultWaitMax = 500 * time.Millisecond

// Ring is the zone's broadcast ring. Its geometry comes from the validated
// header and is kept here, so nothing is re-read from shared memory.
type Ring struct {
	hdr       *header
	index     unsafe.Pointer
	data      []byte
	mask      uint64
	slots     uint64
	dataSize  uint64
	maxRecord uint64
	bells     [NumBells]Doorbell
	node      *Node
}

func newRing(z *Zone) *Ring {
	g := z.geo
	return &Ring{
		hdr:       z.hdr,
		index:     unsafe.Pointer(&z.mem[g.indexOff]),
		data:      z.mem[g.dataOff : g.dataOff+g.dataSize : g.dataOff+g.dataSize],
		mask:      g.indexSlots - 1,
		slots:     g.indexSlots,
		dataSize:  g.dataSize,
		maxRecord: g.maxRecord,
		bells:     [NumBells]Doorbell{z.Doorbell(0), z.Doorbell(1)},
		node:      &z.hdr.node,
	}
}

func (r *Ring) slot(seq uint64) *indexSlot {
	return (*indexSlot)(unsafe.Add(r.index, (seq&r.mask)*indexSlotSize))
}

// Slots is the number of records the ring holds.
func (r *Ring) Slots() uint64 { return r.slots }

// DataSize is the size of the ring's data area in bytes.
func (r *Ring) DataSize() uint64 { return r.dataSize }

// MaxRecord is the largest payload the ring takes.
func (r *Ring) MaxRecord() int { return int(r.maxRecord) }

// DataTail is the next data byte position to be handed out.
func (r *Ring) DataTail() uint64 { return r.hdr.dataTail.Load() }

// Tail is the next sequence number to be handed out.
func (r *Ring) Tail() uint64 { return r.hdr.tail.Load() }

// Meta describes a record; the writer sets it, every reader gets it back.
type Meta struct {
	// Kind is a record type for the layers above.
	Kind uint32
	// PID and Gen identify the writer.
	PID uint32
	Gen uint32
	// Aux is free for the layers above.
	Aux uint64
	// Bell is the doorbell rung after the commit (0 ≤ Bell < NumBells):
	// readers sleep on the bell of the records they want.
	Bell uint8
}

// Write appends one record whose payload is the concatenation of parts and
// returns its sequence number. It never waits for readers.
func (r *Ring) Write(m Meta, parts ...[]byte) (uint64, error) {
	n := uint64(0)
	for _, p := range parts {
		n += uint64(len(p))
	}
	if n > r.maxRecord {
		return 0, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, n, r.maxRecord)
	}
	seq, s, sm, err := r.reserve(m, n)
	if err != nil {
		return seq, err
	}
	// A writer overtaken since it reserved (a whole data area written
	// meanwhile) must not copy into space that newer records own.
	if r.hdr.dataTail.Load() > sm.dpos+r.dataSize-n {
		r.abandon(seq, s)
		return seq, ErrOverwritten
	}
	pos := sm.dpos % r.dataSize
	for _, p := range parts {
		pos = r.copyIn(pos, p)
	}
	return seq, r.commit(seq, s, &sm, m.Bell)
}

// abandon marks a claimed slot abandoned by its own writer.
func (r *Ring) abandon(seq uint64, s *indexSlot) {
	s.state.CompareAndSwap(stateWord(seq, stWriting), stateWord(seq, stAbandoned))
	r.bells[0].Ring()
	r.bells[1].Ring()
}

// metaCheck mixes seq and a slot's fields: each field times its own odd
// constant (independent multiplies), then a finalizer. It detects fields
// of another record, not an adversary.
func metaCheck(seq uint64, m *slotMeta) uint32 {
	h := seq*0x9e3779b97f4a7c15 ^ m.dpos*0xbf58476d1ce4e5b9 ^
		(uint64(m.length)|uint64(m.kind)<<32)*0x94d049bb133111eb ^
		(uint64(m.pid)|uint64(m.gen)<<32)*0xd6e8feb86659fd93 ^
		uint64(m.time)*0xa0761d6478bd642f ^ m.aux*0xe7037ed1a0b428db
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	return uint32(h ^ h>>32)
}

// reserve takes a sequence number and n bytes of data space and claims the
// sequence's slot, filling in everything but the payload.
func (r *Ring) reserve(m Meta, n uint64) (uint64, *indexSlot, slotMeta, error) {
	dpos := r.hdr.dataTail.Add((n+7)&^7) - (n+7)&^7
	seq := r.hdr.tail.Add(1) - 1
	s := r.slot(seq)
	for {
		w := s.state.Load()
		if stateSeq(w) >= seq+1 {
			if stateSeq(w) == seq+1 {
				return seq, nil, slotMeta{}, ErrAbandoned
			}
			return seq, nil, slotMeta{}, ErrOverwritten
		}
		// An older occupant, committed or not, is overwritten: readers of it
		// see the new state word and count it lost.
		if s.state.CompareAndSwap(w, stateWord(seq, stWriting)) {
			break
		}
	}
	// An acquire load after the claim keeps the stores below after it (on
	// arm64 a CAS alone does not), and gives up early if already overtaken.
	if s.state.Load() != stateWord(seq, stWriting) {
		return seq, nil, slotMeta{}, ErrOverwritten
	}
	// The writer keeps its own copy of the fields: the check is computed
	// from it, never from the slot, which an overtaken writer may scribble on.
	sm := slotMeta{dpos: dpos, length: uint32(n), kind: m.Kind, pid: m.PID, gen: m.Gen, time: time.Now().UnixNano(), aux: m.Aux}
	s.time, s.dpos, s.length = sm.time, sm.dpos, sm.length
	s.kind, s.pid, s.gen, s.aux = sm.kind, sm.pid, sm.gen, sm.aux
	return seq, s, sm, nil
}

// Reserve is Write in two steps, for writers that build the payload in place
// or (in tests) that must stop between reserving and committing.
func (r *Ring) Reserve(m Meta, n int) (*Pending, error) {
	if n < 0 || uint64(n) > r.maxRecord {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, n, r.maxRecord)
	}
	seq, s, sm, err := r.reserve(m, uint64(n))
	if err != nil {
		return nil, err
	}
	return &Pending{r: r, seq: seq, s: s, sm: sm, pos: sm.dpos % r.dataSize, left: uint64(n), bell: m.Bell}, nil
}

// Pending is a reserved, uncommitted record.
type Pending struct {
	r      *Ring
	seq    uint64
	s      *indexSlot
	pos    uint64
	left   uint64
	bell   uint8
	sm     slotMeta
	lapped bool
}

// Seq is the record's sequence number.
func (p *Pending) Seq() uint64 { return p.seq }

// Append copies b into the record; the total must not exceed the reserved length.
func (p *Pending) Append(b []byte) {
	if uint64(len(b)) > p.left {
		panic("zone: Pending.Append past the reserved length")
	}
	p.left -= uint64(len(b))
	if p.lapped || p.r.hdr.dataTail.Load() > p.sm.dpos+p.r.dataSize-uint64(p.sm.length) {
		p.lapped = true // overtaken: copy nothing into newer records' space
		return
	}
	p.pos = p.r.copyIn(p.pos, b)
}

// Commit publishes the record.
func (p *Pending) Commit() error {
	if p.lapped {
		p.r.abandon(p.seq, p.s)
		return ErrOverwritten
	}
	return p.r.commit(p.seq, p.s, &p.sm, p.bell)
}

func (r *Ring) copyIn(pos uint64, b []byte) uint64 {
	for len(b) > 0 {
		c := copy(r.data[pos:], b)
		b = b[c:]
		pos += uint64(c)
		if pos == r.dataSize {
			pos = 0
		}
	}
	return pos
}

func (r *Ring) commit(seq uint64, s *indexSlot, sm *slotMeta, bell uint8) error {
	s.check = metaCheck(seq, sm)
	if !s.state.CompareAndSwap(stateWord(seq, stWriting), stateWord(seq, stCommitted)) {
		if stateSeq(s.state.Load()) == seq+1 {
			return ErrAbandoned
		}
		return ErrOverwritten
	}
	r.bells[bell%NumBells].Ring()
	return nil
}

// Lag reports how far a reader whose next record is cursor is behind the
// writers: in records, and in data bytes (from the position of the record
// at cursor, while the ring still holds it; else the whole data area).
func (r *Ring) Lag(cursor uint64) (records, bytes uint64) {
	tail := r.hdr.tail.Load()
	if cursor >= tail {
		return 0, 0
	}
	records = tail - cursor
	if records > r.slots {
		return records, r.dataSize
	}
	s := r.slot(cursor)
	w := s.state.Load()
	dpos := s.dpos
	if stateSeq(w) != cursor+1 || s.state.Load() != w {
		return records, r.dataSize
	}
	if dt := r.hdr.dataTail.Load(); dt > dpos {
		bytes = min(dt-dpos, r.dataSize)
	}
	return records, bytes
}

// CountFor counts the committed records from seq from to the tail, among
// those the ring still holds, for which match(kind, aux) is true.
func (r *Ring) CountFor(from uint64, match func(kind uint32, aux uint64) bool) uint64 {
	tail := r.hdr.tail.Load()
	if tail > r.slots && from < tail-r.slots {
		from = tail - r.slots
	}
	n := uint64(0)
	for seq := from; seq < tail; seq++ {
		s := r.slot(seq)
		w := s.state.Load()
		if stateSeq(w) == seq+1 && stateSt(w) == stCommitted && match(s.kind, s.aux) && s.state.Load() == w {
			n++
		}
	}
	return n
}
