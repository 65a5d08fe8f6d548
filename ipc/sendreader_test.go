package ipc

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

// blobFiles lists the zone's blob files.
func blobFiles(t *testing.T, z *zone.Zone) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(z.Path()))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), ".blob-") && !strings.HasSuffix(e.Name(), ".blob-usage") {
			out = append(out, filepath.Join(filepath.Dir(z.Path()), e.Name()))
		}
	}
	return out
}

func TestSendReader(t *testing.T) {
	me := os.Getpid()
	tests := []struct {
		name      string
		pid       int // -2: broadcast
		alert     string
		n         int64 // bytes the reader holds
		size      int64
		quota     int64
		wantErr   []error
		noWorker  bool
		noRead    bool
		wantBytes int64
	}{
		{name: "small", pid: me, alert: "a", n: 100, size: 100, wantBytes: 100},
		{name: "small, unknown size", pid: me, alert: "a", n: 100, size: -1, wantBytes: 100},
		{name: "5 MiB", pid: me, alert: "a", n: 5 << 20, size: 5 << 20, wantBytes: 5 << 20},
		{name: "5 MiB, unknown size", pid: me, alert: "a", n: 5 << 20, size: -1, wantBytes: 5 << 20},
		{name: "5 MiB broadcast", pid: -2, alert: "a", n: 5 << 20, size: -1, wantBytes: 5 << 20},
		{name: "no such worker", pid: 999999999, alert: "a", n: 5 << 20, size: 5 << 20, noWorker: true, noRead: true},
		{name: "empty name", pid: me, alert: "", n: 10, size: 10, wantErr: []error{ErrInvalid}, noRead: true},
		{name: "over the data limit", pid: me, alert: "a", n: 10, size: MaxDataLen + 1, wantErr: []error{ErrTooLarge}, noRead: true},
		{name: "shorter than announced", pid: me, alert: "a", n: 1 << 20, size: 2 << 20, wantErr: []error{ErrRead}},
		{name: "over the blob quota", pid: me, alert: "a", n: 2 << 20, size: 2 << 20, quota: 1 << 20, wantErr: []error{ErrBlobQuota}, noRead: true},
		{name: "over the blob quota, unknown size", pid: -2, alert: "a", n: 3 << 20, size: -1, quota: 2 << 20, wantErr: []error{ErrBlobQuota}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := openZone(t, zone.MinSize)
			z.SetBlobQuota(tt.quota)
			c, _ := endpoint(t, z, 1)
			got := make(chan []byte, 1)
			c.Receive("a", func(a *Alert) { got <- bytes.Clone(a.Data) })
			c.Start()
			r := &gen{n: tt.n}
			var err error
			if tt.pid == -2 {
				err = c.BroadcastReader(tt.alert, r, tt.size)
			} else {
				err = c.SendReader(tt.pid, tt.alert, r, tt.size)
			}
			if tt.wantErr != nil || tt.noWorker {
				var nw NoWorkerError
				if tt.noWorker && !errors.As(err, &nw) {
					t.Fatalf("error %v is not a NoWorkerError", err)
				}
				for _, w := range tt.wantErr {
					if !errors.Is(err, w) {
						t.Fatalf("error %v is not %v", err, w)
					}
				}
				if strings.Contains(err.Error(), z.Dir()) {
					t.Fatalf("error %q names a path", err)
				}
				if tt.noRead && r.reads != 0 {
					t.Fatalf("the reader was read %d times before the refusal", r.reads)
				}
				if files := blobFiles(t, z); len(files) != 0 || z.BlobUsage() != 0 {
					t.Fatalf("blob files %v (usage %d) left after the error", files, z.BlobUsage())
				}
				if errors.Is(err, ErrBlobQuota) && c.Stats().BlobQuotaExceeded != 1 {
					t.Fatalf("stats %+v: the quota refusal is not counted", c.Stats())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			select {
			case d := <-got:
				if !bytes.Equal(d, genBytes(tt.wantBytes)) {
					t.Fatalf("received %d bytes, want %d", len(d), tt.wantBytes)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("alert not received")
			}
			if st := c.Stats(); st.BytesSent != uint64(tt.wantBytes) {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestSendReaderBoundedMemory: sending 5 MiB from a reader allocates a
// small fraction of it.
func TestSendReaderBoundedMemory(t *testing.T) {
	z := openZone(t, zone.MinSize)
	c, _ := endpoint(t, z, 1) // not started: delivery would read the blob
	for _, size := range []int64{5 << 20, -1} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := c.SendReader(os.Getpid(), "big", &gen{n: 5 << 20}, size)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
			t.Fatalf("size %d: sending 5 MiB from a reader allocated %d bytes", size, got)
		}
	}
}

// TestUnhandledAlertBlobNotOpened: a receiver with no handler for an
// alert's name never opens its blob. The blob is removed before the
// receiver gets to the alert: opening it would fail and count the alert
// lost; not opening it counts it unhandled.
func TestUnhandledAlertBlobNotOpened(t *testing.T) {
	z := openZone(t, zone.MinSize)
	c, _ := endpoint(t, z, 1)
	gate, done := make(chan struct{}), make(chan struct{})
	c.Receive("gate", func(*Alert) { <-gate })
	c.Receive("done", func(*Alert) { close(done) })
	c.Start()
	me := os.Getpid()
	if err := c.Send(me, "gate", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(me, "nobody-handles-this", make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	files := blobFiles(t, z)
	if len(files) != 1 {
		t.Fatalf("blob files %v, want one", files)
	}
	os.Remove(files[0])
	close(gate)
	if err := c.Send(me, "done", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the last alert was not handled")
	}
	if st := c.Stats(); st.Lost != 0 || st.BlobErrors != 0 || st.Unhandled != 1 || st.Received != 3 {
		t.Fatalf("stats %+v: want the unhandled alert counted, its blob never opened", st)
	}
}
