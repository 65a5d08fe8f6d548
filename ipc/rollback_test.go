package ipc

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// A rollback whose rewind the old worker has not yet processed (it is in a
// handler) followed by a second reload: the pending rewind overwrites the
// new window's skipHi, and the old worker delivers everything the newest
// one delivers.
func TestReloadAfterRollbackPendingRewind(t *testing.T) {
	z := openZone(t, 8<<20)
	got := make(chan handled, 1000)
	gate := make(chan struct{})
	rec := func(by string) Handler {
		return func(a *Alert) {
			n, _ := strconv.Atoi(string(a.Data))
			if by == "old" && n == 0 {
				<-gate
			}
			got <- handled{by, n}
		}
	}
	old, _ := endpoint(t, z, 1)
	old.Receive("n", rec("old"))
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	send := func(from, to int) {
		for i := from; i < to; i++ {
			if err := old.Send(os.Getpid(), "n", []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(0, 10)
	n1, _ := endpoint(t, z, 2)
	n1.Receive("n", rec("n1"))
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n1.Close(); err != nil { // rollback: old gets rewind pending
		t.Fatal(err)
	}
	n2, _ := endpoint(t, z, 3)
	n2.Receive("n", rec("n2"))
	if err := n2.Start(); err != nil { // second reload
		t.Fatal(err)
	}
	send(10, 20)
	close(gate)
	count := map[int][]string{}
	deadline := time.After(3 * time.Second)
loop:
	for {
		select {
		case h := <-got:
			count[h.n] = append(count[h.n], h.by)
		case <-deadline:
			break loop
		}
	}
	for i := 0; i < 20; i++ {
		if len(count[i]) != 1 {
			t.Errorf("alert %d handled by %v", i, count[i])
		}
	}
}

// Rollback while the old worker is behind the new worker's stop point, then
// a second reload: the one skip window [H, R) is replaced by [H2, max), and
// the old worker delivers again what the rolled-back worker handled.
// The old worker is held behind R by blocking its logger at two gaps.
func TestReloadAfterRollbackBehind(t *testing.T) {
	z := openZone(t, 8<<20)
	got := make(chan handled, 1000)
	rec := func(by string) Handler {
		return func(a *Alert) { n, _ := strconv.Atoi(string(a.Data)); got <- handled{by, n} }
	}
	entered := make(chan struct{}, 4)
	release := make(chan struct{}, 4)
	core, _ := observer.New(zap.WarnLevel)
	hook := zap.Hooks(func(e zapcore.Entry) error {
		if strings.Contains(e.Message, "may have been lost") {
			entered <- struct{}{}
			<-release
		}
		return nil
	})
	slowLog := zap.New(core, hook)
	wm := func(o *Options) { o.WaitMax = 20 * time.Millisecond }
	old, _ := endpoint(t, z, 1, wm, func(o *Options) { o.Logger = slowLog })
	old.Receive("n", rec("old"))
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	send := func(from, to int) {
		for i := from; i < to; i++ {
			if err := old.Send(me, "n", []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	gap := func() {
		if _, err := z.Ring().Reserve(zone.Meta{Kind: RecordKind, Aux: uint64(me), Bell: Bell, Wake: zone.TargetBit(uint32(me))}, 2); err != nil {
			t.Fatal(err)
		}
	}
	want := func(from, to int, by string) {
		t.Helper()
		for i := from; i < to; i++ {
			select {
			case h := <-got:
				if h.n != i || h.by != by {
					t.Fatalf("got %d by %s, want %d by %s", h.n, h.by, i, by)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("alert %d not handled", i)
			}
		}
	}
	send(0, 10)
	want(0, 10, "old")
	n1, _ := endpoint(t, z, 2, wm)
	n1.Receive("n", rec("n1"))
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	gap()
	send(10, 20)
	gap()
	send(20, 30)
	<-entered // old stuck at the first gap (in [H, R))
	want(10, 30, "n1")
	if err := n1.Close(); err != nil {
		t.Fatal(err)
	}
	release <- struct{}{}
	<-entered // old processed the rewind (window [H, R)) and is stuck at the second gap, behind R
	n2, _ := endpoint(t, z, 3, wm)
	n2.Receive("n", rec("n2"))
	if err := n2.Start(); err != nil {
		t.Fatal(err)
	}
	release <- struct{}{}
	select {
	case h := <-got:
		t.Fatalf("alert %d handled again by %s", h.n, h.by)
	case <-time.After(time.Second):
	}
}

// Close called from one of a rolled-back worker's own handlers returns
// before the hand-back: the old worker keeps skipping [H, max) forever.
func TestRollbackFromHandler(t *testing.T) {
	z := openZone(t, 8<<20)
	got := make(chan handled, 1000)
	old, _ := endpoint(t, z, 1)
	old.Receive("n", func(a *Alert) { n, _ := strconv.Atoi(string(a.Data)); got <- handled{"old", n} })
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	nw, _ := endpoint(t, z, 2)
	nw.Receive("n", func(a *Alert) { n, _ := strconv.Atoi(string(a.Data)); got <- handled{"new", n} })
	nw.Receive("quit", func(a *Alert) { nw.Close() })
	if err := nw.Start(); err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	old.Send(me, "n", []byte("0"))
	old.Send(me, "quit", nil)
	if h := <-got; h.by != "new" {
		t.Fatal(h)
	}
	time.Sleep(100 * time.Millisecond)
	old.Send(me, "n", []byte("1"))
	select {
	case h := <-got:
		t.Logf("alert %d handled by %s", h.n, h.by)
	case <-time.After(2 * time.Second):
		t.Fatalf("alert 1 handled by nobody (old skipped=%d lost=%d)", old.Stats().Received, old.Stats().Lost)
	}
}
