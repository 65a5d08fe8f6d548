package ipcbus

import "testing"

func TestAdminKey(t *testing.T) {
	tests := []struct {
		addr, want string
	}{
		{"localhost:2019", "tcp/2019"},
		{"127.0.0.1:2019", "tcp/2019"},
		{":2019", "tcp/2019"},
		{"tcp/localhost:2019", "tcp/2019"},
		{"[::1]:2019", "tcp/2019"},
		{"10.0.0.7:2019", "tcp/10.0.0.7:2019"},
		{"unix//run/caddy.sock", "unix//run/caddy.sock"},
		{"unix//run/caddy.sock|0600", "unix//run/caddy.sock"},
	}
	for _, tt := range tests {
		if got := adminKey(tt.addr); got != tt.want {
			t.Errorf("adminKey(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}
