package ipc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// TestMain lets the tests re-run this binary as worker processes: the
// scenarios of ngx_lua_ipc's manual test page, on the receiving side.
func TestMain(m *testing.M) {
	if dir := os.Getenv("IPC_HELPER_DIR"); dir != "" {
		os.Exit(helper(dir))
	}
	os.Exit(m.Run())
}

func helper(dir string) int {
	z, err := zone.Open(zone.Options{Name: "ipc", Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	w, err := workermgr.Join(z, workermgr.Config{Generation: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c, err := New(Options{Zone: z, PID: os.Getpid(), Generation: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c.SetWorkerSlot(w.Slot())
	c.Receive("ping", func(a *Alert) { a.Reply("pong", a.Data) })
	next, ordered := 0, true
	c.Receive("flood", func(a *Alert) {
		n, _ := strconv.Atoi(string(a.Data))
		if n != next {
			ordered = false
		}
		next = n + 1
	})
	c.Receive("flood-end", func(a *Alert) { a.Reply("flood-result", []byte(fmt.Sprintf("%d %v", next, ordered))) })
	c.Receive("long", func(a *Alert) {
		f := bytes.Fields(a.Data)
		for i, s := range f {
			if string(s) != strconv.Itoa(i+1) {
				a.Reply("long-result", []byte(fmt.Sprintf("bad at %d: %q", i, s)))
				return
			}
		}
		a.Reply("long-result", []byte(fmt.Sprintf("ok %d", len(f))))
	})
	c.Receive("big", func(a *Alert) { a.Reply("big", a.Data) })
	c.Receive("bcast", func(a *Alert) { a.Reply("bcast-ack", []byte(strconv.Itoa(os.Getpid()))) })
	if err := c.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
	return 0
}

type peer struct {
	cmd *exec.Cmd
	pid int
}

func spawn(t *testing.T, z *zone.Zone) *peer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "IPC_HELPER_DIR="+z.Dir())
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("helper: %q %v", l, err)
	}
	return &peer{cmd: cmd, pid: cmd.Process.Pid}
}

// inbox collects alerts by name.
type inbox chan *Alert

func collect(c *IPC, names ...string) inbox {
	in := make(inbox, 1024)
	for _, n := range names {
		c.Receive(n, func(a *Alert) {
			cp := *a
			cp.Data = bytes.Clone(a.Data)
			in <- &cp
		})
	}
	return in
}

func (in inbox) next(t *testing.T) *Alert {
	t.Helper()
	select {
	case a := <-in:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("no alert within 30s")
		return nil
	}
}

// TestAcrossProcesses runs ngx_lua_ipc's manual scenarios between this
// process and worker processes.
func TestAcrossProcesses(t *testing.T) {
	z := openZone(t, 64<<20)
	c, _ := endpoint(t, z, 1)
	in := collect(c, "pong", "flood-result", "long-result", "big", "bcast", "bcast-ack")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	p1, p2, p3 := spawn(t, z), spawn(t, z), spawn(t, z)

	t.Run("send then reply to the sender", func(t *testing.T) {
		if err := c.Send(p1.pid, "ping", []byte("hello")); err != nil {
			t.Fatal(err)
		}
		a := in.next(t)
		if a.Name != "pong" || string(a.Data) != "hello" || a.Sender != p1.pid || a.ToAll {
			t.Fatalf("got %+v", a)
		}
	})
	t.Run("flood of back-to-back sends arrives in order", func(t *testing.T) {
		const n = 20000
		for i := 0; i < n; i++ {
			if err := c.Send(p2.pid, "flood", []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Send(p2.pid, "flood-end", nil); err != nil {
			t.Fatal(err)
		}
		if a := in.next(t); string(a.Data) != fmt.Sprintf("%d true", n) {
			t.Fatalf("flood result %q", a.Data)
		}
	})
	t.Run("long alert of the integers 1..n arrives whole", func(t *testing.T) {
		var b strings.Builder
		const n = 300000 // about 2 MB: over the inline limit, through a blob
		for i := 1; i <= n; i++ {
			b.WriteString(strconv.Itoa(i))
			b.WriteByte(' ')
		}
		if err := c.Send(p3.pid, "long", []byte(b.String())); err != nil {
			t.Fatal(err)
		}
		if a := in.next(t); string(a.Data) != fmt.Sprintf("ok %d", n) {
			t.Fatalf("long result %q", a.Data)
		}
	})
	t.Run("large alert ping-ponged", func(t *testing.T) {
		big := bytes.Repeat([]byte("ipcbus large alert "), 32<<20/19) // 32 MiB
		for round := 0; round < 2; round++ {
			if err := c.Send(p1.pid, "big", big); err != nil {
				t.Fatal(err)
			}
			if a := in.next(t); a.Name != "big" || !bytes.Equal(a.Data, big) {
				t.Fatalf("round %d: %s of %d bytes", round, a.Name, len(a.Data))
			}
		}
	})
	t.Run("broadcast reaches every process, the sender included", func(t *testing.T) {
		if err := c.Broadcast("bcast", []byte("all")); err != nil {
			t.Fatal(err)
		}
		acks := map[string]bool{}
		self := false
		for len(acks) < 3 || !self {
			a := in.next(t)
			switch a.Name {
			case "bcast":
				if !a.ToAll || a.Sender != os.Getpid() {
					t.Fatalf("own broadcast %+v", a)
				}
				self = true
			case "bcast-ack":
				acks[string(a.Data)] = true
			}
		}
		for _, p := range []*peer{p1, p2, p3} {
			if !acks[strconv.Itoa(p.pid)] {
				t.Fatalf("no ack from %d: %v", p.pid, acks)
			}
		}
	})
	t.Run("killed process", func(t *testing.T) {
		killWait(t, p3.cmd)
		watcher, err := workermgr.Join(z, workermgr.Config{Generation: 9, ProbeInterval: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer watcher.Leave(workermgr.ReasonShutdown)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if err = c.Send(p3.pid, "ping", nil); err != nil {
				break
			}
		}
		if want := fmt.Sprintf("No worker process with PID %d", p3.pid); err == nil || err.Error() != want {
			t.Fatalf("send to a killed process: %v, want %q", err, want)
		}
	})
}

// TestSlowReceiver: a receiver that stops reading (SIGSTOP) holds senders
// back for the send timeout and then fails them, with nothing queued in
// the sender; the drop policy fails at once and counts; when the process
// is then killed, the alerts it never read are counted as discarded.
func TestSlowReceiver(t *testing.T) {
	z := openZone(t, 8<<20)
	c, _ := endpoint(t, z, 1, func(o *Options) { o.MaxLag = 100; o.SendTimeout = 200 * time.Millisecond })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	p := spawn(t, z)
	p.cmd.Process.Signal(syscall.SIGSTOP)
	defer p.cmd.Process.Signal(syscall.SIGCONT)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "T" {
			break
		}
	}
	sent := 0
	var err error
	start := time.Now()
	for i := 0; i < 1000; i++ {
		if err = c.Send(p.pid, "flood", []byte(strconv.Itoa(i))); err != nil {
			break
		}
		sent++
	}
	if !errors.Is(err, ErrReceiverSlow) || sent < 100 || sent > 101 {
		t.Fatalf("after %d sends: %v", sent, err)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("failed after %v, before the send timeout", el)
	}
	t.Logf("sender held back after %d alerts: %v", sent, err)

	d, err := New(Options{Zone: z, PID: os.Getpid(), Generation: 1, MaxLag: 100, Overflow: Drop})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(p.pid, "flood", nil); !errors.Is(err, ErrReceiverSlow) || d.Stats().Dropped != 1 {
		t.Fatalf("drop policy: %v, dropped %d", err, d.Stats().Dropped)
	}

	// The stopped receiver's unread alerts, counted as it dies.
	var cursor uint64
	for i := 0; i < z.Workers(); i++ {
		if s := z.Worker(i); int(s.PID.Load()) == p.pid && s.State.Load() == zone.WorkerLive {
			cursor = s.AlertCursor.Load()
		}
	}
	killWait(t, p.cmd)
	if n := Discarded(z, p.pid, cursor); n != uint64(sent) {
		t.Fatalf("discarded %d, want %d", n, sent)
	}
}

// killWait sends SIGKILL to cmd's process (it may be stopped) and checks
// that it died of it, not of an error of its own before.
func killWait(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("process %d: %v, want killed by SIGKILL", cmd.Process.Pid, err)
	}
}
