package workermgr

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestAdminClash: a worker whose admin address a live worker of another
// process has is refused, with an error naming that process; other
// addresses, none, and the same process's next generation join.
func TestAdminClash(t *testing.T) {
	z := openZone(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WORKERMGR_HELPER_DIR="+z.Dir(), "WORKERMGR_HELPER_ADMIN=tcp/localhost:2019")
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	helper := cmd.Process.Pid
	tests := []struct {
		name  string
		admin string
		clash bool
	}{
		{"same address", "tcp/localhost:2019", true},
		{"another address", "tcp/localhost:2020", false},
		{"no admin endpoint", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := Join(z, Config{Generation: 1, Admin: tt.admin})
			var clash *AdminClashError
			switch {
			case tt.clash && !errors.As(err, &clash):
				t.Fatalf("Join = %v, want an AdminClashError", err)
			case tt.clash:
				if clash.PID != helper || !strings.Contains(err.Error(), "pid "+strconv.Itoa(helper)) || !strings.Contains(err.Error(), tt.admin) {
					t.Fatalf("error %q does not name pid %d and the address", err, helper)
				}
			case err != nil:
				t.Fatalf("Join = %v", err)
			default:
				w.Leave(ReasonShutdown)
			}
		})
	}
	// The same process's workers (a reload's overlap) share the address.
	rec := &recorder{}
	w1 := join(t, z, 1, rec, func(c *Config) { c.Admin = "unix//run/a.sock" })
	w2 := join(t, z, 2, rec, func(c *Config) { c.Admin = "unix//run/a.sock" })
	w1.Leave(ReasonAuto)
	w2.Leave(ReasonShutdown)
}
