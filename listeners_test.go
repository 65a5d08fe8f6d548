package ipcbus

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/sys/unix"
)

// listeningFile is a listening TCP socket on a free port as a file, and
// its port.
func listeningFile(t *testing.T) (*os.File, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, ln.Addr().(*net.TCPAddr).Port
}

func TestParseInherited(t *testing.T) {
	lf, port := listeningFile(t)
	key := "tcp/127.0.0.1:" + strconv.Itoa(port)
	regular, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cf, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer cf.Close()
	// parseInherited adopts the descriptor it accepts: give it a duplicate.
	dup := func(f *os.File) string {
		fd, err := unix.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return strconv.Itoa(fd)
	}
	tests := []struct {
		name, spec, err string
	}{
		{"empty", "", ""},
		{"a listening socket", key + "=" + dup(lf), ""},
		{"no descriptor", key, "want address=descriptor"},
		{"stdin", key + "=0", "at least 3"},
		{"not a number", key + "=x", "at least 3"},
		{"a file", key + "=" + strconv.Itoa(int(regular.Fd())), "not a socket"},
		{"a connection", key + "=" + strconv.Itoa(int(cf.Fd())), "not listening"},
	}
	for _, tt := range tests {
		files, err := parseInherited(tt.spec)
		if tt.err == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			for _, f := range files {
				f.Close()
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want one with %q", tt.name, err, tt.err)
		}
	}
}

// TestListenInherited: an address with an inherited socket is served
// from it, closing the listener leaves the socket, and an address without
// one gets a socket of its own.
func TestListenInherited(t *testing.T) {
	lf, port := listeningFile(t)
	inherited.once.Do(func() {})
	inherited.files = map[string]*os.File{"tcp/127.0.0.1:" + strconv.Itoa(port): lf}
	defer func() { inherited.files = nil }()
	ctx := context.Background()
	for range 2 {
		ln, err := listenInherited(ctx, "ipcbus-tcp", "127.0.0.1", strconv.Itoa(port), 0, net.ListenConfig{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.(net.Listener).Accept()
		if err != nil {
			t.Fatal(err)
		}
		sc.Close()
		c.Close()
		ln.(net.Listener).Close() // a reload: the next one is served again
	}
	if _, err := listenInherited(ctx, "ipcbus-tcp", "127.0.0.1", "http", 0, net.ListenConfig{}); err == nil || !strings.Contains(err.Error(), "want a number") {
		t.Errorf("a port that is no number: %v", err)
	}
	free, freePort := listeningFile(t)
	free.Close()
	own, err := listenInherited(ctx, "ipcbus-tcp", "127.0.0.1", strconv.Itoa(freePort-1)+"-"+strconv.Itoa(freePort), 1, net.ListenConfig{})
	if err != nil {
		t.Fatalf("an address without an inherited socket: %v", err)
	}
	defer own.(net.Listener).Close()
	if got := own.(net.Listener).Addr().(*net.TCPAddr).Port; got != freePort {
		t.Errorf("bound port %d, want %d (first of the range plus the offset)", got, freePort)
	}
}

// accepts reports whether ln accepts a connection dialed to port within
// wait (the connection is closed either way).
func accepts(t *testing.T, ln net.Listener, port int, wait time.Duration) bool {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		got <- c
	}()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case sc, ok := <-got:
		if ok {
			sc.Close()
		}
		return ok
	case <-time.After(wait):
		return false
	}
}

// TestInheritedHandOff: the newest listener of an address accepts and
// the older ones wait; closing the newest gives the queue back; a pause
// quiets them all until it is resumed; a quiesce is for good.
func TestInheritedHandOff(t *testing.T) {
	lf, port := listeningFile(t)
	key := "tcp/127.0.0.1:" + strconv.Itoa(port)
	newListener := func() *inheritedListener {
		ln, err := net.FileListener(lf)
		if err != nil {
			t.Fatal(err)
		}
		return addInherited(key, ln.(*net.TCPListener), net.KeepAliveConfig{Enable: true, Idle: time.Minute})
	}
	old := newListener()
	defer old.Close()
	if !accepts(t, old, port, 10*time.Second) {
		t.Fatal("the only listener does not accept")
	}
	next := newListener() // a reload's new servers
	if !accepts(t, next, port, 10*time.Second) {
		t.Fatal("the new listener does not accept")
	}
	// old has an Accept pending from nothing: a connection goes to it
	// only once next is gone.
	next.Close() // a config that failed to start
	if !accepts(t, old, port, 10*time.Second) {
		t.Fatal("closing the newest listener did not give the queue back")
	}

	if n := pauseInherited(time.Minute); n != 1 {
		t.Fatalf("paused %d listeners, want 1", n)
	}
	if accepts(t, old, port, 200*time.Millisecond) {
		t.Fatal("a paused listener accepted")
	}
	// A load during the pause: its listener waits too, and a load that
	// failed closes it; the resume wakes the newest left.
	failed := newListener()
	if accepts(t, failed, port, 200*time.Millisecond) {
		t.Fatal("a listener made during a pause accepted")
	}
	failed.Close()
	if n := resumeInherited(); n != 1 {
		t.Fatalf("resumed %d addresses, want 1", n)
	}
	if !accepts(t, old, port, 10*time.Second) {
		t.Fatal("a resumed listener does not accept")
	}

	defer func() {
		inheritedGroup.mu.Lock()
		inheritedGroup.quiesced = false
		inheritedGroup.mu.Unlock()
	}()
	if n := quiesceInherited(); n != 1 {
		t.Fatalf("quiesced %d listeners, want 1", n)
	}
	resumeInherited()
	if accepts(t, old, port, 200*time.Millisecond) {
		t.Fatal("a quiesced listener accepted after a resume")
	}
	old.Close()
	if _, err := old.Accept(); err == nil {
		t.Fatal("a closed listener accepted")
	}
}

func TestHandleQuiesceInput(t *testing.T) {
	tests := []struct {
		method, query string
		status        int
	}{
		{http.MethodGet, "", http.StatusMethodNotAllowed},
		{http.MethodPost, "?for=abc", http.StatusBadRequest},
		{http.MethodPost, "?for=0s", http.StatusBadRequest},
		{http.MethodPost, "?for=6m", http.StatusBadRequest},
		{http.MethodPost, "?for=1s", http.StatusOK},
		{http.MethodDelete, "", http.StatusOK},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		err := handleQuiesce(rec, httptest.NewRequest(tt.method, "/ipcbus/quiesce"+tt.query, nil))
		status := rec.Code
		var ae caddy.APIError
		if errors.As(err, &ae) {
			status = ae.HTTPStatus
		}
		if status != tt.status {
			t.Errorf("%s %s: status %d (%v), want %d", tt.method, tt.query, status, err, tt.status)
		}
	}
}
