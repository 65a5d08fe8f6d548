package handlers

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"strconv"
	"time"
	"unicode/utf8"
)

// writeEventJSON writes an event as the JSON object of EventJSON, its
// payload streamed without another copy of it (a blob's from its file, a
// piece at a time): JSON as it was posted, text escaped, binary in base64
// with "data_encoding":"base64". A blob that cannot be read fails it
// midway.
func writeEventJSON(w *bufio.Writer, e *event) error {
	kind, err := e.kind()
	if err != nil {
		return err
	}
	// The fields are appended to the writer's free buffer, not to one of
	// their own (which would escape to the heap through Write).
	b := append(w.AvailableBuffer(), `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	if e.alert {
		b = append(b, `,"name":`...)
		b = appendJSONString(b, e.Name)
	} else {
		b = append(b, `,"source":`...)
		b = appendJSONString(b, e.Source)
		b = append(b, `,"event":`...)
		b = appendJSONString(b, e.Name)
	}
	b = append(b, `,"data":`...)
	w.Write(b)
	switch kind {
	case kindNull:
		w.WriteString("null")
	case kindJSON:
		err = e.pieces(false, func(p []byte) { w.Write(p) })
	case kindText:
		w.WriteByte('"')
		err = e.pieces(true, func(p []byte) { writeJSONText(w, p) })
		w.WriteByte('"')
	case kindBinary:
		w.WriteByte('"')
		enc := base64.NewEncoder(base64.StdEncoding, w)
		err = e.pieces(false, func(p []byte) { enc.Write(p) })
		enc.Close()
		w.WriteByte('"')
	}
	if err != nil {
		return err
	}
	b = w.AvailableBuffer()
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
	if e.alert {
		b = append(b, `,"broadcast":`...)
		b = strconv.AppendBool(b, e.toAll)
	}
	if e.Unique != "" {
		b = append(b, `,"unique":`...)
		b = appendJSONString(b, e.Unique)
	}
	if e.Node != "" {
		b = append(b, `,"node":`...)
		b = appendJSONString(b, e.Node)
	}
	b = append(b, '}')
	_, err = w.Write(b)
	return err
}

// writeJSONText writes valid UTF-8 text escaped for a JSON string (without
// its quotes), a piece at a time.
func writeJSONText(w *bufio.Writer, data []byte) {
	for len(data) > 0 {
		// Escaped into the writer's free buffer (one of its own would
		// escape to the heap through Write).
		b := w.AvailableBuffer()
		if cap(b) < 64 {
			if w.Flush() == nil {
				b = w.AvailableBuffer()
			}
			if cap(b) < 64 { // a tiny writer, or a failed one
				b = make([]byte, 0, 4096)
			}
		}
		for len(data) > 0 && len(b)+6 <= cap(b) { // an escaped rune takes at most 6 bytes
			r, n := rune(data[0]), 1
			if r >= utf8.RuneSelf {
				r, n = utf8.DecodeRune(data)
			}
			b = appendJSONRune(b, r, data[:n])
			data = data[n:]
		}
		w.Write(b)
	}
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// does (HTML characters and U+2028/U+2029 too; invalid UTF-8 as U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		r, n := rune(s[i]), 1
		if r >= utf8.RuneSelf {
			r, n = utf8.DecodeRuneInString(s[i:])
		}
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = appendJSONRune(b, r, []byte(s[i:i+n]))
		}
		i += n
	}
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

func appendJSONRune(b []byte, r rune, raw []byte) []byte {
	switch {
	case r == '"' || r == '\\':
		return append(b, '\\', byte(r))
	case r == '\n':
		return append(b, '\\', 'n')
	case r == '\r':
		return append(b, '\\', 'r')
	case r == '\t':
		return append(b, '\\', 't')
	case r < 0x20 || r == '<' || r == '>' || r == '&':
		return append(b, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf])
	case r == '\u2028' || r == '\u2029':
		return append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
	}
	return append(b, raw...)
}

// sseData writes a payload as Server-Sent Events data lines: "data: " at
// the start of each line, a line break wherever the payload holds one (CR,
// LF or CRLF, which SSE cannot tell apart: each arrives as LF), however
// the payload is cut into writes.
type sseData struct {
	w     *bufio.Writer
	mid   bool // inside a data line
	cr    bool // the last byte was a CR: an LF right after it belongs to it
	bytes int64
}

func (d *sseData) Write(p []byte) (int, error) {
	n := len(p)
	d.bytes += int64(n)
	for len(p) > 0 {
		if d.cr {
			d.cr = false
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		if !d.mid {
			d.w.WriteString("data: ")
			d.mid = true
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			d.w.Write(p)
			break
		}
		d.w.Write(p[:i])
		d.w.WriteByte('\n')
		d.mid, d.cr = false, p[i] == '\r'
		p = p[i+1:]
	}
	return n, nil
}

// end closes the event: its last data line and the blank line.
func (d *sseData) end() error {
	if !d.mid {
		d.w.WriteString("data: ")
	}
	_, err := d.w.WriteString("\n\n")
	return err
}

// appendSSE appends the Server-Sent Events frame of an event held in
// memory, without envelope: exactly what writeSSE writes for it, in one
// buffer (the frame a shared writer sends to every stream).
func appendSSE(b []byte, seq uint64, name string, data []byte) []byte {
	b = append(b, "id: "...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, "\nevent: "...)
	for i := 0; i < len(name); i++ { // names hold no line break; be sure
		c := name[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	b = append(b, "\ndata: "...)
	for len(data) > 0 {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			b = append(b, data...)
			break
		}
		b = append(b, data[:i]...)
		b = append(b, "\ndata: "...)
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++ // CRLF is one line break
		}
		data = data[i+1:]
	}
	return append(b, "\n\n"...)
}

// writeSSE writes one event: its id, its name, and its payload (or, with
// envelope, the event's JSON object) as data lines, a blob's a piece at a
// time from its file. It fails only when the payload cannot be read: the
// event is then cut short, and the stream must end.
func writeSSE(w *bufio.Writer, e *event, envelope bool) error {
	var sb [300]byte
	b := append(sb[:0], "id: "...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, "\nevent: "...)
	for i := 0; i < len(e.Name); i++ { // names hold no line break; be sure
		c := e.Name[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	b = append(b, '\n')
	w.Write(b)
	d := &sseData{w: w}
	var err error
	if envelope {
		bw := bufio.NewWriterSize(d, 4096)
		err = writeEventJSON(bw, e)
		bw.Flush()
	} else {
		err = e.pieces(false, func(p []byte) { d.Write(p) })
	}
	if err != nil {
		return err
	}
	d.end() // a failed write shows in the flush
	return nil
}
