package handlers

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// TestBatchPublish: NDJSON and JSON-array batches are posted as
// consecutive events and answered with their range; one bad item refuses
// the whole batch, naming it, and posts nothing.
func TestBatchPublish(t *testing.T) {
	app := newTestApp(t)
	h := &Broadcast{Source: "s", MaxSize: 1 << 20}
	use(t, app, h)
	serve := broadcastServe(h)
	// Past the limit, parsing stops: the bad item after it is never read.
	tooMany := strings.Repeat(`{"event":"a"}`+"\n", events.MaxBatch+1) + "{bad\n"
	tooManyArray := "[" + strings.Repeat(`{"event":"a"},`, events.MaxBatch+1) + "{bad]"
	ndjson := `{"event":"a","data":"one"}
{"source":"t","event":"b","data":{"n":2}}

{"event":"c"}
`
	for _, c := range []struct {
		name, target, body, ctype string
		code                      int
		want                      string
		count                     int
	}{
		{"ndjson", "/p", ndjson, "application/x-ndjson", 200, `"count":3`, 3},
		{"array", "/p?batch&event=e", `[{"data":1},{"data":"two"}]`, "application/json", 200, `"count":2`, 2},
		{"a reserved source", "/p", `{"event":"a"}` + "\n" + `{"source":"ipcbus","event":"x"}`, "application/x-ndjson", 400, `event 1: `, 0},
		{"a bad line", "/p", `{"event":"a"}` + "\n" + `{bad`, "application/x-ndjson", 400, "line 2 of the batch", 0},
		{"an empty name", "/p?batch", `[{"event":"a"},{}]`, "application/json", 400, "event 1", 0},
		{"empty", "/p", "\n", "application/x-ndjson", 400, "the batch is empty", 0},
		{"a unique key", "/p?unique=k", `{"event":"a"}`, "application/x-ndjson", 400, "cannot carry a unique key", 0},
		{"too many, ndjson", "/p", tooMany, "application/x-ndjson", 400, "the batch has more than 10000 events, the limit is 10000", 0},
		{"too many, array", "/p?batch", tooManyArray, "application/json", 400, "the batch has more than 10000 events, the limit is 10000", 0},
		{"not an array", "/p?batch", `{"event":"a"}`, "application/json", 400, "not a JSON array", 0},
		{"after the array", "/p?batch", `[{"event":"a"}] [{"event":"b"}]`, "application/json", 400, "something follows the array", 0},
		{"an array cut short", "/p?batch", `[{"event":"a"}`, "application/json", 400, "not a JSON array", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := app.bus.Tail()
			a := run(t, serve, request("POST", c.target, strings.NewReader(c.body), int64(len(c.body)), "Content-Type", c.ctype))
			if a.code != c.code || !strings.Contains(text(a), c.want) {
				t.Fatalf("%d %s, want %d %q", a.code, a.body, c.code, c.want)
			}
			posted := int(app.bus.Tail() - before)
			if posted != c.count {
				t.Fatalf("%d records posted, want %d", posted, c.count)
			}
			if c.code != 200 {
				return
			}
			var r struct{ First, Last uint64 }
			if err := json.Unmarshal([]byte(a.body), &r); err != nil || r.First != before || r.Last != before+uint64(c.count)-1 {
				t.Fatalf("answer %s, want first %d", a.body, before)
			}
			evs, _, _ := app.bus.Range(r.First, 10)
			if len(evs) != c.count {
				t.Fatalf("read back %d events", len(evs))
			}
			if c.name == "ndjson" && (evs[0].Source != "s" || string(evs[0].Data) != "one" || evs[1].Source != "t" || string(evs[1].Data) != `{"n":2}` || !evs[1].JSON || evs[2].Name != "c") {
				t.Fatalf("events %+v", evs)
			}
		})
	}
}
