package ipc

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// The tests in this file hold the hand-back of a rolled-back reload to its
// order: a newer worker closed while one of its handlers runs (Close does
// not wait for it) hands the alerts after it back to the older worker at
// once, and neither the older worker nor a worker started after the
// rollback may run a handler before that one has returned. Each holds a
// handler on a gate, which makes the window TestHandOff's rollback fell
// into now and then (about one run in 20: "alert N+1 handled at position
// N") as wide as the test likes, so each fails every time on the code
// before the fix.

// quietFor fails if an alert is handled within d (the handlers that may
// run next are held, or must wait for one that is).
func quietFor(t *testing.T, got chan handled, d time.Duration, why string) {
	t.Helper()
	select {
	case h := <-got:
		t.Fatalf("alert %d handled by %s %s", h.n, h.by, why)
	case <-time.After(d):
	}
}

// expect takes the next handled alerts from got: from..to-1, by by.
func expect(t *testing.T, got chan handled, from, to int, by string) {
	t.Helper()
	for i := from; i < to; i++ {
		select {
		case h := <-got:
			if h.n != i || h.by != by {
				t.Fatalf("alert %d handled by %s, want alert %d by %s", h.n, h.by, i, by)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("alert %d (by %s) not handled within 30s", i, by)
		}
	}
}

// handBack is an old and a new worker of this process, and what their
// handlers saw.
type handBack struct {
	old, nw *IPC
	got     chan handled
	gates   map[string]map[int]chan struct{}
}

// newHandBack starts an old and a new worker of this process, sends
// 0..n-1 (the new worker's), and holds the new worker's handler of alert
// hold on a gate (and the old worker's of oldHold, if not negative); it
// returns once that handler runs (the ones before it have returned) and
// the old worker has read (and skipped) every alert sent.
func newHandBack(t *testing.T, n, hold, oldHold int) *handBack {
	t.Helper()
	z := openZone(t, 8<<20)
	hb := &handBack{got: make(chan handled, 1000), gates: map[string]map[int]chan struct{}{}}
	entered := make(chan struct{}, 1)
	gate := hb.gate("new", hold)
	if oldHold >= 0 {
		hb.gate("old", oldHold)
	}
	rec := func(by string) Handler {
		return func(a *Alert) {
			n, _ := strconv.Atoi(string(a.Data))
			if g := hb.gates[by][n]; g != nil {
				if g == gate {
					entered <- struct{}{}
				}
				<-g
			}
			hb.got <- handled{by, n}
		}
	}
	hb.old, _ = endpoint(t, z, 1)
	hb.old.Receive("n", rec("old"))
	if err := hb.old.Start(); err != nil {
		t.Fatal(err)
	}
	hb.nw, _ = endpoint(t, z, 2)
	hb.nw.Receive("n", rec("new"))
	if err := hb.nw.Start(); err != nil {
		t.Fatal(err)
	}
	hb.send(t, 0, n)
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the new worker's handler did not start")
	}
	expect(t, hb.got, 0, hold, "new")
	end := z.Ring().Tail()
	for deadline := time.Now().Add(30 * time.Second); hb.old.next.Load() < end; time.Sleep(100 * time.Microsecond) {
		if time.Now().After(deadline) {
			t.Fatal("the old worker did not read past the alerts sent")
		}
	}
	return hb
}

// gate makes the handler of by for alert n wait until the gate is closed.
func (hb *handBack) gate(by string, n int) chan struct{} {
	if hb.gates[by] == nil {
		hb.gates[by] = map[int]chan struct{}{}
	}
	g := make(chan struct{})
	hb.gates[by][n] = g
	return g
}

func (hb *handBack) send(t *testing.T, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := hb.old.Send(os.Getpid(), "n", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}

// rollback closes the new worker while its handler is held: Close returns
// at once, and the old worker has the alerts after it back.
func (hb *handBack) rollback(t *testing.T) {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- hb.nw.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the running handler")
	}
}

// TestHandBackWaitsForHandler: the old worker runs no handler for the
// alerts handed back until the new worker's handler of the one before them
// has returned.
func TestHandBackWaitsForHandler(t *testing.T) {
	hb := newHandBack(t, 5, 0, -1)
	gate := hb.gates["new"][0]
	hb.rollback(t)
	quietFor(t, hb.got, 300*time.Millisecond, "while the new worker's handler of alert 0 still ran")
	close(gate)
	expect(t, hb.got, 0, 1, "new")
	expect(t, hb.got, 1, 5, "old")
	hb.send(t, 5, 10)
	expect(t, hb.got, 5, 10, "old")
}

// TestHandBackThenReload: a reload right after the rollback, once the old
// worker has rewound to where the rolled-back one stopped: the newest
// worker waits for the old one to handle what was handed back (it used to
// take the cursor the old worker had published before its rewind for how
// far it had come, and start at once), and for the rolled-back worker's
// handler.
func TestHandBackThenReload(t *testing.T) {
	hb := newHandBack(t, 10, 5, 6) // the new worker stops at 6; the old one has read to 10
	gate, slow := hb.gates["new"][5], hb.gates["old"][6]
	hb.rollback(t)
	for deadline := time.Now().Add(30 * time.Second); !hb.old.passed(0); time.Sleep(100 * time.Microsecond) {
		if time.Now().After(deadline) {
			t.Fatal("the old worker did not take the rewind")
		}
	}
	n2, _ := endpoint(t, hb.old.z, 3)
	n2.Receive("n", func(a *Alert) { n, _ := strconv.Atoi(string(a.Data)); hb.got <- handled{"n2", n} })
	if err := n2.Start(); err != nil {
		t.Fatal(err)
	}
	hb.send(t, 10, 20)
	quietFor(t, hb.got, 300*time.Millisecond, "while the rolled-back worker's handler of alert 5 still ran")
	close(gate)
	expect(t, hb.got, 5, 6, "new")
	quietFor(t, hb.got, 300*time.Millisecond, "while the old worker's handler of alert 6 still ran")
	close(slow)
	expect(t, hb.got, 6, 10, "old")
	expect(t, hb.got, 10, 20, "n2")
}

// TestHandBackThenReloadAtStop: as TestHandBackThenReload, with nothing
// for the old worker to handle between the rollback and the reload: the
// newest worker itself waits for the rolled-back worker's handler.
func TestHandBackThenReloadAtStop(t *testing.T) {
	hb := newHandBack(t, 10, 9, -1) // the new worker stops at 10, the reload's hand-off
	gate := hb.gates["new"][9]
	hb.rollback(t)
	n2, _ := endpoint(t, hb.old.z, 3)
	n2.Receive("n", func(a *Alert) { n, _ := strconv.Atoi(string(a.Data)); hb.got <- handled{"n2", n} })
	if err := n2.Start(); err != nil {
		t.Fatal(err)
	}
	hb.send(t, 10, 20)
	quietFor(t, hb.got, 300*time.Millisecond, "while the rolled-back worker's handler of alert 9 still ran")
	close(gate)
	expect(t, hb.got, 9, 10, "new")
	expect(t, hb.got, 10, 20, "n2")
}

// TestHandBackCloseWhileWaiting: an old worker waiting for the rolled-back
// worker's handler before it handles what was handed back is closed: Close
// does not wait for that handler, and the old worker handles nothing more.
func TestHandBackCloseWhileWaiting(t *testing.T) {
	hb := newHandBack(t, 5, 0, -1)
	gate := hb.gates["new"][0]
	hb.rollback(t)
	closed := make(chan error, 1)
	go func() { closed <- hb.old.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(gate)
		t.Fatal("Close of the old worker waited for the rolled-back worker's handler")
	}
	select {
	case <-hb.old.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the old worker's delivery goroutine did not end")
	}
	close(gate)
	expect(t, hb.got, 0, 1, "new")
	quietFor(t, hb.got, 300*time.Millisecond, "after both workers were closed")
}
