package zone

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// The ring is a multi-writer broadcast log in the zone. A process leases a
// segment of the data area for itself (a CAS on the segment's lease word,
// which bumps its generation) and its goroutines carve records out of it
// with a process-local fetch-add, so no two writers ever write the same
// bytes: a record's frame (header and payload) is written whole in the
// writer's own segment, then the writer takes a sequence number with one
// fetch-add on the tail, names its frame in that sequence's index slot and
// commits with one CAS on the slot's state word. Readers keep their own
// cursor, read a record once its slot says "committed" for their
// sequence, check that the frame it names carries that sequence and that
// the segment's generation is the same before and after their copy.
// Nothing a writer does waits for a reader: a reader that falls a whole
// ring behind finds newer sequences in its slots, or newer generations in
// its segments, and counts exactly how many records it lost. A writer that
// dies after taking a sequence leaves it uncommitted; after WaitMax a reader
// marks it abandoned, which every other reader then skips too, and which
// makes a late commit fail. A segment is leased again only once its lessee
// released it (full, and none of its writes in flight) or is dead (its
// member lock gone); a lessee that is merely stalled keeps it, and others
// lease around it.

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
	// ErrRingBusy is returned when no segment could be leased within a
	// second: every one is held by a live writer process.
	ErrRingBusy = errors.New("every ring segment is leased by a live writer process; make the zone larger or run fewer writer processes")
	// ErrReadOnly is returned for a write to a zone attached read-only.
	ErrReadOnly = errors.New("zone attached read-only")
	// ErrClosed is returned for a write through a closed zone.
	ErrClosed = errors.New("zone closed")
	// ErrDamaged is returned when the ring's words are out of their bounds.
	ErrDamaged = errors.New("zone ring damaged: sequence space exhausted")
)

// DefaultWaitMax is how long a reader waits for a reserved record to be
// committed before it skips it as a gap.
const DefaultWaitMax = 500 * time.Millisecond

// leaseWait is how long a writer looks for a free segment before ErrRingBusy.
const leaseWait = time.Second

// Ring is the zone's broadcast ring. Its geometry comes from the validated
// header and is kept here, so nothing is re-read from shared memory.
type Ring struct {
	z         *Zone
	hdr       *header
	index     unsafe.Pointer
	segTable  unsafe.Pointer
	data      []byte
	mask      uint64
	slots     uint64
	segments  uint64
	segSize   uint64
	maxRecord uint64
	node      *Node
	// self is this process's member index, -1 when attached read-only.
	self int
	// wallBase turns the monotonic clock into Unix ns.
	wallBase int64

	// wakeAll is a mask: a commit whose sequence has none of its bits
	// set wakes every sleeper of every doorbell, so that a reader that
	// wants none of the records written (alerts to other processes,
	// events for an alerts reader) still moves its cursor on and never
	// looks behind, or is lapped, by records it does not want. Every new
	// lease does the same, for the data area.
	wakeAll atomic.Uint64

	cur      atomic.Pointer[lease]
	leaseMu  sync.Mutex
	lastReap int64
	// held are the leases taken and not yet seen released (the current one
	// and full ones with writes in flight), for Close; closed ends writing.
	held   []*lease
	closed atomic.Bool
	fence  atomic.Uint64

	sleepMu sync.Mutex
	asleep  [NumBells]int
}

// lease is this process's hold on one segment.
type lease struct {
	seg uint32
	gen uint32
	mem []byte
	// word is used<<24 | in flight: bytes handed out (growing past the
	// segment size once a request did not fit, which closes the lease for
	// good) and writes not yet finished.
	word atomic.Uint64
}

const inflightMask = 1<<24 - 1

func newRing(z *Zone) *Ring {
	g := z.geo
	r := &Ring{
		z:         z,
		hdr:       z.hdr,
		index:     unsafe.Pointer(&z.mem[g.indexOff]),
		segTable:  unsafe.Pointer(&z.mem[g.segOff]),
		data:      z.mem[g.dataOff : g.dataOff+g.dataSize : g.dataOff+g.dataSize],
		mask:      g.indexSlots - 1,
		slots:     g.indexSlots,
		segments:  g.segments,
		segSize:   g.segSize,
		maxRecord: g.maxRecord,
		node:      &z.hdr.node,
		self:      -1,
		wallBase:  time.Now().UnixNano() - nanotime(),
	}
	r.wakeAll.Store(max(g.indexSlots/8, 1) - 1)
	return r
}

// WakeAllEvery makes this process's commits wake every sleeper at least
// every n records (rounded down to a power of two; it only ever lowers the
// period): readers then lag at most about n records behind records they
// do not want. The default is an eighth of the ring.
func (r *Ring) WakeAllEvery(n uint64) {
	// At least every 64 records: more often, every commit would wake
	// every sleeper of the node.
	p := uint64(64)
	for p*2 <= n && p < 1<<62 {
		p *= 2
	}
	for {
		m := r.wakeAll.Load()
		if p-1 >= m || r.wakeAll.CompareAndSwap(m, p-1) {
			return
		}
	}
}

func (r *Ring) slot(seq uint64) *indexSlot {
	return (*indexSlot)(unsafe.Add(r.index, (seq&r.mask)*indexSlotSize))
}

// seg is segment table entry i, i < segments.
func (z *Zone) seg(i uint32) *segSlot {
	return (*segSlot)(unsafe.Pointer(&z.mem[z.geo.segOff+uint64(i)*segSlotSize]))
}

func (r *Ring) seg(i uint32) *segSlot {
	return (*segSlot)(unsafe.Add(r.segTable, uint64(i)*segSlotSize))
}

// Slots is the number of records the ring's index holds.
func (r *Ring) Slots() uint64 { return r.slots }

// DataSize is the size of the ring's data area in bytes.
func (r *Ring) DataSize() uint64 { return r.segments * r.segSize }

// Segments is the number of segments the data area is leased in, and
// SegmentSize the size of each.
func (r *Ring) Segments() int    { return int(r.segments) }
func (r *Ring) SegmentSize() int { return int(r.segSize) }

// MaxRecord is the largest payload the ring takes.
func (r *Ring) MaxRecord() int { return int(r.maxRecord) }

// DataTail is the number of data bytes handed out to writers so far (it
// moves a segment at a time).
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
	// Bell is the doorbell rung after the commit (0 or 1): readers sleep
	// on the bell of the records they want.
	Bell uint8
	// Wake, when not 0, wakes only the sleepers on Bell that want these
	// bits (TargetBit of the pid a record is addressed to); 0 wakes all.
	Wake uint32
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
	l, off, err := r.alloc(frameSize + n)
	if err != nil {
		return 0, err
	}
	pos := off + frameSize
	for _, p := range parts {
		pos += uint64(copy(l.mem[pos:], p))
	}
	f := r.fill(l, off, m, n)
	seq, err := r.publish(f, locWord(l.gen, l.seg, off), m)
	r.done(l)
	return seq, err
}

// Entry is one record of a WriteBatch: its meta and its payload, the
// concatenation of Parts.
type Entry struct {
	Meta  Meta
	Parts [][]byte
}

// WriteBatch appends the entries as records with consecutive sequence
// numbers, in their order, and returns the first. Every frame is written
// before any sequence is taken, so no record of the batch is visible
// before all are written, and none of another writer comes between them.
// It never waits for readers. A record abandoned by readers meanwhile (a
// writer stalled past their WaitMax) is lost as a gap like any other: the
// error says so, and the others are delivered.
func (r *Ring) WriteBatch(entries []Entry) (uint64, error) {
	type placed struct {
		l   *lease
		off uint64
		f   *frame
	}
	ps := make([]placed, 0, len(entries))
	defer func() {
		for _, p := range ps {
			r.done(p.l)
		}
	}()
	for i, e := range entries {
		n := uint64(0)
		for _, p := range e.Parts {
			n += uint64(len(p))
		}
		if n > r.maxRecord {
			return 0, fmt.Errorf("%w: entry %d is %d bytes, the limit is %d", ErrTooLarge, i, n, r.maxRecord)
		}
		l, off, err := r.alloc(frameSize + n)
		if err != nil {
			return 0, err
		}
		pos := off + frameSize
		for _, p := range e.Parts {
			pos += uint64(copy(l.mem[pos:], p))
		}
		ps = append(ps, placed{l, off, r.fill(l, off, e.Meta, n)})
	}
	if len(ps) == 0 {
		return r.hdr.tail.Load(), nil
	}
	first := r.hdr.tail.Add(uint64(len(ps))) - uint64(len(ps))
	if first+uint64(len(ps)) > maxTail {
		return first, ErrDamaged
	}
	var failed error
	for i, p := range ps {
		seq := first + uint64(i)
		p.f.seq = seq
		if err := r.commit(seq, locWord(p.l.gen, p.l.seg, p.off), entries[i].Meta); err != nil && failed == nil {
			failed = fmt.Errorf("record %d of the batch (sequence %d): %w", i, seq, err)
		}
	}
	return first, failed
}

// fill writes a frame's header but its sequence number.
func (r *Ring) fill(l *lease, off uint64, m Meta, n uint64) *frame {
	f := (*frame)(unsafe.Pointer(&l.mem[off]))
	f.length, f.kind, f.pid, f.gen, f.aux = uint32(n), m.Kind, m.PID, m.Gen, m.Aux
	f.time = r.wallBase + nanotime()
	return f
}

// publish takes a sequence number for the frame f, written whole, and
// commits it as the record at loc.
func (r *Ring) publish(f *frame, loc uint64, m Meta) (uint64, error) {
	seq := r.hdr.tail.Add(1) - 1
	if seq >= maxTail {
		return seq, ErrDamaged
	}
	f.seq = seq
	return seq, r.commit(seq, loc, m)
}

// commit names the frame at loc in seq's index slot and commits it, unless
// readers abandoned seq or a newer sequence took the slot.
func (r *Ring) commit(seq, loc uint64, m Meta) error {
	s := r.slot(seq)
	for {
		w := s.state.Load()
		if ws := stateSeq(w); ws >= seq+1 {
			if ws == seq+1 {
				return ErrAbandoned
			}
			if ws-1 < r.hdr.tail.Load() {
				return ErrOverwritten
			}
			// A sequence from the future is damage: write over it.
		}
		// The loc goes first: a reader believes it only once the state
		// names seq. A writer overtaken here by a whole lap of the index
		// stores its loc over a newer record's, whose readers then find a
		// frame of another sequence and count the record lost.
		s.loc.Store(loc)
		if s.state.CompareAndSwap(w, stateWord(seq, stCommitted)) {
			break
		}
	}
	// The segment holds seq now (only this process writes its entry; its
	// goroutines may commit out of order).
	_, seg, _ := locSplit(loc)
	e := r.seg(seg)
	for last := e.last.Load(); last < seq+1 && !e.last.CompareAndSwap(last, seq+1); last = e.last.Load() {
	}
	if seq&r.wakeAll.Load() == 0 {
		for b := range r.hdr.bells {
			r.hdr.bells[b].ring(futexMatchAny)
		}
		return nil
	}
	wake := m.Wake
	if wake == 0 {
		wake = futexMatchAny
	}
	r.hdr.bells[m.Bell%bellAny].ring(wake)
	r.hdr.bells[bellAny].ring(futexMatchAny)
	return nil
}

// alloc carves size bytes (rounded up to 8) out of this process's segment,
// leasing a new one when it is full. The caller writes them and then calls
// done.
func (r *Ring) alloc(size uint64) (*lease, uint64, error) {
	if r.self < 0 {
		return nil, 0, ErrReadOnly
	}
	need := (size + 7) &^ 7
	for {
		l := r.cur.Load()
		if l != nil {
			v := l.word.Add(need<<24 | 1)
			// Checked after the add: Close sets closed and then waits for
			// the writes in flight, so either it waits for this one or this
			// one sees closed and writes nothing.
			if r.closed.Load() {
				r.done(l)
				return nil, 0, ErrClosed
			}
			if end := v >> 24; end <= r.segSize {
				return l, end - need, nil
			}
			r.done(l)
		}
		if err := r.rotate(l); err != nil {
			return nil, 0, err
		}
	}
}

// done ends one write into l. The last write into a full lease releases its
// segment; the CAS names the generation, so a repeated release does nothing.
// The release (once per segment) holds leaseMu, so that it never touches a
// zone that close is unmapping.
func (r *Ring) done(l *lease) {
	v := l.word.Add(^uint64(0))
	if v>>24 > r.segSize && v&inflightMask == 0 {
		r.leaseMu.Lock()
		if !r.closed.Load() {
			r.seg(l.seg).lease.CompareAndSwap(leaseWord(l.gen, uint32(r.self)+1), leaseWord(l.gen, 0))
		}
		r.leaseMu.Unlock()
	}
}

// rotate replaces the full lease old with a new one, unless another
// goroutine already did.
func (r *Ring) rotate(old *lease) error {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if r.closed.Load() {
		return ErrClosed
	}
	if r.cur.Load() != old {
		return nil
	}
	l, err := r.lease()
	if err != nil {
		r.cur.Store(nil)
		return err
	}
	// Forget the leases that are full and have nothing in flight: their
	// last write released them.
	held := r.held[:0]
	for _, h := range r.held {
		if v := h.word.Load(); v>>24 <= r.segSize || v&inflightMask != 0 {
			held = append(held, h)
		}
	}
	r.held = append(held, l)
	r.cur.Store(l)
	// A new lease brings a segment nearer to reuse: wake every sleeper,
	// so that readers wanting none of the records written meanwhile move
	// their cursors on (in bytes, as wakeAll does in records).
	for b := range r.hdr.bells {
		r.hdr.bells[b].ring(futexMatchAny)
	}
	return nil
}

// lease takes a free segment, or one whose lessee is dead, trying them
// round the ring from the shared cursor, so the segment taken is about the
// one written longest ago. Segments held by live lessees are skipped.
func (r *Ring) lease() (*lease, error) {
	me := uint32(r.self) + 1
	if now := nanotime(); now-r.lastReap > int64(100*time.Millisecond) {
		r.lastReap = now
		r.z.ReapMembers()
	}
	var deadline int64
	for {
		for k := uint64(0); k < r.segments; k++ {
			i := uint32((r.hdr.leaseCur.Add(1) - 1) % r.segments)
			e := r.seg(i)
			w := e.lease.Load()
			o := leaseOwner(w)
			if o != 0 && (o == me || (o <= MaxMembers && r.z.memberAlive(int(o-1)))) {
				continue
			}
			gen := leaseGen(w) + 1
			if !e.lease.CompareAndSwap(w, leaseWord(gen, me)) {
				continue
			}
			if o != 0 {
				r.node.Reclaimed.Add(1)
			}
			// This RMW also keeps the new generation ordered before the
			// lessee's first stores into the segment on arm64, where a
			// CAS alone does not order later plain stores after it.
			r.hdr.dataTail.Add(r.segSize)
			e.last.Store(0)
			r.z.member(r.self).Leases.Add(1)
			start := uint64(i) * r.segSize
			return &lease{seg: i, gen: gen, mem: r.data[start : start+r.segSize : start+r.segSize]}, nil
		}
		now := nanotime()
		if deadline == 0 {
			deadline = now + int64(leaseWait)
		} else if now > deadline {
			return nil, fmt.Errorf("%w (%d segments of %d bytes)", ErrRingBusy, r.segments, r.segSize)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// close ends writing through this mapping, at Close: later writes get
// ErrClosed, and the writes in flight are waited for (for at most a
// tenth of a second: a Pending never committed is given up) before the
// caller frees the segments.
func (r *Ring) close() {
	r.leaseMu.Lock()
	r.closed.Store(true)
	r.cur.Store(nil)
	held := r.held
	r.held = nil
	r.leaseMu.Unlock()
	deadline := nanotime() + int64(100*time.Millisecond)
	for _, l := range held {
		for l.word.Load()&inflightMask != 0 && nanotime() < deadline {
			time.Sleep(50 * time.Microsecond)
		}
	}
	// A release already past its closed check finishes first.
	r.leaseMu.Lock()
	r.leaseMu.Unlock() // an empty section: a barrier
}

// Reserve is Write in two steps, for writers that build the payload in place
// or (in tests) that must stop between taking a sequence number and
// committing: the sequence is taken now, and readers wait for its commit.
func (r *Ring) Reserve(m Meta, n int) (*Pending, error) {
	if n < 0 || uint64(n) > r.maxRecord {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, n, r.maxRecord)
	}
	l, off, err := r.alloc(frameSize + uint64(n))
	if err != nil {
		return nil, err
	}
	f := r.fill(l, off, m, uint64(n))
	seq := r.hdr.tail.Add(1) - 1
	f.seq = seq
	return &Pending{r: r, l: l, seq: seq, off: off, pos: off + frameSize, left: uint64(n), m: m}, nil
}

// Pending is a reserved, uncommitted record.
type Pending struct {
	r    *Ring
	l    *lease
	seq  uint64
	off  uint64
	pos  uint64
	left uint64
	m    Meta
	done bool
}

// Seq is the record's sequence number.
func (p *Pending) Seq() uint64 { return p.seq }

// Append copies b into the record; the total must not exceed the reserved length.
func (p *Pending) Append(b []byte) {
	if uint64(len(b)) > p.left || p.done {
		panic("zone: Pending.Append past the reserved length or after Commit")
	}
	p.left -= uint64(len(b))
	p.pos += uint64(copy(p.l.mem[p.pos:], b))
}

// Commit publishes the record.
func (p *Pending) Commit() error {
	if p.done {
		return errors.New("zone: record already committed")
	}
	p.done = true
	err := p.r.commit(p.seq, locWord(p.l.gen, p.l.seg, p.off), p.m)
	p.r.done(p.l)
	return err
}

// Lag reports how far a reader whose next record is cursor is behind the
// writers: in records, and in data bytes, which say how close its records
// are to being overwritten: the data area less what can still be leased
// before the lease cursor comes to a free segment holding a record at or
// after cursor (segments still leased are never reused; when no free
// segment holds one, 0). It walks the segment table once: call it for the
// slowest of several readers only.
func (r *Ring) Lag(cursor uint64) (records, bytes uint64) {
	tail := r.hdr.tail.Load()
	if cursor >= tail {
		return 0, 0
	}
	records = tail - cursor
	if records > r.slots {
		return records, r.DataSize()
	}
	free := uint64(0)
	i := r.hdr.leaseCur.Load() % r.segments
	for k := uint64(0); k < r.segments; k++ {
		e := r.seg(uint32(i))
		if leaseOwner(e.lease.Load()) == 0 {
			if e.last.Load() > cursor {
				return records, r.DataSize() - free*r.segSize
			}
			free++
		}
		if i++; i == r.segments {
			i = 0
		}
	}
	return records, 0
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
		if stateSeq(w) != seq+1 || stateSt(w) != stCommitted {
			continue
		}
		m, ok := r.locate(seq, s)
		if !ok || !match(m.kind, m.aux) {
			continue
		}
		r.fence.Add(0) // the fields judged are read before the check
		if r.intact(m) {
			n++
		}
	}
	return n
}
