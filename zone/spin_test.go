package zone

import (
	"testing"
	"time"
)

// TestAdaptiveSpin: a reader whose spin windows keep finding nothing stops
// spinning, tries the window again every spinProbeEvery sleeps, and spins
// again once a window (or the tight check before it) finds a record.
func TestAdaptiveSpin(t *testing.T) {
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rd.SetSpin(time.Millisecond)
	for i := range spinMissLimit {
		if rd.spinReady() {
			t.Fatal("an empty ring is ready")
		}
		if rd.misses != i+1 || rd.skips != 0 {
			t.Fatalf("after %d empty windows: misses %d, skips %d", i+1, rd.misses, rd.skips)
		}
	}
	for i := 1; i < spinProbeEvery; i++ {
		rd.spinReady()
		if rd.skips != i {
			t.Fatalf("sleep %d after the windows stopped: skips %d, want %d (no window tried)", i, rd.skips, i)
		}
	}
	rd.spinReady() // the probe: a window tried again, empty
	if rd.skips != 0 || rd.misses != spinMissLimit {
		t.Fatalf("after the probe: misses %d, skips %d", rd.misses, rd.skips)
	}

	// A record found in the probe's window makes the reader spin again.
	rd.skips = spinProbeEvery - 1
	rd.SetSpin(time.Minute) // ends as soon as the record is there
	go func() {
		time.Sleep(5 * time.Millisecond)
		if _, err := r.Write(Meta{Kind: 1}, []byte("x")); err != nil {
			t.Error(err)
		}
	}()
	if !rd.spinReady() {
		t.Fatal("the probe's window did not find the record")
	}
	if rd.misses != 0 {
		t.Fatalf("a window that found a record left misses at %d", rd.misses)
	}

	// So does one found before any window.
	rd.misses = spinMissLimit
	if !rd.spinReady() || rd.misses != 0 {
		t.Fatalf("a record ready at once: misses %d", rd.misses)
	}
}
