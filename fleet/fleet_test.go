package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// natsServer is an embedded NATS server with JetStream on a temp dir; it
// can be shut down and started again on the same port and store.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	s    *server.Server
}

func startNATS(t *testing.T) *natsServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ns := &natsServer{t: t, dir: t.TempDir(), port: port}
	ns.start()
	t.Cleanup(ns.stop)
	return ns
}

func (ns *natsServer) start() {
	ns.t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: ns.port, JetStream: true, StoreDir: ns.dir, NoLog: true, NoSigs: true})
	if err != nil {
		ns.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		ns.t.Fatal("embedded NATS server not ready")
	}
	ns.s = s
}

func (ns *natsServer) stop() {
	if ns.s != nil {
		ns.s.Shutdown()
		ns.s.WaitForShutdown()
		ns.s = nil
	}
}

func (ns *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(ns.port) }

// host is one host of a test fleet: a zone and its workers, each a bus
// with its fleet part (as separate processes would have).
type host struct {
	node    string
	z       *zone.Zone
	workers []*worker
}

type worker struct {
	bus   *events.Bus
	fleet *Fleet
}

var pids atomic.Int32

func newHost(t *testing.T, ns *natsServer, node string, workers int, size int64, mod ...func(*Config)) *host {
	t.Helper()
	z, err := zone.Open(zone.Options{Name: "fl", Dir: t.TempDir(), Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	h := &host{node: node, z: z}
	for range workers {
		h.addWorker(t, ns, mod...)
	}
	return h
}

func (h *host) addWorker(t *testing.T, ns *natsServer, mod ...func(*Config)) *worker {
	t.Helper()
	b, err := events.New(events.Options{Zone: h.z, PID: 1000 + int(pids.Add(1)), Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: "test", URLs: []string{ns.url()}, Node: h.node, Logger: zaptest.NewLogger(t), NodeTTL: 2 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	f, err := New(cfg, h.z, b)
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	w := &worker{bus: b, fleet: f}
	h.workers = append(h.workers, w)
	t.Cleanup(func() {
		w.fleet.Close(false)
		b.Close(time.Second)
	})
	return w
}

// pair starts hosts "a" (with aWorkers workers and a zone of aSize) and
// "b" (one worker), and waits for both bridges.
func pair(t *testing.T, ns *natsServer, aWorkers int, aSize int64, mod ...func(*Config)) (a, b *host) {
	t.Helper()
	a = newHost(t, ns, "a", aWorkers, aSize, mod...)
	b = newHost(t, ns, "b", 1, 4<<20, mod...)
	a.bridge(t)
	b.bridge(t)
	return a, b
}

// bridge waits until one of the host's workers runs the bridge with its
// inbound consumer set up, and returns it.
func (h *host) bridge(t *testing.T) *worker {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, w := range h.workers {
			if w.fleet.Bridging() && h.z.Fleet().StreamEpoch.Load() != 0 {
				return w
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("host %s: no bridge after 10s", h.node)
	return nil
}

// collect follows a host's bus from now and gathers the events of source.
type collector struct {
	mu  sync.Mutex
	evs []events.Event
}

func (h *host) collect(t *testing.T, source string) *collector {
	return h.collectIf(t, func(ev *events.Event) bool { return ev.Source == source }, true)
}

// collectRemote gathers the events of source that came from node.
func (h *host) collectRemote(t *testing.T, source, node string) *collector {
	return h.collectIf(t, func(ev *events.Event) bool { return ev.Source == source && ev.Node == node }, true)
}

// collectIf gathers the events keep keeps; strict fails the test on a loss.
func (h *host) collectIf(t *testing.T, keep func(*events.Event) bool, strict bool) *collector {
	t.Helper()
	c := &collector{}
	fl := events.NewFollower(h.z, h.z.Ring().Tail())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ev, loss, ok := fl.Next(50 * time.Millisecond)
			if loss.Count > 0 && strict {
				t.Errorf("host %s: follower lost %+v", h.node, loss)
			}
			if ok && keep(&ev) {
				c.mu.Lock()
				c.evs = append(c.evs, ev)
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return c
}

func (c *collector) get() []events.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]events.Event(nil), c.evs...)
}

func (c *collector) wait(t *testing.T, n int, within time.Duration) []events.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := c.get()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkSeries asserts evs are exactly the events "from".."from+n-1" of
// node (from 0 unless given), in order.
func checkSeries(t *testing.T, evs []events.Event, node string, n int, from ...int) {
	t.Helper()
	if len(evs) != n {
		t.Fatalf("got %d events, want %d", len(evs), n)
	}
	first := 0
	if len(from) > 0 {
		first = from[0]
	}
	for i, ev := range evs {
		if want := strconv.Itoa(first + i); ev.Name != want || ev.Node != node {
			t.Fatalf("event %d is %q from node %q, want %q from %q", i, ev.Name, ev.Node, want, node)
		}
	}
}

func TestFleetCarriesEventsBothWays(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 2, 4<<20)
	b := newHost(t, ns, "b", 2, 4<<20)
	a.bridge(t)
	b.bridge(t)
	onB, onA := b.collectRemote(t, "app", "a"), a.collect(t, "app")
	var handled atomic.Int64
	b.workers[1].bus.Register(func(ev *events.Event) {
		if ev.Node == "a" && string(ev.Data) == `{"i":1}` {
			handled.Add(1)
		}
	}, "app")
	const n = 2000
	for i := range n {
		if _, err := a.workers[i%2].bus.Post("app", strconv.Itoa(i), map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.workers[0].bus.Post("app", "from-b", "hello"); err != nil {
		t.Fatal(err)
	}
	got := onB.wait(t, n, 20*time.Second)
	checkSeries(t, got, "a", n)
	if !got[1].JSON || got[1].PID == 0 || got[1].StreamSeq == 0 || got[1].Time.IsZero() {
		t.Fatalf("remote event lost its fields: %+v", got[1])
	}
	fromB := onA.wait(t, n+1, 10*time.Second)
	if len(fromB) != n+1 || fromB[n].Name != "from-b" || fromB[n].Node != "b" || string(fromB[n].Data) != "hello" {
		t.Fatalf("host a got %d events, last %+v", len(fromB), fromB[len(fromB)-1])
	}
	for _, ev := range fromB[:n] {
		if ev.Node != "" {
			t.Fatalf("host a got its own event back from the fleet: %+v", ev)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if len(onB.get()) != n || handled.Load() != 1 {
		t.Fatalf("host b: %d events after the wait (want %d), handler ran %d times (want 1)", len(onB.get()), n, handled.Load())
	}
	st := a.workers[0].fleet.Status(t.Context())
	if st.Out.Published != n || st.In.Applied != 1 || len(st.Nodes) != 2 || !st.Connected || st.Bridge.PID == 0 {
		t.Fatalf("status of a: %+v", st)
	}
}

// TestFleetSourcesStayHome: a host publishes only its fleet sources, and
// applies only the remote events of its own fleet sources.
func TestFleetSourcesStayHome(t *testing.T) {
	ns := startNATS(t)
	only := func(c *Config) { c.Sources = []string{"shared*"} }
	a, b := pair(t, ns, 1, 4<<20, only)
	c := newHost(t, ns, "c", 1, 4<<20) // every source but the reserved ones
	c.bridge(t)
	onB := b.collectIf(t, func(ev *events.Event) bool { return ev.Node != "" }, true)
	onA := a.collectIf(t, func(ev *events.Event) bool { return ev.Node != "" }, true)
	for _, src := range []string{"local", events.Source, "shared.x"} {
		if _, err := a.workers[0].bus.Post(src, "0", "x"); err != nil {
			t.Fatal(err)
		}
	}
	checkSeries(t, onB.wait(t, 1, 10*time.Second), "a", 1)
	if pub := a.z.Fleet().Published.Load(); pub != 1 {
		t.Fatalf("published %d events, want 1 (only shared.x)", pub)
	}
	// c publishes both; a applies only shared.y.
	for _, src := range []string{"other", "shared.y"} {
		if _, err := c.workers[0].bus.Post(src, "0", "x"); err != nil {
			t.Fatal(err)
		}
	}
	got := onA.wait(t, 1, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if got = onA.get(); len(got) != 1 || got[0].Source != "shared.y" || got[0].Node != "c" {
		t.Fatalf("host a applied %+v, want only shared.y from c", got)
	}
}

func TestFleetUniqueOnceFleetWide(t *testing.T) {
	ns := startNATS(t)
	a, b := pair(t, ns, 1, 4<<20)
	for round := range 20 {
		key := fmt.Sprintf("purge-%d", round)
		var wins, dups atomic.Int32
		var wg sync.WaitGroup
		for _, h := range []*host{a, b} {
			wg.Go(func() {
				_, err := h.workers[0].bus.Post("cache", "purge", "x", events.Unique(key))
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, events.ErrDuplicate):
					dups.Add(1)
				default:
					t.Errorf("post: %v", err)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 || dups.Load() != 1 {
			t.Fatalf("round %d: %d posts won and %d were duplicates, want 1 and 1", round, wins.Load(), dups.Load())
		}
	}
	// Only the winner's host runs it; the other shows it.
}

func TestFleetUniqueRefusedWithoutNATS(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 1, 4<<20)
	a.bridge(t)
	ns.stop()
	deadline := time.Now().Add(5 * time.Second)
	for a.workers[0].fleet.nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	_, err := a.workers[0].bus.Post("cache", "purge", "x", events.Unique("k"))
	if !errors.Is(err, events.ErrUnavailable) {
		t.Fatalf("unique post with NATS away: %v, want ErrUnavailable", err)
	}
	if _, err := a.workers[0].bus.Post("cache", "purge", "x"); err != nil {
		t.Fatalf("plain post with NATS away: %v", err)
	}
	if _, err := a.workers[0].bus.Post(events.Source+".x", "e", "x", events.Unique("k")); err != nil {
		t.Fatalf("unique post of a host-only source with NATS away: %v", err)
	}
}

// halt stops a worker's fleet part as a kill would: no lease handed back,
// the connection dropped.
func (w *worker) halt() {
	f := w.fleet
	f.stopOnce.Do(func() { close(f.stop) })
	owner := f.fa.Owner.Load()
	<-f.done
	f.fa.Owner.CompareAndSwap(0, owner) // release() gave it back: take that back
	f.nc.Close()
}

func TestFleetTakeoverLosesNothing(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 3, 4<<20)
	b := newHost(t, ns, "b", 1, 4<<20)
	first := a.bridge(t)
	b.bridge(t)
	onB := b.collect(t, "app")
	var poster *worker
	for _, w := range a.workers {
		if w != first {
			poster = w
			break
		}
	}
	const n = 3000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			if _, err := poster.bus.Post("app", strconv.Itoa(i), "x"); err != nil {
				t.Error(err)
				return
			}
			if i%100 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	killed := time.Now()
	first.halt()
	deadline := time.Now().Add(5 * time.Second)
	var next *worker
	for next == nil && time.Now().Before(deadline) {
		for _, w := range a.workers {
			if w != first && w.fleet.Bridging() {
				next = w
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if next == nil {
		t.Fatal("no worker took the bridge over")
	}
	t.Logf("bridge taken over %v after the halt", time.Since(killed).Round(time.Millisecond))
	<-done
	checkSeries(t, onB.wait(t, n, 20*time.Second), "a", n)
	time.Sleep(200 * time.Millisecond)
	if got := len(onB.get()); got != n {
		t.Fatalf("host b got %d events after settling, want %d", got, n)
	}
}

func TestFleetCatchesUpAfterNATSOutage(t *testing.T) {
	ns := startNATS(t)
	a, b := pair(t, ns, 2, 4<<20)
	onB := b.collect(t, "app")
	onA := a.collect(t, "app")
	const n = 1000
	for i := range n / 2 {
		if _, err := a.workers[0].bus.Post("app", strconv.Itoa(i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	onB.wait(t, n/2, 10*time.Second)
	ns.stop()
	for i := n / 2; i < n; i++ {
		if _, err := a.workers[1].bus.Post("app", strconv.Itoa(i), "x"); err != nil {
			t.Fatalf("post with NATS away: %v", err)
		}
	}
	if got := len(onA.wait(t, n, 5*time.Second)); got != n {
		t.Fatalf("host a's own bus got %d of its events with NATS away, want %d", got, n)
	}
	time.Sleep(time.Second)
	ns.start()
	got := onB.wait(t, n, 30*time.Second)
	t.Logf("a published %d, b applied up to stream seq %d, b got %d", a.z.Fleet().Published.Load(), b.z.Fleet().InApplied.Load(), len(got))
	checkSeries(t, got, "a", n)
	if lost := a.z.Fleet().OutLost.Load(); lost != 0 {
		t.Fatalf("out lost %d", lost)
	}
}

func TestFleetCountsOverrunExactly(t *testing.T) {
	ns := startNATS(t)
	a, b := pair(t, ns, 1, 1<<20)
	onB := b.collect(t, "app")
	lostEvents := a.collectIf(t, func(ev *events.Event) bool { return ev.Source == events.Source && ev.Name == EventLost }, false)
	ns.stop()
	for a.workers[0].fleet.nc.IsConnected() {
		time.Sleep(10 * time.Millisecond)
	}
	// Far more than a 1 MiB ring holds.
	const n = 40000
	payload := make([]byte, 200)
	for i := range n {
		if _, err := a.workers[0].bus.Post("app", strconv.Itoa(i), payload); err != nil {
			t.Fatal(err)
		}
	}
	ns.start()
	// The count is of ring records: the 40,000 events, plus the few other
	// records of the stretch (this test's lifecycle and fleet events).
	const others = 10
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got, lost := uint64(len(onB.get())), a.z.Fleet().OutLost.Load(); lost > 0 && got+lost >= n {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	got, lost := uint64(len(onB.get())), a.z.Fleet().OutLost.Load()
	if lost == 0 || got+lost < n || got+lost > n+others {
		t.Fatalf("b got %d, a counted %d lost: want a loss, and the two to add up to %d (+ at most %d other records)", got, lost, n, others)
	}
	// What arrived is the newest, in order, without a hole.
	evs := onB.get()
	first, _ := strconv.Atoi(evs[0].Name)
	checkSeries(t, evs, "a", len(evs), first)
	var reported uint64
	for _, ev := range lostEvents.get() {
		if ev.Name == EventLost {
			var l struct{ Count uint64 }
			if err := ev.Decode(&l); err != nil {
				t.Fatal(err)
			}
			reported += l.Count
		}
	}
	// A report posted while the test still floods the 1 MiB ring may be
	// overrun itself before this test's follower reads it: what it sees
	// must be there, and no more than counted.
	if reported == 0 || reported > lost {
		t.Fatalf("fleet_lost events report %d, the counter %d", reported, lost)
	}
}

func TestFleetNodesJoinAndLeave(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 1, 4<<20)
	a.bridge(t)
	onA := a.collect(t, events.Source)
	b := newHost(t, ns, "b", 1, 4<<20)
	b.bridge(t)
	waitFor := func(name string) events.Event {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			for _, ev := range onA.get() {
				if ev.Name == name {
					return ev
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no %s on host a", name)
		return events.Event{}
	}
	var en Entry
	if ev := waitFor(EventNodeJoined); ev.Decode(&en) != nil || en.Node != "b" {
		t.Fatalf("node_joined: %s", ev.Data)
	}
	// b's last worker leaves: a sees it at once, not after the TTL.
	b.workers[0].fleet.Close(true)
	ev := waitFor(EventNodeLeft)
	if string(ev.Data) != `{"node":"b","reason":"stopped"}` {
		t.Fatalf("node_left: %s", ev.Data)
	}
	joins := 0
	for _, ev := range onA.get() {
		if ev.Name == EventNodeJoined {
			joins++
		}
	}
	if joins != 1 {
		t.Fatalf("%d node_joined events, want 1", joins)
	}
}

func TestFleetNodeLeftByTTL(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 1, 4<<20)
	a.bridge(t)
	onA := a.collect(t, events.Source)
	b := newHost(t, ns, "b", 1, 4<<20)
	b.bridge(t)
	time.Sleep(500 * time.Millisecond)
	stopped := time.Now()
	b.workers[0].halt() // killed: no goodbye
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range onA.get() {
			if ev.Name == EventNodeLeft {
				t.Logf("node_left %v after the halt (TTL 2s)", time.Since(stopped).Round(time.Millisecond))
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no node_left within 10s of a 2s TTL")
}

// TestFleetChain: a host applies another host's events only in their chain
// (each names its predecessor): a copy that came before its predecessor is
// dropped, as its host publishes it again after the predecessor; a copy
// applied already is dropped too. This is what keeps each host's order when
// a publish was lost in flight while later ones were stored.
func TestFleetChain(t *testing.T) {
	ns := startNATS(t)
	b := newHost(t, ns, "b", 1, 4<<20)
	b.bridge(t)
	onB := b.collectRemote(t, "app", "x")
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ seq, prev uint64 }{
		{1, 0}, {3, 2} /* before its predecessor */, {2, 1}, {3, 2} /* published again */, {3, 2} /* a repeat */, {4, 3},
	} {
		m := message{source: "app", event: strconv.FormatUint(c.seq-1, 10), node: "x", zone: 77, seq: c.seq, prev: c.prev, data: []byte("d")}
		if _, err := js.Publish(t.Context(), "ipcbus.test.e.x", m.encode(nil)); err != nil {
			t.Fatal(err)
		}
	}
	checkSeries(t, onB.wait(t, 4, 10*time.Second), "x", 4)
	time.Sleep(200 * time.Millisecond)
	checkSeries(t, onB.get(), "x", 4)
	if n := b.workers[0].fleet.outOfOrder.Load(); n != 1 {
		t.Fatalf("%d copies dropped out of order, want 1", n)
	}
}

// A host whose bridge starts while the stream cannot be reached (NATS away,
// a cluster electing its leaders) still gets every event the fleet
// publishes after it joined, however late its consumer starts, and even
// when another worker's bridge takes over before it got there: here host a
// publishes all of them before host b's inbound side may reach the stream.
// The stream's history from before the join is not for b; a new bridge
// goes on from b's place; and a zone started afresh for another node name
// goes on after the remote events its ring holds.
func TestFleetLateStreamLosesNothing(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 1, 4<<20)
	a.bridge(t)
	post := func(from, to int, prefix string) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := a.workers[0].bus.Post("app", prefix+strconv.Itoa(i), "x"); err != nil {
				t.Fatal(err)
			}
		}
	}
	published := func(n uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); a.z.Fleet().Published.Load() < n; {
			if time.Now().After(deadline) {
				t.Fatalf("host a published %d of %d", a.z.Fleet().Published.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	const old = 50
	post(0, old, "old")
	published(old)
	time.Sleep(joinMargin + 100*time.Millisecond)

	gate := make(chan struct{})
	testHookInbound = func(ctx context.Context, f *Fleet) {
		if f.cfg.Node == "b" {
			select {
			case <-gate:
			case <-ctx.Done():
			}
		}
	}
	t.Cleanup(func() { testHookInbound = nil })
	b := newHost(t, ns, "b", 1, 4<<20)
	bridging := func(w *worker) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !w.fleet.Bridging(); {
			if time.Now().After(deadline) {
				t.Fatal("host b: no bridge after 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	bridging(b.workers[0])
	onB := b.collectRemote(t, "app", "a")
	const n = 200
	post(0, n/2, "")
	published(old + n/2)
	// The bridge dies before its inbound side reached the stream; another
	// worker's takes over (later than the margin after those events), and
	// waits for the stream as well.
	time.Sleep(joinMargin + 100*time.Millisecond)
	b.workers[0].halt()
	bridging(b.addWorker(t, ns))
	post(n/2, n, "")
	published(old + n)
	if st := b.workers[1].fleet.Counters(); st.In.Started || st.In.StreamSeq != 0 {
		t.Fatalf("host b's inbound status: %+v, want not started yet", st.In)
	}
	close(gate)
	checkSeries(t, onB.wait(t, n, 20*time.Second), "a", n)
	st := b.workers[1].fleet.Counters()
	if !st.In.Started || st.In.Applied != n || st.In.StreamSeq != old+n {
		t.Fatalf("host b's inbound status: %+v, want started, %d applied, up to stream seq %d", st.In, n, old+n)
	}
	// A new bridge on host b goes on from there: nothing again.
	b.workers[1].halt()
	bridging(b.addWorker(t, ns))
	post(n, n+10, "")
	checkSeries(t, onB.wait(t, n+10, 20*time.Second), "a", n+10)
	// The zone's fleet state started afresh for another node name: on
	// after the remote events the ring holds, with a place in the stream.
	b.workers[2].halt()
	renamed := b.addWorker(t, ns, func(c *Config) { c.Node = "b2" })
	bridging(renamed)
	post(n+10, n+20, "")
	checkSeries(t, onB.wait(t, n+20, 20*time.Second), "a", n+20)
	time.Sleep(200 * time.Millisecond)
	checkSeries(t, onB.get(), "a", n+20)
	if st := renamed.fleet.Counters(); !st.In.Started || st.In.StreamSeq != old+n+20 {
		t.Fatalf("renamed host's inbound status: %+v, want started, up to stream seq %d", st.In, old+n+20)
	}
}

// A stream deleted and made again while a host's inbound side makes its
// consumer: the host applies the new stream from its start, not from the
// old one's place (here, without the check, the first ten events of the
// new stream were never applied).
func TestFleetStreamRecreatedUnderTheConsumer(t *testing.T) {
	ns := startNATS(t)
	a, b := pair(t, ns, 1, 4<<20)
	onB := b.collectRemote(t, "app", "a")
	post := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := a.workers[0].bus.Post("app", strconv.Itoa(i), "x"); err != nil {
				t.Fatal(err)
			}
		}
	}
	post(0, 10)
	checkSeries(t, onB.wait(t, 10, 10*time.Second), "a", 10)
	var once sync.Once
	recreated := make(chan struct{})
	testHookInboundInfo = func(ctx context.Context, f *Fleet) {
		if f.cfg.Node != "b" {
			return
		}
		once.Do(func() {
			defer close(recreated)
			if err := f.js.DeleteStream(ctx, f.cfg.Stream()); err != nil {
				t.Errorf("deleting the stream: %v", err)
				return
			}
			if _, err := f.stream(ctx); err != nil {
				t.Errorf("making the stream again: %v", err)
			}
		})
	}
	t.Cleanup(func() { testHookInboundInfo = nil })
	// Host b's inbound side starts again: its bridge is taken over.
	b.workers[0].halt()
	b.addWorker(t, ns)
	select {
	case <-recreated:
	case <-time.After(20 * time.Second):
		t.Fatal("host b's inbound side did not start again")
	}
	post(10, 30)
	checkSeries(t, onB.wait(t, 30, 20*time.Second), "a", 30)
	time.Sleep(200 * time.Millisecond)
	checkSeries(t, onB.get(), "a", 30)
}

// A position half written (a sequence stored, the epoch not yet: the
// process died between the two) is not read as a join time in 1970: the
// host's first bridge starts from its lease, not from the stream's history.
func TestFleetHalfWrittenPosition(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 1, 4<<20)
	a.bridge(t)
	for i := range 20 {
		if _, err := a.workers[0].bus.Post("app", "old"+strconv.Itoa(i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); a.z.Fleet().Published.Load() < 20; {
		if time.Now().After(deadline) {
			t.Fatal("host a did not publish its events")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(joinMargin + 100*time.Millisecond)
	testHookInbound = func(_ context.Context, f *Fleet) {
		if f.cfg.Node == "b" && f.fa.StreamEpoch.Load() == 0 {
			f.fa.InApplied.Store(5)
		}
	}
	t.Cleanup(func() { testHookInbound = nil })
	b := newHost(t, ns, "b", 1, 4<<20)
	onB := b.collectRemote(t, "app", "a")
	b.bridge(t)
	for i := range 3 {
		if _, err := a.workers[0].bus.Post("app", strconv.Itoa(i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	checkSeries(t, onB.wait(t, 3, 10*time.Second), "a", 3)
	time.Sleep(200 * time.Millisecond)
	checkSeries(t, onB.get(), "a", 3)
}
