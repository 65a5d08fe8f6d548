package ipcbus

import (
	"os"
	"strings"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/master"
)

func TestMasterAdmin(t *testing.T) {
	tests := []struct {
		name, cfg        string
		network, address string
		hosts            string
		mode             os.FileMode
		wantErr          string
	}{
		{"default", `{}`, "tcp", "localhost:2019", "localhost:2019 127.0.0.1:2019 [::1]:2019", 0, ""},
		{"loopback", `{"admin":{"listen":"127.0.0.1:2020"}}`, "tcp", "127.0.0.1:2020", "localhost:2020 127.0.0.1:2020 [::1]:2020", 0, ""},
		{"every interface", `{"admin":{"listen":":2020"}}`, "tcp", ":2020", "", 0, ""},
		{"another host", `{"admin":{"listen":"10.0.0.7:2019"}}`, "tcp", "10.0.0.7:2019", "10.0.0.7:2019", 0, ""},
		{"origins", `{"admin":{"listen":"10.0.0.7:2019","origins":["http://admin.example:2019"]}}`, "tcp", "10.0.0.7:2019", "10.0.0.7:2019 admin.example:2019", 0, ""},
		{"unix socket", `{"admin":{"listen":"unix//run/c.sock|0660"}}`, "unix", "/run/c.sock", "", 0o660, ""},
		{"off", `{"admin":{"disabled":true}}`, "", "", "", 0, ""},
		{"port range", `{"admin":{"listen":"localhost:2019-2020"}}`, "", "", "", 0, "give one address"},
		{"socket activation", `{"admin":{"listen":"fd/3"}}`, "", "", "", 0, "socket activation is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o master.Options
			err := masterAdmin([]byte(tt.cfg), &o)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("masterAdmin = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || o.AdminNetwork != tt.network || o.AdminAddress != tt.address || strings.Join(o.AdminHosts, " ") != tt.hosts || o.AdminSocketMode != tt.mode {
				t.Fatalf("masterAdmin = %v: %s %s [%s] %o", err, o.AdminNetwork, o.AdminAddress, strings.Join(o.AdminHosts, " "), o.AdminSocketMode)
			}
		})
	}
}

func TestAdaptBody(t *testing.T) {
	tests := []struct {
		name, ct, body, want, wantErr string
	}{
		{"caddyfile", "text/caddyfile", "{\n\tadmin localhost:2099\n}\n", `"listen":"localhost:2099"`, ""},
		{"caddyfile with parameters", "text/caddyfile; charset=utf-8", "{\n\tadmin localhost:2099\n}\n", `"listen":"localhost:2099"`, ""},
		{"unknown adapter", "application/x-nothing", "x", "", `unrecognized config adapter "nothing"`},
		{"bad caddyfile", "text/caddyfile", "{\n\tipcbus {\n\t\tsize nope\n\t}\n}\n", "", "adapting the config with caddyfile"},
		{"malformed type", "caddyfile", "x", "", "malformed Content-Type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := adaptBody([]byte(tt.body), tt.ct)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("adaptBody = %s, %v, want %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(string(got), tt.want) {
				t.Fatalf("adaptBody = %s, %v, want %s in it", got, err, tt.want)
			}
		})
	}
}
