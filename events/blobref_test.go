package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRangeRefs: a poller gets a blob payload as a reference it streams
// from, inline payloads as before, while handlers still get Data whole; a
// blob removed before the read is a loss.
func TestRangeRefs(t *testing.T) {
	z := openZone(t, 4<<20)
	a := newBus(t, z, 1)
	got := make(chan *Event, 2)
	a.Register(func(e *Event) { c := *e; c.Data = bytes.Clone(e.Data); got <- &c }, "s")
	start(t, a)
	big := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB: a blob
	s1, _ := a.Post("s", "big", big)
	if _, err := a.Post("s", "small", "hi"); err != nil {
		t.Fatal(err)
	}
	mustPoll(t, a)
	if e := <-got; e.Blob != nil || !bytes.Equal(e.Data, big) {
		t.Fatalf("a handler got Blob %v, %d bytes", e.Blob, len(e.Data))
	}
	evs, next, lost := a.RangeRefs(s1, 10, nil)
	if len(evs) != 2 || lost != 0 || next != s1+2 {
		t.Fatalf("%d events, next %d, lost %d", len(evs), next, lost)
	}
	if evs[0].Data != nil || evs[0].Blob == nil || evs[0].Blob.Size != int64(len(big)) {
		t.Fatalf("blob event: Data %d bytes, Blob %+v", len(evs[0].Data), evs[0].Blob)
	}
	f, err := evs[0].Blob.Open()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(b, big) {
		t.Fatalf("read %d bytes from the blob", len(b))
	}
	if evs[1].Blob != nil || string(evs[1].Data) != "hi" {
		t.Fatalf("inline event: %+v", evs[1])
	}
	fl := NewFollower(z, s1)
	fl.SetBlobRefs(true)
	if ev, _, ok := fl.Next(time.Second); !ok || ev.Blob == nil || ev.Data != nil {
		t.Fatalf("follower: ok %v, Blob %v, %d bytes", ok, ev.Blob, len(ev.Data))
	}
	os.Remove(filepath.Join(filepath.Dir(z.Path()), evs[0].Blob.Name))
	if _, err := evs[0].Blob.Open(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open of a removed blob: %v", err)
	}
	if evs, _, lost := a.RangeRefs(s1, 10, nil); len(evs) != 1 || lost != 1 {
		t.Fatalf("after removal: %d events, lost %d", len(evs), lost)
	}
}

func TestValidJSON(t *testing.T) {
	for _, s := range []string{`{"a":[1,2,{"b":null}]}`, ` "x" `, `{"a":`, `1 2`, ``, `[1,]`, `true`, "\"\xff\""} {
		ok, err := ValidJSON(strings.NewReader(s))
		if err != nil || ok != json.Valid([]byte(s)) {
			t.Errorf("%q: %v %v, json.Valid %v", s, ok, err, json.Valid([]byte(s)))
		}
	}
}
