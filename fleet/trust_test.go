package fleet

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// rawJS is a plain JetStream client: what any publisher in the fleet's
// NATS account has, a misbehaving host included.
func rawJS(t *testing.T, ns *natsServer) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestFleetRefusesForgedMessages: messages no host's bridge publishes are
// skipped as malformed, and the events around them arrive whole and in
// order: one naming another host than its subject's (with a sequence that
// would make every later event of that host look applied already), a node
// id outside the rules, a source with a line break, data flagged JSON that
// is not.
func TestFleetRefusesForgedMessages(t *testing.T) {
	ns := startNATS(t)
	a, b := pair(t, ns, 1, 4<<20)
	onB := b.collectRemote(t, "app", "a")
	others := b.collectIf(t, func(ev *events.Event) bool { return ev.Node != "" && ev.Node != "a" }, false)
	post := func(name string) {
		t.Helper()
		if _, err := a.workers[0].bus.Post("app", name, "x"); err != nil {
			t.Fatal(err)
		}
	}
	post("0")
	onB.wait(t, 1, 10*time.Second)
	js := rawJS(t, ns)
	forged := []struct {
		subject string
		m       message
	}{
		{"ipcbus.test.e.evil", message{source: "app", event: "forged", node: "a", zone: a.z.CreatedAt().UnixNano(), seq: math.MaxUint64, data: []byte("x")}},
		{"ipcbus.test.e.bad!", message{source: "app", event: "e", node: "bad!", zone: 1, seq: 1, data: []byte("x")}},
		{"ipcbus.test.e.x", message{source: "app\n", event: "e", node: "x", zone: 1, seq: 1}},
		{"ipcbus.test.e.y", message{source: "app", event: "e", node: "y", zone: 1, seq: 1, json: true, data: []byte(`{"not json`)}},
	}
	for _, f := range forged {
		if _, err := js.Publish(t.Context(), f.subject, f.m.encode(nil)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		post(strconv.Itoa(i))
	}
	checkSeries(t, onB.wait(t, 6, 10*time.Second), "a", 6)
	var malformed uint64
	for _, w := range b.workers {
		malformed += w.fleet.malformed.Load()
	}
	if malformed != uint64(len(forged)) {
		t.Errorf("%d messages counted malformed on b, want %d", malformed, len(forged))
	}
	if got := others.get(); len(got) != 0 {
		t.Errorf("b applied %d events of other nodes: %+v", len(got), got[0])
	}
	if l := b.z.Fleet().InLost.Load(); l != 0 {
		t.Errorf("b counts %d lost, want 0", l)
	}
}

// TestFleetJoinedNotTrusted: a nodes-bucket entry that claims to have
// joined at a revision past its own does not stop later hosts' joins from
// being announced (NodesSeen, kept in the zone, would otherwise stay past
// every revision for good).
func TestFleetJoinedNotTrusted(t *testing.T) {
	ns := startNATS(t)
	a := newHost(t, ns, "a", 1, 4<<20)
	a.bridge(t)
	onA := a.collect(t, events.Source)
	kv, err := rawJS(t, ns).KeyValue(t.Context(), "ipcbus_test_nodes")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "evil", []byte(`{"node":"b","joined":18446744073709551615}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(t.Context(), "evil"); err != nil {
		t.Fatal(err)
	}
	b := newHost(t, ns, "b", 1, 4<<20)
	b.bridge(t)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range onA.get() {
			if ev.Name == EventNodeJoined && strings.Contains(string(ev.Data), `"node":"b"`) {
				if s := a.z.Fleet().NodesSeen.Load(); s == math.MaxUint64 {
					t.Fatalf("NodesSeen is %d", s)
				}
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("b's join was not announced on a; a got %d events", len(onA.get()))
}

// TestFleetOtherSubjectsNotLost: the stream takes the fleet's events only,
// so a message on another subject of the fleet leaves no gap that the
// hosts would count as lost.
func TestFleetOtherSubjectsNotLost(t *testing.T) {
	ns := startNATS(t)
	a, b := pair(t, ns, 1, 4<<20)
	onB := b.collectRemote(t, "app", "a")
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := range 5 {
		if err := nc.Publish("ipcbus.test.junk", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := a.workers[0].bus.Post("app", strconv.Itoa(i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	checkSeries(t, onB.wait(t, 5, 10*time.Second), "a", 5)
	if l := b.z.Fleet().InLost.Load(); l != 0 {
		t.Errorf("b counts %d lost, want 0", l)
	}
}
