package handlers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// TestWriteJSONTextBuffers: text is escaped as encoding/json escapes a
// string, whatever the size of the writer's buffer and however full it is.
func TestWriteJSONTextBuffers(t *testing.T) {
	texts := []string{
		"",
		"plain",
		"quote \" backslash \\ tab \t nl \n cr \r <b>&amp; \u2028\u2029 \x01 héllo 日本",
		strings.Repeat("é<\"日", 3000),
		strings.Repeat("x", 70) + "\u2028",
	}
	for _, size := range []int{16, 63, 64, 100, 4096, 16 << 10} {
		for _, fill := range []int{0, 1, 10, 57} {
			for _, text := range texts {
				var out bytes.Buffer
				w := bufio.NewWriterSize(&out, size)
				w.WriteString(strings.Repeat("-", fill))
				writeJSONText(w, []byte(text))
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
				want, _ := json.Marshal(text)
				if got := out.String(); got != strings.Repeat("-", fill)+string(want[1:len(want)-1]) {
					t.Fatalf("size %d, fill %d: %.80q\nwant %.80q", size, fill, got, want)
				}
			}
		}
	}
}

// FuzzAppendSSE: the shared writers' frame (appendSSE) is byte for byte
// what writeSSE writes for the same event.
func FuzzAppendSSE(f *testing.F) {
	for _, s := range []string{"", "a", "a\n", "a\nb", "a\r\nb", "a\r", "\r\r\n", "\n\n", "x\ry\nz\r\n", "{\"k\":1}"} {
		f.Add(uint64(7), "name", []byte(s))
	}
	f.Add(uint64(0), "odd\rname\n", []byte("data"))
	f.Fuzz(func(t *testing.T, seq uint64, name string, data []byte) {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := writeSSE(bw, &event{Event: &events.Event{Seq: seq, Name: name, Data: data}}, false); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		if got := appendSSE(nil, seq, name, data); !bytes.Equal(got, buf.Bytes()) {
			t.Fatalf("appendSSE %q, writeSSE %q", got, buf.Bytes())
		}
	})
}
