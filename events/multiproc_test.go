package events

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// TestMain lets the multi-process tests re-run this binary as workers.
func TestMain(m *testing.M) {
	if role := os.Getenv("EVENTS_HELPER"); role != "" {
		os.Exit(helper(role))
	}
	os.Exit(m.Run())
}

type helperResult struct {
	Handled int      `json:"handled"`
	Lost    uint64   `json:"lost"`
	Hash    string   `json:"hash"`
	Keys    []string `json:"keys,omitempty"`
	Err     string   `json:"err,omitempty"`
}

// helper is a worker process: it posts EVENTS_K events of source "t" (or
// forever, paced, for "burst"), handles every "t" event, and when it sees
// the "t/end" event (or has handled EVENTS_TOTAL) prints a hash of the
// sequence it handled.
func helper(role string) int {
	z, err := zone.Open(zone.Options{Name: "ev", Dir: os.Getenv("EVENTS_DIR")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b, err := New(Options{Zone: z, PID: os.Getpid(), Generation: 1, WaitMax: 100 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	total, _ := strconv.Atoi(os.Getenv("EVENTS_TOTAL"))
	k, _ := strconv.Atoi(os.Getenv("EVENTS_K"))
	res := helperResult{}
	h := sha256.New()
	done := make(chan struct{})
	last := map[int]int{}
	b.Register(func(e *Event) {
		switch {
		case e.Name == EventLost:
			res.Lost += e.Value.(Loss).Count
			fmt.Fprintf(h, "lost %d %d;", e.Value.(Loss).From, e.Value.(Loss).Count)
		case e.Source == "t" && e.Name == "end":
			close(done)
		case e.Source == "u":
			res.Keys = append(res.Keys, e.Unique)
			if os.Getenv("EVENTS_SLOW_UNIQUE") != "" {
				time.Sleep(time.Millisecond) // busy: the others take the next keys
			}
		case e.Source == "t":
			var n int
			fmt.Sscan(string(e.Data), &n)
			if n < last[e.PID] && res.Err == "" {
				res.Err = fmt.Sprintf("poster %d: %d after %d", e.PID, n, last[e.PID])
			}
			last[e.PID] = n
			fmt.Fprintf(h, "%d %d %s %s;", e.Seq, e.PID, e.Name, e.Data)
			res.Handled++
			if res.Handled == total {
				close(done)
			}
		}
	}, "")
	if err := b.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b.Poll()
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n') // go
	for n := 0; role == "burst" || n < k; n++ {
		if role == "burst" && n%16 == 0 {
			time.Sleep(20 * time.Microsecond)
		}
		if _, err := b.Post("t", "e", strconv.Itoa(n)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		res.Err = "timed out"
	}
	b.Poll()
	res.Hash = fmt.Sprintf("%x", h.Sum(nil))
	json.NewEncoder(os.Stdout).Encode(res)
	b.Close(time.Second)
	return 0
}

type proc struct {
	cmd *exec.Cmd
	in  *os.File
	out *bufio.Reader
}

func spawn(t *testing.T, dir, role string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "EVENTS_HELPER="+role, "EVENTS_DIR="+dir), env...)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	r, w, _ := os.Pipe()
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &proc{cmd: cmd, in: w, out: bufio.NewReader(out)}
	if l, err := p.out.ReadString('\n'); err != nil || strings.TrimSpace(l) != "ready" {
		t.Fatalf("helper: %q %v", l, err)
	}
	return p
}

func (p *proc) result(t *testing.T) helperResult {
	t.Helper()
	l, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper %d: %v", p.cmd.Process.Pid, err)
	}
	var r helperResult
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestThreeProcessesSameSequence: three processes post concurrently; each
// handles every event, all in the identical sequence.
func TestThreeProcessesSameSequence(t *testing.T) {
	z := openZone(t, 8<<20)
	dir := z.Dir()
	k := 3000
	if testing.Short() {
		k = 300
	}
	var ps []*proc
	for i := 0; i < 3; i++ {
		ps = append(ps, spawn(t, dir, "post", fmt.Sprintf("EVENTS_K=%d", k), fmt.Sprintf("EVENTS_TOTAL=%d", 3*k)))
	}
	for _, p := range ps {
		p.in.WriteString("go\n")
	}
	var first helperResult
	for i, p := range ps {
		r := p.result(t)
		if r.Err != "" || r.Handled != 3*k || r.Lost != 0 {
			t.Fatalf("process %d: %+v, want %d handled, none lost", i, r, 3*k)
		}
		if i == 0 {
			first = r
		} else if r.Hash != first.Hash {
			t.Fatalf("process %d handled another sequence than process 0", i)
		}
	}
}

// TestPosterKilledInBurst: a poster process is killed with SIGKILL in the
// middle of a burst. The other workers agree on the sequence, keep each
// poster's order, and count the gap if the kill left one.
func TestPosterKilledInBurst(t *testing.T) {
	z := openZone(t, 16<<20)
	dir := z.Dir()
	a := spawn(t, dir, "post", "EVENTS_K=0")
	b := spawn(t, dir, "post", "EVENTS_K=0")
	killed := spawn(t, dir, "burst")
	a.in.WriteString("go\n")
	b.in.WriteString("go\n")
	killed.in.WriteString("go\n")
	// Killed once it has posted a few thousand events (counted on the tail).
	from := z.Ring().Tail()
	for deadline := time.Now().Add(30 * time.Second); z.Ring().Tail() < from+3000; time.Sleep(100 * time.Microsecond) {
		if time.Now().After(deadline) {
			t.Fatal("the poster posted nothing")
		}
	}
	killWait(t, killed.cmd)
	poster := newBus(t, z, 1)
	if _, err := poster.Post("t", "end", nil); err != nil {
		t.Fatal(err)
	}
	ra, rb := a.result(t), b.result(t)
	if ra.Err != "" || rb.Err != "" || ra.Hash != rb.Hash || ra.Handled == 0 {
		t.Fatalf("workers disagree or failed: %+v %+v", ra, rb)
	}
	if ra.Lost > 1 {
		t.Fatalf("lost %d events to one killed poster", ra.Lost)
	}
	t.Logf("handled %d events of the killed poster, %d lost", ra.Handled, ra.Lost)
}

// TestUniqueAcrossProcesses: unique events posted while three worker
// processes run are each handled by exactly one of them.
func TestUniqueAcrossProcesses(t *testing.T) {
	z := openZone(t, 4<<20)
	dir := z.Dir()
	var ps []*proc
	for i := 0; i < 3; i++ {
		p := spawn(t, dir, "post", "EVENTS_K=0", "EVENTS_SLOW_UNIQUE=1")
		p.in.WriteString("go\n")
		ps = append(ps, p)
	}
	// The poster is a worker too, and takes its share: count it.
	poster := newBus(t, z, 1)
	var mu sync.Mutex
	var mine []string
	poster.Register(func(e *Event) {
		mu.Lock()
		mine = append(mine, e.Unique)
		mu.Unlock()
		time.Sleep(time.Millisecond)
	}, "u")
	if err := poster.Start(); err != nil {
		t.Fatal(err)
	}
	const keys = 300
	for i := 0; i < keys; i++ {
		if _, err := poster.Post("u", "job", nil, Unique(fmt.Sprintf("key-%d", i))); err != nil {
			t.Fatal(err)
		}
		if _, err := poster.Post("u", "job", nil, Unique(fmt.Sprintf("key-%d", i))); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("second post of key-%d: %v", i, err)
		}
	}
	if _, err := poster.Post("t", "end", nil); err != nil {
		t.Fatal(err)
	}
	if err := poster.Poll(); err != nil {
		t.Fatal(err)
	}
	handled := map[string]int{}
	mu.Lock()
	per := []int{len(mine)}
	for _, k := range mine {
		handled[k]++
	}
	mu.Unlock()
	for _, p := range ps {
		r := p.result(t)
		per = append(per, len(r.Keys))
		for _, k := range r.Keys {
			handled[k]++
		}
	}
	if len(handled) != keys {
		t.Fatalf("%d keys handled, want %d", len(handled), keys)
	}
	for k, n := range handled {
		if n != 1 {
			t.Fatalf("%s handled %d times", k, n)
		}
	}
	takers := 0
	for _, n := range per {
		if n > 0 {
			takers++
		}
	}
	if takers < 2 {
		t.Fatalf("unique events handled per worker %v: one took them all, so nothing was raced for", per)
	}
	t.Logf("unique events handled per worker (this process first): %v", per)
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
