package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func alertsPage(t *testing.T, a answer) AlertsPage {
	t.Helper()
	return decodePage[AlertsPage](t, a)
}

// TestPollAlertsServeHTTP: with alerts, ipcbus_poll serves the alerts to
// its process and the broadcasts, filtered by the configured names and
// the name parameter, in long-polls and streams, each with its sender's
// pid; bus events are not served there; max_bytes and max_streams hold.
func TestPollAlertsServeHTTP(t *testing.T) {
	app := newTestApp(t)
	c := app.alerts
	first := c.Tail()
	me := os.Getpid()
	post(t, app, "p", "e", "an event, not an alert")
	for _, s := range []struct {
		name string
		data []byte
		all  bool
	}{{"deploy", []byte("v2"), false}, {"cert-renewed", []byte{0xff, 0}, true}, {"other", []byte("x"), false}} {
		var err error
		if s.all {
			err = c.Broadcast(s.name, s.data)
		} else {
			err = c.Send(me, s.name, s.data)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		patterns []string
		query    string
		want     string // name:data:broadcast of each alert
	}{
		{"all", []string{"*"}, "", `deploy:"v2":false,cert-renewed:"/wA=":true,other:"x":false`},
		{"configured names", []string{"deploy", "cert-*"}, "", `deploy:"v2":false,cert-renewed:"/wA=":true`},
		{"name parameter narrows", []string{"deploy", "cert-*"}, "&name=cert-*,other", `cert-renewed:"/wA=":true`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Poll{Alerts: tc.patterns}
			use(t, app, h)
			ans := run(t, pollServe(h), request("GET", fmt.Sprintf("/a?since=%d&timeout=0%s", first, tc.query), nil, 0))
			if ans.header.Get(HeaderPID) != strconv.Itoa(me) {
				t.Errorf("%s: %q", HeaderPID, ans.header.Get(HeaderPID))
			}
			p := alertsPage(t, ans)
			var got []string
			for _, a := range p.Alerts {
				if a.PID != me || a.Generation != 1 || a.Time.IsZero() {
					t.Errorf("alert %+v", a)
				}
				if (a.DataEncoding == "base64") != (a.Name == "cert-renewed") {
					t.Errorf("data_encoding %q of %s", a.DataEncoding, a.Name)
				}
				got = append(got, fmt.Sprintf("%s:%s:%v", a.Name, a.Data, a.Broadcast))
			}
			if strings.Join(got, ",") != tc.want {
				t.Fatalf("got %s\nwant %s", strings.Join(got, ","), tc.want)
			}
		})
	}
	t.Run("stream", func(t *testing.T) {
		h := &Poll{Alerts: []string{"deploy", "late"}}
		use(t, app, h)
		srv, _ := pollServer(t, h)
		go func() {
			time.Sleep(100 * time.Millisecond) // after the stream has caught up
			c.Send(me, "late", []byte("line one\nline two"))
		}()
		evs := readSSE(t, srv.URL+fmt.Sprintf("/a?since=%d", first), 2)
		for i, want := range []string{"deploy", "late"} {
			var a AlertJSON
			if err := json.Unmarshal([]byte(evs[i].data), &a); err != nil || evs[i].event != want || a.Name != want || a.PID != me || evs[i].id != strconv.FormatUint(a.Seq, 10) {
				t.Fatalf("frame %d %+v: %v", i, evs[i], err)
			}
		}
		var a AlertJSON
		json.Unmarshal([]byte(evs[1].data), &a)
		if string(a.Data) != `"line one\nline two"` {
			t.Fatalf("data %s", a.Data)
		}
	})
	t.Run("max_bytes", func(t *testing.T) {
		from := c.Tail()
		for i := 0; i < 3; i++ {
			c.Send(me, "big", bytes.Repeat([]byte("b"), 600))
		}
		h := &Poll{Alerts: []string{"big"}, MaxBytes: 1000}
		use(t, app, h)
		p := alertsPage(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/a?since=%d&timeout=0", from), nil, 0)))
		if len(p.Alerts) != 1 {
			t.Fatalf("%d alerts in a page of 1000 bytes", len(p.Alerts))
		}
	})
	t.Run("max_streams", func(t *testing.T) {
		h := &Poll{Alerts: []string{"*"}, MaxStreams: 1}
		use(t, app, h)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(t, pollServe(h), request("GET", "/a?timeout=1m", nil, 0).WithContext(ctx))
		}()
		for deadline := time.Now().Add(10 * time.Second); h.open.Load() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the first poll never opened")
			}
		}
		if a := run(t, pollServe(h), request("GET", "/a?timeout=0", nil, 0)); a.code != 503 {
			t.Fatalf("a second poll: %d %s", a.code, a.body)
		}
		cancel()
		wg.Wait()
	})
	t.Run("not running", func(t *testing.T) {
		h := &Poll{Alerts: []string{"*"}}
		use(t, app, h)
		app.down = true
		defer func() { app.down = false }()
		if a := run(t, pollServe(h), request("GET", "/a?timeout=0", nil, 0)); a.code != 503 {
			t.Fatalf("%d %s", a.code, a.body)
		}
	})
}

// TestPollAlertsValidate: alerts cannot be mixed with event filters, and
// its patterns are checked.
func TestPollAlertsValidate(t *testing.T) {
	for _, tc := range []struct {
		h    *Poll
		want string
	}{
		{&Poll{Alerts: []string{"x"}, Sources: []string{"s"}}, "alerts serves IPC alerts, which have a name but no source or event"},
		{&Poll{Alerts: []string{"x"}, Envelope: true}, "leave sources, events and envelope out"},
		{&Poll{Alerts: []string{"a*b"}}, `alert name pattern "a*b": * is allowed only at the end`},
		{&Poll{Alerts: []string{""}}, "an alert name pattern is empty"},
		{&Poll{Alerts: []string{"x*"}}, ""},
	} {
		tc.h.setDefaults()
		err := tc.h.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.h.Alerts, err, tc.want)
		}
	}
}

// TestAlertStreamsWant: while a handler with alerts lives, the alerts it
// streams count as handled (AlertStreamsWant), and no longer after.
func TestAlertStreamsWant(t *testing.T) {
	release := watchAlerts([]string{"deploy", "cert-*"})
	for name, want := range map[string]bool{"deploy": true, "cert-x": true, "deployed": false, "other": false} {
		if AlertStreamsWant(name) != want {
			t.Errorf("AlertStreamsWant(%q) = %v", name, !want)
		}
	}
	release()
	if AlertStreamsWant("deploy") {
		t.Error("still wanted after release")
	}
}
