package workermgr

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

func osPid() int { return os.Getpid() }

// TestMain lets the multi-process tests re-run this binary as a worker.
func TestMain(m *testing.M) {
	if dir := os.Getenv("WORKERMGR_HELPER_DIR"); dir != "" {
		z, err := zone.Open(zone.Options{Name: "w", Dir: dir})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		w, err := Join(z, Config{Generation: 1, Admin: os.Getenv("WORKERMGR_HELPER_ADMIN")})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		// A reader of this worker asleep on the doorbell when it is killed.
		rd := z.Ring().NewReader(z.Ring().Tail())
		_ = w
		go rd.Read(time.Hour)
		fmt.Println(w.ID())
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// TestKilledProcessSeenCrashed: a worker process killed with SIGKILL is
// recorded as crashed through its liveness lock, not by a heartbeat timeout
// (dead_after here is an hour), at the next probe of a live worker.
func TestKilledProcessSeenCrashed(t *testing.T) {
	z := openZone(t)
	rec := &recorder{}
	w := join(t, z, 1, rec, func(c *Config) { c.ProbeInterval = 0 })
	dir := z.Dir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WORKERMGR_HELPER_DIR="+dir)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	id, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	id = strings.TrimSpace(id)
	rec.take()
	for deadline := time.Now().Add(10 * time.Second); z.Doorbell(0).Sleepers() != 1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := z.Doorbell(0).Sleepers(); n != 1 {
		t.Fatalf("%d sleepers on the doorbell, want the helper's reader", n)
	}
	killed := time.Now()
	cmd.Process.Signal(syscall.SIGKILL)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if got := rec.take(); len(got) > 0 {
			if got[0] != "worker_crashed "+id+" nil 1 nil crash" {
				t.Fatalf("events %v", got)
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if z.Node().Crashes.Load() == 0 {
		t.Fatal("no crash recorded 30s after SIGKILL")
	}
	t.Logf("crash of %s seen %v after SIGKILL (probe interval %v)", id, time.Since(killed), w.cfg.ProbeInterval)
	if z.Node().Crashes.Load() != 1 {
		t.Fatal("crash not counted in the zone")
	}
	if n := z.Doorbell(0).Sleepers(); n != 0 {
		t.Fatalf("the dead reader still counts as %d sleepers: every commit would pay a wake-up", n)
	}
}

// TestCrashSeenByDefault: with every setting at its default, probes run
// every 250 ms, and a SIGKILLed worker is recorded crashed by the first or
// second probe after the kill (counted in probes, not in wall time). The
// check of the defaults catches "the liveness probe every 1.5 s instead of
// 250 ms", which the timed bound (run with heartbeat 200ms) survived.
func TestCrashSeenByDefault(t *testing.T) {
	z := openZone(t)
	rec := &recorder{}
	w := join(t, z, 1, rec, func(c *Config) { *c = Config{Generation: 1, OnEvent: rec.on} })
	if w.cfg.ProbeInterval != 250*time.Millisecond || w.cfg.Heartbeat != time.Second || w.cfg.DeadAfter != 5*time.Second {
		t.Fatalf("defaults: probe %v, heartbeat %v, dead_after %v; the README documents 250ms, 1s, 5s", w.cfg.ProbeInterval, w.cfg.Heartbeat, w.cfg.DeadAfter)
	}
	dir := z.Dir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WORKERMGR_HELPER_DIR="+dir)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	probes := w.stats.probes.Load()
	killed := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("the helper exited cleanly, want killed")
	}
	for deadline := time.Now().Add(30 * time.Second); z.Node().Crashes.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no crash recorded 30s after SIGKILL")
		}
	}
	if n := w.stats.probes.Load() - probes; n > 2 {
		t.Fatalf("the crash was seen after %d probes, want the first or second after the kill", n)
	}
	t.Logf("crash seen %v after SIGKILL", time.Since(killed))
}
