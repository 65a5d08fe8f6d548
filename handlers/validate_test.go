package handlers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// TestValidate: values written in the config without placeholders are
// checked when the config is loaded, not on every request.
func TestValidate(t *testing.T) {
	app := &testApp{maxPayload: 1 << 20}
	for _, c := range []struct {
		name string
		h    interface{ Validate() error }
		want string // "" for valid
	}{
		{"send pid", &Send{PID: "abc"}, `pid "abc" is not a process id`},
		{"send pid 0", &Send{PID: "0"}, `pid "0" is not a process id`},
		{"send pid placeholder", &Send{PID: "{http.request.header.X-Pid}"}, ""},
		{"send pid literal", &Send{PID: "4242", Name: "reload"}, ""},
		{"send long name", &Send{Name: strings.Repeat("n", 255)}, "alert name length cannot exceed 254"},
		{"send max_size", &Send{MaxSize: 2 << 20}, "max_size 2097152 is over the ipcbus max_payload of 1048576 bytes"},
		{"send max_size at max_payload", &Send{MaxSize: 1 << 20}, ""},
		{"broadcast reserved source", &Broadcast{Source: "ipcbus.workers", Event: "worker_crashed"}, `source "ipcbus.workers" is reserved`},
		{"broadcast caddy", &Broadcast{Source: "caddy"}, `source "caddy" is reserved`},
		{"broadcast notice name", &Broadcast{Source: "s", Event: "ipcbus.lost"}, `names starting with "ipcbus." are reserved`},
		{"broadcast placeholder source", &Broadcast{Source: "{http.request.header.X-Source}"}, ""},
		{"broadcast bad event", &Broadcast{Source: "s", Event: strings.Repeat("e", 256)}, "event is 256 bytes"},
		{"broadcast alert with source", &Broadcast{Alert: true, Source: "s"}, "alert sends an IPC alert"},
		{"broadcast name without alert", &Broadcast{Name: "x"}, "name is the name of an alert"},
		{"broadcast alert name", &Broadcast{Alert: true, Name: ""}, ""},
		{"broadcast max_size", &Broadcast{MaxSize: 2 << 20}, "is over the ipcbus max_payload"},
		{"poll write_timeout", &Poll{WriteTimeout: -1}, "must be positive"},
		{"poll max_bytes", &Poll{MaxBytes: -1}, "max_bytes must be positive"},
		{"poll ping_interval", &Poll{PingInterval: -1}, "ping_interval must be positive"},
		{"poll publish with alerts", &Poll{Publish: true, Alerts: []string{"*"}}, "publish posts events"},
		{"poll max_size without publish", &Poll{MaxSize: 1024}, "it needs publish"},
		{"poll max_size", &Poll{Publish: true, MaxSize: 2 << 20}, "is over the ipcbus max_payload"},
		{"poll max_size at max_payload", &Poll{Publish: true, MaxSize: 1 << 20}, ""},
		{"poll bad origin", &Poll{Origins: []string{"[a"}}, "is not a host pattern"},
	} {
		t.Run(c.name, func(t *testing.T) {
			switch h := c.h.(type) {
			case *Send:
				h.app = app
			case *Broadcast:
				h.app = app
			case *Poll:
				h.app = app
			}
			err := c.h.Validate()
			if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("%v, want %q", err, c.want)
			}
		})
	}
}

// TestWriteEventJSON: the streamed encoding of an event is the JSON of
// NewEventJSON, for every kind of payload and name.
func TestWriteEventJSON(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 2, 40, 814237696, time.FixedZone("x", 3600))
	for _, e := range []events.Event{
		{Seq: 1, Source: "s", Name: "e", Data: []byte("text"), PID: 7, Generation: 2, Time: at},
		{Seq: 2, Source: "<s>&", Name: "é\u2028\u2029\x01\t", Data: []byte("a\"b\\c\n\r\t\x00\x1f<>&\u2028 é 日本"), Time: at, Unique: "k<1>"},
		{Seq: 3, Source: "bad\xffutf8", Name: "e", Data: []byte{0xff, 0xfe, 0, 'x'}, Time: at},
		{Seq: 4, Source: "s", Name: "e", Data: []byte("{\n  \"a\": [1, 2],\n  \"b\": \"<x>\"\n}"), JSON: true, Time: at},
		{Seq: 5, Source: "s", Name: "e", JSON: true, Time: at},
		{Seq: 6, Source: "s", Name: "e", Time: at},
		{Seq: 7, Source: "s", Name: "e", Data: []byte("not json"), JSON: true, Time: at},
		{Seq: 8, Source: "s", Name: "e", Data: bytes.Repeat([]byte("é"), 5000), Time: at},
		{Seq: 9, Source: "s", Name: "e", Data: append(bytes.Repeat([]byte("x"), 4095), "é"...), Time: at},
	} {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		if err := writeEventJSON(bw, &event{Event: &e}); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		want, _ := json.Marshal(NewEventJSON(&e))
		var got, exp any
		if err := json.Unmarshal(b.Bytes(), &got); err != nil {
			t.Fatalf("event %d: %v: %s", e.Seq, err, b.Bytes())
		}
		json.Unmarshal(want, &exp)
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("event %d:\n got %s\nwant %s", e.Seq, b.Bytes(), want)
		}
		if e.JSON || !json.Valid(e.Data) { // text and binary: the same bytes as encoding/json
			if e.Seq != 4 && b.String() != string(want) {
				t.Errorf("event %d bytes:\n got %s\nwant %s", e.Seq, b.Bytes(), want)
			}
		}
	}
}

// TestReadSized: a declared body is read whole, a short one is an error,
// and a client that declares much and sends little gets little memory.
func TestReadSized(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 30000)
	if b, err := readSized(iotest.HalfReader(bytes.NewReader(data)), int64(len(data))); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	if _, err := readSized(bytes.NewReader(data[:10]), 11); err != io.ErrUnexpectedEOF {
		t.Fatalf("short body: %v", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := readSized(bytes.NewReader(data[:1000]), 1<<30); err == nil {
		t.Fatal("a short body read")
	}
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 1<<20 {
		t.Fatalf("declaring 1GiB and sending 1000 bytes took %d bytes", grown)
	}
}
