package handlers

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// The whole-payload encoders as they were before blobs were streamed,
// kept as the reference the streaming ones must match byte for byte.

func wholeEventJSON(w *bufio.Writer, e *events.Event) {
	var sb [512]byte
	b := append(sb[:0], `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"source":`...)
	b = appendJSONString(b, e.Source)
	b = append(b, `,"event":`...)
	b = appendJSONString(b, e.Name)
	b = append(b, `,"data":`...)
	w.Write(b)
	kind := dataKind(e)
	switch kind {
	case kindNull:
		w.WriteString("null")
	case kindJSON:
		w.Write(e.Data)
	case kindText:
		w.WriteByte('"')
		writeJSONText(w, e.Data)
		w.WriteByte('"')
	case kindBinary:
		w.WriteByte('"')
		enc := base64.NewEncoder(base64.StdEncoding, w)
		enc.Write(e.Data)
		enc.Close()
		w.WriteByte('"')
	}
	b = sb[:0]
	if kind == kindBinary {
		b = append(b, `,"data_encoding":"`+EncodingBase64+`"`...)
	}
	b = append(b, `,"pid":`...)
	b = strconv.AppendInt(b, int64(e.PID), 10)
	b = append(b, `,"generation":`...)
	b = strconv.AppendInt(b, int64(e.Generation), 10)
	b = append(b, `,"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if e.Unique != "" {
		b = append(b, `,"unique":`...)
		b = appendJSONString(b, e.Unique)
	}
	b = append(b, '}')
	w.Write(b)
}

func wholeSSE(w *bufio.Writer, e *events.Event, envelope bool) {
	var sb [300]byte
	b := append(sb[:0], "id: "...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, "\nevent: "...)
	b = append(b, e.Name...)
	b = append(b, '\n')
	w.Write(b)
	d := &sseData{w: w}
	if envelope {
		bw := bufio.NewWriterSize(d, 4096)
		wholeEventJSON(bw, e)
		bw.Flush()
	} else {
		d.Write(e.Data)
	}
	d.end()
}

// blobPayloads are payloads over what the ring carries, cut where a
// 64 KiB piece ends: a rune, a CRLF, a JSON string across the cut.
func blobPayloads() map[string][]byte {
	at := func(fill string, tail string) []byte { // tail straddles the first piece's end
		b := bytes.Repeat([]byte(fill), (writeChunk-len(tail)/2)/len(fill))
		b = append(b, tail...)
		return append(b, bytes.Repeat([]byte(fill), 2*writeChunk/len(fill))...)
	}
	obj := map[string]any{"text": strings.Repeat("é<日本>\n\"\\", 20000), "n": []int{1, 2, 3}}
	js, _ := json.MarshalIndent(obj, "", "  ")
	return map[string][]byte{
		"json":        js,
		"text-runes":  at("x", "é日本😀é"),
		"text-crlf":   at("ab\n", "\r\n\r\r\n"),
		"text-1":      at("\u2028<&>", "\t\x01\x1f"),
		"binary":      at("\x00\xff\xfe", "\x80"),
		"binary-late": append(bytes.Repeat([]byte("é"), writeChunk), 0xff, 'x'),
		"cut-4-byte":  append(bytes.Repeat([]byte("x"), writeChunk-2), "😀😀"...),
	}
}

// TestStreamedEncodingMatchesWhole: a blob payload streamed from its file
// in 64 KiB pieces comes out byte for byte as the whole-payload encoders
// wrote it: JSON pages (JSON, text, binary) and SSE (data lines, envelope).
func TestStreamedEncodingMatchesWhole(t *testing.T) {
	app := newTestApp(t)
	for name, data := range blobPayloads() {
		var seq uint64
		var err error
		if name == "json" {
			seq, err = app.bus.Post("s", name, json.RawMessage(data))
		} else {
			seq, err = app.bus.Post("s", name, data)
		}
		if err != nil {
			t.Fatal(err)
		}
		whole, _, _ := app.bus.Range(seq, 1)
		refs, _, _ := app.bus.RangeRefs(seq, 1, nil)
		if len(whole) != 1 || len(refs) != 1 || refs[0].Blob == nil || refs[0].Data != nil {
			t.Fatalf("%s: not read as a blob reference", name)
		}
		if refs[0].Blob.Size != int64(len(data)) || !bytes.Equal(whole[0].Data, data) {
			t.Fatalf("%s: sizes %d %d, want %d", name, refs[0].Blob.Size, len(whole[0].Data), len(data))
		}
		for _, mode := range []string{"json", "sse", "envelope"} {
			var want, got bytes.Buffer
			ww, gw := bufio.NewWriter(&want), bufio.NewWriter(&got)
			ev, err := openEvent(&refs[0])
			if err != nil {
				t.Fatal(err)
			}
			switch mode {
			case "json":
				wholeEventJSON(ww, &whole[0])
				err = writeEventJSON(gw, ev)
			default:
				wholeSSE(ww, &whole[0], mode == "envelope")
				err = writeSSE(gw, ev, mode == "envelope")
			}
			ev.close()
			ww.Flush()
			gw.Flush()
			if err != nil {
				t.Fatalf("%s %s: %v", name, mode, err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				i := 0
				for i < min(got.Len(), want.Len()) && got.Bytes()[i] == want.Bytes()[i] {
					i++
				}
				t.Errorf("%s %s: %d bytes, want %d; first difference at %d: %.40q, want %.40q", name, mode, got.Len(), want.Len(), i, got.Bytes()[i:], want.Bytes()[i:])
			}
			if mode == "json" && !json.Valid(got.Bytes()) {
				t.Errorf("%s: invalid JSON", name)
			}
		}
	}
}

// TestRuneCut: a piece never ends inside a UTF-8 sequence.
func TestRuneCut(t *testing.T) {
	for _, c := range []struct {
		s    string
		want int
	}{
		{"ab", 2}, {"a\xc3", 1}, {"a\xc3\xa9", 3}, {"a\xe6\x97", 1}, {"a\xf0\x9f\x98", 1}, {"a\xf0\x9f\x98\x80", 5}, {"\x80\x80\x80", 3},
	} {
		if got := runeCut([]byte(c.s)); got != c.want {
			t.Errorf("%q: %d, want %d", c.s, got, c.want)
		}
	}
}
