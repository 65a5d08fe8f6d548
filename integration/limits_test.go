package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// memKiB reads a field of /proc/<pid>/status (VmRSS, VmHWM) in KiB.
func (p *proc) memKiB(field string) int64 {
	p.n.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		p.n.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	p.n.t.Fatalf("no %s in /proc/%d/status", field, p.pid())
	return 0
}

// rawPost sends a request head to addr and returns the connection.
func rawPost(t *testing.T, addr, path string, header ...string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\n", path, addr)
	for _, h := range header {
		if h != "" {
			head += h + "\r\n"
		}
	}
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// status reads the status line of an answer on c, within d.
func status(t *testing.T, c net.Conn, d time.Duration) (int, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer within %v: %v", d, err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// TestHugeBodyRefusedAtOnce: a 1GiB body to ipcbus_send, ipcbus_broadcast
// and the admin API is answered 413 before it is sent when its length is
// declared, and right after the limit when it is streamed; the process's
// memory does not grow with it.
func TestHugeBodyRefusedAtOnce(t *testing.T) {
	n := newNode(t)
	a := n.start()
	site := fmt.Sprintf("127.0.0.1:%d", a.port)
	targets := []struct {
		name, addr, path, ctype string
	}{
		{"ipcbus_send", site, fmt.Sprintf("/send?pid=%d&name=x", a.pid()), ""},
		{"ipcbus_broadcast", site, "/publish?source=s&event=e", ""},
		{"ipcbus_broadcast alert", site, "/alert?name=x", ""},
		{"admin send", a.admin, fmt.Sprintf("/ipcbus/send?pid=%d&name=x", a.pid()), ""},
		{"admin broadcast", a.admin, "/ipcbus/broadcast?name=x", ""},
		{"admin events", a.admin, "/ipcbus/events", "Content-Type: application/json"},
	}
	hwm := a.memKiB("VmHWM")
	for _, c := range targets {
		t.Run(c.name+" declared", func(t *testing.T) {
			// Only the head is sent: the answer must not wait for the body.
			conn := rawPost(t, c.addr, c.path, "Content-Length: 1073741824", c.ctype)
			if code, body := status(t, conn, 10*time.Second); code != 413 || !strings.Contains(body, "request body over the limit of 1048576 bytes") {
				t.Fatalf("%d %s", code, body)
			}
		})
		t.Run(c.name+" streamed", func(t *testing.T) {
			conn := rawPost(t, c.addr, c.path, "Transfer-Encoding: chunked", c.ctype)
			var sent atomic.Int64
			go func() { // 1GiB of zeros in 1MiB chunks, until the server stops taking them
				chunk := append([]byte(fmt.Sprintf("%x\r\n", 1<<20)), append(make([]byte, 1<<20), "\r\n"...)...)
				for i := 0; i < 1024; i++ {
					if _, err := conn.Write(chunk); err != nil {
						return
					}
					sent.Add(1 << 20)
				}
			}()
			code, body := status(t, conn, 30*time.Second)
			if code != 413 || !strings.Contains(body, "request body over the limit of 1048576 bytes") {
				t.Fatalf("%d %s", code, body)
			}
			if s := sent.Load(); s > 64<<20 {
				t.Fatalf("the answer came after %d MiB were sent", s>>20)
			}
		})
	}
	if grown := a.memKiB("VmHWM") - hwm; grown > 64<<10 {
		t.Fatalf("peak RSS grew by %d MiB", grown>>10)
	}
}

// TestSincePageBounded: since=0 over large payloads answers one bounded
// page, read one event at a time, not everything the ring holds.
func TestSincePageBounded(t *testing.T) {
	n := newNode(t)
	n.routes = "handle /publish-big {\n\t\tipcbus_broadcast {\n\t\t\tmax_size 32MiB\n\t\t}\n\t}"
	a, b := n.start(), n.start()
	const count, size = 10, 16 << 20
	payload := bytes.Repeat([]byte("a"), size)
	for i := 0; i < count; i++ {
		resp, err := http.Post(b.url("/publish-big?source=big&event=e"), "text/plain", bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("post %d: %d", i, resp.StatusCode)
		}
	}
	// a's worker has handled (and read) every blob before the page is asked.
	a.waitFor("a to handle the posts", func() bool { return a.stats().Events.BlobsRead >= count })
	hwm := a.memKiB("VmHWM")
	resp, err := http.Get(a.url("/events?since=0&limit=10000&source=big"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	grown := a.memKiB("VmHWM") - hwm
	var page struct {
		Events []json.RawMessage
		Next   uint64
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &page) != nil {
		t.Fatalf("%d %.200s", resp.StatusCode, body)
	}
	if len(page.Events) != 1 || len(body) > size+64<<10 {
		t.Fatalf("a page of %d events, %d bytes", len(page.Events), len(body))
	}
	t.Logf("page of %d bytes; peak RSS grew by %d MiB", len(body), grown>>10)
	if grown > 64<<10 {
		t.Fatalf("peak RSS grew by %d MiB for one page", grown>>10)
	}
}

// TestSlowSSEClientDropped: a stream client that stops reading is dropped
// after write_timeout and counted, and its slot is given back.
func TestSlowSSEClientDropped(t *testing.T) {
	n := newNode(t)
	n.routes = "handle /publish-big {\n\t\tipcbus_broadcast {\n\t\t\tmax_size 32MiB\n\t\t}\n\t}\n\thandle /events-slow {\n\t\tipcbus_poll {\n\t\t\twrite_timeout 500ms\n\t\t}\n\t}"
	a := n.start()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /events-slow HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
	a.waitFor("the stream to open", func() bool { return a.stats().HTTP.OpenStreams == 1 })
	payload := bytes.Repeat([]byte("x"), 8<<20)
	for i := 0; i < 3; i++ {
		resp, err := http.Post(a.url("/publish-big?source=s&event=e"), "text/plain", bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	start := time.Now()
	a.waitFor("the slow client to be dropped", func() bool { return a.stats().HTTP.SlowClientsDropped == 1 })
	t.Logf("dropped %v after the posts", time.Since(start))
	a.waitFor("its slot to be given back", func() bool { return a.stats().HTTP.OpenStreams == 0 })
	resp, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "caddy_ipcbus_http_slow_clients_dropped_total 1\n") {
		t.Fatalf("no slow client in the metrics:\n%s", metrics)
	}
}

// TestDirectiveOrderStable: every process adapts the three directives in
// the same order (send, broadcast, poll), whatever order they are written in.
func TestDirectiveOrderStable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	os.WriteFile(file, []byte(":8080 {\n\tipcbus_poll /p\n\tipcbus_broadcast /b\n\tipcbus_send /s\n}\n"), 0o600)
	for i := 0; i < 12; i++ {
		out, err := exec.Command(caddyBin, "adapt", "--config", file, "--adapter", "caddyfile").Output()
		if err != nil {
			t.Fatalf("adapt: %v\n%s", err, out)
		}
		var cfg struct {
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Routes []struct {
							Handle []struct{ Handler string }
						}
					}
				}
			}
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var order []string
		for _, r := range cfg.Apps.HTTP.Servers["srv0"].Routes {
			order = append(order, r.Handle[0].Handler)
		}
		if got := strings.Join(order, " "); got != "ipcbus_send ipcbus_broadcast ipcbus_poll" {
			t.Fatalf("run %d: order %s", i, got)
		}
	}
}

// TestLargeBodyStreamed: an accepted body far over what the ring carries
// goes to its blob file as it arrives: broadcasting a 48 MiB alert grows
// the receiving process's peak RSS by far less than the body (it held it
// whole before). No process handles the alert's name, so none opens the
// blob, and the figure is the upload's alone.
func TestLargeBodyStreamed(t *testing.T) {
	n := newNode(t)
	n.routes = "handle /alert-big {\n\t\tipcbus_broadcast {\n\t\t\talert\n\t\t\tmax_size 64MiB\n\t\t}\n\t}"
	n.settings = "max_payload 64MiB"
	b := n.start()
	const size = 48 << 20
	hwm := b.memKiB("VmHWM")
	resp, err := http.Post(b.url("/alert-big?name=nobody-handles-it"), "application/octet-stream", io.LimitReader(zeros{}, size))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("post: %d %s", resp.StatusCode, answer)
	}
	grown := b.memKiB("VmHWM") - hwm
	t.Logf("peak RSS of the receiving process grew by %d MiB for a %d MiB body", grown>>10, size>>20)
	if grown > 16<<10 {
		t.Fatalf("peak RSS grew by %d MiB: the body was held whole", grown>>10)
	}
	if n.blobBytes(t) != size {
		t.Fatalf("blob files hold %d bytes, want the alert's %d", n.blobBytes(t), size)
	}
}

// zeros reads as zero bytes forever.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
