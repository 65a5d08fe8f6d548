package fleet

import (
	"bytes"
	"testing"
)

func TestWireRoundTrip(t *testing.T) {
	for _, m := range []message{
		{source: "s", event: "e", node: "n", data: []byte("x")},
		{json: true, source: "cache", event: "purge", unique: "k1", node: "host-a", pid: 7, gen: 2, time: 99, seq: 1 << 40, zone: 12345, prev: 1<<40 - 3, data: []byte(`{"a":1}`)},
		{source: "s", event: "empty", node: "n"},
	} {
		got, err := decode(m.encode(nil))
		if err != nil {
			t.Fatalf("decode(%+v): %v", m, err)
		}
		if got.source != m.source || got.event != m.event || got.unique != m.unique || got.node != m.node || got.json != m.json ||
			got.pid != m.pid || got.gen != m.gen || got.time != m.time || got.seq != m.seq || got.zone != m.zone || got.prev != m.prev || !bytes.Equal(got.data, m.data) {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
	}
}

func TestWireRejects(t *testing.T) {
	good := (&message{source: "s", event: "e", unique: "u", node: "n", data: []byte("d")}).encode(nil)
	for name, mut := range map[string]func([]byte) []byte{
		"short":         func(b []byte) []byte { return b[:wireHeader-1] },
		"version":       func(b []byte) []byte { b[0] = 9; return b },
		"unknown flag":  func(b []byte) []byte { b[1] |= 0x80; return b },
		"reserved":      func(b []byte) []byte { b[6] = 1; return b },
		"no source":     func(b []byte) []byte { b[2] = 0; return b },
		"no node":       func(b []byte) []byte { b[5] = 0; return b },
		"long node":     func(b []byte) []byte { b[5] = 65; return b },
		"unique no key": func(b []byte) []byte { b[4] = 0; return b },
		"key no flag":   func(b []byte) []byte { b[1] &^= wireUnique; return b },
		"beyond":        func(b []byte) []byte { b[3] = 200; return b },
	} {
		if _, err := decode(mut(bytes.Clone(good))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzMessageDecode feeds arbitrary bodies to the decoder: it must not
// panic, and what it accepts re-encodes to the same bytes.
func FuzzMessageDecode(f *testing.F) {
	f.Add((&message{json: true, source: "s", event: "e", unique: "k", node: "n", data: []byte("{}")}).encode(nil))
	f.Add(make([]byte, wireHeader))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		if m.source == "" || m.event == "" || m.node == "" || len(m.node) > 64 {
			t.Fatalf("accepted %+v", m)
		}
		if got := m.encode(nil); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}
