package master

import (
	"encoding/json"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
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

// TestSocketsSurviveAWorker shows what the shared socket is for: a
// connection queued while no one accepts is still there for the next
// listener after one listener on the socket closed.
func TestSocketsSurviveAWorker(t *testing.T) {
	port := freeTCPPort(t)
	m := &Master{log: zap.NewNop(), config: []byte(`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:` + strconv.Itoa(port) + `"]}}}}}`)}
	m.openSockets()
	defer m.closeSockets()
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
