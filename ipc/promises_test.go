package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// The tests in this file each hold a promise of the README that an audit
// found no test failing for when the code was broken on purpose (issue 13);
// each names the mutation it catches.

// handled is an alert as a test handler saw it: by which endpoint, which
// number it carried.
type handled struct {
	by string
	n  int
}

// TestHandOffIdentity: after a reload the new worker handles every alert
// sent from the hand-off on, and the old one every alert before it, in
// order. The old worker is held inside a handler while the new one starts,
// so the hand-off falls at a known place in the stream, with no sleeps.
// Catches: "after a reload the new worker handles no alert; the old keeps
// them all" (ipc/deliver.go), which the order-only hand-off test survived.
func TestHandOffIdentity(t *testing.T) {
	for _, rollback := range []bool{false, true} {
		name := "reload"
		if rollback {
			name = "rollback"
		}
		t.Run(name, func(t *testing.T) {
			z := openZone(t, 8<<20)
			got := make(chan handled, 1000)
			gate := make(chan struct{})
			record := func(by string) Handler {
				return func(a *Alert) {
					n, _ := strconv.Atoi(string(a.Data))
					if by == "old" && n == 0 {
						<-gate // the old worker is busy when the new one starts
					}
					got <- handled{by, n}
				}
			}
			old, _ := endpoint(t, z, 1)
			old.Receive("n", record("old"))
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
			send(0, 100) // before the hand-off: the old worker's
			nw, _ := endpoint(t, z, 2)
			nw.Receive("n", record("new"))
			if err := nw.Start(); err != nil {
				t.Fatal(err)
			}
			send(100, 200) // from the hand-off on: the new worker's
			close(gate)
			want := func(from, to int, by string) {
				for i := from; i < to; i++ {
					select {
					case h := <-got:
						if h.n != i || h.by != by {
							t.Fatalf("alert %d handled by %s, want alert %d by %s", h.n, h.by, i, by)
						}
					case <-time.After(30 * time.Second):
						t.Fatalf("alert %d not handled within 30s", i)
					}
				}
			}
			want(0, 100, "old")
			want(100, 200, "new")
			if rollback {
				// The new worker goes (a rolled-back reload): the old one takes
				// the alerts back from where the new one stopped.
				if err := nw.Close(); err != nil {
					t.Fatal(err)
				}
				send(200, 300)
				want(200, 300, "old")
			}
			select {
			case h := <-got:
				t.Fatalf("alert %d handled again by %s", h.n, h.by)
			default:
			}
		})
	}
}

// TestBackpressureCountsEveryReceiver: a send to a fast process is held
// back by a stopped bystander (every record moves every reader, so the
// send could overrun it), and no longer once the bystander is judged hung.
// Catches: "backpressure looks only at the addressee's lag" (the first
// part) and "hung workers counted in backpressure" (the second).
func TestBackpressureCountsEveryReceiver(t *testing.T) {
	z := openZone(t, 8<<20)
	c, _ := endpoint(t, z, 1, func(o *Options) { o.MaxLag = 64; o.SendTimeout = 200 * time.Millisecond })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	fast, bystander := spawn(t, z), spawn(t, z)
	stop(t, bystander)
	sent := 0
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		if err = c.Send(fast.pid, "flood", []byte(strconv.Itoa(i))); err == nil {
			sent++
		}
	}
	if !errors.Is(err, ErrReceiverSlow) || !strings.Contains(err.Error(), fmt.Sprintf("process %d ", bystander.pid)) {
		t.Fatalf("after %d sends to a fast process (%d) with a stopped bystander (%d): %v, want the bystander named as slow", sent, fast.pid, bystander.pid, err)
	}
	// The bystander judged hung (missed heartbeats): it no longer holds
	// anyone back.
	for i := 0; i < z.Workers(); i++ {
		if s := z.Worker(i); int(s.PID.Load()) == bystander.pid && s.State.Load() == zone.WorkerLive {
			s.State.Store(zone.WorkerHung)
		}
	}
	for i := 0; i < 500; i++ {
		if err := c.Send(fast.pid, "flood", []byte("x")); err != nil {
			t.Fatalf("send %d with the bystander hung: %v", i, err)
		}
	}
}

// TestHandlerSendsToOwnProcess: a handler may send many alerts to its own
// process (more than the lag limit) with its Alert (a.Send, a.Broadcast):
// its own worker cannot read on while it runs, so it is left out of the
// backpressure. Catches: "the caller's own worker counted in backpressure"
// (the handler would wait out the send timeout and fail). IPC.Send from
// the handler is the plain path, which waits for every receiver: it fails
// there (the worker waits for itself), as documented.
func TestHandlerSendsToOwnProcess(t *testing.T) {
	z := openZone(t, 8<<20)
	c, _ := endpoint(t, z, 1, func(o *Options) { o.MaxLag = 16; o.SendTimeout = 200 * time.Millisecond })
	errs := make(chan error, 1)
	c.Receive("start", func(a *Alert) {
		for i := 0; i < 100; i++ {
			send := func() error { return a.Send(os.Getpid(), "sink", []byte(strconv.Itoa(i))) }
			if i%2 == 1 {
				send = func() error { return a.Broadcast("sink", []byte(strconv.Itoa(i))) }
			}
			if err := send(); err != nil {
				errs <- fmt.Errorf("send %d from the handler: %w", i, err)
				return
			}
		}
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			err = c.Send(os.Getpid(), "plain", nil)
		}
		if !errors.Is(err, ErrReceiverSlow) {
			errs <- fmt.Errorf("IPC.Send from a handler past the lag limit: %v, want ErrReceiverSlow", err)
			return
		}
		errs <- nil
	})
	sunk := make(chan int, 100)
	c.Receive("sink", func(a *Alert) { n, _ := strconv.Atoi(string(a.Data)); sunk <- n })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(os.Getpid(), "start", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not finish sending within 30s")
	}
	for i := 0; i < 100; i++ {
		select {
		case n := <-sunk:
			if n != i {
				t.Fatalf("sink got %d, want %d", n, i)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("alert %d to itself not handled", i)
		}
	}
}

// stop sends SIGSTOP to p and waits until the kernel shows it stopped.
func stop(t *testing.T, p *peer) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGCONT) })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "T" {
			return
		}
	}
	t.Fatalf("process %d not stopped", p.pid)
}

// TestWaitingReceiverNotWaitedFor: a sender inside a handler does not wait
// for a receiver whose own handler is waiting in a send (its reader
// stopped meanwhile): two handlers sending to each other would otherwise
// each wait out the send timeout (ping-pong of 10 KB alerts between 5
// processes fell from 200,000 to 2,000 pongs/s that way). A sender outside
// any handler still waits for it, as for any receiver. The stopped process
// stands in for a receiver stuck in its handler.
func TestWaitingReceiverNotWaitedFor(t *testing.T) {
	z := openZone(t, 8<<20)
	c, _ := endpoint(t, z, 1, func(o *Options) { o.MaxLag = 64; o.SendTimeout = time.Second })
	// One handler runs for the whole test, sending a batch each time it
	// is told to: from inside a handler.
	batch, result := make(chan bool), make(chan error)
	c.Receive("go", func(a *Alert) {
		for range batch {
			var err error
			for i := 0; i < 200 && err == nil; i++ {
				err = a.Send(os.Getpid(), "x", nil)
			}
			result <- err
		}
	})
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	p := spawn(t, z)
	if err := c.Send(os.Getpid(), "go", nil); err != nil {
		t.Fatal(err)
	}
	fromHandler := func() error {
		t.Helper()
		batch <- true
		select {
		case err := <-result:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("the handler did not finish its batch")
			return nil
		}
	}
	stop(t, p)
	var slot *zone.WorkerSlot
	for i := 0; i < z.Workers(); i++ {
		if s := z.Worker(i); int(s.PID.Load()) == p.pid && s.State.Load() == zone.WorkerLive {
			slot = s
		}
	}
	if err := fromHandler(); !errors.Is(err, ErrReceiverSlow) {
		t.Fatalf("sends from a handler with a stopped receiver: %v, want ErrReceiverSlow", err)
	}
	slot.SendWaiting.Store(1)
	if err := fromHandler(); err != nil {
		t.Fatalf("sends from a handler with the receiver waiting in its own send: %v", err)
	}
	// Outside a handler, the waiting receiver is waited for: the handler
	// ends, this process's reader catches up, and the stopped one is named.
	close(batch)
	end := z.Ring().Tail()
	for deadline := time.Now().Add(30 * time.Second); c.next.Load() < end; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("this process's reader did not catch up")
		}
	}
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		err = c.Send(os.Getpid(), "x", nil)
	}
	if !errors.Is(err, ErrReceiverSlow) || !strings.Contains(err.Error(), fmt.Sprintf("process %d ", p.pid)) {
		t.Fatalf("sends outside a handler with the receiver waiting: %v, want it named as slow", err)
	}
}

// TestBackpressureBeforeOverrun: a stopped receiver's next record sits in
// a segment that a live, slow writer still leases, and its later records
// in segments that are reused first. Senders (Block policy) are held back
// before those are overwritten: every send succeeds only if the receiver
// loses nothing. (Lag once looked only at the cursor's own segment, said 0
// bytes while it was leased, and let the sender overwrite the rest.)
func TestBackpressureBeforeOverrun(t *testing.T) {
	z := openZone(t, 8<<20)
	c, _ := endpoint(t, z, 1, func(o *Options) { o.SendTimeout = 300 * time.Millisecond })
	res := make(chan string, 1)
	c.Receive("flood-result", func(a *Alert) { res <- string(a.Data) })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	r := spawn(t, z)
	stop(t, r)
	p, err := zone.Open(zone.Options{Name: "ipc", Dir: z.Dir()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Ring().Write(zone.Meta{Kind: 99}, []byte("x")); err != nil { // P keeps this lease
		t.Fatal(err)
	}
	data := make([]byte, 16<<10)
	n := int(3 * z.Ring().DataSize() / uint64(len(data)))
	var sendErr error
	sent := 0
	for i := 0; i < n; i++ {
		copy(data, strconv.Itoa(i)+" ")
		if sendErr = c.Send(r.pid, "flood", []byte(strconv.Itoa(i))); sendErr != nil {
			break
		}
		// pad the ring with big alerts to ourselves, read at once
		if sendErr = c.Send(os.Getpid(), "pad", data); sendErr != nil {
			break
		}
		sent++
	}
	t.Logf("sent %d pairs, then %v", sent, sendErr)
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(r.pid, "flood-end", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-res:
		t.Logf("receiver: %s", s)
		if sendErr == nil && !strings.HasSuffix(s, "true") {
			t.Fatalf("every send succeeded (Block policy) and the receiver lost alerts: %s", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no flood-result")
	}
}
