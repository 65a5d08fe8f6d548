package zone

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The tests in this file each close a race an outside review of layout 6
// found (F2 to F10 in issue 8); each names the finding and what it did.

// TestFilterCountsForeignFrame (F2): a filtering reader judges a record only
// on fields proven to be its own. Here the record's index slot names the
// frame of another record, as a writer overtaken by a whole lap of the index
// leaves it: the reader counts the record lost instead of skipping it
// silently on the other record's kind (layout 6 trusted kind and aux in the
// index slot before checking them, and dropped such a record uncounted).
func TestFilterCountsForeignFrame(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rd.SetFilter(func(kind uint32, _ uint64) bool { return kind == 1 })
	keep, err := r.Write(Meta{Kind: 1}, []byte("kept"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := r.Write(Meta{Kind: 2}, []byte("skipped"))
	if err != nil {
		t.Fatal(err)
	}
	r.slot(keep).loc.Store(r.slot(other).loc.Load()) // the overtaken writer's store
	rec, st := rd.TryRead()
	if st != Overrun || rec.Seq != keep || rec.Lost != 1 {
		t.Fatalf("got %v %+v, want the record at %d counted lost", st, rec, keep)
	}
	if _, st := rd.TryRead(); st != Empty {
		t.Fatalf("then %v, want the kind-2 record skipped", st)
	}
	if _, over, _ := rd.Counts(); over != 1 {
		t.Fatalf("%d counted lost, want 1", over)
	}
}

// TestWaitingReaderWokenByAnyCommit (F3): an alerts reader (doorbell 1)
// blocked behind an event record (doorbell 0) that is not committed yet is
// woken by that record's commit. In layout 6 a commit rang only its own
// bell, and the reader slept until its timer (WaitMax/4, here 15 minutes:
// the test would time out).
func TestWaitingReaderWokenByAnyCommit(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	w := mustOpen(t, Options{Name: "t", Dir: filepathDir(z.Path())})
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rd.SetWaitMax(time.Hour)
	rd.SetSpin(0)
	rd.SetBell(1)
	rd.SetFilter(func(kind uint32, _ uint64) bool { return kind == 7 })
	ev, err := w.Ring().Reserve(Meta{Kind: 1, Bell: 0}, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Ring().Write(Meta{Kind: 7, Bell: 1}, []byte("alert")); err != nil {
		t.Fatal(err)
	}
	got := make(chan Record, 1)
	go func() {
		for {
			if rec, st := rd.Read(time.Hour); st == Got {
				got <- rec
				return
			}
		}
	}()
	// The reader sleeps blocked on the event record: on the any-commit bell.
	for deadline := time.Now().Add(30 * time.Second); z.Doorbell(bellAny).Sleepers() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the reader never slept on the any-commit doorbell")
		}
		time.Sleep(time.Millisecond)
	}
	ev.Append([]byte("evnt"))
	if err := ev.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case rec := <-got:
		if string(rec.Data) != "alert" {
			t.Fatalf("got %q", rec.Data)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the commit of the record it waited on did not wake the reader")
	}
}

// TestDeadWritersCostOneWaitMax (F4): K writers that took consecutive
// sequence numbers and died cost a reader one WaitMax, not K: every
// record below the tail the reader saw when it started waiting has been
// pending at least as long, so once WaitMax passed each is abandoned at
// once. (Layout 6 started a new timer per record: 5 dead writers with
// WaitMax 100ms stalled readers 524ms.)
func TestDeadWritersCostOneWaitMax(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	const k, waitMax = 5, 20 * time.Millisecond
	rd.SetWaitMax(waitMax)
	for i := 0; i < k; i++ {
		if _, err := r.Reserve(Meta{}, 8); err != nil { // never committed: a dead writer
			t.Fatal(err)
		}
	}
	if _, err := r.Write(Meta{}, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if _, st := rd.TryRead(); st != Waiting {
		t.Fatalf("first read %v, want waiting", st)
	}
	time.Sleep(waitMax + 5*time.Millisecond)
	// No more waiting: the K gaps and the record follow one another.
	for i := 0; i < k; i++ {
		if rec, st := rd.TryRead(); st != Gap || rec.Lost != 1 {
			t.Fatalf("read %d after WaitMax: %v %+v, want a gap at once", i, st, rec)
		}
	}
	if rec, st := rd.TryRead(); st != Got || string(rec.Data) != "after" {
		t.Fatalf("after the gaps: %v %+v", st, rec)
	}
	// A record taken after the reader stopped waiting gets its own WaitMax.
	if _, err := r.Reserve(Meta{}, 8); err != nil {
		t.Fatal(err)
	}
	if _, st := rd.TryRead(); st != Waiting {
		t.Fatalf("a new pending record: %v, want waiting", st)
	}
}

// TestTakeUniqueStaleTicket (F5): a run-once event whose key expired and
// whose slot was given to a new post of the key is taken by nobody, and
// never takes the new event's claim. Layout 6 checked the token and then
// set the claim in two steps: a taker of the old event that read the token
// just before the slot changed hands took the new claim, so the old event
// ran twice and the new one never. Here a goroutine hammers the old,
// already taken ticket while the slot changes hands thousands of times.
func TestTakeUniqueStaleTicket(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	h, err := z.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	now := time.Now()
	rounds := 20000
	if testing.Short() {
		rounds = 2000
	}
	var stale atomic.Pointer[UniqueTicket]
	var stop atomic.Bool
	var stolen atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if t := stale.Load(); t != nil && z.TakeUnique(*t) {
				stolen.Add(1)
			}
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	for i := 0; i < rounds; i++ {
		// Each round is past the last one's ttl: the key's slot is reused.
		tk, ok, err := h.ClaimUnique("key", now.Add(time.Duration(i)*time.Second), time.Millisecond, uint64(i+1)<<1)
		if err != nil || !ok {
			t.Fatalf("round %d: claim %v %v", i, ok, err)
		}
		if !z.TakeUnique(tk) {
			t.Fatalf("round %d: the fresh ticket was not taken first (a stale ticket took it)", i)
		}
		if z.TakeUnique(tk) {
			t.Fatalf("round %d: a ticket taken twice", i)
		}
		stale.Store(&tk)
	}
	stop.Store(true)
	wg.Wait()
	if n := stolen.Load(); n != 0 {
		t.Fatalf("a stale ticket took %d events", n)
	}
}

// TestKilledSleeperReaped (F6): a process killed while its reader sleeps
// leaves its bit on the doorbell; the next reap (every worker's probe, and
// any writer taking a segment) finds its member lock gone and clears it, so
// commits stop paying a wake-up call. Layout 6 kept a count that only
// workers' crashes corrected, with windows where even those were missed.
func TestKilledSleeperReaped(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	h := startHelper(t, o, "sleeper")
	h.line(t)
	for deadline := time.Now().Add(30 * time.Second); z.Doorbell(0).Sleepers() != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("%d sleepers, want the helper's reader", z.Doorbell(0).Sleepers())
		}
		time.Sleep(time.Millisecond)
	}
	if n := z.ReapMembers(); n != 0 {
		t.Fatalf("a live sleeper reaped (%d)", n)
	}
	h.kill(t)
	if n := z.Doorbell(0).Sleepers(); n != 1 {
		t.Fatalf("%d sleepers before the reap, want the dead one's", n)
	}
	if n := z.ReapMembers(); n != 1 {
		t.Fatalf("reaped %d members, want 1", n)
	}
	if n := z.Doorbell(0).Sleepers(); n != 0 {
		t.Fatalf("%d sleepers after the reap", n)
	}
}

// TestMaxSizeFitsInt (F10): a zone is mapped as one []byte, so its largest
// size must fit an int of the build (layout 6 allowed 64 GiB everywhere and
// a 32-bit build panicked on int(h.Size); .ci/run runs this under GOARCH=386).
func TestMaxSizeFitsInt(t *testing.T) {
	if uint64(MaxSize) > math.MaxInt {
		t.Fatalf("MaxSize %d does not fit an int (%d)", uint64(MaxSize), math.MaxInt)
	}
	if err := ValidateSize(math.MaxInt32 + 1); err == nil && math.MaxInt == math.MaxInt32 {
		t.Fatal("a 32-bit build accepts a 2 GiB zone")
	}
}

// TestLiveLesseeKeepsItsSegment: a writer stalled with a record in flight
// keeps its segment however much others write; when it resumes, its record
// and everyone else's are whole. Others lease around it.
func TestLiveLesseeKeepsItsSegment(t *testing.T) {
	o := testOptions(t, MinSize)
	a, b := mustOpen(t, o), mustOpen(t, o)
	p, err := a.Ring().Reserve(Meta{Aux: 1}, 100)
	if err != nil {
		t.Fatal(err)
	}
	l := a.Ring().cur.Load()
	before := a.seg(l.seg).lease.Load()
	rd := b.Ring().NewReader(p.Seq())
	rd.SetWaitMax(time.Hour)
	for b.Ring().DataTail() < 4*b.Ring().DataSize() {
		if _, err := b.Ring().Write(Meta{}, make([]byte, 4000)); err != nil { // the index does not wrap
			t.Fatal(err)
		}
	}
	if after := a.seg(l.seg).lease.Load(); after != before {
		t.Fatalf("the stalled lessee's segment went from %#x to %#x", before, after)
	}
	p.Append(make([]byte, 100))
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if rec, st := rd.TryRead(); st != Got || rec.Aux != 1 || len(rec.Data) != 100 {
		t.Fatalf("the stalled record: %v %+v", st, rec)
	}
}

// TestDeadLesseeReclaimed: the segment of a process killed while it held a
// lease is leased again by the next writer that comes round to it.
func TestDeadLesseeReclaimed(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	h := startHelper(t, o, "lessee")
	h.line(t)
	h.kill(t)
	for z.Ring().DataTail() < 3*z.Ring().DataSize() {
		if _, err := z.Ring().Write(Meta{}, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	if n := z.Node().Reclaimed.Load(); n != 1 {
		t.Fatalf("%d segments reclaimed, want the dead lessee's", n)
	}
}

// TestRingBusy: when every segment is leased by a live process, a writer
// that needs one gets ErrRingBusy after a second, with the geometry in the
// message, instead of waiting forever or writing over a live lessee.
func TestRingBusy(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	for i := 0; i < z.Ring().Segments(); i++ {
		m := mustOpen(t, o)
		if _, err := m.Ring().Write(Meta{}, []byte("x")); err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
	}
	_, err := z.Ring().Write(Meta{}, []byte("x"))
	if err == nil || !errors.Is(err, ErrRingBusy) {
		t.Fatalf("write with every segment leased: %v", err)
	}
}

// TestOvertakenWriterIsAGap: when a writer stalled between taking a
// sequence and committing it stores its frame's place over the slot of a
// sequence a whole index lap newer, readers of that newer record count it
// as a gap (lost to a stalled writer), not as their own overrun.
func TestOvertakenWriterIsAGap(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	old, err := r.Write(Meta{}, []byte("o"))
	if err != nil {
		t.Fatal(err)
	}
	oldLoc := r.slot(old).loc.Load()
	for r.Tail() <= old+r.Slots() {
		if _, err := r.Write(Meta{}, []byte("n")); err != nil {
			t.Fatal(err)
		}
	}
	seq := old + r.Slots()
	r.slot(seq).loc.Store(oldLoc) // the overtaken writer's late store
	rd := r.NewReader(seq)
	if rec, st := rd.TryRead(); st != Gap || rec.Seq != seq || rec.Lost != 1 {
		t.Fatalf("got %v %+v, want a gap at %d", st, rec, seq)
	}
}

// TestCloseEndsWrites: writes racing Close either finish before the zone
// is unmapped or get ErrClosed; none touches the unmapped zone.
func TestCloseEndsWrites(t *testing.T) {
	o := testOptions(t, MinSize)
	z, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var closed atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := z.Ring()
			for {
				_, err := r.Write(Meta{}, make([]byte, 700))
				if errors.Is(err, ErrClosed) {
					closed.Add(1)
					return
				}
				// Overtaken by a lap of the index while preempted: normal.
				if err != nil && !errors.Is(err, ErrOverwritten) && !errors.Is(err, ErrAbandoned) {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	z.Close()
	wg.Wait()
	if closed.Load() != 4 {
		t.Fatalf("%d writers saw ErrClosed, want 4", closed.Load())
	}
}

// TestUnicastWakesOnlyTheAddressee: a record addressed to one pid (Meta.Wake)
// wakes that pid's sleeping reader and not another's on the same doorbell
// (a unicast alert used to wake every worker's alert reader).
func TestUnicastWakesOnlyTheAddressee(t *testing.T) {
	o := testOptions(t, MinSize)
	w := mustOpen(t, o)
	start := w.Ring().Tail()
	var stop atomic.Bool
	var wg sync.WaitGroup
	reader := func(pid uint32) (*Reader, chan Record) {
		rd := mustOpen(t, o).Ring().NewReader(start)
		rd.SetBell(1)
		rd.SetSpin(0)
		rd.SetTarget(pid)
		rd.SetFilter(func(_ uint32, aux uint64) bool { return aux == uint64(pid) })
		got := make(chan Record, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if rec, st := rd.Read(time.Minute); st == Got {
					got <- rec
				}
			}
		}()
		return rd, got
	}
	x, gotX := reader(100)
	y, gotY := reader(101)
	defer func() {
		stop.Store(true)
		x.Interrupt()
		y.Interrupt()
		wg.Wait()
	}()
	for deadline := time.Now().Add(30 * time.Second); w.Doorbell(1).Sleepers() != 2; {
		if time.Now().After(deadline) {
			t.Fatal("the readers never slept")
		}
		time.Sleep(time.Millisecond)
	}
	send := func(pid uint32, got chan Record) {
		if _, err := w.Ring().Write(Meta{Aux: uint64(pid), Bell: 1, Wake: TargetBit(pid)}, []byte("a")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatalf("the reader of %d was not woken", pid)
		}
	}
	for i := 0; i < 20; i++ {
		send(100, gotX)
	}
	send(101, gotY)
	// Its own record wakes it once, and so does each wake-up of every
	// sleeper (every eighth of the ring: two or three here); a wake-up that
	// finds another record still being written sleeps on the any-commit
	// bell, and the next commit wakes it again. Waking it for every record,
	// the bug, is 21.
	if n := y.wakes.Load(); n > 10 {
		t.Fatalf("the reader of 101 woke %d times for 20 records to 100 and 1 to it", n)
	}
}

// TestLagBytes: a record in a segment still leased is in no danger (0
// bytes), and once released, its lag in bytes grows by a segment with
// each lease the cursor makes on its way to it, up to the whole data area.
func TestLagBytes(t *testing.T) {
	o := testOptions(t, MinSize)
	a, b := mustOpen(t, o), mustOpen(t, o)
	seq, err := a.Ring().Write(Meta{}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	r := b.Ring()
	if _, bytes := r.Lag(seq); bytes != 0 {
		t.Fatalf("a record in a leased segment lags %d bytes, want 0", bytes)
	}
	a.Close() // releases the segment
	var last uint64
	p := make([]byte, r.MaxRecord())
	for i := 0; i < 10*r.Segments(); i++ {
		if _, err := r.Write(Meta{}, p); err != nil {
			t.Fatal(err)
		}
		recs, bytes := r.Lag(seq)
		if recs > r.Slots() || bytes == r.DataSize() {
			return // overwritten, or next in line: the whole area
		}
		if bytes < last || bytes%r.segSize != 0 {
			t.Fatalf("after %d writes: %d bytes behind, before %d", i, bytes, last)
		}
		last = bytes
	}
	t.Fatalf("the record's segment never came round (last lag %d bytes)", last)
}

// TestNoSleepBehindForeignUncommitted: a reader about to sleep on its own
// doorbell while the record at its cursor is taken but not committed (by
// a writer of another kind, whose commit will not ring that bell) does not
// sleep there: it goes round and sleeps on the any-commit bell instead.
// (It slept until its timer: the review measured 1 s stalls.)
func TestNoSleepBehindForeignUncommitted(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rd.SetBell(1)
	rd.SetTarget(100)
	foreign, err := r.Reserve(Meta{Aux: 200, Bell: 1, Wake: TargetBit(200)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Write(Meta{Aux: 100, Bell: 1, Wake: TargetBit(100)}, []byte("mine")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		rd.sleep(1, time.Hour) // the record at the cursor is the foreign one
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		foreign.Commit()
		<-done
		t.Fatal("slept on its own doorbell behind a foreign uncommitted record")
	}
	foreign.Commit()
}

// TestReadOnlyReaderSkipsUncommitted: a reader on a read-only mapping (the
// CLI's tail) cannot mark a dead writer's record abandoned; it skips it as
// a gap of its own after WaitMax (it faulted writing the read-only page).
func TestReadOnlyReaderSkipsUncommitted(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	o.ReadOnly, o.Size = true, 0
	ro := mustOpen(t, o)
	rd := ro.Ring().NewReader(z.Ring().Tail())
	rd.SetWaitMax(5 * time.Millisecond)
	if _, err := z.Ring().Reserve(Meta{}, 4); err != nil { // never committed
		t.Fatal(err)
	}
	if _, err := z.Ring().Write(Meta{}, []byte("next")); err != nil {
		t.Fatal(err)
	}
	if rec, st := rd.Read(5 * time.Second); st != Gap || rec.Lost != 1 {
		t.Fatalf("got %v %+v, want a gap", st, rec)
	}
	if rec, st := rd.Read(5 * time.Second); st != Got || string(rec.Data) != "next" {
		t.Fatalf("after the gap: %v %+v", st, rec)
	}
}

// TestHugeTimeoutSleeps: Read with a timeout past the clock's range sleeps
// instead of spinning on an invalid futex deadline.
func TestHugeTimeoutSleeps(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	rd := z.Ring().NewReader(z.Ring().Tail())
	rd.SetSpin(0)
	done := make(chan struct{})
	go func() {
		rd.Read(math.MaxInt64)
		close(done)
	}()
	time.Sleep(100 * time.Millisecond)
	rd.Interrupt()
	<-done
	if n := rd.wakes.Load(); n > 3 {
		t.Fatalf("%d wake-ups in 100ms of sleep", n)
	}
}

// TestWakeAllEveryBounds: any period is taken without looping forever,
// and none below 64 records.
func TestWakeAllEveryBounds(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	done := make(chan struct{})
	go func() {
		r.WakeAllEvery(math.MaxUint64)
		r.WakeAllEvery(1)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("WakeAllEvery did not return")
	}
	if m := r.wakeAll.Load(); m != 63 {
		t.Fatalf("mask %d after WakeAllEvery(1), want 63 (every 64 records)", m)
	}
}
