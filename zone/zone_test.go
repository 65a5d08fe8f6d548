package zone

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"
)

func testOptions(t testing.TB, size int64) Options {
	t.Helper()
	return Options{Name: "t", Dir: t.TempDir(), Size: size}
}

func mustOpen(t testing.TB, o Options) *Zone {
	t.Helper()
	z, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { z.Close() })
	return z
}

func TestCreateAndAttach(t *testing.T) {
	o := testOptions(t, 4<<20)
	a := mustOpen(t, o)
	st, err := os.Stat(a.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 4<<20 || st.Mode().Perm() != 0o600 {
		t.Fatalf("zone file is %d bytes mode %v, want %d bytes mode 0600", st.Size(), st.Mode().Perm(), 4<<20)
	}
	a.Node().Starts.Add(7)
	b := mustOpen(t, o)
	if got := b.Node().Starts.Load(); got != 7 {
		t.Fatalf("second mapping sees Starts=%d, want 7", got)
	}
	o.Size = 0
	c := mustOpen(t, o)
	if c.Size() != 4<<20 {
		t.Fatalf("attach with size 0 sees size %d", c.Size())
	}
	g := layoutFor(4<<20, DefaultUniqueKeys)
	if g.dataOff+g.dataSize > g.size || g.indexSlots&(g.indexSlots-1) != 0 || g.maxRecord == 0 {
		t.Fatalf("bad geometry %+v", g)
	}
}

func TestGroupMode(t *testing.T) {
	o := testOptions(t, MinSize)
	o.Mode = 0o660
	z := mustOpen(t, o)
	st, err := os.Stat(z.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v, want 0660", st.Mode().Perm())
	}
}

func TestOpenRefuses(t *testing.T) {
	writeZone := func(t *testing.T, o Options, mutate func(b []byte) []byte) {
		z := mustOpen(t, o)
		b, err := os.ReadFile(z.Path())
		if err != nil {
			t.Fatal(err)
		}
		z.Close()
		if err := os.WriteFile(z.Path(), mutate(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hdrField := func(b []byte) *header { return (*header)(unsafe.Pointer(&b[0])) }
	tests := []struct {
		name   string
		size   int64 // size asked for on the second open
		mutate func(b []byte) []byte
		want   string
	}{
		{"other size", 2 << 20, func(b []byte) []byte { return b }, "but the config asks for 2097152; set size to 1048576"},
		{"truncated", MinSize, func(b []byte) []byte { return b[:100] }, "is truncated"},
		{"cut short", MinSize, func(b []byte) []byte { return b[:len(b)/2] }, "is 524288 bytes but its header says 1048576"},
		{"garbage", MinSize, func(b []byte) []byte { copy(b, "GIF89a garbage"); return b }, "is not an ipcbus zone (bad magic)"},
		{"other version", MinSize, func(b []byte) []byte { hdrField(b).Version = 99; return b }, "has layout version 99, this build uses " + fmt.Sprint(LayoutVersion)},
		{"damaged header", MinSize, func(b []byte) []byte { hdrField(b).DataOff = 12; return b }, "has a damaged header"},
		{"older layout", MinSize, func(b []byte) []byte { hdrField(b).Version = 6; return b }, "has layout version 6, this build uses " + fmt.Sprint(LayoutVersion) + "; stop every process using the zone"},
		// A valid header over a damaged body (review finding F9): a tail
		// near 2^62 made readers loop forever, a garbage index slot made
		// every write to it fail.
		{"tail out of range", MinSize, func(b []byte) []byte { hdrField(b).tail.Store(1 << 62); return b }, "damaged zone body: ring tail 4611686018427387904"},
		{"data tail out of range", MinSize, func(b []byte) []byte { hdrField(b).dataTail.Store(^uint64(0)); return b }, "damaged zone body: data tail"},
		{"index slot from the future", MinSize, func(b []byte) []byte {
			indexAt(b, 3).state.Store(stateWord(3+1<<20, stCommitted))
			return b
		}, "index holds sequence 1048579, beyond the tail"},
		{"index slot out of place", MinSize, func(b []byte) []byte {
			indexAt(b, 3).state.Store(stateWord(4, stCommitted))
			return b
		}, "index slot 3 holds sequence 4"},
		{"index slot in no state", MinSize, func(b []byte) []byte {
			indexAt(b, 3).state.Store(stateWord(3, 0))
			hdrField(b).tail.Store(10)
			return b
		}, "index slot 3 in state 0"},
		{"index slot names no segment", MinSize, func(b []byte) []byte {
			s := indexAt(b, 3)
			s.state.Store(stateWord(3, stCommitted))
			s.loc.Store(locWord(1, maxSegs-1, 0))
			hdrField(b).tail.Store(10)
			return b
		}, "index slot 3 names segment 32767"},
		{"segment of no member", MinSize, func(b []byte) []byte {
			g := layoutFor(MinSize, DefaultUniqueKeys)
			(*segSlot)(unsafe.Pointer(&b[g.segOff+2*segSlotSize])).lease.Store(leaseWord(4, 999))
			return b
		}, "segment 2 leased to member 999"},
		{"worker slot in no state", MinSize, func(b []byte) []byte {
			(*WorkerSlot)(unsafe.Pointer(&b[headerSize+5*workerSlotSize])).State.Store(77)
			return b
		}, "worker slot 5 in state 77"},
		{"not a file", MinSize, nil, "is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, MinSize)
			if tt.mutate == nil {
				if err := os.MkdirAll(PathFor(o), 0o700); err != nil {
					t.Fatal(err)
				}
			} else {
				writeZone(t, o, tt.mutate)
			}
			o.Size = tt.size
			_, err := Open(o)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), PathFor(o)) {
				t.Fatalf("error %q does not contain %q and the path", err, tt.want)
			}
		})
	}
}

// indexAt overlays index slot i on the bytes of a MinSize zone file.
func indexAt(b []byte, i uint64) *indexSlot {
	return (*indexSlot)(unsafe.Pointer(&b[layoutFor(MinSize, DefaultUniqueKeys).indexOff+i*indexSlotSize]))
}

func TestOpenRefusesOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	z.Close()
	if err := os.Chown(z.Path(), 4242, 4242); err != nil {
		t.Fatal(err)
	}
	_, err := Open(o)
	if err == nil || !strings.Contains(err.Error(), "is owned by uid 4242") {
		t.Fatalf("Open of a zone owned by someone else: %v", err)
	}
}

func TestBlankFileIsInitialized(t *testing.T) {
	o := testOptions(t, MinSize)
	// A creator that died after sizing the file but before the magic.
	if err := os.Mkdir(DirFor(o), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(PathFor(o), make([]byte, MinSize), 0o600); err != nil {
		t.Fatal(err)
	}
	z := mustOpen(t, o)
	if z.Ring().Slots() == 0 {
		t.Fatal("blank zone not initialized")
	}
}

func TestBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []struct {
		o    Options
		want string
	}{
		{Options{Name: "", Dir: dir, Size: MinSize}, "invalid zone name"},
		{Options{Name: "a/b", Dir: dir, Size: MinSize}, "invalid zone name"},
		{Options{Name: "x", Dir: dir, Size: 1000}, "invalid zone size 1000 bytes"},
		{Options{Name: "x", Dir: filepath.Join(dir, "missing"), Size: MinSize}, "zone directory " + filepath.Join(dir, "missing") + " does not exist"},
		{Options{Name: "x", Dir: dir, Size: MinSize, Mode: 0o666}, "invalid zone mode 0666"},
		{Options{Name: "nope", Dir: dir, ReadOnly: true}, "does not exist"},
	} {
		if _, err := Open(o.o); err == nil || !strings.Contains(err.Error(), o.want) {
			t.Errorf("Open(%+v) = %v, want an error with %q", o.o, err, o.want)
		}
	}
}

func TestNodeLockExcludesHandles(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	h1, err := z.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	h2, err := z.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if err := h1.LockNode(); err != nil {
		t.Fatal(err)
	}
	got, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		if err := h2.LockNode(); err != nil {
			t.Error(err)
		}
		close(got)
		h2.UnlockNode()
	}()
	select {
	case <-got:
		t.Fatal("second handle took the node lock while the first held it")
	case <-time.After(50 * time.Millisecond):
	}
	h1.UnlockNode()
	<-done
}

func TestLivenessLock(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	h, err := z.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	if alive, _ := z.WorkerAlive(3); alive {
		t.Fatal("slot 3 alive before anyone held it")
	}
	if err := h.HoldWorker(3); err != nil {
		t.Fatal(err)
	}
	if alive, _ := z.WorkerAlive(3); !alive {
		t.Fatal("slot 3 not alive while held")
	}
	h2, _ := z.NewHandle()
	defer h2.Close()
	if err := h2.HoldWorker(3); err == nil {
		t.Fatal("a second handle took a held liveness lock")
	}
	h.Close() // as a process death would
	if alive, _ := z.WorkerAlive(3); alive {
		t.Fatal("slot 3 still alive after its handle closed")
	}
}

// filepathDir is the Options.Dir of the zone file at p: the directory of
// its private directory.
func filepathDir(p string) string { return filepath.Dir(filepath.Dir(p)) }

// TestGeometry pins the ring geometry the README documents: a change of
// the layout that moves these figures must change the README too.
func TestGeometry(t *testing.T) {
	tests := []struct {
		size                                uint64
		slots, segments, segSize, maxRecord uint64
	}{
		{MinSize, 2048, 21, 32 << 10, 8<<10 - frameSize},
		{DefaultSize, 131072, 30, 2 << 20, 512<<10 - frameSize},
		{1 << 30, 2 << 20, 247, 4 << 20, 1<<20 - frameSize},
	}
	for _, tt := range tests {
		g := layoutFor(tt.size, DefaultUniqueKeys)
		if g.indexSlots != tt.slots || g.segments != tt.segments || g.segSize != tt.segSize || g.maxRecord != tt.maxRecord {
			t.Errorf("size %d: %d slots, %d segments of %d, records up to %d; want %d, %d of %d, %d",
				tt.size, g.indexSlots, g.segments, g.segSize, g.maxRecord, tt.slots, tt.segments, tt.segSize, tt.maxRecord)
		}
		if g.dataOff%4096 != 0 || g.dataOff+g.dataSize > tt.size || g.segments < 16 {
			t.Errorf("size %d: data at %d, %d bytes, %d segments", tt.size, g.dataOff, g.dataSize, g.segments)
		}
	}
}

// TestFailedCreateLeavesNoFile: a zone whose space cannot be reserved is an
// error naming the size, and leaves no file behind (a process limited to
// 512 KiB files stands in for a full /dev/shm).
func TestFailedCreateLeavesNoFile(t *testing.T) {
	o := testOptions(t, MinSize)
	h := startHelper(t, o, "fsize")
	msg := h.line(t)
	if err := h.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "1048576 bytes") {
		t.Fatalf("create error %q does not name the size", msg)
	}
	if _, err := os.Stat(PathFor(o)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after a failed create: %v, want no file", err)
	}
}

// TestRemove: a zone in use by a live process is not removed; once its
// processes are gone, the zone file, its blobs and its usage file are.
func TestRemove(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	if _, err := z.PutBlob([]byte("payload")); err != nil {
		t.Fatal(err)
	}
	if _, err := Remove(o); !errors.Is(err, ErrInUse) {
		t.Fatalf("remove while open: %v, want ErrInUse", err)
	}
	z.Close()
	removed, err := Remove(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) < 3 {
		t.Fatalf("removed %v, want the zone file, its blob and its usage file", removed)
	}
	ents, _ := os.ReadDir(DirFor(o))
	if len(ents) != 0 {
		t.Fatalf("left in the zone's directory: %v", ents)
	}
	// The next open creates a new zone.
	z2 := mustOpen(t, o)
	if z2.Node().Starts.Load() != 0 {
		t.Fatal("the new zone carries the old counters")
	}
}

// TestUniqueKeys: the run-once key table has the size the zone was created
// with (bounded), holds no more keys than that, and a config asking for
// another size is refused at attach with the fix.
func TestUniqueKeys(t *testing.T) {
	o := testOptions(t, MinSize)
	o.UniqueKeys = 256
	z := mustOpen(t, o)
	h, err := z.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	now := time.Now()
	won := 0
	for i := 0; i < 1000; i++ {
		_, ok, err := h.ClaimUnique(fmt.Sprint("key-", i), now, time.Hour, uint64(i+1))
		if errors.Is(err, ErrUniqueTableFull) {
			break
		}
		if err != nil || !ok {
			t.Fatalf("claim %d: %v %v", i, ok, err)
		}
		won++
	}
	if won > 256 || won < 64 {
		t.Fatalf("%d keys held by a table of 256", won)
	}
	o.UniqueKeys = 512
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "holds 256 run-once keys but the config asks for 512; set unique_keys to 256") {
		t.Fatalf("attach asking for another size: %v", err)
	}
	o.UniqueKeys = 0
	mustOpen(t, o).Close() // whatever the file has
	for _, tt := range []struct {
		keys int
		size int64
		want string
	}{
		{100, 0, "must be between 256 and 1048576"},
		{1 << 21, 0, "must be between 256 and 1048576"},
		{1 << 16, MinSize, "would take more than a quarter of the 1048576-byte zone; give at most 4096"},
	} {
		if err := ValidateUniqueKeys(tt.keys, tt.size); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%d keys in %d bytes: %v, want %q", tt.keys, tt.size, err, tt.want)
		}
	}
}
