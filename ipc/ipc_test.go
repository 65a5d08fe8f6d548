package ipc

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

func openZone(t testing.TB, size int64) *zone.Zone {
	t.Helper()
	z, err := zone.Open(zone.Options{Name: "ipc", Dir: t.TempDir(), Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return z
}

// endpoint joins a worker of this process and starts its IPC.
func endpoint(t testing.TB, z *zone.Zone, gen int, mod ...func(*Options)) (*IPC, *workermgr.Worker) {
	t.Helper()
	w, err := workermgr.Join(z, workermgr.Config{Generation: gen})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Zone: z, PID: os.Getpid(), Generation: gen}
	for _, m := range mod {
		m(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	c.SetWorkerSlot(w.Slot())
	t.Cleanup(func() { c.Close(); w.Leave(workermgr.ReasonShutdown) })
	return c, w
}

func TestLimits(t *testing.T) {
	z := openZone(t, zone.MinSize)
	c, _ := endpoint(t, z, 1)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// 4 GiB of address space that is never touched, for the data limit.
	huge, err := unix.Mmap(-1, 0, MaxDataLen+1, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANON|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(huge)
	for _, tc := range []struct {
		pid  int
		name string
		data []byte
		want string
	}{
		{os.Getpid(), strings.Repeat("n", 255), nil, "alert name length cannot exceed 254, was 255"},
		{os.Getpid(), "", nil, "alert name cannot be empty"},
		{os.Getpid(), "x", huge, "alert data length cannot exceed 4294967040, was 4294967041"},
		{999999999, "x", nil, "No worker process with PID 999999999"},
		{-1, "x", nil, "No worker process with PID -1"},
	} {
		err := c.Send(tc.pid, tc.name, tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Send(%d, %.10q): %v, want %q", tc.pid, tc.name, err, tc.want)
		}
	}
	var nw NoWorkerError
	if err := c.Send(999999999, "x", nil); !errors.As(err, &nw) || nw.PID != 999999999 {
		t.Fatalf("not a NoWorkerError: %v", err)
	}
	if err := c.Broadcast(strings.Repeat("n", 254), nil); err != nil {
		t.Fatalf("a 254-byte name: %v", err)
	}
}

// TestSelfDeliveryAsync: an alert to oneself is handled later, on the
// delivery goroutine, not inside Send (the handler waits for Send to have
// returned: run inside it, Send would never return); the handler replies
// with its Alert, to a.Sender.
func TestSelfDeliveryAsync(t *testing.T) {
	z := openZone(t, zone.MinSize)
	c, _ := endpoint(t, z, 1)
	sent := make(chan struct{})
	got := make(chan string, 2)
	c.Receive("ping", func(a *Alert) {
		<-sent
		if a.Sender != os.Getpid() {
			got <- fmt.Sprintf("sender %d", a.Sender)
			return
		}
		if err := a.Reply("pong", append([]byte("re:"), a.Data...)); err != nil {
			got <- err.Error()
		}
	})
	c.Receive("pong", func(a *Alert) { got <- string(a.Data) })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Send(os.Getpid(), "ping", []byte("hi")) }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(sent)
		t.Fatal("Send did not return: it ran the handler")
	}
	close(sent)
	if s := <-got; s != "re:hi" {
		t.Fatal(s)
	}
}

func TestReceiveReplaceRemoveDefault(t *testing.T) {
	z := openZone(t, zone.MinSize)
	c, _ := endpoint(t, z, 1)
	var mu sync.Mutex
	var log []string
	add := func(s string) { mu.Lock(); log = append(log, s); mu.Unlock() }
	c.Receive("a", func(*Alert) { add("first") })
	c.Receive("a", func(*Alert) { add("second") })
	c.Receive("b", func(*Alert) { add("b") })
	c.Receive("b", nil)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	send := func(name string) {
		t.Helper()
		if err := c.Send(me, name, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Each phase ends with a marker whose handler says it ran: no polling of
	// counters that move before the handlers do.
	marker := make(chan struct{}, 1)
	c.Receive("mark", func(*Alert) { marker <- struct{}{} })
	waitMark := func() {
		t.Helper()
		send("mark")
		select {
		case <-marker:
		case <-time.After(30 * time.Second):
			t.Fatal("the marker alert was not handled within 30s")
		}
	}
	send("a")
	send("b")
	waitMark()
	c.SetDefaultHandler(func(a *Alert) { add("default:" + a.Name) })
	send("c")
	send("end")
	waitMark()
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(log, " "); got != "second default:c default:end" {
		t.Fatalf("handled %q", got)
	}
	if c.Stats().Unhandled != 1 {
		t.Fatalf("unhandled %d", c.Stats().Unhandled)
	}
}

// TestHandOff streams 20,000 alerts to this process while a second worker
// starts (and, for the rollback, stops again) in the middle of the stream:
// each alert is handled once, in order, and both workers handle some (the
// hand-off fell mid-stream). The new worker starts once the old one has
// handled a first part, and the rollback once the new one has: counted,
// not slept for.
func TestHandOff(t *testing.T) {
	for _, rollback := range []bool{false, true} {
		name := "reload"
		if rollback {
			name = "rollback"
		}
		t.Run(name, func(t *testing.T) {
			z := openZone(t, 8<<20)
			var mu sync.Mutex
			var handled []int
			by := map[string]int{}
			record := func(who string) Handler {
				return func(a *Alert) {
					var n int
					fmt.Sscan(string(a.Data), &n)
					mu.Lock()
					handled = append(handled, n)
					by[who]++
					mu.Unlock()
				}
			}
			count := func(who string) int {
				mu.Lock()
				defer mu.Unlock()
				if who == "" {
					return len(handled)
				}
				return by[who]
			}
			waitFor := func(what string, cond func() bool) {
				t.Helper()
				for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(100 * time.Microsecond) {
					if time.Now().After(deadline) {
						t.Fatalf("timed out waiting for %s", what)
					}
				}
			}
			old, _ := endpoint(t, z, 1)
			old.Receive("n", record("old"))
			if err := old.Start(); err != nil {
				t.Fatal(err)
			}
			const total = 20000
			errs := make(chan error, 1)
			started, closed := make(chan struct{}), make(chan struct{})
			go func() {
				// A third of the stream before the new worker starts, a third
				// while it runs, the rest after the rollback (or as well).
				for i := 0; i < total; i++ {
					switch i {
					case total / 3:
						<-started
					case 2 * total / 3:
						<-closed
					}
					if err := old.Send(os.Getpid(), "n", []byte(fmt.Sprint(i))); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
			waitFor("the old worker to handle 1,000", func() bool { return count("old") >= 1000 })
			nw, _ := endpoint(t, z, 2)
			nw.Receive("n", record("new"))
			if err := nw.Start(); err != nil {
				t.Fatal(err)
			}
			close(started)
			if rollback {
				waitFor("the new worker to handle one", func() bool { return count("new") >= 1 })
				if err := nw.Close(); err != nil {
					t.Fatal(err)
				}
			}
			close(closed)
			select {
			case err := <-errs:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("sending did not finish within 60s")
			}
			waitFor("every alert handled", func() bool { return count("") >= total })
			// Both loops past every alert: a duplicate would have come by now.
			end := z.Ring().Tail()
			waitFor("both workers past the stream", func() bool {
				return old.next.Load() >= end && (rollback || nw.next.Load() >= end)
			})
			mu.Lock()
			defer mu.Unlock()
			if len(handled) != total {
				t.Fatalf("handled %d alerts, want %d", len(handled), total)
			}
			for i, n := range handled {
				if n != i {
					t.Fatalf("alert %d handled at position %d", n, i)
				}
			}
			if by["old"] < 1000 || by["new"] == 0 || (!rollback && by["old"] == total) {
				t.Fatalf("handled by old %d, by new %d: the hand-off did not fall mid-stream", by["old"], by["new"])
			}
		})
	}
}

// TestCloseWhileHandlerRuns: Close from another goroutine while a handler
// runs returns without waiting for it (it cannot tell that goroutine from
// the handler's own), and no handler starts afterwards.
func TestCloseWhileHandlerRuns(t *testing.T) {
	z := openZone(t, zone.MinSize)
	c, _ := endpoint(t, z, 1)
	running, release := make(chan struct{}), make(chan struct{})
	after := make(chan struct{}, 1)
	c.Receive("slow", func(a *Alert) { close(running); <-release })
	c.Receive("after", func(a *Alert) { after <- struct{}{} })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer close(release)
	for _, name := range []string{"slow", "after"} {
		if err := c.Send(os.Getpid(), name, nil); err != nil {
			t.Fatal(err)
		}
	}
	<-running
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the running handler")
	}
	release <- struct{}{}
	select {
	case <-after:
		t.Fatal("a handler ran after Close returned")
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery goroutine did not end after its handler returned")
	}
	select {
	case <-after:
		t.Fatal("a handler ran after Close returned")
	default:
	}
	// The loop must not publish its cursor again after Close cleared it:
	// senders would wait for a receiver that is gone.
	if i := c.slot.Load(); i < 0 {
		t.Fatal("the endpoint has no worker slot")
	} else if cur := z.Worker(int(i)).AlertCursor.Load(); cur != 0 {
		t.Fatalf("alerts cursor %d after Close, want 0", cur)
	}
}
