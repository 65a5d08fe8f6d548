package events

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// gen is a reader of n bytes of a known pattern, made as they are read.
type gen struct {
	n, off int64
	reads  int
}

func (g *gen) Read(b []byte) (int, error) {
	g.reads++
	if g.off >= g.n {
		return 0, io.EOF
	}
	k := min(int64(len(b)), g.n-g.off)
	for i := range k {
		b[i] = byte('a' + (g.off+i)%26)
	}
	g.off += k
	return int(k), nil
}

func genBytes(n int64) []byte {
	b, _ := io.ReadAll(&gen{n: n})
	return b
}

// jsonDoc is a JSON document of about n bytes.
func jsonDoc(n int) []byte {
	return []byte(`{"k":[` + strings.Repeat(`"0123456789",`, n/13) + `1.5e3]}`)
}

// blobFiles counts the files of the zone's directory that are not the
// zone file and its blob usage file.
func blobFiles(t *testing.T, z *zone.Zone) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(z.Path()))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if strings.Contains(e.Name(), ".blob-") && !strings.HasSuffix(e.Name(), ".blob-usage") {
			n++
		}
	}
	return n
}

func TestPostReader(t *testing.T) {
	big := jsonDoc(200 << 10)
	tests := []struct {
		name     string
		r        func(inline int64) io.Reader
		size     int64
		opts     []PostOption
		mod      func(*Options)
		quota    int64
		want     []byte
		wantJSON bool
		wantErr  []error
		noRead   bool
	}{
		{name: "small, known size", r: func(int64) io.Reader { return &gen{n: 1000} }, size: 1000, want: genBytes(1000)},
		{name: "small, unknown size", r: func(int64) io.Reader { return &gen{n: 1000} }, size: -1, want: genBytes(1000)},
		{name: "empty", r: func(int64) io.Reader { return &gen{} }, size: -1, want: []byte{}},
		{name: "inline limit exactly", r: func(inline int64) io.Reader { return &gen{n: inline} }, size: -1, want: []byte("inline")},
		{name: "inline limit and one", r: func(inline int64) io.Reader { return &gen{n: inline + 1} }, size: -1, want: []byte("inline+1")},
		{name: "5 MiB, known size", r: func(int64) io.Reader { return &gen{n: 5 << 20} }, size: 5 << 20, want: genBytes(5 << 20)},
		{name: "5 MiB, unknown size", r: func(int64) io.Reader { return &gen{n: 5 << 20} }, size: -1, want: genBytes(5 << 20)},
		{name: "large JSON", r: func(int64) io.Reader { return bytes.NewReader(big) }, size: -1, opts: []PostOption{AsJSON()}, want: big, wantJSON: true},
		{name: "small JSON", r: func(int64) io.Reader { return strings.NewReader(`{"a":1}`) }, size: 7, opts: []PostOption{AsJSON()}, want: []byte(`{"a":1}`), wantJSON: true},
		{name: "large, not JSON at its end", r: func(int64) io.Reader { return bytes.NewReader(append(bytes.Clone(big), ',')) }, size: -1, opts: []PostOption{AsJSON()}, wantErr: []error{ErrInvalid}},
		{name: "large, cut JSON", r: func(int64) io.Reader { return bytes.NewReader(big[:len(big)-1]) }, size: -1, opts: []PostOption{AsJSON()}, wantErr: []error{ErrInvalid}},
		{name: "over max_payload, known size", r: func(int64) io.Reader { return &gen{n: 2 << 20} }, size: 2 << 20, mod: func(o *Options) { o.MaxPayload = 1 << 20 }, wantErr: []error{ErrTooLarge}, noRead: true},
		{name: "over max_payload, unknown size", r: func(int64) io.Reader { return &gen{n: 2 << 20} }, size: -1, mod: func(o *Options) { o.MaxPayload = 1 << 20 }, wantErr: []error{ErrTooLarge}},
		{name: "over max_payload, unknown size, small", r: func(int64) io.Reader { return &gen{n: 101} }, size: -1, mod: func(o *Options) { o.MaxPayload = 100 }, wantErr: []error{ErrTooLarge}},
		{name: "shorter than announced", r: func(int64) io.Reader { return &gen{n: 100} }, size: 200, wantErr: []error{ErrRead}},
		{name: "longer than announced", r: func(int64) io.Reader { return &gen{n: 300 << 10} }, size: 200 << 10, wantErr: []error{ErrRead}},
		{name: "over the blob quota, known size", r: func(int64) io.Reader { return &gen{n: 2 << 20} }, size: 2 << 20, quota: 1 << 20, wantErr: []error{ErrBlobQuota}, noRead: true},
		{name: "over the blob quota, unknown size", r: func(int64) io.Reader { return &gen{n: 3 << 20} }, size: -1, quota: 2 << 20, wantErr: []error{ErrBlobQuota}},
		{name: "bad source", r: func(int64) io.Reader { return &gen{n: 10} }, size: 10, opts: []PostOption{Unique("a\nb")}, wantErr: []error{ErrInvalid}, noRead: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := openZone(t, zone.MinSize)
			z.SetBlobQuota(tt.quota)
			poster := newBus(t, z, 1, func(o *Options) {
				if tt.mod != nil {
					tt.mod(o)
				}
			})
			got := make(chan Event, 1)
			poster.Register(func(e *Event) {
				ev := *e
				ev.Data = bytes.Clone(e.Data)
				got <- ev
			}, "s")
			start(t, poster)
			inline := int64(poster.inline)
			switch string(tt.want) {
			case "inline":
				tt.want = genBytes(inline)
			case "inline+1":
				tt.want = genBytes(inline + 1)
			}
			r := tt.r(inline)
			_, err := poster.PostReader("s", "e", r, tt.size, tt.opts...)
			if tt.wantErr != nil {
				for _, w := range tt.wantErr {
					if !errors.Is(err, w) {
						t.Fatalf("error %v is not %v", err, w)
					}
				}
				if strings.Contains(err.Error(), z.Dir()) {
					t.Fatalf("error %q names a path", err)
				}
				if g, ok := r.(*gen); ok && tt.noRead && g.reads != 0 {
					t.Fatalf("the reader was read %d times before the refusal", g.reads)
				}
				if n := blobFiles(t, z); n != 0 || z.BlobUsage() != 0 {
					t.Fatalf("%d blob files (usage %d) left after the error", n, z.BlobUsage())
				}
				if errors.Is(err, ErrBlobQuota) && poster.Stats().BlobQuotaExceeded != 1 {
					t.Fatalf("stats %+v: the quota refusal is not counted", poster.Stats())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			mustPoll(t, poster)
			ev := <-got
			if !bytes.Equal(ev.Data, tt.want) || ev.JSON != tt.wantJSON {
				t.Fatalf("delivered %d bytes (JSON %v), want %d (JSON %v)", len(ev.Data), ev.JSON, len(tt.want), tt.wantJSON)
			}
			if wantBlob := int64(len(tt.want)) > inline; (poster.Stats().BlobsWritten == 1) != wantBlob {
				t.Fatalf("stats %+v, blob expected: %v", poster.Stats(), wantBlob)
			}
		})
	}
}

// TestPostBlobQuota: Post (bytes in memory) meets the same quota.
func TestPostBlobQuota(t *testing.T) {
	z := openZone(t, zone.MinSize)
	z.SetBlobQuota(300 << 10)
	b := newBus(t, z, 1)
	for i, want := range []error{nil, nil, ErrBlobQuota} {
		_, err := b.Post("s", "e", make([]byte, 128<<10))
		if !errors.Is(err, want) || (err != nil && want == nil) {
			t.Fatalf("post %d: %v, want %v", i, err, want)
		}
	}
	if st := b.Stats(); st.BlobQuotaExceeded != 1 || st.BlobsWritten != 2 || st.PostErrors != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPostReaderUniqueAfterRead: a unique key is taken only once the
// payload is in; a duplicate's blob is removed.
func TestPostReaderUniqueAfterRead(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1)
	if _, err := b.PostReader("s", "e", &gen{n: 10}, 20, Unique("k")); !errors.Is(err, ErrRead) {
		t.Fatalf("short body: %v", err)
	}
	if _, err := b.PostReader("s", "e", &gen{n: 100 << 10}, -1, Unique("k")); err != nil {
		t.Fatalf("the key was spent by a failed read: %v", err)
	}
	if _, err := b.PostReader("s", "e", &gen{n: 100 << 10}, -1, Unique("k")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate: %v", err)
	}
	if n := blobFiles(t, z); n != 1 {
		t.Fatalf("%d blob files, want the first post's only", n)
	}
}

// TestPostReaderBoundedMemory: posting 5 MiB from a reader allocates a
// small fraction of it (the payload is streamed, never held).
func TestPostReaderBoundedMemory(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1) // not started: delivery would read the blob
	for _, size := range []int64{5 << 20, -1} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := b.PostReader("s", "e", &gen{n: 5 << 20}, size)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
			t.Fatalf("size %d: posting 5 MiB from a reader allocated %d bytes", size, got)
		}
	}
}

// TestExpiredBlobLoggedOnce: an event whose blob is gone is logged once per
// process, however many pollers and buses read past it; every read is
// still counted.
func TestExpiredBlobLoggedOnce(t *testing.T) {
	z := openZone(t, zone.MinSize)
	core, logs := observer.New(zap.DebugLevel)
	a := newBus(t, z, 1, func(o *Options) { o.Logger = zap.New(core) })
	b := newBus(t, z, 2, func(o *Options) { o.Logger = zap.New(core) })
	since := a.Tail()
	if _, err := a.Post("s", "e", make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	if n := z.SweepBlobs(-time.Second, time.Now()); n != 1 {
		t.Fatalf("swept %d blobs", n)
	}
	for range 5 {
		for _, bus := range []*Bus{a, b} {
			evs, _, lost := bus.Range(since, 10)
			if len(evs) != 0 || lost != 1 {
				t.Fatalf("Range over a removed blob: %d events, %d lost", len(evs), lost)
			}
		}
	}
	lines := logs.FilterMessageSnippet("blob").All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines for one removed blob, want 1: %+v", len(lines), lines)
	}
	ctx := lines[0].ContextMap()
	if path, _ := ctx["path"].(string); !strings.HasPrefix(path, filepath.Dir(z.Path())) || strings.Contains(ctx["error"].(string), filepath.Dir(z.Path())) {
		t.Fatalf("log line %+v: want the path in its own field, not in the error", ctx)
	}
	if a.Stats().BlobErrors+b.Stats().BlobErrors != 10 {
		t.Fatalf("blob errors %d + %d, want every read counted", a.Stats().BlobErrors, b.Stats().BlobErrors)
	}
}
