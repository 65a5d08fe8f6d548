package zone

import (
	"testing"
	"time"
)

// TestSpinAdapts checks that a reader stops spinning while its records come
// further apart than its spin window, and spins again once they come
// closer: records 150 ms apart under a 50 ms window leave no spin; records
// 2 ms apart then give back a window that catches them without sleeping.
func TestSpinAdapts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: about a second of paced writes")
	}
	z := mustOpen(t, testOptions(t, MinSize))
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	const spin = 50 * time.Millisecond
	rd.SetSpin(spin)
	// paced writes n records gap apart while the reader reads them, and
	// returns how many sleeps those reads took (one may take two, when it
	// wakes to a record taken but not committed yet).
	paced := func(n int, gap time.Duration) uint64 {
		done := make(chan error, 1)
		go func() {
			for i := 0; i < n; i++ {
				time.Sleep(gap)
				if _, err := r.Write(Meta{}, []byte("x")); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		before := rd.wakes.Load()
		for i := 0; i < n; i++ {
			if _, st := rd.Read(10 * time.Second); st != Got {
				t.Fatalf("record %d of %d, %v apart: %v", i, n, gap, st)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return rd.wakes.Load() - before
	}
	if slept := paced(5, 150*time.Millisecond); slept < 5 {
		t.Errorf("records 150ms apart under a 50ms window: %d sleeps in 5 reads, want one or more each", slept)
	}
	if rd.spinNow != 0 {
		t.Fatalf("after 5 records 150ms apart the window is %v, want 0 (each sleep was longer than the %v window)", rd.spinNow, spin)
	}
	paced(10, 2*time.Millisecond)
	if rd.spinNow == 0 {
		t.Fatalf("after 10 records 2ms apart the window is still 0, want it grown")
	}
	if slept := paced(20, 2*time.Millisecond); slept > 5 {
		t.Errorf("records 2ms apart with the window grown to %v: %d sleeps in 20 reads, want at most 5", rd.spinNow, slept)
	}
}
