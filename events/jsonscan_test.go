package events

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

var jsonCases = []string{
	``, ` `, `0`, `-0`, `-`, `01`, `1.`, `1.5`, `1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `-1.5e-7`, `.5`, `+1`,
	`""`, `"a\"b"`, `"\u00e9"`, `"\u00G9"`, `"\x"`, "\"a\tb\"", `"\/\b\f\n\r\t"`, "\"\xff\xfe\"", `"abc`,
	`true`, `false`, `null`, `tru`, `nul`, `truex`, `True`,
	`[]`, `[1,2]`, `[1,]`, `[,1]`, `[`, `]`, `[1 2]`, `[[[]]]`, `[[]`,
	`{}`, `{"a":1}`, `{"a":1,}`, `{"a"}`, `{"a":}`, `{a:1}`, `{"a":1 "b":2}`, `{"a":[1,{"b":null}]}`, `{"a":1]`, `[1}`,
	` {"a" : [ 1 , 2 ] } `, "\n[\r\n1\t]\n", `1 2`, `{} {}`, `"a" x`, `{"a":"b"}x`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	`{"k":` + strings.Repeat(`{"k":`, 9999) + `1` + strings.Repeat("}", 10000),
}

// TestJSONScanner: the scanner agrees with json.Valid, whole and fed a
// byte at a time.
func TestJSONScanner(t *testing.T) {
	for _, c := range jsonCases {
		want := json.Valid([]byte(c))
		var s jsonScanner
		s.write([]byte(c))
		if got := s.done(); got != want {
			t.Errorf("%.40q: scanner says %v, json.Valid %v", c, got, want)
		}
		var b jsonScanner
		for i := 0; i < len(c); i++ {
			b.write([]byte{c[i]})
		}
		if got := b.done(); got != want {
			t.Errorf("%.40q byte by byte: scanner says %v, json.Valid %v", c, got, want)
		}
	}
}

// TestJSONReader: the reader passes the bytes through and fails with
// errNotJSON at the first impossible byte or at an early EOF.
func TestJSONReader(t *testing.T) {
	for _, c := range jsonCases {
		got, err := io.ReadAll(&jsonReader{r: iotest.OneByteReader(strings.NewReader(c))})
		if valid := json.Valid([]byte(c)); valid != (err == nil) || (err != nil && !errors.Is(err, errNotJSON)) {
			t.Errorf("%.40q: %v (json.Valid %v)", c, err, valid)
		}
		if err == nil && string(got) != c {
			t.Errorf("%.40q: read %q", c, got)
		}
	}
}

func FuzzJSONScanner(f *testing.F) {
	for _, c := range jsonCases[:len(jsonCases)-3] {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s jsonScanner
		s.write(b)
		if got, want := s.done(), json.Valid(b); got != want {
			t.Fatalf("%q: scanner says %v, json.Valid %v", b, got, want)
		}
	})
}
