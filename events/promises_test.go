package events

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// TestExpiredBlobIsAGap holds the README's promise that blob files are
// removed after blob_ttl (a minute by default), so that a worker further
// behind loses such an event, counted as a gap: a loss notice, lost_gap in
// its stats, and the events after it still handled.
func TestExpiredBlobIsAGap(t *testing.T) {
	if DefaultBlobTTL != time.Minute {
		t.Fatalf("DefaultBlobTTL is %v; the README says a minute", DefaultBlobTTL)
	}
	z := openZone(t, 4<<20)
	poster, late := newBus(t, z, 1), newBus(t, z, 2) // late's cursor is at the tail now
	var mu sync.Mutex
	var losses []Loss
	var after []string
	late.Register(func(e *Event) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case e.Name == EventLost:
			losses = append(losses, e.Value.(Loss))
		case e.Source == "big" || e.Source == "small":
			after = append(after, e.Source)
		}
	}, "")
	start(t, poster)
	seq, err := poster.Post("big", "e", bytes.Repeat([]byte("x"), 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poster.Post("small", "e", "after"); err != nil {
		t.Fatal(err)
	}
	// Within the minute the sweep keeps it; a minute and a second later it
	// removes it.
	if n := z.SweepBlobs(DefaultBlobTTL, time.Now().Add(DefaultBlobTTL-10*time.Second)); n != 0 {
		t.Fatalf("swept %d blobs before their ttl", n)
	}
	if n := z.SweepBlobs(DefaultBlobTTL, time.Now().Add(DefaultBlobTTL+time.Second)); n != 1 {
		t.Fatalf("swept %d blobs, want 1", n)
	}
	start(t, late)
	mustPoll(t, late)
	mu.Lock()
	defer mu.Unlock()
	if len(losses) != 1 || losses[0].Reason != "gap" || losses[0].From != seq || losses[0].Count != 1 {
		t.Fatalf("loss notices %+v, want one gap at %d", losses, seq)
	}
	if st := late.Stats(); st.LostGap != 1 {
		t.Fatalf("lost_gap %d, want 1", st.LostGap)
	}
	if len(after) != 1 || after[0] != "small" {
		t.Fatalf("handled %v after the gap, want the small event", after)
	}
}
