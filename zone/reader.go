package zone

import (
	"sync/atomic"
	"time"
	"unsafe"
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

// readers numbers the readers of this process, for their interrupt bits.
var readers atomic.Uint32

// DefaultSpin is the default spin window of Read (see SetSpin).
const DefaultSpin = 50 * time.Microsecond

// Reader reads the ring from its own cursor. A Reader is not safe for
// concurrent use; use one per goroutine.
type Reader struct {
	r       *Ring
	next    uint64
	buf     []byte
	waitMax int64
	// spin is the longest spin window (SetSpin); spinNow the window Read
	// uses now, adapted between 0 and spin as the kernel's haltpoll
	// governor adapts its poll: halved after each sleep longer than spin
	// (no spin would have caught the record that ended it), doubled from
	// spin/8 after a sleep that a record ended sooner. Events a few
	// milliseconds apart so cost no spin at all, and a burst soon spins
	// again.
	spin, spinNow time.Duration
	filter        func(kind uint32, aux uint64) bool
	bell          int
	// mask is the bitset the reader sleeps with: its targets (all, or
	// TargetBit of one pid) and its interrupt bit.
	mask, intr uint32
	// since is when the reader first found an uncommitted record (monotonic
	// ns, 0: not waiting), and horizon the tail it saw then: every sequence
	// below horizon was taken before since, so once WaitMax has passed
	// since then, each of them still uncommitted is abandoned at once, and
	// K dead writers cost one WaitMax, not K.
	since, horizon uint64
	// tail is the ring's tail as last loaded: the reader reloads it only
	// when its cursor reaches it, so a burst costs no miss on the writers'
	// busiest cache line per record.
	tail  uint64
	fence atomic.Uint64
	// sleeping is the bell the reader sleeps on, -1 when awake.
	sleeping atomic.Int32
	// wakes counts the sleeps that ended (a wake-up, a timeout, a signal).
	wakes atomic.Uint64
	// interrupted is set by Interrupt, from any goroutine.
	interrupted atomic.Bool
	// Totals, for stats.
	read, overrun, gaps uint64
}

// NewReader returns a reader whose next record is start. Use Tail() to read
// only what is written from now on; a start older than the ring holds reads
// as an Overrun first.
func (r *Ring) NewReader(start uint64) *Reader {
	rd := &Reader{r: r, next: start, waitMax: int64(DefaultWaitMax), spin: DefaultSpin, spinNow: DefaultSpin}
	rd.intr = 1 << (targetBits + readers.Add(1)%interruptBits)
	rd.mask = targetMask | rd.intr
	rd.sleeping.Store(-1)
	return rd
}

// SetWaitMax sets how long the reader waits on an uncommitted record before
// it skips it as a gap.
func (rd *Reader) SetWaitMax(d time.Duration) {
	if d > 0 {
		rd.waitMax = int64(d)
	}
}

// Next is the sequence number the reader reads next.
func (rd *Reader) Next() uint64 { return rd.next }

// Counts returns the records read, lost to overruns and lost to gaps.
func (rd *Reader) Counts() (read, overrun, gaps uint64) { return rd.read, rd.overrun, rd.gaps }

// advance moves the cursor to seq, ending the wait when seq is past the
// horizon.
func (rd *Reader) advance(seq uint64) {
	rd.next = seq
	if seq >= rd.horizon {
		rd.since = 0
	}
}

// TryRead reads the next record without sleeping.
func (rd *Reader) TryRead() (Record, Status) {
	r := rd.r
	for {
		seq := rd.next
		tail := rd.tail
		if seq >= tail || tail-seq > r.slots {
			tail = r.hdr.tail.Load()
			rd.tail = tail
		}
		if tail >= maxTail {
			return Record{Seq: seq}, Empty // damaged: never loop on it
		}
		if seq >= tail {
			if seq > tail {
				// A cursor from the future (a zone recreated under a reader)
				// restarts at the tail.
				rd.next, rd.since = tail, 0
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
			tail = r.hdr.tail.Load()
			rd.tail = tail
			return rd.skipTo(max(seq+1, tail-min(tail, r.slots)))
		case stateSeq(w) == seq+1 && stateSt(w) == stCommitted:
			m, ok := r.locate(seq, s)
			if !ok {
				if r.overtaken(seq, s) {
					rd.advance(seq + 1)
					rd.gaps++
					return Record{Seq: seq, Lost: 1}, Gap
				}
				return rd.skipTo(seq + 1)
			}
			if rd.filter != nil && !rd.filter(m.kind, m.aux) {
				// Skipped, once it is sure the fields it judged were seq's.
				rd.fence.Add(0)
				if !r.intact(m) {
					return rd.skipTo(seq + 1)
				}
				rd.advance(seq + 1)
				continue
			}
			rd.buf = append(rd.buf[:0], r.data[m.at:m.at+uint64(m.length)]...)
			// Order the copy before the check (a no-op RMW is a full
			// barrier on every platform Go runs on).
			rd.fence.Add(0)
			if !r.intact(m) {
				return rd.skipTo(seq + 1)
			}
			rd.advance(seq + 1)
			rd.read++
			return Record{Seq: seq, Kind: m.kind, PID: m.pid, Gen: m.gen, Aux: m.aux, Time: m.time, Data: rd.buf}, Got
		case stateSeq(w) == seq+1 && stateSt(w) == stAbandoned:
			rd.advance(seq + 1)
			rd.gaps++
			return Record{Seq: seq, Lost: 1}, Gap
		}
		// Taken, not committed yet.
		now := uint64(nanotime())
		if rd.since == 0 {
			rd.since, rd.horizon = now, tail
			return Record{Seq: seq}, Waiting
		}
		if now-rd.since < uint64(rd.waitMax) {
			return Record{Seq: seq}, Waiting
		}
		if r.self < 0 {
			// A read-only mapping cannot mark it abandoned: this reader
			// alone skips it, as a gap.
			rd.advance(seq + 1)
			rd.gaps++
			return Record{Seq: seq, Lost: 1}, Gap
		}
		if s.state.CompareAndSwap(w, stateWord(seq, stAbandoned)) {
			r.node.Gaps.Add(1)
			r.hdr.bells[bellAny].ring(futexMatchAny)
		}
	}
}

// frameMeta is a validated copy of a frame's header, with where it was
// read: the payload's position in the data area, and the segment and the
// lease generation it was read in.
type frameMeta struct {
	frame
	at   uint64
	seg  uint32
	lgen uint32
}

// locate finds the frame that index slot s names for seq, and checks that
// it is seq's: a segment in bounds, leased in the generation the slot
// names, and a frame that carries seq and fits the segment. It trusts
// nothing in shared memory. The caller copies what it needs and then
// calls intact.
func (r *Ring) locate(seq uint64, s *indexSlot) (frameMeta, bool) {
	gen, seg, off := locSplit(s.loc.Load())
	if uint64(seg) >= r.segments {
		return frameMeta{}, false
	}
	if leaseGen(r.seg(seg).lease.Load())&locGenMask != gen {
		return frameMeta{}, false
	}
	m, ok := decodeFrame(r.data[uint64(seg)*r.segSize:(uint64(seg)+1)*r.segSize], off, r.maxRecord)
	if !ok || m.seq != seq {
		return frameMeta{}, false
	}
	m.at += uint64(seg) * r.segSize
	m.seg, m.lgen = seg, gen
	return m, true
}

// overtaken reports whether seq's slot names the frame of a sequence a
// whole number of index laps older: the place stored by a writer that
// stalled between taking that older sequence and committing it, while
// seq's writer committed. seq is lost to a stalled writer (a gap), not to
// this reader's lag.
func (r *Ring) overtaken(seq uint64, s *indexSlot) bool {
	gen, seg, off := locSplit(s.loc.Load())
	if uint64(seg) >= r.segments || leaseGen(r.seg(seg).lease.Load())&locGenMask != gen {
		return false
	}
	m, ok := decodeFrame(r.data[uint64(seg)*r.segSize:(uint64(seg)+1)*r.segSize], off, r.maxRecord)
	return ok && m.seq < seq && (seq-m.seq)&r.mask == 0
}

// intact reports whether m's segment is still in the lease generation it
// was read in: whether nobody but the record's writer can have written
// the bytes read from it.
func (r *Ring) intact(m frameMeta) bool {
	return leaseGen(r.seg(m.seg).lease.Load())&locGenMask == m.lgen
}

// decodeFrame copies the header of the frame at off in segment mem and
// checks it against the bounds: the header and the payload inside the
// segment, the payload within maxRecord. It is the one place that
// interprets what another process wrote in a segment.
func decodeFrame(mem []byte, off, maxRecord uint64) (frameMeta, bool) {
	size := uint64(len(mem))
	if off%8 != 0 || off > size || size-off < frameSize {
		return frameMeta{}, false
	}
	f := (*frame)(unsafe.Pointer(&mem[off]))
	m := frameMeta{frame: *f, at: off + frameSize}
	if uint64(m.length) > maxRecord || uint64(m.length) > size-m.at {
		return frameMeta{}, false
	}
	return m, true
}

// Seek moves the reader's cursor to seq.
func (rd *Reader) Seek(seq uint64) {
	rd.next = seq
	rd.since = 0
}

// SetFilter makes the reader skip, without copying them, the committed
// records for which keep(kind, aux) is false. Losses are still reported
// for every record, kept or not, and a record is judged only on fields
// proven to be its own.
func (rd *Reader) SetFilter(keep func(kind uint32, aux uint64) bool) { rd.filter = keep }

func (rd *Reader) skipTo(to uint64) (Record, Status) {
	from := rd.next
	rd.advance(to)
	rd.overrun += to - from
	return Record{Seq: from, Lost: to - from}, Overrun
}

// Read reads the next record, sleeping on the zone's doorbell for at most
// timeout while there is nothing to read. It returns Empty when the timeout
// passes, or when Interrupt was called, with nothing read, and also before
// it would go back to sleep having skipped filtered records, so that the
// caller can publish how far it has read (Next).
func (rd *Reader) Read(timeout time.Duration) (Record, Status) {
	var deadline time.Time
	from := rd.next
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
		if rd.next != from {
			return rec, Empty
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(timeout)
		}
		left := deadline.Sub(now)
		if left <= 0 {
			return rec, Empty
		}
		b := rd.bell
		if st == Waiting {
			// Blocked on a record of unknown kind: any commit may unblock
			// it, and WaitMax ends the wait.
			b = bellAny
			left = min(left, max(time.Duration(int64(rd.since)+rd.waitMax-nanotime()), 0)+100*time.Microsecond)
		}
		slept := nanotime()
		rd.sleep(b, left)
		rd.adaptSpin(nanotime() - slept)
		if rd.interrupted.Swap(false) {
			return Record{Seq: rd.next}, Empty
		}
	}
}

// sleep waits on bell b until a commit rings it, an Interrupt, or d.
func (rd *Reader) sleep(b int, d time.Duration) {
	r := rd.r
	if r.self < 0 {
		// Read-only: this mapping cannot mark itself asleep; poll.
		time.Sleep(min(d, time.Millisecond))
		return
	}
	rd.sleeping.Store(int32(b))
	v := r.arm(b)
	// A record taken before the cursor's tail but not committed yet may be
	// another reader's kind: its commit would not ring this bell, and one
	// after it (ours) rang before this reader armed. Go round again: the
	// next read finds it Waiting and sleeps on the any-commit bell.
	blocked := b != bellAny && r.hdr.tail.Load() > rd.next
	if !blocked && !rd.ready() && !rd.interrupted.Load() {
		mask := rd.mask
		if b == bellAny {
			mask = futexMatchAny
		}
		futexWaitBitset(&r.hdr.bells[b].word, v, d, mask)
		rd.wakes.Add(1)
	}
	r.disarm(b)
	rd.sleeping.Store(-1)
}

// Interrupt makes a Read in progress (or the next one) return Empty at once.
// It is safe to call from any goroutine.
func (rd *Reader) Interrupt() {
	rd.interrupted.Store(true)
	if b := rd.sleeping.Load(); b >= 0 {
		// Bumping the word makes a sleep about to start return; the wake
		// reaches this reader's interrupt bit only.
		w := &rd.r.hdr.bells[b].word
		w.Add(1)
		futexWakeBitset(w, rd.intr)
	}
}

// SetBell makes Read sleep on doorbell i (0 or 1): the one rung by the
// writers of the records this reader wants.
func (rd *Reader) SetBell(i int) { rd.bell = i % bellAny }

// SetTarget makes Read woken only by commits addressed to pid (Meta.Wake
// set to TargetBit(pid)) or to everyone (Meta.Wake 0).
func (rd *Reader) SetTarget(pid uint32) { rd.mask = TargetBit(pid) | rd.intr }

// spinReady waits for the next record without sleeping: a short busy spin,
// then sched_yield between checks until the spin window passes.
func (rd *Reader) spinReady() bool {
	for i := 0; i < 64; i++ {
		if rd.ready() {
			return true
		}
	}
	if rd.spinNow <= 0 {
		return false
	}
	start := nanotime()
	for nanotime()-start < int64(rd.spinNow) {
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		if rd.ready() || rd.interrupted.Load() {
			return true
		}
	}
	return false
}

// adaptSpin adapts the spin window to a sleep of slept nanoseconds (see
// Reader.spinNow).
func (rd *Reader) adaptSpin(slept int64) {
	switch {
	case slept >= int64(rd.spin):
		if rd.spinNow /= 2; rd.spinNow < rd.spin/8 {
			rd.spinNow = 0
		}
	case rd.ready():
		rd.spinNow = min(max(2*rd.spinNow, rd.spin/8), rd.spin)
	}
}

// SetSpin sets how long, at most, Read keeps checking for a record,
// yielding the CPU between checks, before it sleeps on the doorbell.
// Longer windows lower the latency of events that follow each other
// closely, at the cost of CPU. Read spins less, down to not at all, while
// its sleeps last longer than d, and the full window again once records
// come sooner than that.
func (rd *Reader) SetSpin(d time.Duration) { rd.spin, rd.spinNow = d, d }

// Pending reports whether a Read now would return at once with something
// other than Empty: a record, a loss, or a record left uncommitted past
// WaitMax. It reads two words of the ring and copies nothing.
func (rd *Reader) Pending() bool { return rd.ready() }

// ready reports whether TryRead would find something other than Empty or an
// uncommitted record still within WaitMax.
func (rd *Reader) ready() bool {
	r := rd.r
	seq := rd.next
	tail := r.hdr.tail.Load()
	if seq >= tail || tail >= maxTail {
		return false
	}
	w := r.slot(seq).state.Load()
	if stateSeq(w) > seq+1 || (stateSeq(w) == seq+1 && (stateSt(w) == stCommitted || stateSt(w) == stAbandoned)) {
		return true
	}
	return rd.since != 0 && uint64(nanotime())-rd.since >= uint64(rd.waitMax)
}
