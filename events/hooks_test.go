package events

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// changeLog is an OnChange function that counts its calls and records the
// newest sequence Range finds.
type changeLog struct {
	b     *Bus
	calls atomic.Int64
	mu    sync.Mutex
	seen  uint64 // the next sequence after the newest event seen
}

func (c *changeLog) fn() {
	c.calls.Add(1)
	// Reading the ring from the function is allowed: no lock of the bus
	// is held when it runs.
	_, next, _ := c.b.Range(0, 1<<20)
	c.mu.Lock()
	c.seen = max(c.seen, next)
	c.mu.Unlock()
}

func (c *changeLog) next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen
}

// TestOnChangeAfterEveryPost: the function runs before each kind of post
// returns, and sees what was posted.
func TestOnChangeAfterEveryPost(t *testing.T) {
	z := openZone(t, 8<<20)
	b := newBus(t, z, 1)
	start(t, b)
	c := &changeLog{b: b}
	remove := b.OnChange(c.fn)
	posts := []struct {
		name string
		post func() (uint64, error)
	}{
		{"Post", func() (uint64, error) { return b.Post("s", "e", "x") }},
		{"PostReader", func() (uint64, error) { return b.PostReader("s", "e", strings.NewReader("x"), 1) }},
		{"PostBatch", func() (uint64, error) {
			_, last, err := b.PostBatch([]BatchItem{{Source: "s", Event: "a"}, {Source: "s", Event: "b"}})
			return last, err
		}},
		{"PostRemote", func() (uint64, error) { return b.PostRemote("s", "e", []byte("x"), false, "", Remote{Node: "n1"}) }},
	}
	for _, p := range posts {
		seq, err := p.post()
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		if c.next() <= seq {
			t.Fatalf("%s returned before the function saw its event %d (saw up to %d)", p.name, seq, c.next())
		}
	}
	remove()
	n := c.calls.Load()
	if _, err := b.Post("s", "e", "after"); err != nil {
		t.Fatal(err)
	}
	if c.calls.Load() != n {
		t.Fatal("the function ran after remove")
	}
}

// TestOnChangeForOthersPosts: another process's events run the function
// from the delivery goroutine, once per batch it finds ready rather than
// once per event; and once more at Close.
func TestOnChangeForOthersPosts(t *testing.T) {
	z := openZone(t, 8<<20)
	b, other := newBus(t, z, 1), newBus(t, z, 2)
	start(t, b, other)
	if err := b.Poll(); err != nil { // past the start events
		t.Fatal(err)
	}
	c := &changeLog{b: b}
	b.OnChange(c.fn)
	items := make([]BatchItem, 1000)
	for i := range items {
		items[i] = BatchItem{Source: "s", Event: "e"}
	}
	_, last, err := other.PostBatch(items)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Poll(); err != nil { // all handled, and the function run for them
		t.Fatal(err)
	}
	if c.next() <= last {
		t.Fatalf("the function saw up to %d, want past %d", c.next(), last)
	}
	// 1,000 events at most wakeBatch at a time: 16 calls, a few more when
	// the reader catches up with the ring between two of them.
	if n := c.calls.Load(); n > 40 {
		t.Fatalf("%d calls for one batch of 1,000 events", n)
	}
	n := c.calls.Load()
	if err := b.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	if c.calls.Load() == n {
		t.Fatal("Close did not run the function")
	}
}
