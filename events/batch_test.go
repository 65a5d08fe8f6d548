package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
)

// TestPostBatch: a batch is handled by every worker as consecutive events,
// in its order, large payloads included; a batch with one bad item posts
// nothing.
func TestPostBatch(t *testing.T) {
	z := openZone(t, 8<<20)
	poster, other := newBus(t, z, 1), newBus(t, z, 2)
	var mu sync.Mutex
	var got []*Event
	other.Register(func(e *Event) {
		mu.Lock()
		cp := *e
		cp.Data = bytes.Clone(e.Data)
		got = append(got, &cp)
		mu.Unlock()
	}, "b")
	start(t, poster, other)
	big := bytes.Repeat([]byte("z"), 200<<10) // a blob
	items := []BatchItem{
		{Source: "b", Event: "one", Data: "1"},
		{Source: "b", Event: "json", Data: json.RawMessage(`{"n":2}`)},
		{Source: "b", Event: "big", Data: big},
		{Source: "b", Event: "value", Data: map[string]int{"n": 4}},
	}
	first, last, err := poster.PostBatch(items)
	if err != nil {
		t.Fatal(err)
	}
	if last-first != 3 {
		t.Fatalf("sequences %d..%d for 4 events", first, last)
	}
	mustPoll(t, other)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 {
		t.Fatalf("handled %d events, want 4", len(got))
	}
	for i, e := range got {
		if e.Seq != first+uint64(i) || e.Name != items[i].Event {
			t.Fatalf("event %d: seq %d %s, want %d %s", i, e.Seq, e.Name, first+uint64(i), items[i].Event)
		}
	}
	if !bytes.Equal(got[2].Data, big) || string(got[1].Data) != `{"n":2}` || !got[1].JSON || string(got[3].Data) != `{"n":4}` {
		t.Fatalf("payloads %q %q", got[1].Data, got[3].Data)
	}
	// One bad item: nothing posted, the error names it.
	before := poster.ring.Tail()
	_, _, err = poster.PostBatch([]BatchItem{{Source: "b", Event: "ok", Data: big}, {Source: "b", Event: "", Data: "x"}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "event 1") {
		t.Fatalf("a batch with an empty event name: %v", err)
	}
	if poster.ring.Tail() != before {
		t.Fatal("a refused batch wrote records")
	}
	if _, _, err := poster.PostBatch(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an empty batch: %v", err)
	}
}
