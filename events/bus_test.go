package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ipcbus/caddy-ipcbus/internal/goid"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

func openZone(t testing.TB, size int64) *zone.Zone {
	t.Helper()
	z, err := zone.Open(zone.Options{Name: "ev", Dir: t.TempDir(), Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return z
}

func newBus(t testing.TB, z *zone.Zone, pid int, mod ...func(*Options)) *Bus {
	t.Helper()
	o := Options{Zone: z, PID: pid, Generation: 1}
	for _, m := range mod {
		m(&o)
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(time.Second) })
	return b
}

// log collects handled events of one bus as strings.
type log struct {
	mu sync.Mutex
	s  []string
}

func (l *log) add(s string) {
	l.mu.Lock()
	l.s = append(l.s, s)
	l.mu.Unlock()
}

func (l *log) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.s...)
}

func record(l *log, source string) Handler {
	return func(e *Event) {
		if source == "" || e.Source == source {
			l.add(fmt.Sprintf("%s/%s:%s", e.Source, e.Name, e.Data))
		}
	}
}

func mustPoll(t testing.TB, bs ...*Bus) {
	t.Helper()
	for _, b := range bs {
		if err := b.Poll(); err != nil {
			t.Fatal(err)
		}
	}
}

func start(t testing.TB, bs ...*Bus) {
	t.Helper()
	for _, b := range bs {
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPostOrdering: every worker handles every event, the poster included,
// in one total order, even with several posters at once.
func TestPostOrdering(t *testing.T) {
	z := openZone(t, 4<<20)
	var buses []*Bus
	logs := make([]*log, 3)
	for i := range logs {
		b := newBus(t, z, 100+i)
		logs[i] = &log{}
		b.Register(record(logs[i], "t"), "")
		buses = append(buses, b)
	}
	start(t, buses...)
	var wg sync.WaitGroup
	for i, b := range buses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 200; n++ {
				if _, err := b.Post("t", fmt.Sprintf("e%d", i), fmt.Sprint(n)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	mustPoll(t, buses...)
	first := logs[0].get()
	if len(first) != 600 {
		t.Fatalf("worker 0 handled %d events, want 600", len(first))
	}
	for i := 1; i < 3; i++ {
		if fmt.Sprint(logs[i].get()) != fmt.Sprint(first) {
			t.Fatalf("worker %d handled another sequence than worker 0", i)
		}
	}
	// Each poster's events in its order.
	next := map[string]int{}
	for _, s := range first {
		var ev string
		var n int
		fmt.Sscanf(strings.ReplaceAll(s, ":", " "), "t/%s %d", &ev, &n)
		if n != next[ev] {
			t.Fatalf("%s: %d after %d", ev, n, next[ev]-1)
		}
		next[ev]++
	}
}

// TestPostAndPostLocal: Post reaches every worker with the sender; PostLocal
// only this worker, by reference, without a sender, and asynchronously.
func TestPostAndPostLocal(t *testing.T) {
	z := openZone(t, zone.MinSize)
	a, b := newBus(t, z, 1), newBus(t, z, 2)
	var got [2][]Event
	var mu sync.Mutex
	caller := goid.Get()
	inline := false
	for i, bus := range []*Bus{a, b} {
		bus.Register(func(e *Event) {
			mu.Lock()
			defer mu.Unlock()
			if goid.Get() == caller {
				inline = true
			}
			c := *e
			c.Data = bytes.Clone(e.Data)
			got[i] = append(got[i], c)
		}, "s")
	}
	start(t, a, b)
	type point struct{ X, Y int }
	p := &point{1, 2}
	if _, err := a.Post("s", "shared", p); err != nil {
		t.Fatal(err)
	}
	if err := a.PostLocal("s", "local", p); err != nil {
		t.Fatal(err)
	}
	mustPoll(t, a, b)
	if inline {
		t.Fatal("a handler ran inside Post or PostLocal")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got[1]) != 1 || got[1][0].Name != "shared" || string(got[1][0].Data) != `{"X":1,"Y":2}` || !got[1][0].JSON || got[1][0].PID != 1 || got[1][0].Generation != 1 || got[1][0].Seq == 0 || got[1][0].Time.IsZero() {
		t.Fatalf("other worker got %+v", got[1])
	}
	if len(got[0]) != 2 {
		t.Fatalf("poster got %+v", got[0])
	}
	for _, e := range got[0] {
		if e.Name == "local" && (!e.Local || e.Value != any(p) || e.PID != 0) {
			t.Fatalf("local event %+v", e)
		}
	}
}

func TestPollRecursive(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1)
	errc := make(chan error, 1)
	b.Register(func(e *Event) { errc <- b.Poll() }, "s")
	start(t, b)
	b.Post("s", "e", nil)
	if err := <-errc; !errors.Is(err, ErrRecursive) {
		t.Fatalf("Poll in a handler: %v", err)
	}
}

// TestPollWhileHandlerRuns: Poll from another goroutine while a handler
// runs waits for it (only the handler's own Poll is recursive).
func TestPollWhileHandlerRuns(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1)
	running, release := make(chan struct{}), make(chan struct{})
	b.Register(func(e *Event) { close(running); <-release }, "s", "slow")
	start(t, b)
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	if _, err := b.Post("s", "slow", nil); err != nil {
		t.Fatal(err)
	}
	<-running
	errc := make(chan error, 1)
	go func() { errc <- b.Poll() }()
	select {
	case err := <-errc:
		t.Fatalf("Poll returned while the handler ran: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	released = true
	close(release)
	if err := <-errc; err != nil {
		t.Fatalf("Poll after the handler returned: %v", err)
	}
}

// TestUnique: decided at post time; handled by exactly one worker; posted
// again after the timeout.
func TestUnique(t *testing.T) {
	z := openZone(t, zone.MinSize)
	var handled sync.Map
	var buses []*Bus
	for i := 0; i < 3; i++ {
		b := newBus(t, z, i+1, func(o *Options) { o.UniqueTimeout = 200 * time.Millisecond })
		b.Register(func(e *Event) {
			v, _ := handled.LoadOrStore(string(e.Data), new(int))
			*v.(*int)++
		}, "u")
		buses = append(buses, b)
	}
	start(t, buses...)
	if _, err := buses[0].Post("u", "job", "first", Unique("k")); err != nil {
		t.Fatal(err)
	}
	if _, err := buses[1].Post("u", "job", "second", Unique("k")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second post of a unique key: %v", err)
	}
	if buses[1].Stats().Duplicates != 1 {
		t.Fatal("duplicate not counted")
	}
	mustPoll(t, buses...)
	time.Sleep(250 * time.Millisecond)
	if _, err := buses[2].Post("u", "job", "third", Unique("k")); err != nil {
		t.Fatalf("after the timeout: %v", err)
	}
	mustPoll(t, buses...)
	for _, k := range []string{"first", "third"} {
		v, ok := handled.Load(k)
		if !ok || *v.(*int) != 1 {
			t.Fatalf("%s handled %v times, want once", k, v)
		}
	}
	if _, ok := handled.Load("second"); ok {
		t.Fatal("the duplicate was handled")
	}
}

// TestUniqueTableFull: unique posts refused for a full run-once key table
// (Post and PostReader) are counted in unique_table_full, not as other
// post errors or duplicates.
func TestUniqueTableFull(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1, func(o *Options) { o.UniqueTimeout = time.Minute })
	start(t, b)
	var refused [2]uint64 // by Post, by PostReader
	for i := 0; i < 2*zone.DefaultUniqueKeys; i++ {
		key := Unique(fmt.Sprintf("k%d", i))
		var err error
		if i%2 == 0 {
			_, err = b.Post("u", "job", nil, key)
		} else {
			_, err = b.PostReader("u", "job", strings.NewReader("x"), 1, key)
		}
		switch {
		case err == nil:
		case errors.Is(err, zone.ErrUniqueTableFull):
			refused[i%2]++
		default:
			t.Fatalf("post %d: %v", i, err)
		}
	}
	if refused[0] == 0 || refused[1] == 0 {
		t.Fatalf("refusals for a full table: %v by Post and PostReader, want some of each", refused)
	}
	st := b.Stats()
	if st.UniqueTableFull != refused[0]+refused[1] || st.PostErrors != 0 || st.Duplicates != 0 {
		t.Fatalf("unique_table_full %d (refused %d), post_errors %d, duplicates %d", st.UniqueTableFull, refused[0]+refused[1], st.PostErrors, st.Duplicates)
	}
	var sum Stats
	sum.Add(st)
	if sum.UniqueTableFull != st.UniqueTableFull {
		t.Fatalf("Stats.Add: unique_table_full %d", sum.UniqueTableFull)
	}
}

// TestDispatchOrder: catch-all, then source, then source+event, in
// registration order; Unregister removes exactly one registration.
func TestDispatchOrder(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1)
	l := &log{}
	mk := func(name string) Handler {
		return func(e *Event) {
			if e.Source == "s" {
				l.add(name)
			}
		}
	}
	ev1 := b.Register(mk("event1"), "s", "e")
	b.Register(mk("source1"), "s")
	all1 := b.Register(mk("all1"), "")
	b.Register(mk("event2"), "s", "e", "f")
	b.Register(mk("all2"), "")
	b.Register(mk("source2"), "s")
	b.Register(mk("other"), "x", "e")
	start(t, b)
	b.Post("s", "e", nil)
	mustPoll(t, b)
	want := "all1 all2 source1 source2 event1 event2"
	if got := strings.Join(l.get(), " "); got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
	if !b.Unregister(all1) || !b.Unregister(ev1) || b.Unregister(ev1) || b.Unregister(9999) {
		t.Fatal("Unregister results")
	}
	l.mu.Lock()
	l.s = nil
	l.mu.Unlock()
	b.Post("s", "e", nil)
	mustPoll(t, b)
	if got := strings.Join(l.get(), " "); got != "all2 source1 source2 event2" {
		t.Fatalf("after unregister: %q", got)
	}
}

// TestHandlerPanic: a panicking handler is logged with its stack; the
// handlers after it and the next events still run.
func TestHandlerPanic(t *testing.T) {
	z := openZone(t, zone.MinSize)
	core, logs := observer.New(zap.ErrorLevel)
	b := newBus(t, z, 1, func(o *Options) { o.Logger = zap.New(core) })
	l := &log{}
	b.Register(func(e *Event) {
		if e.Name == "boom" {
			panic("handler failed")
		}
	}, "s")
	b.Register(record(l, "s"), "s")
	start(t, b)
	b.Post("s", "boom", "1")
	b.Post("s", "next", "2")
	mustPoll(t, b)
	if got := l.get(); len(got) != 2 {
		t.Fatalf("handled %v", got)
	}
	es := logs.FilterMessage("event handler panicked").All()
	if len(es) != 1 || !strings.Contains(fmt.Sprint(es[0].ContextMap()["stack"]), "bus_test.go") || b.Stats().HandlerPanics != 1 {
		t.Fatalf("panic log %+v", es)
	}
}

// TestLargePayload: a payload far over the ring's inline limit arrives whole.
func TestLargePayload(t *testing.T) {
	z := openZone(t, 4<<20)
	a, b := newBus(t, z, 1), newBus(t, z, 2)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB, the zone is 4
	got := make(chan []byte, 1)
	b.Register(func(e *Event) { got <- bytes.Clone(e.Data) }, "big")
	start(t, a, b)
	if _, err := a.Post("big", "e", big); err != nil {
		t.Fatal(err)
	}
	mustPoll(t, b)
	if d := <-got; !bytes.Equal(d, big) {
		t.Fatalf("got %d bytes, want %d", len(d), len(big))
	}
	if a.Stats().BlobsWritten != 1 || b.Stats().BlobsRead != 1 {
		t.Fatalf("blob stats %+v %+v", a.Stats(), b.Stats())
	}
}

func TestPostValidation(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1, func(o *Options) { o.MaxPayload = 1000 })
	long := strings.Repeat("x", 256)
	for _, c := range []struct {
		source, event string
		data          any
		opts          []PostOption
		want          string
		is            error
	}{
		{"", "e", nil, nil, `failed posting event "e" by ""; invalid event: source is empty`, ErrInvalid},
		{"s", "", nil, nil, "event is empty", ErrInvalid},
		{long, "e", nil, nil, "source is 256 bytes, the limit is 255", ErrInvalid},
		{"s", "e", make(chan int), nil, "data cannot be encoded as JSON", ErrInvalid},
		{"s", "e", json.RawMessage("{bad"), nil, "data is not valid JSON", ErrInvalid},
		{"s", "e", make([]byte, 1001), nil, "event payload too large: 1001 bytes, the limit is 1000", ErrTooLarge},
		{"s", "e", nil, []PostOption{Unique(long)}, "unique key is 256 bytes", ErrInvalid},
		{"s", "e\nid: 9", nil, nil, "holds a line break or NUL", ErrInvalid},
		{"s\r", "e", nil, nil, "holds a line break or NUL", ErrInvalid},
	} {
		_, err := b.Post(c.source, c.event, c.data, c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, c.is) {
			t.Errorf("Post(%q, %q): %v, want %q", c.source, c.event, err, c.want)
		}
	}
	if err := b.PostLocal("", "e", nil); err == nil {
		t.Error("PostLocal with an empty source")
	}
	if _, err := New(Options{Zone: z, MaxPayload: MaxPayloadLimit + 1}); err == nil || !strings.Contains(err.Error(), "invalid max_payload") {
		t.Errorf("New with a huge max_payload: %v", err)
	}
}

func TestEventList(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1)
	l, err := NewEventList("health", "up", "down")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Event("dwon"); err == nil || !strings.Contains(err.Error(), `unknown event "dwon" in the event list of "health"; known: down, up`) {
		t.Fatalf("typo: %v", err)
	}
	got := &log{}
	if _, err := l.Register(b, record(got, ""), "dwon"); err == nil {
		t.Fatal("Register with an unknown name")
	}
	if _, err := l.Register(b, record(got, ""), "down"); err != nil {
		t.Fatal(err)
	}
	start(t, b)
	if _, err := l.Post(b, "up!", nil); err == nil {
		t.Fatal("Post with an unknown name")
	}
	l.Post(b, "up", "u")
	l.Post(b, "down", "d")
	mustPoll(t, b)
	if fmt.Sprint(got.get()) != "[health/down:d]" {
		t.Fatalf("handled %v", got.get())
	}
	if _, err := NewEventList("s", "a", "a"); err == nil {
		t.Fatal("duplicate names accepted")
	}
}

// TestOwnEvents: started and stopping reach the other workers.
func TestOwnEvents(t *testing.T) {
	z := openZone(t, zone.MinSize)
	a := newBus(t, z, 1)
	l := &log{}
	a.Register(record(l, Source), Source)
	start(t, a)
	b := newBus(t, z, 2)
	start(t, b)
	b.Close(time.Second)
	mustPoll(t, a)
	want := `[ipcbus/started:{"pid":1,"generation":1} ipcbus/started:{"pid":2,"generation":1} ipcbus/stopping:{"pid":2,"generation":1}]`
	if fmt.Sprint(l.get()) != want {
		t.Fatalf("own events %v", l.get())
	}
	if _, err := b.Post("s", "e", nil); err != nil {
		t.Fatalf("a closed bus can still post (to others): %v", err)
	}
	if err := b.PostLocal("s", "e", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("PostLocal after Close: %v", err)
	}
}

// TestDeadPosterGap: an event whose poster reserved it and never committed
// (it died) is skipped after wait_max, counted, announced, and the next
// event is still handled.
func TestDeadPosterGap(t *testing.T) {
	z := openZone(t, zone.MinSize)
	b := newBus(t, z, 1, func(o *Options) { o.WaitMax = 50 * time.Millisecond })
	l := &log{}
	b.Register(record(l, ""), "")
	start(t, b)
	mustPoll(t, b)
	p, err := z.Ring().Reserve(zone.Meta{Kind: RecordKind}, 40)
	if err != nil {
		t.Fatal(err)
	}
	b.Post("s", "after", "x")
	mustPoll(t, b)
	got := l.get()
	want := fmt.Sprintf(`ipcbus/lost:{"from":%d,"count":1,"reason":"gap"}`, p.Seq())
	if len(got) < 2 || got[len(got)-2] != want || got[len(got)-1] != "s/after:x" {
		t.Fatalf("handled %v, want %s then s/after:x", got, want)
	}
	if b.Stats().LostGap != 1 {
		t.Fatal("gap not counted")
	}
}

// TestOverrunCounted: a worker whose handler is too slow for the ring loses
// events, and the count is exact: handled + lost = posted.
func TestOverrunCounted(t *testing.T) {
	z := openZone(t, zone.MinSize)
	slow := newBus(t, z, 1)
	gate := make(chan struct{})
	var n, lost uint64
	var once sync.Once
	slow.Register(func(e *Event) {
		if e.Source == "s" {
			once.Do(func() { <-gate })
			n++
		}
		if e.Name == EventLost {
			lost += e.Value.(Loss).Count
		}
	}, "")
	start(t, slow)
	mustPoll(t, slow) // its own "started" is handled: the next event is the poster's first
	poster := newBus(t, z, 2)
	total := int(z.Ring().Slots()) * 3
	for i := 0; i < total; i++ {
		if _, err := poster.Post("s", "e", nil); err != nil {
			t.Fatal(err)
		}
	}
	close(gate)
	mustPoll(t, slow)
	// The slow handler holds the delivery goroutine in the first event.
	if n+lost != uint64(total) || lost == 0 {
		t.Fatalf("handled %d + lost %d, want %d posted", n, lost, total)
	}
	if s := slow.Stats(); s.LostOverrun != lost {
		t.Fatalf("stats %+v", s)
	}
}
