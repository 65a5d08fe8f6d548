package zone

import (
	"encoding/binary"
	"os"
	"testing"
	"unsafe"
)

// FuzzRecordDecoder puts arbitrary bytes where other processes' index
// slots, segment leases and frames would be, and reads: the reader must
// neither panic nor loop, never return more than the ring's record limit,
// and a record it returns must be the one its cursor asked for, carrying a
// frame that names that sequence.
func FuzzRecordDecoder(f *testing.F) {
	seed := func(setup func(r *Ring)) {
		z, err := Open(Options{Name: "seed", Dir: f.TempDir(), Size: MinSize})
		if err != nil {
			f.Fatal(err)
		}
		defer z.Close()
		r := z.Ring()
		setup(r)
		slots := unsafe.Slice((*byte)(r.index), 4*indexSlotSize)
		segs := unsafe.Slice((*byte)(r.segTable), 2*segSlotSize)
		f.Add(append([]byte(nil), slots...), append([]byte(nil), segs...), append([]byte(nil), r.data[:256]...), r.Tail(), uint64(0))
	}
	seed(func(r *Ring) { r.Write(Meta{Kind: 1, PID: 2}, []byte("hello")) })
	seed(func(r *Ring) {
		for i := 0; i < 3; i++ {
			r.Write(Meta{}, make([]byte, 30*i))
		}
	})
	seed(func(r *Ring) { r.Reserve(Meta{}, 10) })

	z, err := Open(Options{Name: "fuzz", Dir: f.TempDir(), Size: MinSize})
	if err != nil {
		f.Fatal(err)
	}
	r := z.Ring()
	f.Fuzz(func(t *testing.T, slots, segs, frames []byte, tail, start uint64) {
		rawSlots := unsafe.Slice((*byte)(r.index), r.slots*indexSlotSize)
		clear(rawSlots[:4*indexSlotSize])
		copy(rawSlots, slots)
		rawSegs := unsafe.Slice((*byte)(r.segTable), r.segments*segSlotSize)
		clear(rawSegs[:2*segSlotSize])
		copy(rawSegs[:2*segSlotSize], segs)
		copy(r.data[:256], frames)
		r.hdr.tail.Store(tail)
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
				_, seg, off := locSplit(r.slot(want).loc.Load())
				if got := binary.LittleEndian.Uint64(r.data[uint64(seg)*r.segSize+off:]); got != want {
					t.Fatalf("record %d read from a frame of sequence %d", want, got)
				}
			case Overrun, Gap:
				if rec.Lost == 0 || rd.Next() <= want {
					t.Fatalf("%v without progress: %+v", st, rec)
				}
			}
		}
	})
}

// FuzzAttach writes zone files that are valid but for a few words changed
// anywhere, and opens them: Open must refuse them or return a zone on which
// writes and reads neither panic nor loop, and reads return only records
// within the limit.
func FuzzAttach(f *testing.F) {
	dir := f.TempDir()
	tz, err := Open(Options{Name: "template", Dir: dir, Size: MinSize})
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		tz.Ring().Write(Meta{Kind: uint32(i)}, make([]byte, 10*i))
	}
	tz.Close()
	template, err := os.ReadFile(tz.Path())
	if err != nil {
		f.Fatal(err)
	}
	g := layoutFor(MinSize, DefaultUniqueKeys)
	f.Add(uint32(192), uint64(1<<62), uint32(0), uint64(0), uint32(0), uint64(0))
	f.Add(uint32(g.indexOff+3*indexSlotSize), uint64(0xffffffffffffff), uint32(0), uint64(0), uint32(0), uint64(0))
	f.Add(uint32(g.segOff), uint64(0x1_0000_00ff), uint32(g.indexOff+8), uint64(0xdeadbeef), uint32(g.dataOff), uint64(7))
	f.Add(uint32(128), uint64(3), uint32(132), uint64(1<<20), uint32(64), uint64(4096))
	f.Fuzz(func(t *testing.T, o1 uint32, v1 uint64, o2 uint32, v2 uint64, o3 uint32, v3 uint64) {
		b := append([]byte(nil), template...)
		for _, w := range [][2]uint64{{uint64(o1), v1}, {uint64(o2), v2}, {uint64(o3), v3}} {
			off := w[0] % uint64(len(b)-8) &^ 7
			binary.LittleEndian.PutUint64(b[off:], w[1])
		}
		o := Options{Name: "fuzzed", Dir: t.TempDir()}
		if err := os.Mkdir(DirFor(o), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(PathFor(o), b, 0o600); err != nil {
			t.Fatal(err)
		}
		z, err := Open(o)
		if err != nil {
			return
		}
		defer z.Close()
		r := z.Ring()
		rd := r.NewReader(0)
		rd.SetWaitMax(1)
		for i := 0; i < 4; i++ {
			r.Write(Meta{}, []byte("after"))
		}
		for i := 0; i < 64; i++ {
			rec, st := rd.TryRead()
			if st == Empty {
				break
			}
			if st == Got && uint64(len(rec.Data)) > r.maxRecord {
				t.Fatalf("read %d bytes, limit %d", len(rec.Data), r.maxRecord)
			}
		}
	})
}
