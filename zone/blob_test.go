package zone

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBlobRoundTrip(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	a, err := z.PutBlob([]byte("hello "), []byte("world"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := z.PutBlob([]byte("again"))
	if err != nil {
		t.Fatal(err)
	}
	if a == b || !z.isBlobName(a) || !z.isBlobName(b) {
		t.Fatalf("names %q and %q: want two distinct blob names", a, b)
	}
	got, err := z.ReadBlob(a, 100)
	if err != nil || string(got) != "hello world" {
		t.Fatalf("ReadBlob = %q, %v", got, err)
	}
	if _, err := z.ReadBlob(a, 5); err == nil || !strings.Contains(err.Error(), "more than the limit of 5") {
		t.Fatalf("ReadBlob over the limit: %v", err)
	}
	if u := z.BlobUsage(); u != int64(len("hello world")+len("again")) {
		t.Fatalf("usage %d after two blobs of 16 bytes in all", u)
	}
	z.RemoveBlob(a)
	if _, err := os.Stat(z.blobPath(a)); !os.IsNotExist(err) {
		t.Fatalf("removed blob still there: %v", err)
	}
	if u := z.BlobUsage(); u != 5 {
		t.Fatalf("usage %d after removing one, want 5", u)
	}
}

// TestBlobNameTaken: a name that is taken (a squat, or the one-in-2^128
// collision) is retried with another random name, and the file that was
// there is left alone. Names come from crypto/rand, so nobody can predict
// them; the test makes them predictable to squat one.
func TestBlobNameTaken(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	var calls int
	randRead = func(b []byte) (int, error) {
		calls++
		for i := range b {
			b[i] = byte(calls / 3) // three tries in a row get the same name
		}
		return len(b), nil
	}
	defer func() { randRead = defaultRandRead }()
	first := z.newBlobName()
	calls = 0
	if err := os.WriteFile(z.blobPath(first), []byte("squatter"), 0o600); err != nil {
		t.Fatal(err)
	}
	name, err := z.PutBlob([]byte("payload"))
	if err != nil {
		t.Fatalf("PutBlob with its first two names taken: %v", err)
	}
	if name == first {
		t.Fatal("PutBlob used the taken name")
	}
	if b, _ := os.ReadFile(z.blobPath(first)); string(b) != "squatter" {
		t.Fatalf("the file at the taken name became %q", b)
	}
	// Every name taken: an error that says so without the path.
	randRead = func(b []byte) (int, error) { clear(b); return len(b), nil }
	if err := os.WriteFile(z.blobPath(z.newBlobName()), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = z.PutBlob([]byte("payload"))
	var be *BlobError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "random names in a row were taken") || strings.Contains(err.Error(), z.Dir()) || be.Path == "" {
		t.Fatalf("PutBlob with every name taken: %v", err)
	}
}

var defaultRandRead = randRead

// TestBlobNamesOfOtherZones: zones whose names extend another's (the zone
// file of "x.zone.blob-1", the blobs of "x.blob-<32 hex>") share its
// directory without its sweep, remove or read touching their files.
func TestBlobNamesOfOtherZones(t *testing.T) {
	dir := t.TempDir()
	hexName := "x.blob-0123456789abcdef0123456789abcdef"
	names := []string{"x", "x.zone.blob-1", hexName, "x.blob-usage", "x.blob"}
	zones := map[string]*Zone{}
	blobs := map[string]string{}
	for _, n := range names {
		z := mustOpen(t, Options{Name: n, Dir: dir, Size: MinSize})
		b, err := z.PutBlob([]byte(n))
		if err != nil {
			t.Fatal(err)
		}
		zones[n], blobs[n] = z, b
	}
	x := zones["x"]
	for _, tt := range []struct {
		name string
		want bool
	}{
		{blobs["x"], true},
		{"x.blob-0123456789abcdef0123456789abcdef", true},
		{"x.blob-0123456789ABCDEF0123456789abcdef", false},
		{"x.blob-0123456789abcdef0123456789abcde", false},
		{"x.blob-0123456789abcdef0123456789abcdef0", false},
		{"x.blob-usage", false},
		{"x.zone", false},
		{"x.zone.blob-1.zone", false},
		{blobs["x.zone.blob-1"], false},
		{blobs[hexName], false},
		{blobs["x.blob-usage"], false},
		{blobs["x.blob"], false},
		{"../x.blob-0123456789abcdef0123456789abcdef", false},
	} {
		if got := x.isBlobName(tt.name); got != tt.want {
			t.Errorf("zone x: isBlobName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	// Everything old: x's sweep removes its own blob and nothing else.
	old := time.Now().Add(-time.Hour)
	ents, _ := os.ReadDir(filepath.Dir(x.Path()))
	for _, e := range ents {
		os.Chtimes(filepath.Join(filepath.Dir(x.Path()), e.Name()), old, old)
	}
	if n := x.SweepBlobs(time.Minute, time.Now()); n != 1 {
		t.Fatalf("zone x swept %d files, want its one blob", n)
	}
	for _, n := range names[1:] {
		x.RemoveBlob(blobs[n])
		if _, err := x.ReadBlob(blobs[n], 100); err == nil {
			t.Errorf("zone x read the blob of zone %q", n)
		}
		if b, err := zones[n].ReadBlob(blobs[n], 100); err != nil || string(b) != n {
			t.Errorf("zone %q lost its blob to zone x: %q %v", n, b, err)
		}
		if _, err := os.Stat(zones[n].Path()); err != nil {
			t.Errorf("zone %q lost its zone file: %v", n, err)
		}
	}
}

// TestBlobQuota: the quota counts every blob of the zone, over every
// handle (here two mappings, as two processes would have), and a refusal
// is ErrBlobQuota, with a message that says what to do and no path.
func TestBlobQuota(t *testing.T) {
	o := testOptions(t, MinSize)
	o.BlobQuota = 1000
	a, b := mustOpen(t, o), mustOpen(t, o)
	type step struct {
		z      *Zone
		size   int
		refuse bool
	}
	var kept []string
	for i, s := range []step{
		{a, 400, false},
		{b, 400, false},
		{b, 300, true}, // 1100 > 1000, counted across both handles
		{a, 200, false},
		{a, 1, true},
		{b, 1001, true}, // larger than the whole quota
	} {
		name, err := s.z.PutBlob(make([]byte, s.size))
		if s.refuse {
			if !errors.Is(err, ErrBlobQuota) || strings.Contains(err.Error(), o.Dir) || !strings.Contains(err.Error(), "raise blob_quota") {
				t.Fatalf("step %d: %d bytes over the quota: %v", i, s.size, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %d bytes within the quota: %v", i, s.size, err)
		}
		kept = append(kept, name)
	}
	if u := b.BlobUsage(); u != 1000 {
		t.Fatalf("usage %d, want 1000", u)
	}
	if n := countFiles(t, a); n != len(kept) {
		t.Fatalf("%d blob files after refusals, want %d: refused blobs must not stay", n, len(kept))
	}
	// Removing one frees its bytes for the other handle.
	a.RemoveBlob(kept[0])
	if _, err := b.PutBlob(make([]byte, 400)); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
	// A file removed by hand leaves the count high; the recount before a
	// refusal finds the room.
	os.Remove(a.blobPath(kept[1]))
	if _, err := a.PutBlob(make([]byte, 400)); err != nil {
		t.Fatalf("after a blob was removed by hand: %v", err)
	}
	// The sweep frees what expired and recounts.
	if n := a.SweepBlobs(-time.Second, time.Now()); n != 3 {
		t.Fatalf("swept %d blobs, want 3", n)
	}
	if u := a.BlobUsage(); u != 0 {
		t.Fatalf("usage %d after the sweep", u)
	}
	a.SetBlobQuota(0)
	if a.BlobQuota() != DefaultBlobQuota {
		t.Fatalf("quota 0 gives %d, want the default", a.BlobQuota())
	}
}

func countFiles(t *testing.T, z *Zone) int {
	t.Helper()
	n := 0
	if err := z.eachBlob(func(string, os.FileInfo) { n++ }); err != nil {
		t.Fatal(err)
	}
	return n
}

// pattern is a reader of n bytes of a known pattern, generated as read.
type pattern struct {
	n, off int64
	reads  int
}

func (p *pattern) Read(b []byte) (int, error) {
	p.reads++
	if p.off >= p.n {
		return 0, io.EOF
	}
	k := min(int64(len(b)), p.n-p.off)
	for i := int64(0); i < k; i++ {
		b[i] = byte((p.off + i) % 251)
	}
	p.off += k
	return int(k), nil
}

func patternBytes(n int64) []byte {
	b, _ := io.ReadAll(&pattern{n: n})
	return b
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

func TestPutBlobFrom(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name     string
		r        func() io.Reader
		size     int64
		quota    int64
		wantSize int64
		wantErr  []error
		noRead   bool // the reader must not be read at all
	}{
		{name: "exact size", r: func() io.Reader { return &pattern{n: 3 << 20} }, size: 3 << 20, wantSize: 3 << 20},
		{name: "unknown size, several chunks", r: func() io.Reader { return &pattern{n: 5<<20 + 123} }, size: -1, wantSize: 5<<20 + 123},
		{name: "unknown size, empty", r: func() io.Reader { return &pattern{} }, size: -1, wantSize: 0},
		{name: "shorter than announced", r: func() io.Reader { return &pattern{n: 1000} }, size: 2000, wantErr: []error{ErrRead, io.ErrUnexpectedEOF}},
		{name: "longer than announced", r: func() io.Reader { return &pattern{n: 2001} }, size: 2000, wantErr: []error{ErrRead}},
		{name: "reader fails", r: func() io.Reader { return io.MultiReader(&pattern{n: 100}, failingReader{errBoom}) }, size: -1, wantErr: []error{ErrRead, errBoom}},
		{name: "over the quota, known size", r: func() io.Reader { return &pattern{n: 2 << 20} }, size: 2 << 20, quota: 1 << 20, wantErr: []error{ErrBlobQuota}, noRead: true},
		{name: "over the quota, unknown size", r: func() io.Reader { return &pattern{n: 3 << 20} }, size: -1, quota: 2 << 20, wantErr: []error{ErrBlobQuota}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, MinSize)
			o.BlobQuota = tt.quota
			z := mustOpen(t, o)
			r := tt.r()
			name, n, err := z.PutBlobFrom(r, tt.size)
			if tt.wantErr != nil {
				for _, w := range tt.wantErr {
					if !errors.Is(err, w) {
						t.Fatalf("error %v is not %v", err, w)
					}
				}
				if strings.Contains(err.Error(), o.Dir) {
					t.Fatalf("error %q names a path", err)
				}
				if p, ok := r.(*pattern); ok && tt.noRead && p.reads != 0 {
					t.Fatalf("the reader was read %d times before the quota refused it", p.reads)
				}
				if c := countFiles(t, z); c != 0 || z.BlobUsage() != 0 {
					t.Fatalf("after the error: %d blob files, usage %d; want none", c, z.BlobUsage())
				}
				return
			}
			if err != nil || n != tt.wantSize {
				t.Fatalf("PutBlobFrom = %d, %v; want %d bytes", n, err, tt.wantSize)
			}
			got, err := z.ReadBlob(name, 1<<30)
			if err != nil || !bytes.Equal(got, patternBytes(tt.wantSize)) {
				t.Fatalf("blob holds %d bytes (%v), not the %d bytes read", len(got), err, tt.wantSize)
			}
			if u := z.BlobUsage(); u != tt.wantSize {
				t.Fatalf("usage %d, want the blob's %d bytes (reserved chunks trimmed)", u, tt.wantSize)
			}
		})
	}
}

// TestPutBlobFromBoundedMemory: a 5 MiB payload streamed from a reader is
// never held whole: the process allocates far less than the payload.
func TestPutBlobFromBoundedMemory(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	for _, size := range []int64{5 << 20, -1} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, n, err := z.PutBlobFrom(&pattern{n: 5 << 20}, size)
		runtime.ReadMemStats(&after)
		if err != nil || n != 5<<20 {
			t.Fatalf("size %d: %d bytes, %v", size, n, err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
			t.Fatalf("size %d: streaming 5 MiB allocated %d bytes", size, got)
		}
	}
}

// TestBlobErrorsHideThePath: errors say what failed without the path
// (they may reach an HTTP client); the path is there for logs.
func TestBlobErrorsHideThePath(t *testing.T) {
	o := testOptions(t, MinSize)
	z := mustOpen(t, o)
	name, err := z.PutBlob([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(z.blobPath(name))
	_, err = z.ReadBlob(name, 10)
	var be *BlobError
	if !errors.As(err, &be) || !errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), o.Dir) || be.Path != z.blobPath(name) {
		t.Fatalf("reading a removed blob: %v (path %v)", err, be)
	}
	// The directory gone (as root, permissions would not stop it).
	if err := os.RemoveAll(filepath.Dir(z.Path())); err != nil {
		t.Fatal(err)
	}
	_, err = z.PutBlob([]byte("x"))
	if !errors.As(err, &be) || !errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), o.Dir) || !strings.HasPrefix(be.Path, filepath.Dir(z.Path())) {
		t.Fatalf("creating a blob in a removed directory: %v", err)
	}
}

// hooked calls fn once, when at bytes have been read from r.
type hooked struct {
	r    io.Reader
	at   int64
	read int64
	fn   func()
}

func (h *hooked) Read(b []byte) (int, error) {
	if h.fn != nil && h.read >= h.at {
		h.fn()
		h.fn = nil
	}
	n, err := h.r.Read(b)
	h.read += int64(n)
	return n, err
}

// TestBlobSweptWhileWritten: a blob whose payload comes so slowly that the
// sweep removes it half way fails, rather than naming a file that is gone.
func TestBlobSweptWhileWritten(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	for _, size := range []int64{2 << 20, -1} {
		r := &hooked{r: &pattern{n: 2 << 20}, at: 1 << 20, fn: func() {
			if n := z.SweepBlobs(-time.Second, time.Now()); n != 1 {
				t.Errorf("swept %d blobs", n)
			}
		}}
		_, _, err := z.PutBlobFrom(r, size)
		var be *BlobError
		if !errors.As(err, &be) || !errors.Is(err, errRemovedEarly) {
			t.Fatalf("size %d: a blob swept while written: %v", size, err)
		}
		if c := countFiles(t, z); c != 0 || z.BlobUsage() != 0 {
			t.Fatalf("size %d: %d blob files, usage %d after the failure", size, c, z.BlobUsage())
		}
	}
}

// TestBlobQuotaConcurrent: writers racing over two mappings (two
// processes' worth of OFD locks) never take the blob files over the quota,
// and the count matches the files.
func TestBlobQuotaConcurrent(t *testing.T) {
	o := testOptions(t, MinSize)
	o.BlobQuota = 1 << 20
	zs := []*Zone{mustOpen(t, o), mustOpen(t, o)}
	const size = 100 << 10
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			z := zs[i%2]
			announced := int64(size)
			if i%4 >= 2 {
				announced = -1 // half of them stream an unknown length
			}
			for range 5 {
				_, _, err := z.PutBlobFrom(&pattern{n: size}, announced)
				switch {
				case err == nil:
					ok.Add(1)
				case !errors.Is(err, ErrBlobQuota):
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var sum int64
	if err := zs[0].eachBlob(func(_ string, fi os.FileInfo) { sum += fi.Size() }); err != nil {
		t.Fatal(err)
	}
	if sum > o.BlobQuota || sum != ok.Load()*size || zs[1].BlobUsage() != sum {
		t.Fatalf("%d blobs accepted, files hold %d bytes, count %d; quota %d", ok.Load(), sum, zs[1].BlobUsage(), o.BlobQuota)
	}
	// How many fit at once depends on timing (a stream of unknown length
	// reserves up to 1 MiB while it runs): what must hold is that the
	// count comes back to 0 and the whole quota is usable again.
	var names []string
	if err := zs[0].eachBlob(func(name string, _ os.FileInfo) { names = append(names, name) }); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		zs[0].RemoveBlob(n)
	}
	if u := zs[1].BlobUsage(); u != 0 {
		t.Fatalf("count %d with every blob removed", u)
	}
	fit := 0
	for ; fit < 20; fit++ {
		if _, _, err := zs[fit%2].PutBlobFrom(&pattern{n: size}, size); errors.Is(err, ErrBlobQuota) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if want := int(o.BlobQuota / size); fit != want {
		t.Fatalf("%d blobs of %d bytes fit a quota of %d afterwards, want %d", fit, size, o.BlobQuota, want)
	}
}

// TestBlobCountConcurrent: blobs created and removed at once over two
// mappings leave a count of zero: no update of the count is lost.
func TestBlobCountConcurrent(t *testing.T) {
	o := testOptions(t, MinSize)
	zs := []*Zone{mustOpen(t, o), mustOpen(t, o)}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			z := zs[i%2]
			for range 200 {
				name, err := z.PutBlob(make([]byte, 4096))
				if err != nil {
					t.Error(err)
					return
				}
				z.RemoveBlob(name)
			}
		}()
	}
	wg.Wait()
	if u := zs[0].BlobUsage(); u != 0 || countFiles(t, zs[0]) != 0 {
		t.Fatalf("after every blob was removed: count %d, %d files", u, countFiles(t, zs[0]))
	}
}

// TestBlobReservedAsWritten: a payload of announced size takes the quota
// as its bytes come, not all at once, so that a writer that stalls holds
// next to nothing of it and others' payloads still fit; a size the quota
// cannot hold now is still refused before anything is read.
func TestBlobReservedAsWritten(t *testing.T) {
	o := testOptions(t, MinSize)
	o.BlobQuota = 4 << 20
	z := mustOpen(t, o)
	const size = 3 << 20
	pr, pw := io.Pipe()
	reading := make(chan struct{})
	r := &hooked{r: pr, fn: func() { close(reading) }}
	done := make(chan error, 1)
	go func() {
		_, n, err := z.PutBlobFrom(r, size)
		if err == nil && n != size {
			err = errors.New("short")
		}
		done <- err
	}()
	<-reading
	if u := z.BlobUsage(); u != 0 {
		t.Fatalf("nothing written yet, and %d bytes of the quota held", u)
	}
	if _, err := pw.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for z.BlobUsage() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if u := z.BlobUsage(); u != blobFirstStep {
		t.Fatalf("one byte written: %d bytes of the quota held, want %d", u, blobFirstStep)
	}
	// Just past the first step, it holds at most twice what it wrote.
	if _, err := pw.Write(make([]byte, blobFirstStep)); err != nil {
		t.Fatal(err)
	}
	const written = blobFirstStep + 1
	for z.BlobUsage() == blobFirstStep && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if u := z.BlobUsage(); u <= blobFirstStep || u > 2*written {
		t.Fatalf("%d bytes written: %d bytes of the quota held, want more than %d, at most %d", written, u, blobFirstStep, 2*written)
	}
	// Another writer's payload fits beside the stalled one.
	if _, _, err := z.PutBlobFrom(&pattern{n: 3 << 20}, 3<<20); err != nil {
		t.Fatalf("a payload beside a stalled one: %v", err)
	}
	// Now the rest of the stalled payload passes the quota.
	go func() {
		_, err := pw.Write(make([]byte, size-written))
		pw.CloseWithError(err)
	}()
	if err := <-done; !errors.Is(err, ErrBlobQuota) {
		t.Fatalf("the stalled payload once the quota is taken: %v, want ErrBlobQuota", err)
	}
	pr.Close()
	if u := z.BlobUsage(); u != 3<<20 {
		t.Fatalf("usage %d after the failure, want the other payload's %d", u, 3<<20)
	}
	// A size the quota cannot hold now is refused before a byte is read.
	untouched := &hooked{r: &pattern{n: 2 << 20}, fn: func() { t.Error("the payload was read") }}
	if _, _, err := z.PutBlobFrom(untouched, 2<<20); !errors.Is(err, ErrBlobQuota) {
		t.Fatalf("2 MiB with 1 MiB of the quota left: %v, want ErrBlobQuota", err)
	}
}
