package events

import (
	"testing"
)

// FuzzEventDecode feeds arbitrary records to the event decoder: it must
// not panic, and what it accepts must lie within the record.
func FuzzEventDecode(f *testing.F) {
	e := encoded{flags: flagJSON | flagUnique, source: "src", event: "ev", unique: "key", slot: 3, token: 9, payload: []byte(`{"a":1}`)}
	f.Add(append(e.header(nil), e.payload...))
	e = encoded{flags: flagBlob, source: "s", event: "e", payload: []byte("ipcbus-x.zone.blob-1-1")}
	f.Add(append(e.header(nil), e.payload...))
	e = encoded{flags: flagRemote | flagUnique, source: "s", event: "e", unique: "k", remote: Remote{Node: "host-b", StreamEpoch: 7, StreamSeq: 42, PID: 10, Generation: 2, Time: 99, OriginZone: 5, OriginSeq: 77}, payload: []byte("x")}
	f.Add(append(e.header(nil), e.payload...))
	f.Add([]byte{})
	f.Add(make([]byte, encHeader))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decode(b)
		if err != nil {
			return
		}
		remote := 0
		if e.flags&flagRemote != 0 {
			remote = remoteFixed + len(e.remote.Node)
			if e.remote.Node == "" || len(e.remote.Node) > MaxNodeLen {
				t.Fatalf("accepted a remote event with node %q", e.remote.Node)
			}
		}
		if e.source == "" || e.event == "" || len(e.source)+len(e.event)+len(e.unique)+remote+len(e.payload)+encHeader != len(b) {
			t.Fatalf("accepted %+v from %d bytes", e, len(b))
		}
		if (e.unique != "") != (e.flags&flagUnique != 0) {
			t.Fatalf("unique flag and key disagree: %+v", e)
		}
		// What it accepts re-encodes to the same bytes.
		if got := append(e.header(nil), e.payload...); string(got) != string(b) {
			t.Fatalf("re-encoding differs")
		}
	})
}
