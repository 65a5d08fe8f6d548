package ipc

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// testObserver takes the alerts whose name starts with prefix.
type testObserver struct {
	prefix string
	mu     sync.Mutex
	got    []string
	panic  bool
}

func (o *testObserver) Wants(name string) bool { return strings.HasPrefix(name, o.prefix) }

func (o *testObserver) Alert(a *Alert) {
	o.mu.Lock()
	o.got = append(o.got, a.Name+"="+string(a.Data))
	o.mu.Unlock()
	if o.panic {
		panic("observer")
	}
}

func (o *testObserver) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.got...)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestObserver: the observer sees the alerts it wants, before their
// handler, and an alert it takes is received, not unhandled; a
// panicking observer does not keep the handler from running.
func TestObserver(t *testing.T) {
	for _, tc := range []struct {
		name          string
		panic         bool
		handler       bool
		sent          []string
		wantSeen      []string
		wantUnhandled uint64
		wantHandled   int
	}{
		{"taken without handler", false, false, []string{"op.a", "other"}, []string{"op.a=x"}, 1, 0},
		{"taken with handler", false, true, []string{"op.a"}, []string{"op.a=x"}, 0, 1},
		{"panicking observer", true, true, []string{"op.b"}, []string{"op.b=x"}, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := openZone(t, 1<<20)
			c, _ := endpoint(t, z, 1)
			o := &testObserver{prefix: "op.", panic: tc.panic}
			c.SetObserver(o)
			n := 0
			var mu sync.Mutex
			if tc.handler {
				c.SetDefaultHandler(func(a *Alert) { mu.Lock(); n++; mu.Unlock() })
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			for _, name := range tc.sent {
				if err := c.Send(os.Getpid(), name, []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			waitUntil(t, "delivery", func() bool { return c.Stats().Received == uint64(len(tc.sent)) })
			if got := o.seen(); strings.Join(got, ",") != strings.Join(tc.wantSeen, ",") {
				t.Errorf("observer saw %v, want %v", got, tc.wantSeen)
			}
			if got := c.Stats().Unhandled; got != tc.wantUnhandled {
				t.Errorf("unhandled %d, want %d", got, tc.wantUnhandled)
			}
			mu.Lock()
			defer mu.Unlock()
			if n != tc.wantHandled {
				t.Errorf("handler ran %d times, want %d", n, tc.wantHandled)
			}
		})
	}
}

// TestRange: a poller reads the alerts to this process and the
// broadcasts, from any point the ring holds, filtered by name, with a
// blob alert as its file; Changed fires when the delivery goroutine reads
// one.
func TestRange(t *testing.T) {
	z := openZone(t, 4<<20)
	c, _ := endpoint(t, z, 1, func(o *Options) { o.InlineLimit = 1024 })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	start := c.Tail()
	changed := c.Changed()
	big := bytes.Repeat([]byte("b"), 4096)
	if err := c.Send(os.Getpid(), "one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("Changed did not fire")
	}
	if err := c.Broadcast("two", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(os.Getpid(), "big", big); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		keep func(string) bool
		want string
	}{
		{"all", nil, "one:1:false,two:2:true,big:4096:false"},
		{"filtered", func(n string) bool { return n != "one" }, "two:2:true,big:4096:false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			next := start
			for len(got) < 3 {
				as, n, lost := c.Range(next, 10, tc.keep)
				if lost != 0 {
					t.Fatalf("lost %d", lost)
				}
				next = n
				for _, a := range as {
					if a.Sender != os.Getpid() {
						t.Errorf("sender %d", a.Sender)
					}
					size := string(a.Data)
					if a.Blob != "" {
						f, err := c.OpenBlob(&a)
						if err != nil {
							t.Fatal(err)
						}
						f.Close()
						size = "4096"
					}
					got = append(got, a.Name+":"+size+":"+map[bool]string{true: "true", false: "false"}[a.ToAll])
				}
				if strings.Count(tc.want, ",")+1 == len(got) {
					break
				}
			}
			if strings.Join(got, ",") != tc.want {
				t.Fatalf("got %v, want %s", got, tc.want)
			}
		})
	}
}
