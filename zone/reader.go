package zone

import (
	"sync/atomic"
	"time"
	_ "unsafe" // for go:linkname

	"golang.org/x/sys/unix"
)

// nanotime is the runtime's monotonic clock, cheaper than time.Now.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Status is what a read found.
type Status int

const (
	// Got: a record was read.
	Got Status = iota
	// Empty: the reader is at the tail; nothing to read yet.
	Empty
	// Waiting: the next record is reserved but not committed yet.
	Waiting
	// Overrun: the ring wrapped past the reader; Record.Lost records
	// starting at Record.Seq are gone.
	Overrun
	// Gap: the next record's writer never committed it (it died or stalled
	// past WaitMax); Record.Lost is 1.
	Gap
)

func (s Status) String() string {
	switch s {
	case Got:
		return "got"
	case Empty:
		return "empty"
	case Waiting:
		return "waiting"
	case Overrun:
		return "overrun"
	case Gap:
		return "gap"
	}
	return "unknown"
}

// Record is one record read from the ring. Data is the reader's buffer,
// valid until the next read.
type Record struct {
	Seq  uint64
	Kind uint32
	PID  uint32
	Gen  uint32
	Aux  uint64
	// Time is when the writer wrote the record, Unix ns.
	Time int64
	Data []byte
	// Lost is the number of records skipped, for Overrun and Gap.
	Lost uint64
}

// DefaultSpin is the default spin window of Read (see SetSpin).
const DefaultSpin = 50 * time.Microsecond

// Reader reads the ring from its own cursor. A Reader is not safe for
// concurrent use; use one per goroutine.
type Reader struct {
	r       *Ring
	next    uint64
	buf     []byte
	waitMax time.Duration
	spin    time.Duration
	filter  func(kind uint32, aux uint64) bool
	bell    int
	armed   *atomic.Uint32
	since   time.Time // when the current Waiting began
	fence   atomic.Uint64
	// interrupted is set by Interrupt, from any goroutine.
	interrupted atomic.Bool
	// Totals, for stats.
	read, overrun, gaps uint64
}

// NewReader returns a reader whose next record is start. Use Tail() to read
// only what is written from now on; a start older than the ring holds reads
// as an Overrun first.
func (r *Ring) NewReader(start uint64) *Reader {
	return &Reader{r: r, next: start, waitMax: DefaultWaitMax, spin: DefaultSpin}
}

// SetWaitMax sets how long the reader waits on an uncommitted record before
// it skips it as a gap.
func (rd *Reader) SetWaitMax(d time.Duration) {
	if d > 0 {
		rd.waitMax = d
	}
}

// Next is the sequence number the reader reads next.
func (rd *Reader) Next() uint64 { return rd.next }

// Counts returns the records read, lost to overruns and lost to gaps.
func (rd *Reader) Counts() (read, overrun, gaps uint64) { return rd.read, rd.overrun, rd.gaps }

// TryRead reads the next record without sleeping.
func (rd *Reader) TryRead() (Record, Status) {
	r := rd.r
	for {
		seq := rd.next
		tail := r.hdr.tail.Load()
		if seq >= tail {
			if seq > tail {
				// A cursor from the future (a zone recreated under a reader)
				// restarts at the tail.
				rd.next = tail
			}
			return Record{Seq: rd.next}, Empty
		}
		if tail-seq > r.slots {
			return rd.skipTo(tail - r.slots)
		}
		s := r.slot(seq)
		w := s.state.Load()
		switch {
		case stateSeq(w) > seq+1:
			return rd.skipTo(max(seq+1, tail-min(tail, r.slots)))
		case stateSeq(w) == seq+1 && stateSt(w) == stCommitted:
			if rd.filter != nil && !rd.filter(s.kind, s.aux) {
				// Skipped, once it is sure the fields it judged were seq's
				// (kept records are checked by copyOut).
				rd.fence.Add(0)
				if s.state.Load() != w {
					return rd.skipTo(seq + 1)
				}
				rd.next = seq + 1
				rd.since = time.Time{}
				continue
			}
			rec, ok := rd.copyOut(seq, s, w)
			if !ok {
				return rd.skipTo(seq + 1)
			}
			rd.next = seq + 1
			rd.since = time.Time{}
			rd.read++
			return rec, Got
		case stateSeq(w) == seq+1 && stateSt(w) == stAbandoned:
			rd.next = seq + 1
			rd.since = time.Time{}
			rd.gaps++
			return Record{Seq: seq, Lost: 1}, Gap
		}
		// Reserved, not committed yet (or not even claimed).
		now := time.Now()
		if rd.since.IsZero() {
			rd.since = now
			return Record{Seq: seq}, Waiting
		}
		if now.Sub(rd.since) < rd.waitMax {
			return Record{Seq: seq}, Waiting
		}
		if s.state.CompareAndSwap(w, stateWord(seq, stAbandoned)) {
			r.node.Gaps.Add(1)
		}
	}
}

// Seek moves the reader's cursor to seq.
func (rd *Reader) Seek(seq uint64) {
	rd.next = seq
	rd.since = time.Time{}
}

// SetFilter makes the reader skip, without copying them, the committed
// records for which keep(kind, aux) is false. Losses are still reported
// for every record, kept or not.
func (rd *Reader) SetFilter(keep func(kind uint32, aux uint64) bool) { rd.filter = keep }

func (rd *Reader) skipTo(to uint64) (Record, Status) {
	from := rd.next
	rd.next = to
	rd.since = time.Time{}
	rd.overrun += to - from
	return Record{Seq: from, Lost: to - from}, Overrun
}

// copyOut copies the committed record seq out of slot s, whose state word
// was w, and checks that nothing was overwritten while copying. It trusts
// nothing in shared memory: the length is checked against the ring's limit
// and the position is taken modulo the data size.
func (rd *Reader) copyOut(seq uint64, s *indexSlot, w uint64) (Record, bool) {
	r := rd.r
	m, ok := decodeSlot(s, r.maxRecord)
	if !ok || r.hdr.dataTail.Load() > m.dpos+r.dataSize {
		return Record{}, false
	}
	rd.buf = copyData(rd.buf[:0], r.data, m.dpos, uint64(m.length))
	// Order the copies above before the checks below (a no-op RMW is a full
	// barrier on every platform Go runs on).
	rd.fence.Add(0)
	if s.state.Load() != w || r.hdr.dataTail.Load() > m.dpos+r.dataSize {
		return Record{}, false
	}
	// The fields copied belong to seq's own writer only if they match its
	// check (an overtaken writer's late stores make them differ).
	if metaCheck(seq, &m) != m.check {
		return Record{}, false
	}
	return Record{Seq: seq, Kind: m.kind, PID: m.pid, Gen: m.gen, Aux: m.aux, Time: m.time, Data: rd.buf}, true
}

// slotMeta is a copy of an index slot's fields.
type slotMeta struct {
	dpos   uint64
	length uint32
	kind   uint32
	pid    uint32
	gen    uint32
	time   int64
	aux    uint64
	check  uint32
}

// decodeSlot copies the fields of s and checks them against the ring's
// bounds. It is the one place that interprets what another process wrote.
func decodeSlot(s *indexSlot, maxRecord uint64) (slotMeta, bool) {
	m := slotMeta{dpos: s.dpos, length: s.length, kind: s.kind, pid: s.pid, gen: s.gen, time: s.time, aux: s.aux, check: s.check}
	return m, uint64(m.length) <= maxRecord
}

// copyData appends n bytes of the circular data area starting at absolute
// position pos to dst. n must not exceed len(data).
func copyData(dst, data []byte, pos, n uint64) []byte {
	size := uint64(len(data))
	if n > size {
		return dst
	}
	p := pos % size
	if p+n <= size {
		return append(dst, data[p:p+n]...)
	}
	dst = append(dst, data[p:]...)
	return append(dst, data[:n-(size-p)]...)
}

// Read reads the next record, sleeping on the zone's doorbell for at most
// timeout while there is nothing to read. It returns Empty when the timeout
// passes, or when Interrupt was called, with nothing read.
func (rd *Reader) Read(timeout time.Duration) (Record, Status) {
	var deadline time.Time
	for {
		rec, st := rd.TryRead()
		if st != Empty && st != Waiting {
			return rec, st
		}
		if rd.interrupted.Swap(false) {
			return rec, Empty
		}
		// Spin briefly: a record being written is usually committed within
		// a microsecond, far sooner than a futex round trip; then, for up to
		// the spin window, yield the CPU between checks, so that a burst is
		// read without sleeping and waking once per record.
		if rd.spinReady() {
			continue
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(timeout)
		}
		left := deadline.Sub(now)
		if left <= 0 {
			return rec, Empty
		}
		if st == Waiting {
			left = min(left, rd.waitMax/4+time.Millisecond)
		}
		bell := rd.r.bells[rd.bell]
		v := bell.Arm()
		if rd.armed != nil {
			rd.armed.Add(1)
		}
		if !rd.ready() && !rd.interrupted.Load() {
			bell.Sleep(v, left)
		}
		if rd.armed != nil {
			rd.armed.Add(^uint32(0))
		}
		bell.Disarm()
		if rd.interrupted.Swap(false) {
			return Record{Seq: rd.next}, Empty
		}
	}
}

// Interrupt makes a Read in progress (or the next one) return Empty at once.
// It is safe to call from any goroutine.
func (rd *Reader) Interrupt() {
	rd.interrupted.Store(true)
	rd.r.bells[rd.bell].Wake()
}

// SetWorker names the worker slot this reader belongs to, so that its
// sleeps are counted there too and can be undone if the worker crashes
// asleep (see Zone.ReleaseWaiters). Call after SetBell.
func (rd *Reader) SetWorker(ws *WorkerSlot) { rd.armed = &ws.Armed[rd.bell] }

// SetBell makes Read sleep on doorbell i: the one rung by the writers of
// the records this reader wants.
func (rd *Reader) SetBell(i int) { rd.bell = i % NumBells }

// spinReady waits for the next record without sleeping: a short busy spin,
// then sched_yield between checks until the spin window passes.
func (rd *Reader) spinReady() bool {
	for i := 0; i < 64; i++ {
		if rd.ready() {
			return true
		}
	}
	if rd.spin <= 0 {
		return false
	}
	start := nanotime()
	for nanotime()-start < int64(rd.spin) {
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		if rd.ready() || rd.interrupted.Load() {
			return true
		}
	}
	return false
}

// SetSpin sets how long Read keeps checking for a record, yielding the CPU
// between checks, before it sleeps on the doorbell. Longer windows lower
// the latency of events that follow each other closely, at the cost of CPU.
func (rd *Reader) SetSpin(d time.Duration) { rd.spin = d }

// ready reports whether TryRead would find something other than Empty or an
// uncommitted slot.
func (rd *Reader) ready() bool {
	r := rd.r
	seq := rd.next
	if seq >= r.hdr.tail.Load() {
		return false
	}
	w := r.slot(seq).state.Load()
	return stateSeq(w) > seq+1 || (stateSeq(w) == seq+1 && (stateSt(w) == stCommitted || stateSt(w) == stAbandoned))
}
