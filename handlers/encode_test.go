package handlers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
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
