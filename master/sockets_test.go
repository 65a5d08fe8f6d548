package master

import (
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

func TestListenKey(t *testing.T) {
	tests := []struct {
		addr, key string
	}{
		{":8080", "tcp/:8080"},
		{"tcp/:8080", "tcp/:8080"},
		{"TCP/localhost:80", "tcp/localhost:80"},
		{"tcp4/127.0.0.1:9000", "tcp4/127.0.0.1:9000"},
		{"tcp6/[::1]:443", "tcp6/[::1]:443"},
		{"[::1]:443", "tcp/[::1]:443"},
		// Left to the workers:
		{"unix//run/caddy.sock", ""},
		{"udp/:443", ""},
		{"fd/3", ""},
		{":8080-8085", ""},
		{":0", ""},
		{":{env.PORT}", ""},
		{"localhost", ""},
		{"ipcbus-tcp/:8080", ""},
	}
	for _, tt := range tests {
		key, _, _, ok := listenKey(tt.addr)
		if ok != (tt.key != "") || key != tt.key {
			t.Errorf("listenKey(%q) = %q, %v; want %q", tt.addr, key, ok, tt.key)
		}
	}
}

func TestWorkerConfigInherits(t *testing.T) {
	held := map[string]*socket{"tcp/:8080": {key: "tcp/:8080"}, "tcp4/127.0.0.1:9000": {key: "tcp4/127.0.0.1:9000"}, "tcp/:7000": {key: "tcp/:7000"}}
	held["tcp/:7000"].down.Store(true)
	in := `{"apps":{"http":{"servers":{
		"a":{"listen":[":8080","unix//run/x.sock",":9999"]},
		"b":{"listen":["tcp4/127.0.0.1:9000",":8080-8081",":7000"]}}}}}`
	out, err := workerConfig([]byte(in), "unix//d/z.w1.sock|0600", held)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"a": {"ipcbus-tcp/:8080", "unix//run/x.sock", ":9999"},
		"b": {"ipcbus-tcp4/127.0.0.1:9000", ":8080-8081", ":7000"},
	}
	for name, w := range want {
		if g := got.Apps.HTTP.Servers[name].Listen; mustJSON(g) != mustJSON(w) {
			t.Errorf("server %s listens on %v, want %v", name, g, w)
		}
	}

	// Read back from a worker, the config says what the user wrote.
	back, err := withAdminOf(out, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	o, _ := decode(back)
	if g, w := mustJSON(listenAddrs(o)), mustJSON([]string{":8080", "unix//run/x.sock", ":9999", "tcp4/127.0.0.1:9000", ":8080-8081", ":7000"}); g != w {
		t.Errorf("read back: %s, want %s", g, w)
	}
}

// masterOnOnePort is a master holding the socket of one site address on
// a free port, closed at the end of the test.
func masterOnOnePort(t *testing.T) (*Master, int) {
	t.Helper()
	port := freeTCPPort(t)
	m := &Master{log: zap.NewNop(), config: []byte(`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:` + strconv.Itoa(port) + `"]}}}}}`)}
	m.openSockets()
	t.Cleanup(m.closeSockets)
	return m, port
}

// TestSocketsSurviveAWorker shows what the shared socket is for: a
// connection queued while no one accepts is still there for the next
// listener after one listener on the socket closed.
func TestSocketsSurviveAWorker(t *testing.T) {
	m, port := masterOnOnePort(t)
	in, files, env := m.inheritLocked()
	key := "tcp/127.0.0.1:" + strconv.Itoa(port)
	if len(files) != 1 || in[key] == nil || env != ListenFDsEnv+"="+key+"=3" {
		t.Fatalf("inherit: %v %v %q", in, files, env)
	}
	first, err := net.FileListener(files[0])
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("queued"))
	first.Close() // a worker reloads or dies with the connection queued
	second, err := net.FileListener(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	sc, err := second.Accept()
	if err != nil {
		t.Fatalf("the queued connection is gone: %v", err)
	}
	defer sc.Close()
	buf := make([]byte, 6)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := sc.Read(buf); err != nil || string(buf[:n]) != "queued" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}

	// A config without the address: the socket stops listening.
	second.Close()
	m.dropSockets([]byte(`{"apps":{"http":{"servers":{"s":{"listen":[":1"]}}}}}`))
	if _, files, _ := m.inheritLocked(); len(files) != 0 {
		t.Errorf("a dropped socket is still inherited")
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
		c.Close()
		t.Errorf("a dropped address still accepts connections")
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestSameJSON(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{`{"a":1,"b":[1,2]}`, `{ "b": [1, 2], "a": 1 }`, true},
		{`{"listen":["ipcbus-tcp/:80"]}`, `{"listen":[":80"]}`, false},
		{`{"a":1}`, `{"a":1,"b":null}`, false},
		{`{"a":`, `{"a":`, false},
	} {
		if got := sameJSON([]byte(tc.a), []byte(tc.b)); got != tc.want {
			t.Errorf("sameJSON(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestInheritBody(t *testing.T) {
	cfg := []byte(`{"@id":"root","apps":{"http":{"servers":{"srv0":{"@id":"site","listen":[":8080"],"routes":[{"@id":"route"}]},` +
		`"srv1":{"@id":"my site","listen":[":8080"]},"srv2":{"@id":7,"listen":[":8080"]}}}}}`)
	inherit := map[string]*socket{"tcp/:8080": {key: "tcp/:8080"}, "tcp4/127.0.0.1:9000": {key: "tcp4/127.0.0.1:9000"}}
	down := &socket{key: "tcp/:7000"}
	down.down.Store(true)
	inherit["tcp/:7000"] = down
	for _, tc := range []struct {
		path, body, want string
	}{
		{"/config/apps/http/servers/srv0/listen", `[":8080",":8081","tcp4/127.0.0.1:9000",":7000"]`, `["ipcbus-tcp/:8080",":8081","ipcbus-tcp4/127.0.0.1:9000",":7000"]`},
		{"/config/apps/http/servers/srv0/listen/0", `":8080"`, `"ipcbus-tcp/:8080"`},
		{"/config/apps/http/servers/srv0/listen", `":8080"`, `"ipcbus-tcp/:8080"`}, // POST: one more entry
		{"/config/apps/http/servers/srv0/listen/...", `[":8080"]`, `["ipcbus-tcp/:8080"]`},
		{"/config/apps/http/servers/srv0", `{"listen":[":8080"],"routes":[]}`, `{"listen":["ipcbus-tcp/:8080"],"routes":[]}`},
		{"/config/apps/http/servers/", `{"a":{"listen":[":8080"]},"b":{"listen":[":9"]}}`, `{"a":{"listen":["ipcbus-tcp/:8080"]},"b":{"listen":[":9"]}}`},
		{"/config/apps/http?x=1", `{"servers":{"a":{"listen":[":8080"]}}}`, `{"servers":{"a":{"listen":["ipcbus-tcp/:8080"]}}}`},
		{"/config/apps", `{"http":{"servers":{"a":{"listen":[":8080"]}}},"tls":{}}`, `{"http":{"servers":{"a":{"listen":["ipcbus-tcp/:8080"]}}},"tls":{}}`},
		// Not a place of listen addresses, or not rewritable: as it came.
		{"/config/apps/layer4/servers/a/listen", `[":8080"]`, `[":8080"]`},
		{"/config/apps/http/servers/srv0/routes", `[{"listen":[":8080"]}]`, `[{"listen":[":8080"]}]`},
		// An @id the config has: rewritten where it stands.
		{"/id/site", `{"@id":"site","listen":[":8080"]}`, `{"@id":"site","listen":["ipcbus-tcp/:8080"]}`},
		{"/id/site/listen", `[":8080"]`, `["ipcbus-tcp/:8080"]`},
		{"/id/site/listen/0", `":8080"`, `"ipcbus-tcp/:8080"`},
		{"/id/route", `{"listen":[":8080"]}`, `{"listen":[":8080"]}`}, // not a server
		{"/id/nowhere/listen", `[":8080"]`, `[":8080"]`},
		// As Caddy reads the path: decoded, an /id/ expanded and cleaned.
		{"/config/apps/http/servers/srv0/list%65n", `[":8080"]`, `["ipcbus-tcp/:8080"]`},
		{"/id/my%20site//listen/", `[":8080"]`, `["ipcbus-tcp/:8080"]`},
		{"/id/7/listen", `[":8080"]`, `["ipcbus-tcp/:8080"]`}, // a numeric @id
		{"/id/root", `{"apps":{"http":{"servers":{"x":{"listen":[":8080"]}}}}}`, `{"apps":{"http":{"servers":{"x":{"listen":["ipcbus-tcp/:8080"]}}}}}`},
		{"/config/apps/http/servers/srv0/listen", ``, ``}, // DELETE
		{"/config/apps/http/servers/srv0/listen", `[":8080"`, `[":8080"`},
		{"/config/apps/http/servers/srv0/listen", `42`, `42`},
	} {
		got := inheritBody(cfg, tc.path, []byte(tc.body), inherit)
		if !sameJSON(got, []byte(tc.want)) && string(got) != tc.want {
			t.Errorf("inheritBody(%s, %s) = %s, want %s", tc.path, tc.body, got, tc.want)
		}
	}
	if got := inheritBody(cfg, "/config/apps/http/servers/srv0/listen", []byte(`[":8080"]`), nil); string(got) != `[":8080"]` {
		t.Errorf("without inherited sockets: %s", got)
	}
}

// TestSocketsStayNonBlocking: starting a worker with the shared socket
// (os.StartProcess takes each file's Fd) leaves the socket in
// non-blocking mode, which it shares with the workers' listeners: in
// blocking mode a worker's accept waits in the kernel, where a pause's
// deadline and Close do not reach it.
func TestSocketsStayNonBlocking(t *testing.T) {
	m, _ := masterOnOnePort(t)
	_, files, _ := m.inheritLocked()
	if len(files) != 1 {
		t.Fatalf("inherit: %v", files)
	}
	worker, err := net.FileListener(files[0]) // a running worker's listener
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()
	nonBlocking := func() bool {
		rc, err := worker.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var flags int
		rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		return flags&unix.O_NONBLOCK != 0
	}
	if !nonBlocking() {
		t.Fatal("the worker's listener is blocking from the start")
	}
	cmd := exec.Command("true") // another worker started with the socket
	cmd.ExtraFiles = files
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if !nonBlocking() {
		t.Fatal("starting a process with the shared socket put it in blocking mode")
	}
	// And a blocked Accept ends when the listener closes.
	done := make(chan error, 1)
	go func() {
		_, err := worker.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	worker.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5s after Close")
	}
}
