package zone

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestRingWriteRead(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	if _, st := rd.TryRead(); st != Empty {
		t.Fatalf("empty ring: %v", st)
	}
	for i, p := range []string{"", "a", "hello world", string(make([]byte, 1000))} {
		seq, err := r.Write(Meta{Kind: uint32(i), PID: 42, Gen: 2, Aux: 9}, []byte(p[:len(p)/2]), []byte(p[len(p)/2:]))
		if err != nil {
			t.Fatal(err)
		}
		rec, st := rd.TryRead()
		if st != Got || rec.Seq != seq || string(rec.Data) != p || rec.Kind != uint32(i) || rec.PID != 42 || rec.Gen != 2 || rec.Aux != 9 || rec.Time == 0 {
			t.Fatalf("read %v %+v, want seq %d data %q", st, rec, seq, p)
		}
	}
	if _, err := r.Write(Meta{}, make([]byte, r.MaxRecord()+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
}

// TestRingWrapsData writes many records of odd sizes so that payloads wrap
// around the end of the data area, with the reader keeping up.
func TestRingWrapsData(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	size := 0
	for i := 0; size < int(r.DataSize())*3; i++ {
		p := make([]byte, 4+i%4093)
		binary.LittleEndian.PutUint32(p, uint32(i))
		for j := 4; j < len(p); j++ {
			p[j] = byte(i + j)
		}
		if _, err := r.Write(Meta{}, p); err != nil {
			t.Fatal(err)
		}
		rec, st := rd.TryRead()
		if st != Got || string(rec.Data) != string(p) {
			t.Fatalf("record %d: %v, %d bytes, want %d", i, st, len(rec.Data), len(p))
		}
		size += len(p)
	}
}

func TestRingOverrunCountsExactly(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	n := r.Slots() + 37
	for i := uint64(0); i < n; i++ {
		if _, err := r.Write(Meta{Aux: i}, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	rec, st := rd.TryRead()
	if st != Overrun || rec.Seq != 0 || rec.Lost != 37 {
		t.Fatalf("got %v %+v, want an overrun of 37 from 0", st, rec)
	}
	for i := uint64(37); i < n; i++ {
		rec, st := rd.TryRead()
		if st != Got || rec.Aux != i {
			t.Fatalf("after overrun: %v %+v, want record %d", st, rec, i)
		}
	}
	if read, over, gaps := rd.Counts(); read != r.Slots() || over != 37 || gaps != 0 {
		t.Fatalf("counts %d %d %d", read, over, gaps)
	}
}

// TestRingDataOverrun fills the data area before the index: the reader
// loses exactly the records whose bytes were overwritten.
func TestRingDataOverrun(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rec := make([]byte, r.MaxRecord())
	n := int(r.DataSize()/uint64(len(rec))) + 3
	for i := 0; i < n; i++ {
		rec[0] = byte(i)
		if _, err := r.Write(Meta{}, rec); err != nil {
			t.Fatal(err)
		}
	}
	lost, got := uint64(0), 0
	for {
		rec, st := rd.TryRead()
		if st == Empty {
			break
		}
		switch st {
		case Overrun:
			lost += rec.Lost
		case Got:
			if rec.Data[0] != byte(rec.Seq) {
				t.Fatalf("record %d carries %d", rec.Seq, rec.Data[0])
			}
			got++
		default:
			t.Fatalf("unexpected %v", st)
		}
	}
	if lost+uint64(got) != uint64(n) || lost == 0 {
		t.Fatalf("lost %d + got %d != written %d", lost, got, n)
	}
}

// TestRingGap is a writer that reserves and never commits: readers wait
// WaitMax, skip the record as a gap, and the next record is still read; the
// late commit fails.
func TestRingGap(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	a, b := r.NewReader(r.Tail()), r.NewReader(r.Tail())
	a.SetWaitMax(50 * time.Millisecond)
	b.SetWaitMax(time.Hour) // b only sees what a decided
	p, err := r.Reserve(Meta{}, 4)
	if err != nil {
		t.Fatal(err)
	}
	p.Append([]byte("ab"))
	if _, err := r.Write(Meta{}, []byte("next")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec, st := a.Read(5 * time.Second)
	if st != Gap || rec.Seq != p.Seq() || rec.Lost != 1 {
		t.Fatalf("got %v %+v, want a gap at %d", st, rec, p.Seq())
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("gap declared after %v, before WaitMax", el)
	}
	if rec, st := a.Read(time.Second); st != Got || string(rec.Data) != "next" {
		t.Fatalf("after the gap: %v %q", st, rec.Data)
	}
	if rec, st := b.TryRead(); st != Gap || rec.Seq != p.Seq() {
		t.Fatalf("second reader: %v %+v", st, rec)
	}
	if err := p.Commit(); !errors.Is(err, ErrAbandoned) {
		t.Fatalf("late commit: %v", err)
	}
	if g := z.Node().Gaps.Load(); g != 1 {
		t.Fatalf("node gaps %d", g)
	}
}

// TestRingReadWakes checks that a sleeping reader is woken by a commit.
func TestRingReadWakes(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	z2 := mustOpen(t, Options{Name: "t", Dir: filepathDir(z.Path()), Size: MinSize})
	r := z.Ring()
	rd := z2.Ring().NewReader(r.Tail())
	done := make(chan Record)
	go func() {
		for {
			rec, st := rd.Read(10 * time.Second)
			if st == Got {
				done <- rec
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond)
	if _, err := r.Write(Meta{}, []byte("wake")); err != nil {
		t.Fatal(err)
	}
	select {
	case rec := <-done:
		if string(rec.Data) != "wake" {
			t.Fatalf("got %q", rec.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reader not woken by a commit")
	}
}

// TestRingConcurrent runs writers and readers on separate mappings of one
// zone under the race detector: every reader sees every record, the same
// order, and each writer's records in its order.
func TestRingConcurrent(t *testing.T) {
	o := testOptions(t, 8<<20)
	zw := mustOpen(t, o)
	const writers, perWriter, readers = 4, 3000, 3
	start := zw.Ring().Tail()
	var wg sync.WaitGroup
	results := make([][]uint64, readers)
	for i := 0; i < readers; i++ {
		z := mustOpen(t, o)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rd := z.Ring().NewReader(start)
			last := make(map[uint32]uint64)
			for len(results[i]) < writers*perWriter {
				rec, st := rd.Read(10 * time.Second)
				switch st {
				case Got:
				case Empty:
					t.Errorf("reader %d: stalled after %d records", i, len(results[i]))
					return
				default:
					t.Errorf("reader %d: %v %+v", i, st, rec)
					return
				}
				w, n := binary.LittleEndian.Uint32(rec.Data), binary.LittleEndian.Uint64(rec.Data[4:])
				if n != last[w] {
					t.Errorf("reader %d: writer %d record %d after %d", i, w, n, last[w])
					return
				}
				last[w] = n + 1
				results[i] = append(results[i], uint64(w)<<32|n)
			}
		}(i)
	}
	for w := 0; w < writers; w++ {
		z := mustOpen(t, o)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			p := make([]byte, 12+w*7)
			for n := 0; n < perWriter; n++ {
				binary.LittleEndian.PutUint32(p, uint32(w))
				binary.LittleEndian.PutUint64(p[4:], uint64(n))
				if _, err := z.Ring().Write(Meta{PID: uint32(w)}, p); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	for i := 1; i < readers; i++ {
		if fmt.Sprint(results[i]) != fmt.Sprint(results[0]) {
			t.Fatalf("reader %d saw another order than reader 0", i)
		}
	}
}

// TestRingStaleWriter: a writer that reserved a record and stalled while
// other processes wrapped the whole data area three times then writes its
// payload and commits. Its bytes land only in its own segment (which nobody
// leased meanwhile), so every record read carries only its own writer's
// bytes, and the records the wrap overwrote are counted lost. (On layout 6,
// which shared the data area among writers, the late copy landed on newer
// records.)
func TestRingStaleWriter(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	other := mustOpen(t, o)
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rd.SetWaitMax(time.Millisecond)
	const n = 1000
	const staleAux = 1 << 40
	stale, err := r.Reserve(Meta{Aux: staleAux}, n)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, n)
	for r.DataTail() < 3*r.DataSize() {
		seq := r.Tail()
		for i := range p {
			p[i] = byte(seq)
		}
		if _, err := other.Ring().Write(Meta{Aux: seq}, p); err != nil {
			t.Fatal(err)
		}
	}
	stale.Append(bytes.Repeat([]byte{0xEE}, n))
	stale.Commit()
	time.Sleep(2 * time.Millisecond)
	lost, got := uint64(0), 0
	for {
		rec, st := rd.TryRead()
		if st == Empty {
			break
		}
		switch st {
		case Got:
			want := byte(rec.Aux)
			if rec.Aux == staleAux {
				want = 0xEE
			}
			for _, c := range rec.Data {
				if c != want {
					t.Fatalf("record %d returned with a byte %#x from another writer", rec.Seq, c)
				}
			}
			got++
		case Overrun, Gap:
			lost += rec.Lost
		case Waiting:
			time.Sleep(time.Millisecond)
		}
	}
	if lost == 0 || got == 0 {
		t.Fatalf("%d read, %d counted lost: want both", got, lost)
	}
}

// TestWriteBatch: a batch gets consecutive sequence numbers, in its order,
// even with another writer writing at the same time, and readers read it
// whole.
func TestWriteBatch(t *testing.T) {
	o := testOptions(t, 8<<20)
	z, other := mustOpen(t, o), mustOpen(t, o)
	r := z.Ring()
	rd := other.Ring().NewReader(r.Tail())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // another writer while the batches go in (fewer records than the ring holds)
		defer close(done)
		for i := 0; i < 5000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			other.Ring().Write(Meta{Kind: 2}, []byte("noise"))
		}
	}()
	var firsts []uint64
	for b := 0; b < 50; b++ {
		entries := make([]Entry, 100)
		for i := range entries {
			entries[i] = Entry{Meta: Meta{Kind: 1, Aux: uint64(b*1000 + i)}, Parts: [][]byte{[]byte("part-"), []byte(fmt.Sprint(i))}}
		}
		first, err := r.WriteBatch(entries)
		if err != nil {
			t.Fatal(err)
		}
		firsts = append(firsts, first)
	}
	close(stop)
	<-done
	got := map[uint64]Record{}
	for {
		rec, st := rd.TryRead()
		if st == Empty {
			break
		}
		if st == Got && rec.Kind == 1 {
			rec.Data = append([]byte(nil), rec.Data...)
			got[rec.Seq] = rec
		}
	}
	for b, first := range firsts {
		for i := 0; i < 100; i++ {
			rec, ok := got[first+uint64(i)]
			if !ok || rec.Aux != uint64(b*1000+i) || string(rec.Data) != fmt.Sprint("part-", i) {
				t.Fatalf("batch %d record %d at %d: %+v (found %v)", b, i, first+uint64(i), rec, ok)
			}
		}
	}
	if _, err := r.WriteBatch([]Entry{{Parts: [][]byte{make([]byte, r.MaxRecord()+1)}}}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("an oversized entry: %v", err)
	}
}
