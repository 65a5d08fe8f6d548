package events

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
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

// TestFollower: a follower on a read-only mapping sees the events posted
// after it started, in order, blob payloads included, runs no handler and
// takes no run-once event (a worker still handles it).
func TestFollower(t *testing.T) {
	z := openZone(t, 4<<20)
	ro, err := zone.Open(zone.Options{Name: "ev", Dir: z.Dir(), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	f := NewFollower(ro, ro.Ring().Tail())
	poster := newBus(t, z, 1)
	took := make(chan string, 1)
	poster.Register(func(e *Event) { took <- e.Unique }, "jobs")
	start(t, poster) // posts ipcbus/started
	big := bytes.Repeat([]byte("b"), 200<<10)
	if _, err := poster.Post("t", "one", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := poster.Post("t", "big", big); err != nil {
		t.Fatal(err)
	}
	if _, err := poster.Post("jobs", "run", nil, Unique("k")); err != nil {
		t.Fatal(err)
	}
	want := []string{Source + "/" + EventStarted, "t/one", "t/big", "jobs/run"}
	for _, w := range want {
		ev, loss, ok := f.Next(30 * time.Second)
		if !ok {
			t.Fatalf("want %s, got loss %+v or nothing", w, loss)
		}
		if got := ev.Source + "/" + ev.Name; got != w {
			t.Fatalf("got %s, want %s", got, w)
		}
		if ev.Name == "big" && !bytes.Equal(ev.Data, big) {
			t.Fatalf("blob payload: %d bytes", len(ev.Data))
		}
	}
	select {
	case k := <-took:
		if k != "k" {
			t.Fatalf("the worker took %q", k)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the run-once event was not handled by the worker (the follower took it?)")
	}
	if _, _, ok := f.Next(10 * time.Millisecond); ok {
		t.Fatal("an event out of nothing")
	}
}
