package ipcbus

import (
	"strings"
	"testing"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// TestValidate: JSON configs are checked as the Caddyfile checks them (a
// relative dir passed `caddy validate` in JSON), and blob_quota gets its
// default and its bounds.
func TestValidate(t *testing.T) {
	tests := []struct {
		name      string
		app       func() *App
		want      string // error substring; "" for none
		wantQuota int64
	}{
		{name: "defaults", wantQuota: zone.DefaultBlobQuota},
		{name: "absolute dir", app: func() *App { return &App{Dir: "/run/ipcbus"} }, wantQuota: zone.DefaultBlobQuota},
		{name: "relative dir", app: func() *App { return &App{Dir: "run/ipcbus"} }, want: `invalid dir "run/ipcbus": give an absolute path`},
		{name: "dot dir", app: func() *App { return &App{Dir: "."} }, want: `invalid dir "."`},
		{name: "large max_payload raises the default quota", app: func() *App { return &App{MaxPayload: 1 << 30} }, wantQuota: 1 << 30},
		{name: "quota as large as max_payload", app: func() *App { return &App{MaxPayload: 1 << 20, BlobQuota: 1 << 20} }, wantQuota: 1 << 20},
		{name: "quota under max_payload", app: func() *App { return &App{BlobQuota: 1 << 20} }, want: "invalid blob_quota 1048576: it is smaller than max_payload (67108864)"},
		{name: "negative quota", app: func() *App { return &App{BlobQuota: -1} }, want: "invalid blob_quota -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := new(App)
			if tt.app != nil {
				a = tt.app()
			}
			a.setDefaults()
			err := a.Validate()
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Validate: %v, want %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.BlobQuota != tt.wantQuota {
				t.Fatalf("blob_quota %d, want %d", a.BlobQuota, tt.wantQuota)
			}
		})
	}
}
