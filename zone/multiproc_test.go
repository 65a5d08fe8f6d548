package zone

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The multi-process tests re-run this test binary as writer and reader
// processes; TestMain sends those to helperMain.
func TestMain(m *testing.M) {
	if role := os.Getenv("ZONE_HELPER"); role != "" {
		os.Exit(helperMain(role))
	}
	os.Exit(m.Run())
}

func envInt(k string) int {
	n, _ := strconv.Atoi(os.Getenv(k))
	return n
}

// helperResult is what a reader process prints.
type helperResult struct {
	Got     int    `json:"got"`
	Overrun uint64 `json:"overrun"`
	Gaps    uint64 `json:"gaps"`
	Hash    string `json:"hash"`
	Err     string `json:"err,omitempty"`
}

func helperMain(role string) int {
	o := Options{Name: os.Getenv("ZONE_NAME"), Dir: os.Getenv("ZONE_DIR")}
	if role == "fsize" {
		// Files of this process may not grow past 512 KiB: reserving a
		// 1 MiB zone fails (EFBIG) as a full file system would.
		signal.Ignore(syscall.SIGXFSZ)
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 512 << 10, Max: 512 << 10}); err != nil {
			fmt.Println("setrlimit:", err)
			return 1
		}
		o.Size = MinSize
		_, err := Open(o)
		fmt.Println(err)
		return 0
	}
	z, err := Open(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	r := z.Ring()
	switch role {
	case "writer":
		// Writes ZONE_COUNT records (or forever when 0): writer id, index, padding.
		id, count := uint32(envInt("ZONE_ID")), envInt("ZONE_COUNT")
		p := make([]byte, 12+envInt("ZONE_PAD"))
		fmt.Println("ready")
		pace := envInt("ZONE_PACE")
		for n := 0; count == 0 || n < count; n++ {
			if pace > 0 && n%pace == 0 {
				time.Sleep(10 * time.Microsecond)
			}
			binary.LittleEndian.PutUint32(p, id)
			binary.LittleEndian.PutUint64(p[4:], uint64(n))
			if _, err := r.Write(Meta{PID: uint32(os.Getpid()), Aux: uint64(id)}, p); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return 0
	case "hang":
		// Reserves a record, writes half of it, and waits to be killed.
		p, err := r.Reserve(Meta{PID: uint32(os.Getpid())}, 64)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		p.Append(make([]byte, 32))
		fmt.Println(p.Seq())
		time.Sleep(time.Hour)
		return 0
	case "fsize":
		// Opens a zone bigger than this process may write: the create fails.
		// (Handled before the zone is opened above; see helperMain.)
		return 2
	case "sleeper":
		// A reader asleep on doorbell 0 until it is killed.
		rd := r.NewReader(r.Tail())
		fmt.Println("ready")
		for {
			rd.Read(time.Hour)
		}
	case "sleepers":
		// ZONE_READERS readers, each in its own goroutine, reading every
		// record as it comes, until killed.
		for range envInt("ZONE_READERS") {
			rd := r.NewReader(r.Tail())
			go func() {
				for {
					rd.Read(time.Hour)
				}
			}()
		}
		fmt.Println("ready")
		select {}
	case "lessee":
		// Leases a segment with one record, then waits to be killed.
		if _, err := r.Write(Meta{}, []byte("mine")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		time.Sleep(time.Hour)
		return 0
	case "counter":
		// Counts records from ZONE_START until ZONE_TOTAL have been read or lost.
		rd := r.NewReader(uint64(envInt("ZONE_START")))
		total, got := uint64(envInt("ZONE_TOTAL")), uint64(0)
		fmt.Println("ready")
		for got+rd.overrun+rd.gaps < total {
			if _, st := rd.Read(20 * time.Second); st == Got {
				got++
			} else if st == Empty {
				break
			}
		}
		json.NewEncoder(os.Stdout).Encode(helperResult{Got: int(got), Overrun: rd.overrun, Gaps: rd.gaps})
		return 0
	case "reader":
		// Reads from ZONE_START until ZONE_TOTAL records or a record with
		// Kind 1 (the end marker), checking each writer's order.
		rd := r.NewReader(uint64(envInt("ZONE_START")))
		rd.SetWaitMax(200 * time.Millisecond)
		total := envInt("ZONE_TOTAL")
		res := helperResult{}
		h := sha256.New()
		next := map[uint32]uint64{}
		fmt.Println("ready")
		for total == 0 || res.Got+int(rd.overrun+rd.gaps) < total {
			rec, st := rd.Read(20 * time.Second)
			if st == Empty {
				res.Err = fmt.Sprintf("stalled at %d after %d records", rd.Next(), res.Got)
				break
			}
			if st != Got {
				continue
			}
			if rec.Kind == 1 {
				break
			}
			w, n := binary.LittleEndian.Uint32(rec.Data), binary.LittleEndian.Uint64(rec.Data[4:])
			if n < next[w] {
				res.Err = fmt.Sprintf("writer %d: record %d after %d", w, n, next[w])
				break
			}
			next[w] = n + 1
			fmt.Fprintf(h, "%d:%d:%d;", rec.Seq, w, n)
			res.Got++
		}
		_, res.Overrun, res.Gaps = rd.Counts()
		res.Hash = fmt.Sprintf("%x", h.Sum(nil))
		json.NewEncoder(os.Stdout).Encode(res)
		return 0
	}
	return 2
}

type helper struct {
	cmd *exec.Cmd
	out *bufio.Reader
}

func startHelper(t *testing.T, o Options, role string, env ...string) *helper {
	return startHelperB(t, o, role, env...)
}

func startHelperB(t testing.TB, o Options, role string, env ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "ZONE_HELPER="+role, "ZONE_NAME="+o.Name, "ZONE_DIR="+o.Dir)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return &helper{cmd: cmd, out: bufio.NewReader(out)}
}

// kill sends SIGKILL to the helper and checks that it died of it (not of
// an error of its own before).
func (h *helper) kill(t testing.TB) {
	t.Helper()
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := h.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper %d: %v, want killed by SIGKILL", h.cmd.Process.Pid, err)
	}
}

func (h *helper) line(t testing.TB) string {
	t.Helper()
	s, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper %d: %v", h.cmd.Process.Pid, err)
	}
	return strings.TrimSpace(s)
}

func (h *helper) result(t *testing.T) helperResult { return h.resultB(t) }

func (h *helper) resultB(t testing.TB) helperResult {
	t.Helper()
	var res helperResult
	if err := json.Unmarshal([]byte(h.line(t)), &res); err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("reader: %v", err)
	}
	return res
}

// TestRingMultiProcess: several writer processes and several reader
// processes; every reader sees the same sequence and nothing is lost while
// the total stays under the ring's capacity.
func TestRingMultiProcess(t *testing.T) {
	o := testOptions(t, 8<<20)
	z := mustOpen(t, o)
	writers, perWriter, readers := 4, 3500, 3
	if testing.Short() {
		perWriter = 500
	}
	total := writers * perWriter
	if uint64(total) > z.Ring().Slots() {
		t.Fatalf("test wants %d records, the ring holds %d", total, z.Ring().Slots())
	}
	start := fmt.Sprint(z.Ring().Tail())
	var rs []*helper
	for i := 0; i < readers; i++ {
		h := startHelper(t, o, "reader", "ZONE_START="+start, fmt.Sprintf("ZONE_TOTAL=%d", total))
		h.line(t)
		rs = append(rs, h)
	}
	for w := 0; w < writers; w++ {
		h := startHelper(t, o, "writer", fmt.Sprintf("ZONE_ID=%d", w), fmt.Sprintf("ZONE_COUNT=%d", perWriter), fmt.Sprintf("ZONE_PAD=%d", w*100))
		h.line(t)
	}
	var first helperResult
	for i, h := range rs {
		res := h.result(t)
		if res.Err != "" || res.Got != total || res.Overrun != 0 || res.Gaps != 0 {
			t.Fatalf("reader %d: %+v, want %d records and no loss", i, res, total)
		}
		if i == 0 {
			first = res
		} else if res.Hash != first.Hash {
			t.Fatalf("reader %d saw another sequence than reader 0", i)
		}
	}
}

// TestRingWriterKilledMidRecord: a writer process reserves a record, writes
// half of it and is killed with SIGKILL. Readers skip it as one counted gap
// after WaitMax and go on with the next record.
func TestRingWriterKilledMidRecord(t *testing.T) {
	o := testOptions(t, 4<<20)
	z := mustOpen(t, o)
	r := z.Ring()
	rd := r.NewReader(r.Tail())
	rd.SetWaitMax(100 * time.Millisecond)
	h := startHelper(t, o, "hang")
	seq, _ := strconv.ParseUint(h.line(t), 10, 64)
	h.kill(t)
	if _, err := r.Write(Meta{}, []byte("after")); err != nil {
		t.Fatal(err)
	}
	rec, st := rd.Read(5 * time.Second)
	if st != Gap || rec.Seq != seq {
		t.Fatalf("got %v %+v, want a gap at %d", st, rec, seq)
	}
	rec, st = rd.Read(5 * time.Second)
	if st != Got || string(rec.Data) != "after" {
		t.Fatalf("after the gap: %v %+v", st, rec)
	}
}

// TestRingWriterKilledInBurst kills writer processes in the middle of a
// write loop, once each has written a few thousand records (counted on the
// tail, not slept for). Readers never hang, agree on the sequence, keep
// each writer's order, and lose at most one record per killed writer. (A
// kill rarely lands in the few instructions between taking a sequence and
// committing it; TestRingChaos kills writers dozens of times under load and
// checks the exact accounting of what they leave.)
func TestRingWriterKilledInBurst(t *testing.T) {
	o := testOptions(t, 16<<20)
	z := mustOpen(t, o)
	start := fmt.Sprint(z.Ring().Tail())
	var rs []*helper
	for i := 0; i < 2; i++ {
		h := startHelper(t, o, "reader", "ZONE_START="+start)
		h.line(t)
		rs = append(rs, h)
	}
	const killed = 2
	for w := 0; w < killed; w++ {
		from := z.Ring().Tail()
		h := startHelper(t, o, "writer", fmt.Sprintf("ZONE_ID=%d", w), "ZONE_COUNT=0", "ZONE_PACE=32")
		h.line(t)
		for deadline := time.Now().Add(30 * time.Second); z.Ring().Tail() < from+uint64(2000+1000*w); time.Sleep(100 * time.Microsecond) {
			if time.Now().After(deadline) {
				t.Fatal("the writer wrote nothing")
			}
		}
		h.kill(t)
	}
	if _, err := z.Ring().Write(Meta{Kind: 1}, nil); err != nil {
		t.Fatal(err)
	}
	a, b := rs[0].result(t), rs[1].result(t)
	if a.Err != "" || b.Err != "" {
		t.Fatalf("readers: %+v %+v", a, b)
	}
	if a.Hash != b.Hash || a.Got != b.Got {
		t.Fatalf("readers disagree: %+v %+v", a, b)
	}
	if a.Gaps > killed || a.Overrun != 0 {
		t.Fatalf("reader lost %d to gaps, %d to overruns; at most %d gaps expected", a.Gaps, a.Overrun, killed)
	}
	t.Logf("read %d records, %d gaps", a.Got, a.Gaps)
}
