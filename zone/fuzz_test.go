package zone

import (
	"testing"
	"unsafe"
)

// FuzzRecordDecoder puts arbitrary bytes where another process's index
// slots and ring counters would be, and reads: the reader must neither panic
// nor return more than the ring's record limit, and a record it returns must
// be the one its cursor asked for.
func FuzzRecordDecoder(f *testing.F) {
	seed := func(setup func(r *Ring)) {
		z, err := Open(Options{Name: "seed", Dir: f.TempDir(), Size: MinSize})
		if err != nil {
			f.Fatal(err)
		}
		defer z.Close()
		r := z.Ring()
		setup(r)
		raw := unsafe.Slice((*byte)(r.index), 4*indexSlotSize)
		f.Add(append([]byte(nil), raw...), r.Tail(), r.hdr.dataTail.Load(), uint64(0))
	}
	seed(func(r *Ring) { r.Write(Meta{Kind: 1, PID: 2}, []byte("hello")) })
	seed(func(r *Ring) {
		for i := 0; i < 3; i++ {
			r.Write(Meta{}, make([]byte, 100*i))
		}
	})
	seed(func(r *Ring) { r.Reserve(Meta{}, 10) })

	z, err := Open(Options{Name: "fuzz", Dir: f.TempDir(), Size: MinSize})
	if err != nil {
		f.Fatal(err)
	}
	r := z.Ring()
	f.Fuzz(func(t *testing.T, slots []byte, tail, dataTail, start uint64) {
		raw := unsafe.Slice((*byte)(r.index), r.slots*indexSlotSize)
		clear(raw[:4*indexSlotSize])
		copy(raw, slots)
		r.hdr.tail.Store(tail)
		r.hdr.dataTail.Store(dataTail)
		rd := r.NewReader(start)
		rd.SetWaitMax(1)
		for i := 0; i < 8; i++ {
			want := rd.Next()
			rec, st := rd.TryRead()
			switch st {
			case Got:
				if uint64(len(rec.Data)) > r.maxRecord || rec.Seq != want {
					t.Fatalf("read %d bytes at %d (asked %d), limit %d", len(rec.Data), rec.Seq, want, r.maxRecord)
				}
			case Overrun, Gap:
				if rec.Lost == 0 || rd.Next() <= want {
					t.Fatalf("%v without progress: %+v", st, rec)
				}
			}
		}
	})
}
