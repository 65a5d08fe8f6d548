//go:build !ipcbus_plainfutex

// Built without ipcbus_plainfutex only: with it the sleep keeps its P, by
// choice (futex_plain.go).

package zone

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// contextSwitches is the number of voluntary context switches (sleeps) of
// every thread of process pid so far.
func contextSwitches(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of %d: %v", pid, err)
	}
	n := 0
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that ended
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "voluntary_ctxt_switches:") {
				v, _ := strconv.Atoi(strings.TrimSpace(l[strings.IndexByte(l, ':')+1:]))
				n += v
			}
		}
	}
	return n
}

// TestSleeperLetsProcessIdle: a reader asleep on a doorbell, woken every
// few milliseconds, leaves its process idle in between. A sleep that held
// its P (a plain system call) kept Go's sysmon from ever sleeping deeply:
// it woke every 20 µs to 10 ms, dozens of times per event, half of the CPU
// of a Caddy process taking 200 events/s.
func TestSleeperLetsProcessIdle(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: paced, about a second")
	}
	o := Options{Name: "idle", Dir: t.TempDir(), Size: MinSize}
	z, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	// Two readers on two Ps, as a Caddy process has more than one
	// goroutine at work when an event comes.
	h := startHelper(t, o, "sleepers", "GOMAXPROCS=2", "ZONE_READERS=2")
	if l, _ := h.out.ReadString('\n'); l != "ready\n" {
		t.Fatalf("helper: %q", l)
	}
	pid := h.cmd.Process.Pid
	r := z.Ring()
	write := func() {
		if _, err := r.Write(Meta{PID: uint32(os.Getpid())}, []byte("tick")); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 { // the helper's runtime settles
		write()
		time.Sleep(5 * time.Millisecond)
	}
	const events = 100
	before := contextSwitches(t, pid)
	for range events {
		write()
		time.Sleep(5 * time.Millisecond)
	}
	per := float64(contextSwitches(t, pid)-before) / events
	t.Logf("%.1f sleeps per event", per)
	// Measured on 2 cores: about 7 per event when the process idles between
	// them (each reader's wake-up, their spins' yields, sysmon's wake-up),
	// 11 to 13 with both cores kept busy by other processes; 44 to 45 when
	// it never idles (the sleep as a plain system call), which the same
	// load hides (18 to 22).
	if per > 25 {
		t.Fatalf("%.1f sleeps of the readers' process per event, want a few", per)
	}
}
