package ipcbus

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestGlobalOption(t *testing.T) {
	tests := []struct {
		in   string
		want string // JSON of the app, or an error substring after "error: "
	}{
		{`ipcbus`, `{}`},
		{`ipcbus {
			zone edge-1
			dir /run/ipcbus
			size 128MiB
			mode 0660
			heartbeat 500ms
			dead_after 3s
		}`, `{"zone":"edge-1","dir":"/run/ipcbus","size":134217728,"mode":"0660","heartbeat":500000000,"dead_after":3000000000}`},
		{`ipcbus {
			size 100MB
		}`, `{"size":100000000}`},
		{`ipcbus {
			unique_timeout 10s
			max_payload 1MiB
			wait_max 200ms
			spin 1ms
		}`, `{"unique_timeout":10000000000,"max_payload":1048576,"wait_max":200000000,"spin":1000000}`},
		{`ipcbus {
			max_payload 5GiB
		}`, `error: ipcbus max_payload: 5GiB: must be between 1 byte and 4294967040 bytes`},
		{`ipcbus {
			spin fast
		}`, `error: ipcbus spin: "fast" is not a duration`},
		{`ipcbus {
			send_timeout 1s
			alert_overflow drop
		}`, `{"send_timeout":1000000000,"alert_overflow":"drop"}`},
		{`ipcbus {
			alert_overflow queue
		}`, `error: ipcbus alert_overflow: "queue": use block or drop`},
		{`ipcbus extra`, `error: ipcbus takes no arguments`},
		{`ipcbus {
			zone a/b
		}`, `error: invalid zone name "a/b"`},
		{`ipcbus {
			zone
		}`, `error: ipcbus zone needs exactly one value`},
		{`ipcbus {
			zone a b
		}`, `error: ipcbus zone needs exactly one value`},
		{`ipcbus {
			dir relative/path
		}`, `error: ipcbus dir: "relative/path" is not an absolute path`},
		{`ipcbus {
			size lots
		}`, `error: ipcbus size: "lots" is not a size`},
		{`ipcbus {
			size 10KiB
		}`, `error: ipcbus size: 10KiB: must be between 1MiB and 64GiB`},
		{`ipcbus {
			size 1TiB
		}`, `error: ipcbus size: 1TiB is too large`},
		{`ipcbus {
			mode 0644
		}`, `error: invalid zone mode "0644"`},
		{`ipcbus {
			mode rw
		}`, `error: invalid zone mode "rw"`},
		{`ipcbus {
			heartbeat soon
		}`, `error: ipcbus heartbeat: "soon" is not a duration`},
		{`ipcbus {
			heartbeat -1s
		}`, `error: ipcbus heartbeat: -1s must be positive`},
		{`ipcbus {
			heartbeat 2s
			dead_after 1s
		}`, `error: dead_after (1s) must be longer than heartbeat (2s)`},
		{`ipcbus {
			heartbeat 6s
		}`, `error: dead_after (5s) must be longer than heartbeat (6s)`},
		{`ipcbus {
			colour blue
		}`, `error: unknown ipcbus setting "colour"`},
		{`ipcbus {
			blob_quota 1GiB
		}`, `{"blob_quota":1073741824}`},
		{`ipcbus {
			max_streams 500
		}`, `{"max_streams":500}`},
		{`ipcbus {
			unique_keys 65536
		}`, `{"unique_keys":65536}`},
		{`ipcbus {
			unique_keys 100
		}`, `error: ipcbus unique_keys: invalid unique_keys 100: must be between 256 and 1048576`},
		{`ipcbus {
			max_streams 0
		}`, `error: ipcbus max_streams: "0" must be a number from 1 up`},
		{`ipcbus {
			max_payload 1MiB
			blob_quota 1MiB
		}`, `{"max_payload":1048576,"blob_quota":1048576}`},
		{`ipcbus {
			blob_quota lots
		}`, `error: ipcbus blob_quota: "lots" is not a size`},
		{`ipcbus {
			blob_quota 0
		}`, `error: ipcbus blob_quota: 0: must be at least 1 byte`},
		{`ipcbus {
			blob_quota 32MiB
		}`, `error: ipcbus blob_quota: 33554432 bytes is smaller than max_payload (67108864 bytes)`},
		{`ipcbus {
			blob_quota 1MiB
			max_payload 2MiB
		}`, `error: ipcbus blob_quota: 1048576 bytes is smaller than max_payload (2097152 bytes)`},
	}
	for _, tt := range tests {
		checkGlobalOption(t, tt.in, tt.want)
	}
	if _, err := parseGlobalOption(caddyfile.NewTestDispenser("ipcbus"), httpcaddyfile.App{}); err == nil {
		t.Error("a second ipcbus block was accepted")
	}
}

// checkGlobalOption parses an ipcbus global option and compares the app's
// JSON with want, or its error with want's text after "error: ".
func checkGlobalOption(t *testing.T, in, want string) {
	t.Helper()
	v, err := parseGlobalOption(caddyfile.NewTestDispenser(in), nil)
	if msg, isErr := strings.CutPrefix(want, "error: "); isErr {
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", in, err, msg)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: %v", in, err)
		return
	}
	got := string(v.(httpcaddyfile.App).Value)
	var a, b any
	json.Unmarshal([]byte(got), &a)
	json.Unmarshal([]byte(want), &b)
	if mustJSON(a) != mustJSON(b) {
		t.Errorf("%s:\n got %s\nwant %s", in, got, want)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestParseMode(t *testing.T) {
	for in, ok := range map[string]bool{"0600": true, "600": true, "0660": true, "0666": false, "0640": true, "0400": false, "0700": false, "0777": false, "1000": false, "x": false, "": false} {
		if _, err := parseMode(in); (err == nil) != ok {
			t.Errorf("parseMode(%q) = %v", in, err)
		}
	}
}
