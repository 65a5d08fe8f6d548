package chaos

import (
	"strings"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

func payload(id ID, n int) []byte {
	p := make([]byte, n)
	Fill(p, id)
	return p
}

func TestPayloadRoundTrip(t *testing.T) {
	for _, n := range []int{HeaderSize, HeaderSize + 1, HeaderSize + 7, HeaderSize + 8, 1000, 77312} {
		id := ID{Writer: 2, Inc: 5, Counter: uint64(n) * 3}
		got, d := Check(payload(id, n))
		if d.What != "" || got != id {
			t.Fatalf("%d bytes: %+v %+v, want %+v intact", n, got, d, id)
		}
	}
}

func TestPayloadDamage(t *testing.T) {
	id := ID{Writer: 1, Inc: 1, Counter: 9}
	for _, off := range []int{0, 4, 12, 20, 24, HeaderSize, 100, 1023} {
		p := payload(id, 1024)
		p[off] ^= 0x40
		if _, d := Check(p); d.What == "" {
			t.Errorf("a flipped bit at %d passed", off)
		}
	}
	// Another record's bytes copied over part of the body.
	p, q := payload(id, 1024), payload(ID{Writer: 1, Inc: 1, Counter: 10}, 1024)
	copy(p[500:600], q[500:600])
	if _, d := Check(p); d.FirstBad < 500 || d.BadBytes < 90 {
		t.Fatalf("a partial stale copy: %+v", d)
	}
	// The same record's own bytes, shifted by 8.
	p = payload(id, 1024)
	copy(p[200:], p[208:400])
	if _, d := Check(p); d.What == "" {
		t.Fatal("a shifted copy passed")
	}
	// The last partial word.
	p = payload(id, 1021)
	p[1020] ^= 1
	if _, d := Check(p); d.FirstBad != 1020 || d.BadBytes != 1 {
		t.Fatalf("a flipped last byte: %+v", d)
	}
}

func TestCheckerIdentityAndOrder(t *testing.T) {
	rep := ReaderReport{}
	ck := checker{rep: &rep, max: 8, last: map[[2]uint32]uint64{}}
	rec := func(seq uint64, meta, in ID) zone.Record {
		return zone.Record{Seq: seq, Kind: meta.Writer, Gen: meta.Inc, Aux: meta.Counter, Data: payload(in, 300)}
	}
	a, b := ID{Writer: 0, Inc: 1, Counter: 4}, ID{Writer: 1, Inc: 2, Counter: 4}
	ck.record(rec(1, a, a))
	ck.record(rec(2, b, b))
	if rep.Corrupt != 0 {
		t.Fatalf("intact records counted corrupt: %+v", rep)
	}
	ck.record(rec(3, b, a)) // a whole stale copy of another record
	ck.record(rec(4, a, a)) // a repeat
	a.Counter = 2
	ck.record(rec(5, a, a)) // a step back
	if rep.Corrupt != 3 || rep.Kinds["identity"] != 1 || rep.Kinds["order"] != 2 || len(rep.Examples) != 3 {
		t.Fatalf("got %+v", rep)
	}
	if rep.Examples[2].Kind != "order" || !strings.Contains(rep.Examples[2].What, "after 4") {
		t.Fatalf("example %+v", rep.Examples[2])
	}
}

func BenchmarkFillCheck(b *testing.B) {
	p := make([]byte, 64<<10)
	b.SetBytes(int64(len(p)))
	for i := 0; b.Loop(); i++ {
		id := ID{Writer: 1, Counter: uint64(i)}
		Fill(p, id)
		if _, d := Check(p); d.What != "" {
			b.Fatal(d.What)
		}
	}
}
