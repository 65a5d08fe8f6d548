package handlers_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/ipcbus/caddy-ipcbus"
)

var update = flag.Bool("update", false, "rewrite the golden JSON files")

// TestAdaptGolden adapts every testdata/*.caddyfiletest and compares the
// JSON with the golden file beside it.
func TestAdaptGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.caddyfiletest")
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			in, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, warns, err := caddyfile.Adapter{ServerType: httpServerType()}.Adapt(in, map[string]any{"filename": f})
			if err != nil {
				t.Fatal(err)
			}
			if len(warns) > 0 {
				t.Fatalf("warnings: %v", warns)
			}
			var pretty bytes.Buffer
			json.Indent(&pretty, out, "", "\t")
			pretty.WriteByte('\n')
			golden := strings.TrimSuffix(f, ".caddyfiletest") + ".json"
			if *update {
				os.WriteFile(golden, pretty.Bytes(), 0o644)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if pretty.String() != string(want) {
				t.Fatalf("adapted JSON differs from %s:\n%s", golden, pretty.String())
			}
		})
	}
}

// TestAdaptErrors: every bad form of the directives gives its error.
func TestAdaptErrors(t *testing.T) {
	for _, c := range []struct{ site, want string }{
		{"ipcbus_send 1 2 3", "ipcbus_send takes at most two arguments"},
		{"ipcbus_send {\n\t\tpid\n\t}", "ipcbus_send pid needs exactly one value"},
		{"ipcbus_send {\n\t\tname a b\n\t}", "ipcbus_send name needs exactly one value"},
		{"ipcbus_send {\n\t\tto 1\n\t}", `unknown ipcbus_send setting "to"; the settings are pid, name and max_size`},
		{"ipcbus_send {\n\t\tmax_size huge\n\t}", `ipcbus_send max_size: "huge" is not a size`},
		{"ipcbus_send {\n\t\tmax_size 0\n\t}", `ipcbus_send max_size: "0" is not a size`},
		{"ipcbus_send {\n\t\tmax_size\n\t}", "ipcbus_send max_size needs exactly one value"},
		{"ipcbus_broadcast a b c", "ipcbus_broadcast takes at most two arguments"},
		{"ipcbus_broadcast {\n\t\tunique\n\t}", "ipcbus_broadcast unique needs exactly one value"},
		{"ipcbus_broadcast {\n\t\talert a b\n\t}", "alert takes at most one argument"},
		{"ipcbus_broadcast chat {\n\t\talert\n\t}", "which has a name but no source, event or unique key"},
		{"ipcbus_broadcast {\n\t\tcolor red\n\t}", `unknown ipcbus_broadcast setting "color"`},
		{"ipcbus_broadcast {\n\t\tmax_size 5GiB\n\t}", `ipcbus_broadcast max_size: "5GiB" is not a size from 1 byte to 4294967040 bytes`},
		{"ipcbus_poll {\n\t\tsource\n\t}", "ipcbus_poll source needs at least one value"},
		{"ipcbus_poll {\n\t\ttimeout soon\n\t}", `ipcbus_poll timeout: "soon" is not a positive duration`},
		{"ipcbus_poll {\n\t\tkeepalive 0s\n\t}", `ipcbus_poll keepalive: "0s" is not a positive duration`},
		{"ipcbus_poll {\n\t\tlimit 0\n\t}", `ipcbus_poll limit: "0" must be a number from 1 to 10000`},
		{"ipcbus_poll {\n\t\tmax_streams many\n\t}", `ipcbus_poll max_streams: "many" must be a number from 1 up`},
		{"ipcbus_poll {\n\t\tretry 1s\n\t}", `unknown ipcbus_poll setting "retry"`},
		{"ipcbus_poll {\n\t\twrite_timeout 0\n\t}", `ipcbus_poll write_timeout: "0" is not a positive duration`},
		{"ipcbus_poll {\n\t\tmax_bytes lots\n\t}", `ipcbus_poll max_bytes: "lots" is not a size`},
		{"ipcbus_poll {\n\t\tenvelope yes\n\t}", "ipcbus_poll envelope takes no value"},
		{"ipcbus_poll {\n\t\tlimit 10001\n\t}", `ipcbus_poll limit: "10001" must be a number from 1 to 10000`},
		{"ipcbus_poll {\n\t\tping_interval never\n\t}", `ipcbus_poll ping_interval: "never" is not a positive duration`},
		{"ipcbus_poll {\n\t\tpublish yes\n\t}", "ipcbus_poll publish takes no value"},
		{"ipcbus_poll {\n\t\tmax_size big\n\t}", `ipcbus_poll max_size: "big" is not a size`},
		{"ipcbus_poll {\n\t\torigins\n\t}", "ipcbus_poll origins needs at least one host pattern"},
		{"ipcbus_poll {\n\t\talerts a*b\n\t}", `ipcbus_poll alerts: alert name pattern "a*b": * is allowed only at the end`},
	} {
		in := ":8080 {\n\t" + c.site + "\n}\n"
		_, _, err := caddyfile.Adapter{ServerType: httpServerType()}.Adapt([]byte(in), map[string]any{"filename": "Caddyfile"})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.site, err, c.want)
		} else if !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%q: %v does not say where", c.site, err)
		}
	}
}

// TestLoadRefusesBadLiterals: a config whose handler values are wrong as
// written fails when it is loaded (caddy validate), not on each request.
func TestLoadRefusesBadLiterals(t *testing.T) {
	for _, c := range []struct{ handler, want string }{
		{`{"handler": "ipcbus_send", "pid": "abc"}`, `pid "abc" is not a process id`},
		{`{"handler": "ipcbus_broadcast", "source": "ipcbus.workers", "event": "worker_crashed"}`, `source "ipcbus.workers" is reserved`},
		{`{"handler": "ipcbus_send", "max_size": 134217728}`, "is over the ipcbus max_payload"},
		{`{"handler": "ipcbus_send", "pid": "{http.request.header.X-Pid}"}`, ""},
	} {
		cfg := `{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": [":0"], "routes": [{"handle": [` + c.handler + `]}]}}}}}`
		var config caddy.Config
		if err := json.Unmarshal([]byte(cfg), &config); err != nil {
			t.Fatal(err)
		}
		err := caddy.Validate(&config)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.handler, err, c.want)
		}
	}
}
