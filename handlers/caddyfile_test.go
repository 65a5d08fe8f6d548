package handlers_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		{"ipcbus_send {\n\t\tto 1\n\t}", `unknown ipcbus_send setting "to"`},
		{"ipcbus_broadcast a b c", "ipcbus_broadcast takes at most two arguments"},
		{"ipcbus_broadcast {\n\t\tunique\n\t}", "ipcbus_broadcast unique needs exactly one value"},
		{"ipcbus_broadcast {\n\t\talert a b\n\t}", "alert takes at most one argument"},
		{"ipcbus_broadcast chat {\n\t\talert\n\t}", "which has a name but no source, event or unique key"},
		{"ipcbus_broadcast {\n\t\tcolor red\n\t}", `unknown ipcbus_broadcast setting "color"`},
		{"ipcbus_poll {\n\t\tsource\n\t}", "ipcbus_poll source needs at least one value"},
		{"ipcbus_poll {\n\t\ttimeout soon\n\t}", `ipcbus_poll timeout: "soon" is not a positive duration`},
		{"ipcbus_poll {\n\t\tkeepalive 0s\n\t}", `ipcbus_poll keepalive: "0s" is not a positive duration`},
		{"ipcbus_poll {\n\t\tlimit 0\n\t}", `ipcbus_poll limit: "0" must be a number from 1 to 10000`},
		{"ipcbus_poll {\n\t\tmax_streams many\n\t}", `ipcbus_poll max_streams: "many" must be a number from 1 up`},
		{"ipcbus_poll {\n\t\tretry 1s\n\t}", `unknown ipcbus_poll setting "retry"`},
	} {
		in := ":8080 {\n\t" + c.site + "\n}\n"
		_, _, err := caddyfile.Adapter{ServerType: httpServerType()}.Adapt([]byte(in), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.site, err, c.want)
		}
	}
}
