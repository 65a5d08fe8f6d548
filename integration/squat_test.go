package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobody is the user squats are made as (these tests run as root).
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("acting as another user needs root")
	}
}

// TestSquattedZone: another user who creates the zone's directory before
// Caddy starts does not keep it from starting: every process uses the
// next name, and the log names the squatted one; the same user's file at
// the zone's old, predictable name in the shared directory no longer
// matters at all.
func TestSquattedZone(t *testing.T) {
	needRoot(t)
	t.Run("directory", func(t *testing.T) {
		n := newNode(t)
		if err := os.Mkdir(n.zoneDir(), 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(n.zoneDir(), nobody, nobody); err != nil {
			t.Fatal(err)
		}
		// Caddy starts, in the next name, and says so.
		a := n.start()
		n.start()
		want := filepath.Join(n.zoneDir()+".1", n.zone+".zone")
		if rep := a.workers(); rep.Zone.Path != want || len(rep.Workers) != 2 {
			t.Fatalf("zone at %s with %d workers, want both processes at %s", rep.Zone.Path, len(rep.Workers), want)
		}
		if log := a.logText(); !strings.Contains(log, "zone directory names held by another user or group were skipped") || !strings.Contains(log, n.zoneDir()) {
			t.Fatalf("no warning naming the squatted directory:\n%s", log)
		}
	})
	t.Run("old file name", func(t *testing.T) {
		n := newNode(t)
		old := filepath.Join(n.dir, "ipcbus-"+n.zone+".zone")
		if err := os.WriteFile(old, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(old, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		p := n.start()
		if rep := p.workers(); rep.Zone.Path != n.zonePath() {
			t.Fatalf("zone at %s, want %s", rep.Zone.Path, n.zonePath())
		}
		if fi, err := os.Stat(old); err != nil || fi.Size() != 0 {
			t.Fatalf("the squatted file was touched: %v %v", fi, err)
		}
	})
}

// TestGroupZoneAcrossUsers: with mode 0660, processes of two users that
// run with the same group (root and nobody, group 0) join one zone in
// ipcbus-g0, each under a umask of 077, and read each other's large
// payloads: blobs get the zone's mode whatever the umask.
func TestGroupZoneAcrossUsers(t *testing.T) {
	needRoot(t)
	n := newNode(t)
	n.settings = "mode 0660"
	// nobody (group 0) must reach the binary and the node's files.
	for _, d := range []string{filepath.Dir(caddyBin), filepath.Dir(n.dir), n.dir} {
		if err := os.Chmod(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Dir(caddyBin), 0o755); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(n.dir, "nobody-home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, nobody, 0); err != nil {
		t.Fatal(err)
	}
	umask077 := func(cmd *exec.Cmd) {
		cmd.Args = append([]string{"sh", "-c", `umask 077; exec "$0" "$@"`}, cmd.Args...)
		cmd.Path = "/bin/sh"
	}
	asNobody := func(cmd *exec.Cmd) {
		umask077(cmd)
		// The harness writes configs 0600; nobody reads them through group 0.
		for i, arg := range cmd.Args[:len(cmd.Args)-1] {
			if arg == "--config" {
				os.Chmod(cmd.Args[i+1], 0o640)
			}
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: 0, Groups: []uint32{}}}
		cmd.Env = append(cmd.Env, "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home)
	}
	a := n.startWith(umask077)
	// SO_REUSEPORT shares a port only within one user: nobody gets its own.
	nb := *n
	nb.sitePort = freePort(t)
	b := nb.startWith(asNobody)
	dir := filepath.Join(n.dir, "ipcbus-g0")
	if rep := b.workers(); rep.Zone.Path != filepath.Join(dir, n.zone+".zone") || countState(rep, "live") != 2 {
		t.Fatalf("zone %+v, %d live workers", rep.Zone, countState(rep, "live"))
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o770 {
		t.Fatalf("group directory: %v %v", fi, err)
	}
	for _, tc := range []struct {
		from, to *proc
		source   string
	}{
		{a, b, "from-root"},
		{b, a, "from-nobody"},
	} {
		body := bytes.Repeat([]byte(tc.source[:4]), 50<<10) // 200 KiB: a blob
		if status, answer := tc.from.postSite(t, "/publish?source="+tc.source+"&event=e", "text/plain", body); status != http.StatusOK {
			t.Fatalf("%s: %d %s", tc.source, status, answer)
		}
		page, _ := longPoll(t, tc.to.url("/events?since=0&timeout=5s&source="+tc.source))
		if len(page.Events) != 1 || string(page.Events[0].Data) != `"`+string(body)+`"` {
			t.Fatalf("%s: the other user's process read %d events (%d bytes)", tc.source, len(page.Events), len(fmt.Sprint(page.Events)))
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().Perm() != 0o660 {
			t.Errorf("%s: mode %04o under umask 077, want 0660", e.Name(), fi.Mode().Perm())
		}
	}
	if strings.Contains(a.logText()+b.logText(), "blob file cannot be read") {
		t.Fatalf("a blob could not be read:\n%s\n%s", a.logText(), b.logText())
	}
	// The CLI finds the group's zone with --mode, and points to it without.
	if out, err := cli(t, "ipcbus", "workers", "--zone", n.zone, "--dir", n.dir, "--mode", "0660"); err != nil || !strings.Contains(out, filepath.Join(dir, n.zone+".zone")) {
		t.Fatalf("caddy ipcbus workers --mode 0660: %v\n%s", err, out)
	}
	if out, err := cli(t, "ipcbus", "workers", "--zone", n.zone, "--dir", n.dir); err == nil || !strings.Contains(out, "does not exist") || !strings.Contains(out, filepath.Join(dir, n.zone+".zone")) {
		t.Fatalf("caddy ipcbus workers without --mode: %v\n%s", err, out)
	}
}
