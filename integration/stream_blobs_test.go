package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bigPayloads are count payloads of size bytes each: text in lines, and
// one JSON array of strings (no line breaks).
func bigPayloads(count, size int) [][]byte {
	var out [][]byte
	for i := 0; i < count; i++ {
		var b bytes.Buffer
		if i == 2 {
			b.WriteByte('[')
			for n := 0; b.Len() < size-64; n++ {
				fmt.Fprintf(&b, "%q,", fmt.Sprintf("event %d item %d é", i, n))
			}
			b.WriteString(`"end"`)
			b.WriteString(strings.Repeat(" ", size-b.Len()-1))
			b.WriteByte(']')
		} else {
			for n := 0; b.Len() < size-64; n++ {
				fmt.Fprintf(&b, "event %d line %d é\n", i, n)
			}
			b.WriteString(strings.Repeat("x", size-b.Len()-1))
			b.WriteByte('\n')
		}
		out = append(out, b.Bytes())
	}
	return out
}

// stalledStream opens an SSE stream from after seq on a connection with
// a tiny receive buffer and never reads it.
func stalledStream(t *testing.T, p *proc, after uint64) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /events?source=big HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nLast-Event-ID: %d\r\n\r\n", after)
	return conn
}

// readStream reads count events of an SSE stream from after seq and
// returns their data (the data lines joined by LF).
func readStream(t *testing.T, p *proc, after uint64, count int) [][]byte {
	t.Helper()
	req, _ := http.NewRequest("GET", p.url("/events?source=big"), nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatUint(after, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	var out [][]byte
	var data []byte
	lines := 0
	for len(out) < count {
		l, err := br.ReadBytes('\n')
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		switch {
		case bytes.HasPrefix(l, []byte("data: ")):
			if lines > 0 {
				data = append(data, '\n')
			}
			data = append(data, bytes.TrimSuffix(l[len("data: "):], []byte("\n"))...)
			lines++
		case len(l) == 1 && lines > 0:
			out = append(out, data)
			data, lines = nil, 0
		}
	}
	return out
}

// TestBlobsStreamedToPollers: three SSE clients that do not read and a
// since=0 long-poll over 5 × 32 MiB events grow the process's peak RSS by
// far less than the payloads (each held them whole, twice, before: three
// stalled clients held hundreds of MiB), and clients that read get every
// byte right, from the stream and from the pages.
func TestBlobsStreamedToPollers(t *testing.T) {
	n := newNode(t)
	n.routes = "handle /publish-big {\n\t\tipcbus_broadcast {\n\t\t\tmax_size 32MiB\n\t\t}\n\t}"
	a := n.start()
	const count, size = 5, 32 << 20
	payloads := bigPayloads(count, size)
	var first uint64
	for i, p := range payloads {
		ct := "text/plain"
		if p[0] == '[' {
			ct = "application/json"
		}
		resp, err := http.Post(a.url("/publish-big?source=big&event=e"), ct, bytes.NewReader(p))
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Seq uint64 }
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("post %d: %d", i, resp.StatusCode)
		}
		if i == 0 {
			first = r.Seq
		}
	}
	// The worker's own handlers read every blob whole (Go handlers get
	// Data): that peak is behind the baseline.
	a.waitFor("a to handle the posts", func() bool { return a.stats().Events.BlobsRead >= count })
	hwm := a.memKiB("VmHWM")
	for i := 0; i < 3; i++ {
		stalledStream(t, a, first-1)
	}
	a.waitFor("the stalled streams to open", func() bool { return a.stats().HTTP.OpenStreams == 3 })

	got := readStream(t, a, first-1, count)
	for i := range payloads {
		if !bytes.Equal(got[i], payloads[i]) {
			t.Fatalf("stream event %d: %d bytes, not the %d posted", i, len(got[i]), len(payloads[i]))
		}
	}
	since := uint64(0)
	for i := 0; i < count; {
		resp, err := http.Get(a.url(fmt.Sprintf("/events?since=%d&source=big&timeout=0", since)))
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Events []struct {
				Data         json.RawMessage
				DataEncoding string `json:"data_encoding"`
			}
			Next uint64
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || len(page.Events) != 1 {
			t.Fatalf("page from %d: %v, %d events", since, err, len(page.Events))
		}
		data := []byte(page.Events[0].Data)
		if payloads[i][0] != '[' {
			var s string
			json.Unmarshal(data, &s)
			data = []byte(s)
		}
		if !bytes.Equal(data, payloads[i]) {
			t.Fatalf("page event %d: %d bytes, not the %d posted", i, len(data), len(payloads[i]))
		}
		since = page.Next
		i++
	}
	time.Sleep(200 * time.Millisecond) // the stalled streams are blocked on their first event by now
	grown := a.memKiB("VmHWM") - hwm
	t.Logf("peak RSS grew by %d MiB with 3 stalled streams, a reader and 5 pages over %d × %d MiB", grown>>10, count, size>>20)
	if grown > 64<<10 {
		t.Fatalf("peak RSS grew by %d MiB: payloads were held whole", grown>>10)
	}
	if s := a.stats().HTTP.OpenStreams; s != 3 {
		t.Fatalf("%d open streams, want the 3 stalled ones", s)
	}
}
